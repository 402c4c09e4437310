"""Constants of CAPO's monotonic-improvement guarantee (Theorem 5.1, App. E and K)."""

from __future__ import annotations

import math

__all__ = ["discounted_constant", "finite_horizon_constant", "hessian_threshold"]


def discounted_constant(gamma: float, eps: float) -> float:
    """Surrogate-gap constant of the discounted setting, C = 2√2 γ ε / (1 − γ)² (eqs 13, 65).

    Args:
        gamma: Discount γ in [0, 1).
        eps: Advantage bound ε = max |A(s, a)| ≥ 0.

    Returns:
        C.
    """
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must lie in [0, 1), got {gamma}")
    if eps < 0.0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    return 2.0 * math.sqrt(2.0) * gamma * eps / (1.0 - gamma) ** 2


def finite_horizon_constant(T: int, eps: float) -> float:
    """Surrogate-gap constant of the undiscounted finite horizon, C = T √((T−1)(2T−1)/3) ε (eq 100).

    The matching KL is the time-average (1/T) Σ_t E_{s∼d_t} KL(π(·|s) ‖ π'(·|s)) (eq 106).

    Args:
        T: Horizon T ≥ 1.
        eps: Advantage bound ε = max |A(s, a)| ≥ 0.

    Returns:
        C.
    """
    if T < 1:
        raise ValueError(f"T must be at least 1, got {T}")
    if eps < 0.0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    return T * math.sqrt((T - 1) * (2 * T - 1) / 3.0) * eps


def hessian_threshold(omega: float, M: float, r: float) -> float:
    """Lower Hessian threshold of Theorem 5.1, δ_H = ω + ½ M r² (eqs 12, 69).

    Note: the printed proof (eqs 79-80) needs m_H(Δθ_i) ≥ ω + M r²; with ½ M r² its bound only gives
    m_H(Δθ) ≥ ω + M r² (1/B − ½). The threshold is nevertheless sufficient: the exact identity
    mean_i m_H(Δθ_i) − m_H(Δθ) = ½ (1/B) Σ_i (Δθ_i − Δθ)ᵀ H (Δθ_i − Δθ) gives
    m_H(Δθ) ≥ ω + ½ M ‖Δθ‖² ≥ ω, and ½ is the smallest coefficient that works (checked
    adversarially in ``python -m verification theorems``).

    Args:
        omega: The guaranteed improvement margin ω > 0.
        M: Hessian operator-norm bound M ≥ 0 (Assumption E.1 (i)).
        r: Step-norm bound r ≥ 0 (Assumption E.1 (ii)).

    Returns:
        δ_H.
    """
    if M < 0.0 or r < 0.0:
        raise ValueError(f"M and r must be non-negative, got M={M}, r={r}")
    return omega + 0.5 * M * r**2
