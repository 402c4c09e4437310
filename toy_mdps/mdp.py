"""Finite MDPs as validated NumPy arrays, and seeded random constructors.

Letters follow the paper: S states, K actions, T horizon, γ discount (paper §3 and App. K).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

PROB_ATOL = 1e-9
"""How far a probability row may be from summing to one before it is rejected."""

SETTINGS = ("finite", "discounted")
"""The two evaluation settings: finite-horizon (App. K) and discounted infinite-horizon (App. E)."""


def check_setting(setting: str) -> None:
    """Raise a ValueError unless ``setting`` is "finite" or "discounted".

    Args:
        setting: The evaluation setting to check.

    Raises:
        ValueError: If ``setting`` is not one of :data:`SETTINGS`.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")


def _readonly(x: NDArray[np.float64]) -> NDArray[np.float64]:
    x = np.array(x, dtype=np.float64, copy=True)
    x.setflags(write=False)
    return x


@dataclass(frozen=True, eq=False)
class FiniteMDP:
    """A finite MDP (S, A, P, R, ρ0, γ, T) of the paper's §3, stored as float64 arrays.

    Convention for the horizon (paper App. K, eq 84): an episode has T decision steps t = 0, ..., T−1,
    J = E[Σ_{t=0}^{T−1} γ^t R(s_t, a_t)], and the state s_T reached after the last action has value 0.
    The discounted infinite-horizon setting (App. E) ignores ``horizon`` except for truncated sampling.

    Attributes:
        transitions: P(s' | s, a), shape [S, K, S]; every row P[s, a] sums to 1.
        rewards: R(s, a), shape [S, K], finite.
        rho0: Initial state distribution ρ0, shape [S], sums to 1.
        horizon: T ≥ 1, the number of decision steps of an episode.
        gamma: Discount γ in [0, 1] (1 for the undiscounted finite-horizon setting of App. K).
    """

    transitions: NDArray[np.float64]
    rewards: NDArray[np.float64]
    rho0: NDArray[np.float64]
    horizon: int
    gamma: float = 1.0

    def __post_init__(self) -> None:
        """Validate shapes and probabilities; store read-only float64 copies."""
        P = np.asarray(self.transitions, dtype=np.float64)
        R = np.asarray(self.rewards, dtype=np.float64)
        rho0 = np.asarray(self.rho0, dtype=np.float64)
        if P.ndim != 3 or P.shape[0] != P.shape[2] or P.shape[0] < 1 or P.shape[1] < 1:
            raise ValueError(f"transitions must have shape [S, K, S], got {P.shape}")
        S, K = P.shape[0], P.shape[1]
        if not np.all(np.isfinite(P)) or np.any(P < 0):
            raise ValueError("transitions must be finite and non-negative")
        if not np.allclose(P.sum(axis=2), 1.0, rtol=0.0, atol=PROB_ATOL):
            raise ValueError("transitions rows P[s, a, :] must sum to 1")
        if R.shape != (S, K):
            raise ValueError(f"rewards must have shape [S, K] = {(S, K)}, got {R.shape}")
        if not np.all(np.isfinite(R)):
            raise ValueError("rewards must be finite")
        if rho0.shape != (S,):
            raise ValueError(f"rho0 must have shape [S] = {(S,)}, got {rho0.shape}")
        if not np.all(np.isfinite(rho0)) or np.any(rho0 < 0) or abs(rho0.sum() - 1.0) > PROB_ATOL:
            raise ValueError("rho0 must be a probability vector (non-negative, sums to 1)")
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int | np.integer):
            raise ValueError(f"horizon must be an int, got {type(self.horizon).__name__}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if not 0.0 <= float(self.gamma) <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {self.gamma}")
        object.__setattr__(self, "transitions", _readonly(P))
        object.__setattr__(self, "rewards", _readonly(R))
        object.__setattr__(self, "rho0", _readonly(rho0))
        object.__setattr__(self, "horizon", int(self.horizon))
        object.__setattr__(self, "gamma", float(self.gamma))

    @property
    def n_states(self) -> int:
        """S, the number of states."""
        return int(self.transitions.shape[0])

    @property
    def n_actions(self) -> int:
        """K, the number of actions."""
        return int(self.transitions.shape[1])


def random_mdp(
    n_states: int,
    n_actions: int,
    horizon: int,
    gamma: float = 1.0,
    seed: int = 0,
    concentration: float = 0.5,
    reward_scale: float = 1.0,
) -> FiniteMDP:
    """Draw a random dense MDP.

    P[s, a] ~ Dirichlet(concentration), R ~ N(0, reward_scale²), ρ0 ~ Dirichlet(1).

    Args:
        n_states: S ≥ 1.
        n_actions: K ≥ 1.
        horizon: T ≥ 1, decision steps per episode.
        gamma: Discount in [0, 1].
        seed: Seed of the NumPy generator.
        concentration: Dirichlet concentration of the transition rows (small = peaked).
        reward_scale: Standard deviation of the rewards.

    Returns:
        The random MDP.

    Raises:
        ValueError: If a size or the concentration is not positive.
    """
    if n_states < 1:
        raise ValueError(f"n_states must be >= 1, got {n_states}")
    if n_actions < 1:
        raise ValueError(f"n_actions must be >= 1, got {n_actions}")
    if concentration <= 0:
        raise ValueError(f"concentration must be > 0, got {concentration}")
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(n_states, concentration), size=(n_states, n_actions))
    R = reward_scale * rng.standard_normal((n_states, n_actions))
    rho0 = rng.dirichlet(np.ones(n_states))
    return FiniteMDP(P, R, rho0, horizon=horizon, gamma=gamma)


def contextual_bandit(
    n_contexts: int, n_arms: int, seed: int = 0, reward_scale: float = 1.0
) -> FiniteMDP:
    """A contextual bandit: T = 1, uniform contexts, K arms, Gaussian rewards R ~ N(0, scale²).

    Each context is absorbing (P[s, a, s] = 1), which is irrelevant for T = 1.

    Args:
        n_contexts: Number of contexts (states) S ≥ 1.
        n_arms: Number of arms K ≥ 1.
        seed: Seed of the NumPy generator.
        reward_scale: Standard deviation of the rewards.

    Returns:
        The bandit as a finite-horizon MDP with horizon 1 and gamma 1.

    Raises:
        ValueError: If a size is not positive.
    """
    if n_contexts < 1:
        raise ValueError(f"n_contexts must be >= 1, got {n_contexts}")
    if n_arms < 1:
        raise ValueError(f"n_arms must be >= 1, got {n_arms}")
    rng = np.random.default_rng(seed)
    P = np.zeros((n_contexts, n_arms, n_contexts))
    P[np.arange(n_contexts), :, np.arange(n_contexts)] = 1.0
    R = reward_scale * rng.standard_normal((n_contexts, n_arms))
    rho0 = np.full(n_contexts, 1.0 / n_contexts)
    return FiniteMDP(P, R, rho0, horizon=1, gamma=1.0)
