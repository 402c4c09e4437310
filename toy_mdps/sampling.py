"""Sample trajectories and return flat per-token arrays for the sample estimators of the reference.

With N tokens over n trajectories, (1/n) Σ_{i<N} discounts[i] · f(states[i], actions[i]) is an unbiased
estimate of E_τ[Σ_t γ^t f_t(s_t, a_t)] = Σ_t Σ_s w_t(s) Σ_a π(a | s) f_t(s, a) (weights of
:func:`toy_mdps.exact.time_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from toy_mdps.exact import Evaluation, check_probs, time_advantages
from toy_mdps.mdp import FiniteMDP

DISCOUNT_MODES = ("geometric", "truncate")
"""Discounted setting: "geometric" stops after each step with probability 1 − γ (unbiased, discounts
all 1); "truncate" runs ``mdp.horizon`` steps with discounts γ^t (bias of order γ^T)."""

MAX_STEPS = 100_000


@dataclass(frozen=True, eq=False)
class TokenSamples:
    """Flat per-token arrays, ordered by trajectory then time.

    Attributes:
        states: s_t, shape [N].
        times: t, shape [N].
        actions: a_t, shape [N].
        features: h(s_t), shape [N, d] (d = 0 when no features were given).
        probs: π(· | s_t), shape [N, K].
        advantages: Exact A_t(s_t, a_t) of the visited pair (A(s, a) when discounted), shape [N].
        discounts: Per-token weight: γ^t (finite, or discounted "truncate"), 1 (discounted "geometric").
        trajectory_ids: Trajectory of each token, in [0, n_trajectories), shape [N].
        n_trajectories: Number of trajectories n (divide token sums by it).
    """

    states: NDArray[np.int64]
    times: NDArray[np.int64]
    actions: NDArray[np.int64]
    features: NDArray[np.float64]
    probs: NDArray[np.float64]
    advantages: NDArray[np.float64]
    discounts: NDArray[np.float64]
    trajectory_ids: NDArray[np.int64]
    n_trajectories: int

    @property
    def weighted_advantages(self) -> NDArray[np.float64]:
        """Per-token discounts · advantages, shape [N]: the coefficient of ∇ log π in the PG estimate (eq 7)."""
        return self.discounts * self.advantages


def _draw(rng: np.random.Generator, rows: NDArray[np.float64]) -> NDArray[np.int64]:
    """One categorical draw per row of ``rows`` [n, m] (inverse CDF)."""
    cdf = np.cumsum(rows, axis=1)
    u = rng.random(rows.shape[0]) * cdf[:, -1]
    idx = (u[:, None] >= cdf).sum(axis=1)
    return np.minimum(idx, rows.shape[1] - 1).astype(np.int64)


def _rollouts(
    mdp: FiniteMDP,
    p: NDArray[np.float64],
    n_trajectories: int,
    rng: np.random.Generator,
    n_steps: int,
    geometric: bool,
) -> tuple[NDArray[np.int64], ...]:
    """(trajectory id, time, state, action) [N] of every step, sorted by trajectory then time.

    With ``geometric`` each episode survives a step with probability γ (at most ``n_steps`` steps).
    """
    ids = np.arange(n_trajectories, dtype=np.int64)
    s = _draw(rng, np.broadcast_to(mdp.rho0, (n_trajectories, mdp.n_states)))
    chunks: list[tuple[NDArray[np.int64], ...]] = []
    for t in range(n_steps):
        a = _draw(rng, p[s])
        chunks.append((ids, np.full(ids.shape, t, dtype=np.int64), s, a))
        s = _draw(rng, mdp.transitions[s, a])
        if geometric:
            alive = rng.random(ids.shape[0]) < mdp.gamma
            ids, s = ids[alive], s[alive]
            if ids.size == 0:
                break
    traj, times, states, actions = (np.concatenate(c) for c in zip(*chunks, strict=True))
    order = np.lexsort((times, traj))
    return traj[order], times[order], states[order], actions[order]


def sample_tokens(
    mdp: FiniteMDP,
    probs: NDArray[np.float64],
    evaluation: Evaluation,
    n_trajectories: int,
    rng: np.random.Generator,
    features: NDArray[np.float64] | None = None,
    discount_mode: str = "geometric",
) -> TokenSamples:
    """Roll out ``n_trajectories`` episodes of π and flatten them into tokens.

    Finite setting: T steps each, discounts γ^t. Discounted setting: see :data:`DISCOUNT_MODES`.

    Args:
        mdp: The MDP.
        probs: π(a | s), shape [S, K].
        evaluation: Exact evaluation of ``probs`` (its setting decides the rollout, its A the advantages).
        n_trajectories: n ≥ 1.
        rng: NumPy generator.
        features: h(s), shape [S, d], copied per token; None gives an [N, 0] array.
        discount_mode: "geometric" or "truncate" (discounted setting only).

    Returns:
        The tokens.

    Raises:
        ValueError: If an argument is out of range.
    """
    p = check_probs(probs, mdp.n_states, mdp.n_actions)
    if n_trajectories < 1:
        raise ValueError(f"n_trajectories must be >= 1, got {n_trajectories}")
    if discount_mode not in DISCOUNT_MODES:
        raise ValueError(f"discount_mode must be one of {DISCOUNT_MODES}, got {discount_mode!r}")
    h = np.zeros((mdp.n_states, 0)) if features is None else np.asarray(features, np.float64)
    if h.ndim != 2 or h.shape[0] != mdp.n_states:
        raise ValueError(f"features must have shape [S, d] with S = {mdp.n_states}, got {h.shape}")
    finite = evaluation.setting == "finite"
    geometric = not finite and discount_mode == "geometric"
    n_steps = MAX_STEPS if geometric else mdp.horizon

    traj, times, states, actions = _rollouts(mdp, p, n_trajectories, rng, n_steps, geometric)
    A = time_advantages(evaluation)
    adv = A[times if finite else np.zeros_like(times), states, actions]
    discounts = np.ones(times.shape) if geometric else mdp.gamma ** times.astype(np.float64)
    return TokenSamples(
        states=states,
        times=times,
        actions=actions,
        features=h[states],
        probs=p[states],
        advantages=adv,
        discounts=discounts,
        trajectory_ids=traj,
        n_trajectories=n_trajectories,
    )
