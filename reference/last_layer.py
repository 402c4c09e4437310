"""Last-layer score, gradient, Hessian and Fisher of a linear-softmax policy as dense float64 arrays.

The policy is π(·|s) = softmax(W h(s)) with W [K, d]; ψ = vec(W) is W flattened row-major, so the paper's
Kronecker product (e_a − π) ⊗ h is ``np.outer(e_a - π, h).ravel()`` and the (K·d)×(K·d) matrices are built
with ``np.kron``. A top-k truncated policy is given as a full K-vector with zeros outside its support.

Two families:

* sample estimators over N state-action samples (h_i, π_i, a_i, A_i) — the 1/N average of eqs 7-9;
* exact expectations Σ_s w(s) Σ_a π(a|s) [...] over an explicit state distribution w.

A time-dependent advantage A_t(s, a) (finite horizon) is handled by flattening the (t, s) pairs into
"states": row (t, s) gets weight d_t(s), features h(s), probabilities π(·|s) and advantages A_t(s, ·).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from reference._checks import as_actions, as_float, as_probs, check_rows

__all__ = [
    "expected_fisher",
    "expected_gradient",
    "expected_hessian",
    "sample_fisher",
    "sample_gradient",
    "sample_hessian",
    "score",
    "state_fisher",
]


def state_fisher(probs: ArrayLike) -> NDArray[np.float64]:
    """Per-state Fisher of the softmax w.r.t. its logits, F(s) = diag(π) − π πᵀ (eq 44).

    Args:
        probs: π(·|s), shape [K].

    Returns:
        F(s), shape [K, K].
    """
    p = as_probs("probs", probs, 1)
    return np.diag(p) - np.outer(p, p)


def score(h: ArrayLike, probs: ArrayLike, action: int) -> NDArray[np.float64]:
    """Score ∇_ψ log π(a|s) = (e_a − π) ⊗ h (eq 45).

    Args:
        h: Features h(s), shape [d].
        probs: π(·|s), shape [K].
        action: The action a, an id in [0, K).

    Returns:
        The score, shape [K*d].
    """
    hv = as_float("h", h, 1)
    p = as_probs("probs", probs, 1)
    a = as_actions("action", [action], 1, p.shape[0])[0]
    u = -p.copy()
    u[a] += 1.0
    return np.kron(u, hv)


def _samples(
    h: ArrayLike, probs: ArrayLike, actions: ArrayLike, advantages: ArrayLike | None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.int64], NDArray[np.float64]]:
    """Validate N samples and return (h [N, d], probs [N, K], actions [N], advantages [N])."""
    hh = as_float("h", h, 2)
    pp = as_probs("probs", probs, 2)
    check_rows("probs", pp, hh.shape[0], "h")
    n = hh.shape[0]
    if n == 0:
        raise ValueError("h must hold at least one sample, got shape (0, d)")
    aa = as_actions("actions", actions, n, pp.shape[1])
    if advantages is None:
        adv = np.ones(n)
    else:
        adv = as_float("advantages", advantages, 1)
        check_rows("advantages", adv, n, "h")
    return hh, pp, aa, adv


def sample_gradient(
    h: ArrayLike, probs: ArrayLike, actions: ArrayLike, advantages: ArrayLike
) -> NDArray[np.float64]:
    """Sample estimate of the last-layer policy gradient, (1/N) Σ_i A_i (e_{a_i} − π_i) ⊗ h_i (eq 7).

    Args:
        h: Features h_i, shape [N, d].
        probs: π_i, shape [N, K].
        actions: a_i, shape [N].
        advantages: A_i, shape [N].

    Returns:
        g̃, shape [K*d].
    """
    hh, pp, aa, adv = _samples(h, probs, actions, advantages)
    total = np.zeros(pp.shape[1] * hh.shape[1])
    for i in range(hh.shape[0]):
        total += adv[i] * score(hh[i], pp[i], int(aa[i]))
    return total / hh.shape[0]


def sample_hessian(
    h: ArrayLike, probs: ArrayLike, actions: ArrayLike, advantages: ArrayLike
) -> NDArray[np.float64]:
    """Sample estimate of the last-layer Hessian (eqs 8, 44, 63).

    H̃ = (1/N) Σ_i A_i [(u_i u_iᵀ − F_i) ⊗ h_i h_iᵀ], u_i = e_{a_i} − π_i, F_i = diag(π_i) − π_i π_iᵀ.

    Args:
        h: Features h_i, shape [N, d].
        probs: π_i, shape [N, K].
        actions: a_i, shape [N].
        advantages: A_i, shape [N].

    Returns:
        H̃, shape [K*d, K*d] (symmetric).
    """
    hh, pp, aa, adv = _samples(h, probs, actions, advantages)
    kd = pp.shape[1] * hh.shape[1]
    total = np.zeros((kd, kd))
    for i in range(hh.shape[0]):
        u = -pp[i].copy()
        u[aa[i]] += 1.0
        total += adv[i] * np.kron(np.outer(u, u) - state_fisher(pp[i]), np.outer(hh[i], hh[i]))
    return total / hh.shape[0]


def sample_fisher(h: ArrayLike, probs: ArrayLike, actions: ArrayLike) -> NDArray[np.float64]:
    """Sample estimate of the last-layer Fisher, (1/N) Σ_i (u_i u_iᵀ) ⊗ h_i h_iᵀ (eqs 9, 51, 58).

    Args:
        h: Features h_i, shape [N, d].
        probs: π_i, shape [N, K].
        actions: a_i, shape [N].

    Returns:
        F̃, shape [K*d, K*d] (symmetric positive semi-definite).
    """
    hh, pp, aa, _ = _samples(h, probs, actions, None)
    kd = pp.shape[1] * hh.shape[1]
    total = np.zeros((kd, kd))
    for i in range(hh.shape[0]):
        s = score(hh[i], pp[i], int(aa[i]))
        total += np.outer(s, s)
    return total / hh.shape[0]


def _states(
    weights: ArrayLike, h: ArrayLike, probs: ArrayLike, adv: ArrayLike | None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Validate a state distribution and return (weights [S], h [S, d], probs [S, K], adv [S, K])."""
    w = as_float("weights", weights, 1)
    hh = as_float("h", h, 2)
    pp = as_probs("probs", probs, 2)
    check_rows("h", hh, w.shape[0], "weights")
    check_rows("probs", pp, w.shape[0], "weights")
    if adv is None:
        aa = np.zeros_like(pp)
    else:
        aa = as_float("adv", adv, 2)
        if aa.shape != pp.shape:
            raise ValueError(f"adv has shape {aa.shape}, expected {pp.shape} like probs")
    return w, hh, pp, aa


