"""Directional curvatures: the Kronecker-trace identities of App. D (eqs 55-58, 60-63) and eq 10."""

from __future__ import annotations

import numpy as np
import pytest

from reference import (
    directional,
    directional_fisher_trace,
    directional_hessian_trace,
    m_F,
    m_H,
    sample_fisher,
    sample_gradient,
    sample_hessian,
)
from tests.reference._data import random_tokens
from tests.tolerances import EXACT_ATOL, EXACT_RTOL

SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize("seed", SEEDS)
def test_fisher_quadratic_form_from_kronecker_matrix_equals_mean_squared_u_U_h(seed):
    """Eq 57/58: vec(U)ᵀ F̃ vec(U) = (1/N) Σ (uᵀ U h)²."""
    h, p, a, _ = random_tokens(seed)
    U = np.random.default_rng(seed + 100).normal(size=(4, 3))
    explicit = np.mean([((np.eye(4)[a[i]] - p[i]) @ U @ h[i]) ** 2 for i in range(6)])
    assert directional(sample_fisher(h, p, a), U) == pytest.approx(explicit, rel=EXACT_RTOL)
    assert directional_fisher_trace(h, p, a, U) == pytest.approx(explicit, rel=EXACT_RTOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_hessian_quadratic_form_from_kronecker_matrix_equals_trace_form(seed):
    """Eq 62/63: vec(U)ᵀ H̃ vec(U) = (1/N) Σ A [(uᵀv)² − vᵀ F v], v = U h."""
    h, p, a, A = random_tokens(seed)
    U = np.random.default_rng(seed + 100).normal(size=(4, 3))
    terms = []
    for i in range(6):
        u, v = np.eye(4)[a[i]] - p[i], U @ h[i]
        terms.append(A[i] * ((u @ v) ** 2 - v @ (np.diag(p[i]) - np.outer(p[i], p[i])) @ v))
    explicit = float(np.mean(terms))
    assert directional(sample_hessian(h, p, a, A), U) == pytest.approx(explicit, rel=EXACT_RTOL)
    assert directional_hessian_trace(h, p, a, A, U) == pytest.approx(explicit, rel=EXACT_RTOL)


def test_direction_as_matrix_or_row_major_vector_gives_the_same_curvature():
    h, p, a, _ = random_tokens(0)
    F = sample_fisher(h, p, a)
    U = np.arange(12.0).reshape(4, 3)
    assert directional(F, U) == directional(F, U.ravel())


def test_m_H_and_m_F_are_the_quadratic_models_of_eq_10():
    h, p, a, A = random_tokens(1)
    g, H, F = sample_gradient(h, p, a, A), sample_hessian(h, p, a, A), sample_fisher(h, p, a)
    delta = 0.3 * g
    assert m_H(g, H, delta) == pytest.approx(g @ delta + 0.5 * delta @ H @ delta, rel=EXACT_RTOL)
    assert m_F(F, delta) == pytest.approx(0.5 * delta @ F @ delta, rel=EXACT_RTOL, abs=EXACT_ATOL)


def test_curvature_rejects_mismatched_direction():
    with pytest.raises(ValueError, match="delta"):
        directional(np.eye(6), np.ones(5))
    with pytest.raises(ValueError, match="u_mat"):
        directional_fisher_trace(np.ones((2, 3)), np.full((2, 2), 0.5), [0, 1], np.ones((3, 3)))
