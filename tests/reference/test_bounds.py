"""Monotonic-improvement constants (eqs 12, 13/65, 100) against closed forms written here."""

from __future__ import annotations

import math

import pytest

from reference import discounted_constant, finite_horizon_constant, hessian_threshold
from tests.tolerances import EXACT_RTOL


def test_discounted_constant_is_two_root_two_gamma_eps_over_one_minus_gamma_squared():
    assert discounted_constant(0.5, 1.0) == pytest.approx(4 * math.sqrt(2), rel=EXACT_RTOL)
    assert discounted_constant(0.0, 3.0) == 0.0


@pytest.mark.parametrize("T", [1, 2, 3, 10, 100])
def test_finite_horizon_constant_matches_the_cauchy_schwarz_derivation(T):
    """Eqs 104-107: √2 ε √(Σ_{j<T} j²) √T = T √((T−1)(2T−1)/3) ε."""
    eps = 0.7
    derived = math.sqrt(2) * eps * math.sqrt(sum(j * j for j in range(T))) * math.sqrt(T)
    assert finite_horizon_constant(T, eps) == pytest.approx(derived, rel=EXACT_RTOL)


def test_hessian_threshold_is_omega_plus_half_M_r_squared():
    assert hessian_threshold(0.1, 4.0, 0.5) == pytest.approx(0.6, rel=EXACT_RTOL)


def test_bounds_reject_out_of_range_arguments():
    with pytest.raises(ValueError, match="gamma"):
        discounted_constant(1.0, 1.0)
    with pytest.raises(ValueError, match="T"):
        finite_horizon_constant(0, 1.0)
