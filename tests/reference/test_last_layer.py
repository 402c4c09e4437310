"""Last-layer score, estimators and exact expectations (paper eqs 7-9, 44-51; Lemmas B.1, B.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad, hessian

from reference import (
    expected_fisher,
    expected_gradient,
    expected_hessian,
    sample_fisher,
    sample_gradient,
    sample_hessian,
    score,
    state_fisher,
)
from tests.reference._data import draw_tokens, random_states, softmax
from tests.tolerances import EXACT_ATOL, EXACT_RTOL, MC_TARGET_RTOL

SEEDS = [0, 1, 2]


def _log_pi(W: torch.Tensor, h: torch.Tensor, a: int) -> torch.Tensor:
    return torch.log_softmax(W @ h, dim=0)[a]


def test_score_is_the_autodiff_gradient_of_log_pi():
    """Eq 45: ∇_ψ log π(a|s) = (e_a − π) ⊗ h with ψ = vec(W) row-major."""
    rng = np.random.default_rng(0)
    W, h = rng.normal(size=(4, 3)), rng.normal(size=3)
    p = softmax(W @ h)
    for a in range(4):
        auto = grad(_log_pi)(torch.tensor(W), torch.tensor(h), a).numpy().ravel()
        np.testing.assert_allclose(score(h, p, a), auto, rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_score_is_the_kronecker_product_of_u_and_h():
    p = np.array([0.2, 0.5, 0.3])
    h = np.array([1.0, -2.0])
    u = np.array([0.0, 1.0, 0.0]) - p
    np.testing.assert_array_equal(score(h, p, 1), np.outer(u, h).ravel())


@pytest.mark.parametrize("seed", SEEDS)
def test_grad_log_prob_has_zero_mean(seed):
    """Lemma B.1 (eq 19): Σ_s w(s) Σ_a π(a|s) ∇ log π(a|s) = 0, also for a top-k truncated π."""
    st = random_states(seed, top_k=2)
    total = sum(
        st.weights[s] * st.probs[s, a] * score(st.h[s], st.probs[s], a)
        for s in range(3)
        for a in range(3)
    )
    np.testing.assert_allclose(total, 0.0, atol=EXACT_ATOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_fisher_identity_score_outer_product_equals_minus_expected_hessian_of_log_pi(seed):
    """Lemma B.2 (eq 21): E[∇log π ∇log πᵀ] = −E[∇² log π], the right side by torch.func.hessian."""
    st = random_states(seed)
    h, p, w = (torch.tensor(x) for x in (st.h, st.probs, st.weights))

    def expected_log_pi(W: torch.Tensor) -> torch.Tensor:
        return (w[:, None] * p * torch.log_softmax(h @ W.T, dim=1)).sum()

    minus_hess = -hessian(expected_log_pi)(torch.tensor(st.logits_w)).reshape(6, 6).numpy()
    np.testing.assert_allclose(
        expected_fisher(st.weights, st.h, st.probs), minus_hess, rtol=EXACT_RTOL, atol=EXACT_ATOL
    )


def test_state_fisher_is_diag_minus_outer_and_averages_u_u_transpose():
    p = np.array([0.1, 0.6, 0.3])
    expected = sum(p[a] * np.outer(np.eye(3)[a] - p, np.eye(3)[a] - p) for a in range(3))
    np.testing.assert_allclose(state_fisher(p), np.diag(p) - np.outer(p, p), atol=EXACT_ATOL)
    np.testing.assert_allclose(state_fisher(p), expected, atol=EXACT_ATOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_expected_fisher_equals_sum_of_state_fisher_kron_h_h(seed):
    """Eq 51 in closed form: F̃ = Σ_s w(s) F(s) ⊗ h hᵀ."""
    st = random_states(seed, top_k=2)
    closed = sum(
        st.weights[s] * np.kron(state_fisher(st.probs[s]), np.outer(st.h[s], st.h[s]))
        for s in range(3)
    )
    np.testing.assert_allclose(
        expected_fisher(st.weights, st.h, st.probs), closed, rtol=EXACT_RTOL, atol=EXACT_ATOL
    )


def test_single_sample_estimators_match_their_formulas():
    h, p, a, A = np.array([[1.0, 2.0]]), np.array([[0.25, 0.75]]), np.array([1]), np.array([3.0])
    u = np.array([-0.25, 0.25])
    hh = np.outer(h[0], h[0])
    np.testing.assert_allclose(sample_gradient(h, p, a, A), 3.0 * np.kron(u, h[0]), atol=EXACT_ATOL)
    np.testing.assert_allclose(sample_fisher(h, p, a), np.kron(np.outer(u, u), hh), atol=EXACT_ATOL)
    np.testing.assert_allclose(
        sample_hessian(h, p, a, A),
        3.0 * np.kron(np.outer(u, u) - state_fisher(p[0]), hh),
        atol=EXACT_ATOL,
    )


def _mc_relative_error(estimate: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(estimate - exact) / np.linalg.norm(exact))


@pytest.mark.parametrize(
    ("name", "sample", "exact"),
    [
        ("gradient", sample_gradient, expected_gradient),
        ("hessian", sample_hessian, expected_hessian),
        ("fisher", lambda h, p, a, A: sample_fisher(h, p, a), None),
    ],
)
def test_sample_estimators_converge_to_the_exact_expectation(name, sample, exact):
    """Eqs 7-9: the 1/N sample averages are unbiased; their running mean reaches MC_TARGET_RTOL."""
    st = random_states(3, top_k=2)
    if exact is None:
        target = expected_fisher(st.weights, st.h, st.probs)
    else:
        target = exact(st.weights, st.h, st.probs, st.adv)
    rng = np.random.default_rng(11)
    running, batches, err = np.zeros_like(target), 0, np.inf
    while err > MC_TARGET_RTOL and batches < 64:
        running += sample(*draw_tokens(st, 500, rng))
        batches += 1
        err = _mc_relative_error(running / batches, target)
    assert err <= MC_TARGET_RTOL, f"{name}: relative error {err:.3g} after {batches} batches"


@pytest.mark.parametrize(
    ("sample", "exact"),
    [(sample_gradient, expected_gradient), (sample_hessian, expected_hessian)],
)
def test_sample_estimators_are_unbiased_within_five_standard_errors(sample, exact):
    st = random_states(4)
    target = exact(st.weights, st.h, st.probs, st.adv)
    rng = np.random.default_rng(5)
    draws = np.stack([sample(*draw_tokens(st, 8, rng)) for _ in range(1500)])
    mean, se = draws.mean(axis=0), draws.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])
    assert np.all(np.abs(mean - target) <= 5.0 * se + EXACT_ATOL)


@pytest.mark.parametrize(
    ("fn", "args", "name"),
    [
        (sample_gradient, (np.ones((2, 3)), np.full((3, 2), 0.5), [0, 1], [1.0, 1.0]), "probs"),
        (sample_gradient, (np.ones((2, 3)), np.full((2, 2), 0.6), [0, 1], [1.0, 1.0]), "probs"),
        (sample_gradient, (np.ones((2, 3)), np.full((2, 2), 0.5), [0, 2], [1.0, 1.0]), "actions"),
        (sample_gradient, (np.ones((2, 3)), np.full((2, 2), 0.5), [0, 1], [1.0]), "advantages"),
        (sample_fisher, (np.ones(3), np.full((2, 2), 0.5), [0, 1]), "h"),
        (expected_fisher, (np.ones(3), np.ones((2, 3)), np.full((2, 2), 0.5)), "h"),
        (expected_gradient, (np.ones(2), np.ones((2, 3)), np.full((2, 2), 0.5), np.ones(2)), "adv"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(fn, args, name):
    with pytest.raises(ValueError, match=name):
        fn(*args)
