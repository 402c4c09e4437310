"""Exact dynamic-programming evaluation of a stationary policy on a finite MDP (NumPy float64).

Two settings:

- "finite" (paper App. K): T decision steps t = 0, ..., T−1, J = E[Σ_{t<T} γ^t R(s_t, a_t)] (γ = 1 in
  App. K), V_T = 0, time-dependent V_t, Q_t, A_t = Q_t − V_t and state marginals d_t(s) = Pr(s_t = s).
- "discounted" (paper App. E): V = (I − γ P_π)^{-1} r_π, Q = R + γ P V, A = Q − V, and the
  *unnormalised* discounted occupancy d_γ(s) = Σ_{t≥0} γ^t Pr(s_t = s) (total mass 1/(1 − γ)).

Weights. Every expectation E_τ[Σ_t γ^t f(s_t, a_t)] equals Σ_t Σ_s w_t(s) Σ_a π(a|s) f_t(s, a) with
w_t = γ^t d_t (finite) or w = d_γ (discounted): :func:`time_weights`, :func:`state_weights`. These are
the weights of the policy gradient (eq 2, 7), of the surrogate L_π(π') (Lemma E.1 / K.3, so that
∇L = ∇J at π' = π, eq 67) and of H̃ (eq 8). The average KL D̄_KL (eq 6) is an expectation under a
*probability* distribution: the same weights normalised to total mass 1 (:func:`kl_weights`), i.e.
(1 − γ) d_γ in the discounted setting (Achiam et al. 2017) and (1/T) Σ_t d_t in the finite one
(App. K eq 106: Σ_t E_{d_t} KL = T · D̄_KL).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from toy_mdps.mdp import PROB_ATOL, FiniteMDP, check_setting

Array = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Exact values of one policy. Shapes depend on ``setting``.

    Attributes:
        setting: "finite" or "discounted".
        gamma: The discount γ used.
        V: State values: [T+1, S] with V[T] = 0 (finite), or [S] (discounted).
        Q: Action values: [T, S, K] (finite) or [S, K] (discounted).
        A: Advantages Q − V: [T, S, K] (finite) or [S, K] (discounted).
        d: State marginals d_t, [T, S], each row sums to 1 (finite), or the unnormalised discounted
            occupancy d_γ = Σ_t γ^t Pr(s_t = ·), [S], sums to 1/(1 − γ) (discounted).
        J: The objective ρ0 · V_0 (finite) or ρ0 · V (discounted).
    """

    setting: str
    gamma: float
    V: Array
    Q: Array
    A: Array
    d: Array
    J: float