def expected_gradient(
    weights: ArrayLike, h: ArrayLike, probs: ArrayLike, adv: ArrayLike
) -> NDArray[np.float64]:
    """Exact last-layer gradient, Σ_s w(s) Σ_a π(a|s) A(s, a) (e_a − π(s)) ⊗ h(s) (eqs 7, 31).

    Args:
        weights: State weights w(s) (e.g. the discounted or per-step visitation d(s)), shape [S].
        h: Features h(s), shape [S, d].
        probs: π(·|s), shape [S, K].
        adv: Advantages A(s, a), shape [S, K].

    Returns:
        g̃, shape [K*d].
    """
    w, hh, pp, aa = _states(weights, h, probs, adv)
    total = np.zeros(pp.shape[1] * hh.shape[1])
    for s in range(w.shape[0]):
        for a in range(pp.shape[1]):
            total += w[s] * pp[s, a] * aa[s, a] * score(hh[s], pp[s], a)
    return total


def expected_hessian(
    weights: ArrayLike, h: ArrayLike, probs: ArrayLike, adv: ArrayLike
) -> NDArray[np.float64]:
    """Exact last-layer Hessian, Σ_s w(s) Σ_a π(a|s) A(s, a) [(u u^T − F(s)) ⊗ h hᵀ] (eqs 8, 44).

    With the advantages A = A_{π_old} held fixed, this is the Hessian of the surrogate
    L(W) = Σ_s w(s) Σ_a π_W(a|s) A(s, a) at W = W_old (Lemma C.1), not the Hessian of J.

    Args:
        weights: State weights w(s), shape [S].
        h: Features h(s), shape [S, d].
        probs: π(·|s), shape [S, K].
        adv: Advantages A(s, a), shape [S, K].

    Returns:
        H̃, shape [K*d, K*d].
    """
    w, hh, pp, aa = _states(weights, h, probs, adv)
    kd = pp.shape[1] * hh.shape[1]
    total = np.zeros((kd, kd))
    for s in range(w.shape[0]):
        hht = np.outer(hh[s], hh[s])
        fs = state_fisher(pp[s])
        for a in range(pp.shape[1]):
            u = -pp[s].copy()
            u[a] += 1.0
            total += w[s] * pp[s, a] * aa[s, a] * np.kron(np.outer(u, u) - fs, hht)
    return total


def expected_fisher(weights: ArrayLike, h: ArrayLike, probs: ArrayLike) -> NDArray[np.float64]:
    """Exact last-layer Fisher, Σ_s w(s) Σ_a π(a|s) (u uᵀ) ⊗ h hᵀ = Σ_s w(s) F(s) ⊗ h hᵀ (eqs 9, 51).

    Args:
        weights: State weights w(s), shape [S].
        h: Features h(s), shape [S, d].
        probs: π(·|s), shape [S, K].

    Returns:
        F̃, shape [K*d, K*d].
    """
    w, hh, pp, _ = _states(weights, h, probs, None)
    kd = pp.shape[1] * hh.shape[1]
    total = np.zeros((kd, kd))
    for s in range(w.shape[0]):
        for a in range(pp.shape[1]):
            sc = score(hh[s], pp[s], a)
            total += w[s] * pp[s, a] * np.outer(sc, sc)
    return total
