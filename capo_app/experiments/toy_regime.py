"""The ``toy`` regime: GRPO on an exact token MDP whose policy *is* the last layer (curvature model exact).

Task: the arithmetic prefix tree of :mod:`toy_mdps.prefix_tree` (P prompts, vocabulary K, horizon T, reward 1
iff the digit tokens sum to the prompt's target and no junk token appears), linear-softmax policy
π(· | s) = softmax(W h(s)) with fixed features h. One step: sample G completions for each of the step's
prompts, group-normalised advantages (TRL's GRPO), the arm's token mask, the masked GRPO loss (each
completion averaged over its kept tokens, then over completions), one optimizer step on W: dense Adam
(:class:`reference.steps.DenseAdamStep`, ascent) or SGD, both with the paper's cosine schedule and 10%
warm-up. The curvature model proposes with the same optimizer (SGD or Adam step model) and its moments are
updated with the mean kept gradient (docs/design.md §2). Logged every step: the exact J, the exact average
KL of the step (App. K eq 106; here the head-only KL is the whole KL), the predicted KL of the step taken
over all sampled tokens with the state Fisher ½ δᵀ F δ (δ = ΔW h, eq 57), the paper's global m_F over the
kept tokens, rejection by group, entropy.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

import capo
from capo.shifts import fisher_quadratic, policy_error
from capo_app.experiments.arms import Arm, group_keep, random_keep, rejection_by_group
from reference.steps import DenseAdamState, DenseAdamStep
from toy_mdps.prefix_tree import ArithmeticTree, TaskSpec, arithmetic_tree

__all__ = ["ToySetup", "cosine_lr", "grpo_advantages", "run_toy", "warm_start"]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class ToySetup:
    """The toy regime's task and training constants (lr and batch come from the arm).

    Attributes:
        task: The arithmetic tree.
        steps: Optimizer steps per run.
        group_size: G, completions per prompt.
        prompts_per_step: Prompts per step of the aggressive batch.
        betas: Adam betas (optimizer and step model).
        eps: Adam epsilon.
        warmup_ratio: Linear warm-up fraction of the cosine schedule.
        init_scale: Standard deviation of the random part of the warm start W0.
        cue_weight: Warm-start weight on the cue features.
        junk_logit: Warm-start logit of the junk tokens.
        shift_samples: Token shifts kept per run (for the percentile thresholds).
    """

    task: TaskSpec = field(default_factory=TaskSpec)
    steps: int = 100
    group_size: int = 8
    prompts_per_step: int = 12
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_ratio: float = 0.1
    init_scale: float = 0.3
    cue_weight: float = 2.0
    junk_logit: float = -3.0
    shift_samples: int = 4000


def cosine_lr(peak: float, step: int, total: int, warmup_ratio: float) -> float:
    """The learning rate of ``transformers.get_cosine_schedule_with_warmup`` at ``step`` (0-based)."""
    warm = math.ceil(warmup_ratio * total)
    if step < warm:
        return peak * step / max(1, warm)
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def grpo_advantages(rewards: Array, group_size: int) -> Array:
    """TRL's GRPO advantages (eq 4): (r − mean_g) / (std_g + 1e-4), unbiased std, groups of ``group_size``."""
    r = rewards.reshape(-1, group_size)
    centred = r - r.mean(axis=1, keepdims=True)
    return (centred / (r.std(axis=1, ddof=1, keepdims=True) + 1e-4)).ravel()


def warm_start(tree: ArithmeticTree, setup: ToySetup) -> Array:
    """The base policy W0 (the same for every arm and seed): cue weight plus a fixed random part."""
    K, T, Kd = tree.spec.vocab_size, tree.spec.horizon, tree.spec.n_digits
    W = setup.init_scale * np.random.default_rng([tree.spec.seed, 2]).standard_normal((K, tree.dim))
    W[:Kd, 1 + T : 1 + T + Kd] += setup.cue_weight * np.eye(Kd)
    W[Kd:, 0] = setup.junk_logit / tree.spec.bias_scale
    return W