def check_probs(probs: Array, n_states: int, n_actions: int, name: str = "probs") -> Array:
    """Validate a policy table.

    Args:
        probs: π(a | s), shape [S, K].
        n_states: Expected S.
        n_actions: Expected K.
        name: Argument name used in the error message.

    Returns:
        ``probs`` as float64.

    Raises:
        ValueError: If the shape is wrong or a row is not a probability vector.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (n_states, n_actions):
        raise ValueError(f"{name} must have shape [S, K] = {(n_states, n_actions)}, got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"{name} must be finite and non-negative")
    if not np.allclose(p.sum(axis=1), 1.0, rtol=0.0, atol=PROB_ATOL):
        raise ValueError(f"{name} rows must sum to 1")
    return p


def policy_transitions(mdp: FiniteMDP, probs: Array) -> Array:
    """P_π(s' | s) = Σ_a π(a | s) P(s' | s, a) (App. K eq 93), shape [S, S]."""
    return np.einsum("sa,sat->st", probs, mdp.transitions)


def evaluate_finite_horizon(mdp: FiniteMDP, probs: Array) -> Evaluation:
    """Backward DP for V_t, Q_t, A_t and forward recursion d_{t+1} = d_t P_π (App. K).

    Args:
        mdp: The MDP; uses ``horizon`` T and ``gamma`` (1 in App. K).
        probs: Stationary policy π(a | s), shape [S, K].

    Returns:
        Evaluation with V [T+1, S], Q [T, S, K], A [T, S, K], d [T, S] (d_0 = ρ0), J = ρ0 · V_0.
    """
    p = check_probs(probs, mdp.n_states, mdp.n_actions)
    T, S, K = mdp.horizon, mdp.n_states, mdp.n_actions
    V = np.zeros((T + 1, S))
    Q = np.zeros((T, S, K))
    for t in range(T - 1, -1, -1):
        Q[t] = mdp.rewards + mdp.gamma * mdp.transitions @ V[t + 1]
        V[t] = np.einsum("sa,sa->s", p, Q[t])
    P_pi = policy_transitions(mdp, p)
    d = np.zeros((T, S))
    d[0] = mdp.rho0
    for t in range(1, T):
        d[t] = d[t - 1] @ P_pi
    A = Q - V[:T, :, None]
    return Evaluation("finite", mdp.gamma, V, Q, A, d, float(mdp.rho0 @ V[0]))


def evaluate_discounted(mdp: FiniteMDP, probs: Array) -> Evaluation:
    """Linear solves V = (I − γ P_π)^{-1} r_π and d_γ = ρ0ᵀ (I − γ P_π)^{-1} (App. E).

    Args:
        mdp: The MDP; needs ``gamma`` < 1 (``horizon`` is ignored).
        probs: Stationary policy π(a | s), shape [S, K].

    Returns:
        Evaluation with V [S], Q [S, K], A [S, K], unnormalised d_γ [S] (mass 1/(1 − γ)), J = ρ0 · V.

    Raises:
        ValueError: If gamma is 1.
    """
    if not mdp.gamma < 1.0:
        raise ValueError(f"gamma must be < 1 in the discounted setting, got {mdp.gamma}")
    p = check_probs(probs, mdp.n_states, mdp.n_actions)
    M = np.eye(mdp.n_states) - mdp.gamma * policy_transitions(mdp, p)
    r_pi = np.einsum("sa,sa->s", p, mdp.rewards)
    V = np.linalg.solve(M, r_pi)
    Q = mdp.rewards + mdp.gamma * mdp.transitions @ V
    d = np.linalg.solve(M.T, mdp.rho0)
    A = Q - V[:, None]
    return Evaluation("discounted", mdp.gamma, V, Q, A, d, float(mdp.rho0 @ V))


def evaluate(mdp: FiniteMDP, probs: Array, setting: str) -> Evaluation:
    """Dispatch to :func:`evaluate_finite_horizon` or :func:`evaluate_discounted`.

    Args:
        mdp: The MDP.
        probs: Stationary policy π(a | s), shape [S, K].
        setting: "finite" or "discounted".

    Returns:
        The exact evaluation.
    """
    check_setting(setting)
    if setting == "finite":
        return evaluate_finite_horizon(mdp, probs)
    return evaluate_discounted(mdp, probs)


def time_weights(evaluation: Evaluation) -> Array:
    """Per-(time, state) weights w_t(s) of E_τ[Σ_t γ^t f(s_t, a_t)].

    Args:
        evaluation: An exact evaluation.

    Returns:
        γ^t d_t(s), shape [T, S] (finite), or d_γ(s) as shape [1, S] (discounted).
    """
    if evaluation.setting == "finite":
        T = evaluation.d.shape[0]
        return (evaluation.gamma ** np.arange(T))[:, None] * evaluation.d
    return evaluation.d[None, :]


def time_advantages(evaluation: Evaluation) -> Array:
    """Advantages with a time axis matching :func:`time_weights`: [T, S, K] or [1, S, K]."""
    return evaluation.A if evaluation.setting == "finite" else evaluation.A[None]


def state_weights(evaluation: Evaluation) -> Array:
    """Per-state weight w(s) = Σ_t γ^t Pr(s_t = s) of E_τ[Σ_t γ^t f(s_t, a_t)] for f independent of t.

    Mass T (finite, γ = 1) or 1/(1 − γ) (discounted). Exact for time-dependent f (such as A_t) only when
    every state is visited at a single time, as in token MDPs; otherwise use :func:`flat_time_states`.

    Args:
        evaluation: An exact evaluation.

    Returns:
        Weights, shape [S].
    """
    return time_weights(evaluation).sum(axis=0)


def kl_weights(evaluation: Evaluation) -> Array:
    """State distribution of the average KL D̄_KL (eq 6): :func:`state_weights` normalised to sum 1.

    Discounted: (1 − γ) d_γ (Achiam et al. 2017). Finite, γ = 1: (1/T) Σ_t d_t (App. K eq 106).

    Args:
        evaluation: An exact evaluation.

    Returns:
        Probabilities, shape [S].
    """
    w = state_weights(evaluation)
    return w / w.sum()


@dataclass(frozen=True, eq=False)
class FlatTimeStates:
    """The (t, s) pairs of an evaluation as M flat rows, ready for dense reference sums Σ_m w_m f_m.

    Row m = t * S + s (finite, M = T·S) or m = s (discounted, M = S, times all 0).

    Attributes:
        weights: w_t(s) = γ^t d_t(s) or d_γ(s), shape [M].
        times: t, shape [M].
        states: s, shape [M].
        features: h(s), shape [M, d].
        probs: π(· | s), shape [M, K].
        advantages: A_t(s, ·), shape [M, K].
    """

    weights: Array
    times: NDArray[np.int64]
    states: NDArray[np.int64]
    features: Array
    probs: Array
    advantages: Array


def flat_time_states(evaluation: Evaluation, features: Array, probs: Array) -> FlatTimeStates:
    """Flatten the (t, s) pairs with their weight, features, probabilities and advantages.

    Args:
        evaluation: An exact evaluation of ``probs``.
        features: h(s), shape [S, d].
        probs: π(a | s), shape [S, K].

    Returns:
        The flat rows (see :class:`FlatTimeStates`).
    """
    w = time_weights(evaluation)
    n_t, S = w.shape
    times, states = np.divmod(np.arange(n_t * S, dtype=np.int64), S)
    return FlatTimeStates(
        weights=w.reshape(-1),
        times=times,
        states=states,
        features=np.asarray(features, dtype=np.float64)[states],
        probs=np.asarray(probs, dtype=np.float64)[states],
        advantages=time_advantages(evaluation).reshape(n_t * S, -1),
    )


def surrogate_objective(evaluation: Evaluation, probs_new: Array) -> float:
    """L_π(π') = J(π) + Σ_t Σ_s w_t(s) Σ_a π'(a | s) A_{π,t}(s, a) (Lemma E.1 eq 65, Lemma K.3).

    Args:
        evaluation: Exact evaluation of the old policy π.
        probs_new: π'(a | s), shape [S, K].

    Returns:
        The surrogate value.
    """
    q = np.asarray(probs_new, dtype=np.float64)
    gain = np.einsum("ts,tsa,sa->", time_weights(evaluation), time_advantages(evaluation), q)
    return float(evaluation.J + gain)


def kl_rows(p: Array, q: Array) -> Array:
    """KL(p(· | s) ‖ q(· | s)) per row with 0 log 0 = 0 (inf where q = 0 < p), shape [S]."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    return terms.sum(axis=1)


def average_kl(evaluation: Evaluation, probs_old: Array, probs_new: Array) -> float:
    """D̄_KL(π ‖ π') = Σ_s kl_weights(s) KL(π(· | s) ‖ π'(· | s)) (eq 6, Lemma E.1, App. K).

    Args:
        evaluation: Exact evaluation of the old policy π (gives the state distribution).
        probs_old: π(a | s), shape [S, K].
        probs_new: π'(a | s), shape [S, K].

    Returns:
        The average forward KL under the normalised state distribution of π: +inf if π' puts no mass
        on an action that π may take in a visited state; unvisited states contribute 0.
    """
    nu = kl_weights(evaluation)
    visited = nu > 0
    return float(nu[visited] @ kl_rows(probs_old, probs_new)[visited])
