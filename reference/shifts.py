"""CAPO's predicted shifts per subset of a partition from the full matrices, and acceptance (eq 11).

This is the dense twin of ``capo.directional_shifts`` and ``capo.select``.

For each subset b with n_b tokens: g_b = (1/n_b) Σ_{i∈b} A_i (e_{a_i} − π_i) ⊗ h_i (reshaped [K, d]),
Δ_b = step.propose(g_b), and from the sample matrices H̃_b, F̃_b over the tokens of b (eqs 8, 9):

    m_H(b) = g_bᵀΔ_b + ½ Δ_bᵀ H̃_b Δ_b,    m_F(b) = ½ Δ_bᵀ F̃_b Δ_b        (eq 10)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from reference._checks import as_actions, as_float, as_probs, check_rows
from reference.curvature import m_F as _m_F
from reference.curvature import m_H as _m_H
from reference.last_layer import sample_fisher, sample_gradient, sample_hessian
from reference.steps import StepModel

__all__ = ["accept", "subset_ids", "subset_shifts"]


def subset_ids(subsets: ArrayLike | None, n: int) -> NDArray[np.int64]:
    """Validate a partition of n tokens and return its ids, shape [N].

    Args:
        subsets: Subset id per token, shape [N], using every id in 0..S-1; None means each token alone.
        n: The number of tokens N.

    Returns:
        The subset ids, shape [N] (``arange(N)`` for None).

    Raises:
        ValueError: If the shape is wrong, an id is negative or not an integer, or an id in 0..S-1 is
            unused (an empty subset has no mean gradient).
    """
    if subsets is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(subsets)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"subsets must have shape [{n}], got {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"subsets must hold integer ids, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if np.any(ids < 0):
        raise ValueError("subsets must hold non-negative ids")
    if ids.size and np.unique(ids).size != int(ids.max()) + 1:
        raise ValueError(f"subsets must use every id 0..S-1 (S = {int(ids.max()) + 1})")
    return ids


def subset_shifts(
    h: ArrayLike,
    probs: ArrayLike,
    actions: ArrayLike,
    advantages: ArrayLike,
    step: StepModel,
    subsets: ArrayLike | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Predicted objective and policy shifts (m_H, m_F) of each subset's proposed step (eqs 10, 57-63).

    Args:
        h: Features h_i, shape [N, d].
        probs: π_i as full K-vectors (zeros outside a top-k support), shape [N, K].
        actions: a_i, shape [N].
        advantages: A_i, shape [N].
        step: A step model with ``propose(g [K, d]) -> Δ [K, d]`` (e.g. DenseSGDStep, DenseAdamStep).
        subsets: Subset id per token, shape [N], ids 0..S-1 all used; None means each token alone (S = N).

    Returns:
        (m_H, m_F), each of shape [S], ordered by subset id.
    """
    hh = as_float("h", h, 2)
    pp = as_probs("probs", probs, 2)
    check_rows("probs", pp, hh.shape[0], "h")
    n, d = hh.shape
    k = pp.shape[1]
    aa = as_actions("actions", actions, n, k)
    adv = as_float("advantages", advantages, 1)
    check_rows("advantages", adv, n, "h")
    ids = subset_ids(subsets, n)
    if not callable(getattr(step, "propose", None)):
        raise ValueError(f"step must have a propose(g) method, got {type(step).__name__}")
    s_count = int(ids.max()) + 1 if n else 0
    out_h = np.zeros(s_count)
    out_f = np.zeros(s_count)
    for b in range(s_count):
        sel = ids == b
        g = sample_gradient(hh[sel], pp[sel], aa[sel], adv[sel])
        delta = np.asarray(step.propose(g.reshape(k, d)), dtype=np.float64).reshape(k * d)
        out_h[b] = _m_H(g, sample_hessian(hh[sel], pp[sel], aa[sel], adv[sel]), delta)
        out_f[b] = _m_F(sample_fisher(hh[sel], pp[sel], aa[sel]), delta)
    return out_h, out_f


def accept(
    m_H: ArrayLike,
    m_F: ArrayLike,
    hessian_low: float | None,
    hessian_high: float | None,
    fisher_max: float | None,
) -> NDArray[np.bool_]:
    """Acceptance test (eq 11): hessian_low < m_H < hessian_high and m_F < fisher_max.

    The inequalities are strict (docs/design.md §2; the paper writes ≤); a bound given as None is not applied.
    A NaN shift is never accepted by an applied bound.

    Args:
        m_H: Predicted objective shifts, shape [S].
        m_F: Predicted policy shifts, shape [S].
        hessian_low: Lower bound δ_H on m_H, or None.
        hessian_high: Upper bound δ_H^high on m_H, or None.
        fisher_max: Upper bound δ_F on m_F, or None.

    Returns:
        Keep mask, bool of shape [S].
    """
    mh = np.asarray(m_H, dtype=np.float64)
    mf = np.asarray(m_F, dtype=np.float64)
    if mh.ndim != 1:
        raise ValueError(f"m_H must have shape [S], got {mh.shape}")
    if mf.shape != mh.shape:
        raise ValueError(f"m_F has shape {mf.shape}, expected {mh.shape} like m_H")
    keep = np.ones(mh.shape, dtype=bool)
    if hessian_low is not None:
        keep &= mh > hessian_low
    if hessian_high is not None:
        keep &= mh < hessian_high
    if fisher_max is not None:
        keep &= mf < fisher_max
    return keep
