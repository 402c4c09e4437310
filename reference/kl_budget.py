"""Dense twin of the KL budget (capo.kl_budget; an extension beyond the paper, docs/design.md §5).

For a linear-softmax policy π_W(·|s) = softmax(W h(s) / τ) over K actions with states weighted by w(s) (e.g.
a toy MDP's normalised visitation), a step Δ [K, d] of W has

- the exact average KL  D̄(Δ) = Σ_s w(s) KL(π_W(·|s) || π_{W+Δ}(·|s))  (what ``lookahead`` computes: for
  this policy every parameter is the last layer), and
- the quadratic model  KL̂(Δ) = ½ vec(Δ)ᵀ F̃_τ vec(Δ),  F̃_τ = Σ_s w(s) F(s) ⊗ h hᵀ / τ²  (eq 6 with the
  Fisher of eq 9 at temperature τ; what ``last_layer`` computes), a dense (K·d)×(K·d) matrix here.

The budget scales the step to s·Δ with s = min(1, sqrt(δ / KL̂)); D̄(sΔ) − s²·KL̂(Δ) = O(s³).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from reference._checks import as_float, check_rows
from reference.last_layer import expected_fisher

__all__ = ["budget_scale", "exact_kl", "quadratic_kl", "scaled_step", "tempered_probs"]


def tempered_probs(W: ArrayLike, h: ArrayLike, temperature: float = 1.0) -> NDArray[np.float64]:
    """π_W(·|s) = softmax(W h(s) / τ) for every state, shape [S, K]."""
    z = as_float("h", h, 2) @ as_float("W", W, 2).T / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def exact_kl(
    weights: ArrayLike, h: ArrayLike, W: ArrayLike, delta: ArrayLike, temperature: float = 1.0
) -> float:
    """D̄(Δ) = Σ_s w(s) KL(π_W(·|s) || π_{W+Δ}(·|s)), the KL of the step actually taken (eq 6 lhs).

    Args:
        weights: State weights w(s), shape [S] (a distribution for an average KL).
        h: Features h(s), shape [S, d].
        W: Weights, shape [K, d].
        delta: The step Δ, shape [K, d].
        temperature: The policy temperature τ.
    """
    w = as_float("weights", weights, 1)
    hh = as_float("h", h, 2)
    check_rows("h", hh, w.shape[0], "weights")
    WW, dd = as_float("W", W, 2), as_float("delta", delta, 2)
    if dd.shape != WW.shape:
        raise ValueError(f"delta has shape {dd.shape}, expected {WW.shape} like W")
    p = tempered_probs(WW, hh, temperature)
    q = tempered_probs(WW + dd, hh, temperature)
    return float(w @ (p * (np.log(p) - np.log(q))).sum(axis=1))


def quadratic_kl(
    weights: ArrayLike, h: ArrayLike, W: ArrayLike, delta: ArrayLike, temperature: float = 1.0
) -> float:
    """KL̂(Δ) = ½ vec(Δ)ᵀ F̃_τ vec(Δ) with the dense Fisher F̃_τ = Σ_s w(s) F(s) ⊗ h hᵀ / τ² (eqs 6, 9).

    Args:
        weights: State weights w(s), shape [S].
        h: Features h(s), shape [S, d].
        W: Weights, shape [K, d].
        delta: The step Δ, shape [K, d].
        temperature: The policy temperature τ.
    """
    hh = as_float("h", h, 2)
    probs = tempered_probs(W, hh, temperature)
    fisher = expected_fisher(weights, hh, probs) / temperature**2
    d = as_float("delta", delta, 2).reshape(-1)
    return float(0.5 * d @ fisher @ d)


def budget_scale(kl: float, budget: float) -> float:
    """The lr factor s = min(1, sqrt(δ / KL̂)); 0 for a non-finite KL̂."""
    if not math.isfinite(kl):
        return 0.0
    return 1.0 if kl <= budget else math.sqrt(budget / kl)


def scaled_step(
    weights: ArrayLike,
    h: ArrayLike,
    W: ArrayLike,
    delta: ArrayLike,
    budget: float,
    temperature: float = 1.0,
) -> tuple[float, float]:
    """(s, D̄(sΔ)): the scale the quadratic model gives for budget δ and the exact KL of the scaled step."""
    s = budget_scale(quadratic_kl(weights, h, W, delta, temperature), budget)
    return s, exact_kl(weights, h, W, s * as_float("delta", delta, 2), temperature)
