"""Policy-gradient training of a linear-softmax policy on the exact arithmetic tree, with optional CAPO.

One step: sample G completions for each of ``prompts_per_step`` prompts, compute the variant's
advantages (GRPO: group-normalised; Dr.GRPO: group-centred; REINFORCE: the raw reward), optionally mask
tokens with CAPO (token-level :func:`capo.directional_shifts` + :func:`capo.select` under an Adam or SGD
step model whose :class:`capo.SparseAdamMoments` are updated with the mean accepted gradient,
docs/design.md §2), and take one Adam step (cosine schedule with 10% warm-up, as the paper's Table 2) on the
masked loss: GRPO / REINFORCE average each completion over its accepted tokens then over completions;
Dr.GRPO divides the sum over accepted tokens by the completion length T. Because the policy *is* the
last layer, the curvature model is exact up to the sampling. Exact J, the exact average KL of each step
and the policy entropy are logged every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray

import capo
from capo_app.experiments.toy_task import ArithmeticTree, Array

__all__ = ["VARIANTS", "RunLog", "TrainSpec", "adam_ascent", "advantages", "cosine_lr", "train"]

VARIANTS = ("grpo", "dr_grpo", "reinforce")
"""Loss variants (docs/design.md §2): group-normalised, group-centred (fixed denominator), raw reward."""


@dataclass(frozen=True)
class TrainSpec:
    """One training run.

    Attributes:
        variant: One of :data:`VARIANTS`.
        lr: Peak Adam learning rate.
        prompts_per_step: Prompts per step; completions per step = prompts_per_step · group_size.
        group_size: G, completions per prompt.
        steps: Optimizer steps.
        thresholds: CAPO acceptance bounds, or None for the plain method (no masking).
        step_model: "adam" or "sgd", the step model of the curvature model (CAPO only).
        betas: Adam betas (optimizer and step model).
        eps: Adam epsilon.
        warmup_ratio: Fraction of steps of linear warm-up before the cosine decay.
        init_scale: Standard deviation of the seeded random part of the warm start W0.
        cue_weight: Warm start weight on the cue block (W0[a, cue a] = cue_weight).
        junk_logit: Warm start bias of the junk tokens' logits (W0[junk, bias] = junk_logit).
    """

    variant: str = "grpo"
    lr: float = 0.05
    prompts_per_step: int = 12
    group_size: int = 8
    steps: int = 100
    thresholds: capo.Thresholds | None = None
    step_model: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_ratio: float = 0.1
    init_scale: float = 0.5
    cue_weight: float = 1.0
    junk_logit: float = -4.0

    @property
    def completions_per_step(self) -> int:
        """Completions per optimizer step."""
        return self.prompts_per_step * self.group_size


@dataclass
class RunLog:
    """Per-step logs of one run (index s = before step s; ``J`` has steps + 1 entries).

    Attributes:
        J: Exact objective after 0..steps steps.
        completions: Completions consumed when J[s] was measured.
        train_reward: Mean sampled reward of each step's batch.
        rejection_rate: Fraction of the step's completion tokens that CAPO rejected (0 without CAPO).
        token_m_H: Mean token-level m_H of the step's tokens (Adam step model, before selection).
        token_m_F: Mean token-level m_F likewise.
        token_m_F_max: Max token-level m_F.
        global_m_H: m_H of the batch-level step over the tokens actually used.
        global_m_F: m_F likewise.
        kl: Exact average KL D̄_KL(π_s ‖ π_{s+1}) of the step taken.
        entropy: Visitation-weighted policy entropy after 0..steps steps.
        lr: Learning rate the scheduler gave each step.
    """

    J: list[float] = field(default_factory=list)
    completions: list[int] = field(default_factory=list)
    train_reward: list[float] = field(default_factory=list)
    rejection_rate: list[float] = field(default_factory=list)
    token_m_H: list[float] = field(default_factory=list)
    token_m_F: list[float] = field(default_factory=list)
    token_m_F_max: list[float] = field(default_factory=list)
    global_m_H: list[float] = field(default_factory=list)
    global_m_F: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def as_arrays(self) -> dict[str, Array]:
        """Every log as a float64 array."""
        return {k: np.asarray(v, dtype=np.float64) for k, v in self.__dict__.items()}


def cosine_lr(peak: float, step: int, total: int, warmup_ratio: float) -> float:
    """The learning rate of ``transformers.get_cosine_schedule_with_warmup`` at ``step`` (0-based)."""
    warm = math.ceil(warmup_ratio * total)
    if step < warm:
        return peak * step / max(1, warm)
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def adam_ascent(
    W: Array,
    m: Array,
    v: Array,
    grad: Array,
    lr: float,
    t: int,
    betas: tuple[float, float],
    eps: float,
) -> tuple[Array, Array, Array]:
    """One step of ``torch.optim.Adam(maximize=True)`` (no weight decay) on W.

    Args:
        W: Parameters.
        m: First moment.
        v: Second moment.
        grad: Gradient of the objective to maximise.
        lr: Learning rate of this step.
        t: 1-based step count (bias correction).
        betas: (β1, β2).
        eps: ε.

    Returns:
        (W', m', v').
    """
    b1, b2 = betas
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad**2
    step = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return W + lr * step, m, v


def advantages(rewards: Array, group_size: int, variant: str) -> Array:
    """Per-completion advantages of a variant.

    Args:
        rewards: [B] rewards, grouped in consecutive blocks of ``group_size``.
        group_size: G.
        variant: One of :data:`VARIANTS`.

    Returns:
        [B] advantages: (r − mean_g)/(std_g + 1e-4) with the unbiased std (TRL's GRPO), r − mean_g
        (Dr.GRPO), or r (REINFORCE).
    """
    if variant == "reinforce":
        return rewards.astype(np.float64).copy()
    r = rewards.reshape(-1, group_size)
    centred = r - r.mean(axis=1, keepdims=True)
    if variant == "dr_grpo":
        return centred.ravel()
    if variant == "grpo":
        return (centred / (r.std(axis=1, ddof=1, keepdims=True) + 1e-4)).ravel()
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


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


def _step_model(spec: TrainSpec, lr: float, moments: capo.SparseAdamMoments) -> capo.StepModel:
    if spec.step_model == "adam":
        return capo.AdamStep(lr=lr, moments=moments)
    if spec.step_model == "sgd":
        return capo.SGDStep(lr=lr)
    raise ValueError(f"step_model must be 'adam' or 'sgd', got {spec.step_model!r}")


def warm_start(tree: ArithmeticTree, spec: TrainSpec) -> Array:
    """The base policy W0 (identical for every method and seed): cue weight plus a fixed random part."""
    K, T, Kd = tree.spec.vocab_size, tree.spec.horizon, tree.spec.n_digits
    rng = np.random.default_rng([tree.spec.seed, 2])
    W = spec.init_scale * rng.standard_normal((K, tree.dim))
    W[:Kd, 1 + T : 1 + T + Kd] += spec.cue_weight * np.eye(Kd)
    W[Kd:, 0] = spec.junk_logit / tree.spec.bias_scale
    return W


def train(tree: ArithmeticTree, spec: TrainSpec, seed: int) -> RunLog:
    """Train from the warm start and log every step.

    Args:
        tree: The task.
        spec: The run's hyperparameters.
        seed: Sampling seed.

    Returns:
        The run's logs.
    """
    K, T, P = tree.spec.vocab_size, tree.spec.horizon, tree.spec.n_prompts
    G, n_prompts = spec.group_size, spec.prompts_per_step
    rng = np.random.default_rng([seed, 3])
    W = warm_start(tree, spec)
    m_opt, v_opt = np.zeros_like(W), np.zeros_like(W)
    moments = capo.SparseAdamMoments(K, tree.dim, betas=spec.betas, eps=spec.eps)
    rows = torch.arange(K)
    log = RunLog()
    probs = tree.probs(W)
    J, d = tree.evaluate(probs)
    log.J.append(J)
    log.completions.append(0)
    log.entropy.append(tree.mean_entropy(d, probs))
    for step in range(spec.steps):
        lr = cosine_lr(spec.lr, step, spec.steps, spec.warmup_ratio)
        prompts = np.repeat(rng.choice(P, size=n_prompts, replace=n_prompts > P), G)
        states, actions, rewards = tree.sample(probs, prompts, rng)
        adv_c = advantages(rewards, G, spec.variant)
        s, a = states.ravel(), actions.ravel()
        h, pi = tree.features[s], probs[s]
        adv = np.repeat(adv_c, T)
        batch = _token_batch(h, pi, a, adv)
        model = _step_model(spec, lr, moments)
        shifts = capo.directional_shifts(batch, model)
        if spec.thresholds is None:
            keep = np.ones(s.shape[0], dtype=bool)
        else:
            keep = capo.select(shifts, spec.thresholds).numpy()
        kept = keep.reshape(-1, T)
        n_acc = kept.sum(axis=1)
        if spec.variant == "dr_grpo":
            weight = kept / (len(prompts) * T)
        else:
            weight = np.where(kept, 1.0 / (len(prompts) * np.maximum(n_acc, 1))[:, None], 0.0)
        u = -pi
        u[np.arange(a.shape[0]), a] += 1.0
        coef = (weight.ravel() * adv)[:, None] * u  # [N, K]
        grad = coef.T @ h  # ascent direction of the masked surrogate, [K, d]
        # the curvature model's moments: mean gradient over accepted tokens (docs/design.md §2)
        n_keep = int(keep.sum())
        if n_keep:
            mean_grad = ((adv * keep)[:, None] * u).T @ h / n_keep
            glob = capo.directional_shifts(
                _token_batch(h[keep], pi[keep], a[keep], adv[keep]),
                _step_model(spec, lr, moments),
                torch.zeros(n_keep, dtype=torch.int64),
            )
            log.global_m_H.append(float(glob.m_H[0]))
            log.global_m_F.append(float(glob.m_F[0]))
        else:
            mean_grad = np.zeros_like(W)
            log.global_m_H.append(0.0)
            log.global_m_F.append(0.0)
        moments.update(rows, torch.from_numpy(mean_grad))
        W, m_opt, v_opt = adam_ascent(W, m_opt, v_opt, grad, lr, step + 1, spec.betas, spec.eps)
        new_probs = tree.probs(W)
        log.kl.append(tree.average_kl(d, probs, new_probs))
        probs = new_probs
        J, d = tree.evaluate(probs)
        log.J.append(J)
        log.completions.append((step + 1) * len(prompts))
        log.entropy.append(tree.mean_entropy(d, probs))
        log.train_reward.append(float(rewards.mean()))
        log.rejection_rate.append(1.0 - n_keep / s.shape[0])
        log.token_m_H.append(float(shifts.m_H.mean()))
        log.token_m_F.append(float(shifts.m_F.mean()))
        log.token_m_F_max.append(float(shifts.m_F.max()))
        log.lr.append(lr)
    return log