def _token_batch(h: Array, probs: Array, actions: NDArray[np.int64], adv: Array) -> capo.TokenBatch:
    n, K = probs.shape
    return capo.TokenBatch(
        hidden=torch.from_numpy(h),
        support_ids=torch.arange(K).expand(n, K).contiguous(),
        support_probs=torch.from_numpy(probs),
        action_index=torch.from_numpy(actions),
        advantages=torch.from_numpy(adv),
        vocab_size=K,
    )


@dataclass
class _State:
    """Parameters, optimizer moments and the curvature model of one run."""

    W: Array
    adam: DenseAdamState
    moments: capo.SparseAdamMoments
    rng: np.random.Generator
    mask_rng: np.random.Generator
    log: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, **values: Any) -> None:
        for key, value in values.items():
            self.log.setdefault(key, []).append(value)


def _step_model(arm: Arm, lr: float, moments: capo.SparseAdamMoments) -> capo.StepModel:
    return capo.AdamStep(lr=lr, moments=moments) if arm.optimizer == "adam" else capo.SGDStep(lr=lr)


def _keep(arm: Arm, shifts: Any, batch: tuple[Any, Any, Any], rate: float, st: _State) -> Any:
    """The arm's token mask [N] (adv, pi_a, valid in ``batch``)."""
    adv, pi_a, valid = batch
    if arm.masking == "capo":
        assert arm.thresholds is not None, "percentile thresholds are resolved before the run"
        return capo.select(shifts, arm.thresholds).numpy()
    if arm.masking == "random":  # CAPO's count, only among tokens CAPO could reject (A != 0)
        movable = valid & (adv != 0)
        share = rate * valid.sum() / max(int(movable.sum()), 1)
        return random_keep(movable, min(share, 1.0), st.mask_rng) | (valid & (adv == 0))
    if arm.masking == "group":
        assert arm.group is not None
        return group_keep(valid, adv, pi_a, arm.group)
    return valid.copy()


def _global_m_f(arm: Arm, lr: float, st: _State, tokens: tuple[Any, ...], keep: Any) -> float:
    """The paper's global m_F: eq 10 with b = the kept tokens."""
    h, pi, a, adv = tokens
    if not keep.any():
        return 0.0
    n = int(keep.sum())
    glob = capo.directional_shifts(
        _token_batch(h[keep], pi[keep], a[keep], adv[keep]),
        _step_model(arm, lr, st.moments),
        torch.zeros(n, dtype=torch.int64),
    )
    return float(glob.m_F[0])


def _gradients(tokens: tuple[Any, ...], keep: Any, horizon: int) -> tuple[Array, Array]:
    """(ascent gradient of the masked GRPO loss, mean kept gradient for the moments), each [K, d]."""
    h, pi, a, adv = tokens
    kept = keep.reshape(-1, horizon)
    n_completions = kept.shape[0]
    weight = np.where(kept, 1.0 / (n_completions * np.maximum(kept.sum(axis=1), 1))[:, None], 0.0)
    u = policy_error(torch.from_numpy(pi), torch.from_numpy(a)).numpy()  # e_a − π
    grad = ((weight.ravel() * adv)[:, None] * u).T @ h
    mean_kept = ((adv * keep)[:, None] * u).T @ h / max(int(keep.sum()), 1)
    return grad, mean_kept


def _predicted_kl(delta: Array, h: Array, pi: Array) -> float:
    """Mean over the sampled tokens of ½ δᵀ F δ, δ = ΔW h, F = diag(π) − ππᵀ (eqs 57, 58)."""
    d = torch.from_numpy(h @ delta.T)
    return float((0.5 * fisher_quadratic(torch.from_numpy(pi), d)).mean())


