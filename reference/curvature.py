"""Directional curvatures and the quadratic models m_H, m_F from full (K·d)×(K·d) matrices.

A direction Δ is accepted either as ψ-vector [K*d] or as a matrix U = unvec(Δ) [K, d] (row-major vec).
The trace forms of App. D (eqs 58, 63) are given too, so the two routes can be compared.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from reference._checks import as_actions, as_float, as_probs, check_rows

__all__ = [
    "directional",
    "directional_fisher_trace",
    "directional_hessian_trace",
    "m_F",
    "m_H",
]


def _vector(name: str, delta: ArrayLike, size: int) -> NDArray[np.float64]:
    """Return ``delta`` (shape [size] or [K, d] with K*d = size) as a flat float64 vector."""
    arr = np.asarray(delta, dtype=np.float64)
    if arr.size != size or arr.ndim not in (1, 2):
        raise ValueError(
            f"{name} must have {size} entries as [K*d] or [K, d], got shape {arr.shape}"
        )
    return arr.reshape(size)


def _matrix(name: str, c: ArrayLike) -> NDArray[np.float64]:
    """Return ``c`` as a square float64 matrix."""
    arr = as_float(name, c, 2)
    if arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be square, got shape {arr.shape}")
    return arr


def directional(c: ArrayLike, delta: ArrayLike) -> float:
    """Directional curvature Δᵀ C Δ (eqs 55, 60).

    Args:
        c: A curvature matrix C (H̃ or F̃), shape [K*d, K*d].
        delta: The direction Δ, shape [K*d] or [K, d].

    Returns:
        Δᵀ C Δ.
    """
    cm = _matrix("c", c)
    dv = _vector("delta", delta, cm.shape[0])
    return float(dv @ cm @ dv)


def m_H(g: ArrayLike, hessian: ArrayLike, delta: ArrayLike) -> float:
    """Predicted objective shift of a step Δ, gᵀΔ + ½ ΔᵀH̃Δ (eq 10).

    Args:
        g: The gradient g̃, shape [K*d] or [K, d].
        hessian: H̃, shape [K*d, K*d].
        delta: The step Δ, shape [K*d] or [K, d].

    Returns:
        m_H.
    """
    hm = _matrix("hessian", hessian)
    gv = _vector("g", g, hm.shape[0])
    dv = _vector("delta", delta, hm.shape[0])
    return float(gv @ dv + 0.5 * (dv @ hm @ dv))


def m_F(fisher: ArrayLike, delta: ArrayLike) -> float:
    """Predicted policy shift of a step Δ, ½ ΔᵀF̃Δ (eq 10): the quadratic model of the mean KL (eq 6).

    Args:
        fisher: F̃, shape [K*d, K*d].
        delta: The step Δ, shape [K*d] or [K, d].

    Returns:
        m_F.
    """
    return 0.5 * directional(fisher, delta)


def _trace_inputs(
    h: ArrayLike, probs: ArrayLike, actions: ArrayLike, u_mat: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Validate samples and return (u [N, K], v [N, K], probs [N, K]) with v_i = U h_i."""
    hh = as_float("h", h, 2)
    pp = as_probs("probs", probs, 2)
    check_rows("probs", pp, hh.shape[0], "h")
    aa = as_actions("actions", actions, hh.shape[0], pp.shape[1])
    um = as_float("u_mat", u_mat, 2)
    if um.shape != (pp.shape[1], hh.shape[1]):
        raise ValueError(
            f"u_mat must have shape [K, d] = {(pp.shape[1], hh.shape[1])}, got {um.shape}"
        )
    u = -pp.copy()
    u[np.arange(hh.shape[0]), aa] += 1.0
    return u, hh @ um.T, pp


def directional_fisher_trace(
    h: ArrayLike, probs: ArrayLike, actions: ArrayLike, u_mat: ArrayLike
) -> float:
    """Trace form of ΔᵀF̃Δ, (1/N) Σ_i (u_iᵀ U h_i)² (eqs 56-58), never building F̃.

    Args:
        h: Features h_i, shape [N, d].
        probs: π_i, shape [N, K].
        actions: a_i, shape [N].
        u_mat: U = unvec(Δ), shape [K, d].

    Returns:
        The directional Fisher curvature.
    """
    u, v, _ = _trace_inputs(h, probs, actions, u_mat)
    return float(np.mean(np.sum(u * v, axis=1) ** 2))


def directional_hessian_trace(
    h: ArrayLike, probs: ArrayLike, actions: ArrayLike, advantages: ArrayLike, u_mat: ArrayLike
) -> float:
    """Trace form of ΔᵀH̃Δ, (1/N) Σ_i A_i [(u_iᵀ v_i)² − v_iᵀ F_i v_i], v_i = U h_i (eqs 61-63).

    v_iᵀ F_i v_i = Σ_a π_a v_a² − (πᵀv)², so F_i is never built.

    Args:
        h: Features h_i, shape [N, d].
        probs: π_i, shape [N, K].
        actions: a_i, shape [N].
        advantages: A_i, shape [N].
        u_mat: U = unvec(Δ), shape [K, d].

    Returns:
        The directional Hessian curvature.
    """
    u, v, p = _trace_inputs(h, probs, actions, u_mat)
    adv = as_float("advantages", advantages, 1)
    check_rows("advantages", adv, u.shape[0], "h")
    vfv = np.sum(p * v**2, axis=1) - np.sum(p * v, axis=1) ** 2
    return float(np.mean(adv * (np.sum(u * v, axis=1) ** 2 - vfv)))