def _train_step(
    tree: ArithmeticTree, setup: ToySetup, arm: Arm, step: int, st: _State, ctx: dict
) -> None:
    """Sample, mask, step; log the step's quantities (``ctx``: peak lr, batch, rates, probs, d)."""
    T, P, G = tree.spec.horizon, tree.spec.n_prompts, setup.group_size
    lr = cosine_lr(ctx["lr"], step, setup.steps, setup.warmup_ratio)
    n_prompts = setup.prompts_per_step * arm.batch_ratio
    prompts = np.repeat(st.rng.choice(P, size=n_prompts, replace=n_prompts > P), G)
    states, actions, rewards = tree.sample(ctx["probs"], prompts, st.rng)
    s, a = states.ravel(), actions.ravel()
    h, pi = tree.features[s], ctx["probs"][s]
    adv = np.repeat(grpo_advantages(rewards, G), T)
    pi_a = pi[np.arange(a.shape[0]), a]
    shifts = capo.directional_shifts(_token_batch(h, pi, a, adv), _step_model(arm, lr, st.moments))
    valid = np.ones(s.shape[0], dtype=bool)
    rate = ctx["rates"][step] if ctx["rates"] is not None else 0.0
    keep = _keep(arm, shifts, (adv, pi_a, valid), rate, st)
    tokens = (h, pi, a, adv)
    grad, mean_kept = _gradients(tokens, keep, T)
    st.add(global_m_F=_global_m_f(arm, lr, st, tokens, keep))
    st.moments.update(torch.arange(tree.spec.vocab_size), torch.from_numpy(mean_kept))
    if arm.optimizer == "adam":
        delta = DenseAdamStep(lr, st.adam).propose(grad)
        st.adam.update(grad)
    else:
        delta = lr * grad
    budget = arm.kl_budget
    for _ in range(2 if budget is not None else 0):  # trust region, then one backtrack
        kl = tree.average_kl(ctx["d"], ctx["probs"], tree.probs(st.W + delta))
        delta = delta * min(1.0, math.sqrt(budget / kl)) if budget and kl > 0 else delta
    st.W = st.W + delta
    rej, tot = rejection_by_group(valid, keep, adv, pi_a)
    take = st.rng.choice(s.shape[0], size=min(s.shape[0], setup.shift_samples // setup.steps + 1))
    st.add(
        train_reward=float(rewards.mean()),
        rejection=1.0 - float(keep.mean()),
        rejected_by_group=rej,
        tokens_by_group=tot,
        kl_predicted=_predicted_kl(delta, h, pi),
        lr=lr,
        token_m_F=shifts.m_F.numpy()[take].tolist(),
        token_m_H=shifts.m_H.numpy()[take].tolist(),
    )


def run_toy(
    setup: ToySetup, arm: Arm, lr: float, seed: int, rates: list[float] | None = None
) -> dict[str, Any]:
    """Train one arm on one seed from the warm start.

    Args:
        setup: The regime's constants.
        arm: The arm (``capo`` arms with their thresholds resolved).
        lr: Peak learning rate.
        seed: Sampling seed.
        rates: Per-step rejection rates a ``random`` arm copies.

    Returns:
        The run record: per-step logs, ``score`` (exact J after 0..steps steps), ``completions``.
    """
    start = time.perf_counter()
    tree = arithmetic_tree(setup.task)
    W = warm_start(tree, setup)
    K = tree.spec.vocab_size
    st = _State(
        W,
        DenseAdamState(K, tree.dim, setup.betas, setup.eps),
        capo.SparseAdamMoments(K, tree.dim, betas=setup.betas, eps=setup.eps),
        np.random.default_rng([seed, 3]),
        np.random.default_rng(
            [seed, 4]
        ),  # the random mask's own stream: sampling stays the CAPO arm's
    )
    probs = tree.probs(W)
    J, d = tree.evaluate(probs)
    st.add(score=J, entropy=tree.mean_entropy(d, probs), completions=0)
    per_step = setup.prompts_per_step * arm.batch_ratio * setup.group_size
    for step in range(setup.steps):
        _train_step(tree, setup, arm, step, st, {"lr": lr, "probs": probs, "rates": rates, "d": d})
        new = tree.probs(st.W)
        kl = tree.average_kl(d, probs, new)
        probs = new
        J, d = tree.evaluate(probs)
        st.add(true_kl=kl, true_kl_head=kl, score=J, entropy=tree.mean_entropy(d, probs))
        st.add(completions=(step + 1) * per_step)
    return {
        "arm": arm.name,
        "seed": seed,
        "lr": lr,
        **st.log,
        "seconds": time.perf_counter() - start,
    }
