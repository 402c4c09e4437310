"""Per-subset predicted shifts from the full matrices (eq 10) and the acceptance test (eq 11)."""

from __future__ import annotations

import numpy as np
import pytest

from reference import (
    DenseAdamState,
    DenseAdamStep,
    DenseSGDStep,
    accept,
    m_F,
    m_H,
    sample_fisher,
    sample_gradient,
    sample_hessian,
    subset_shifts,
)
from tests.reference._data import random_tokens
from tests.tolerances import EXACT_ATOL, EXACT_RTOL


def _adam_step() -> DenseAdamStep:
    state = DenseAdamState(4, 3)
    rng = np.random.default_rng(9)
    for _ in range(3):
        state.update(rng.normal(size=(4, 3)))
    return DenseAdamStep(lr=1e-2, state=state)


STEPS = {"sgd": lambda: DenseSGDStep(lr=0.3), "adam": _adam_step}


@pytest.mark.parametrize("kind", STEPS)
def test_one_subset_over_all_tokens_equals_full_sample_matrices(kind):
    h, p, a, A = random_tokens(0)
    step = STEPS[kind]()
    g = sample_gradient(h, p, a, A)
    delta = step.propose(g.reshape(4, 3)).ravel()
    mh, mf = subset_shifts(h, p, a, A, step, subsets=np.zeros(6, dtype=np.int64))
    assert mh.shape == mf.shape == (1,)
    assert mh[0] == pytest.approx(m_H(g, sample_hessian(h, p, a, A), delta), rel=EXACT_RTOL)
    assert mf[0] == pytest.approx(m_F(sample_fisher(h, p, a), delta), rel=EXACT_RTOL)


@pytest.mark.parametrize("kind", STEPS)
def test_partition_values_equal_each_subset_computed_alone(kind):
    h, p, a, A = random_tokens(1)
    step = STEPS[kind]()
    ids = np.array([2, 0, 1, 0, 2, 2])
    mh, mf = subset_shifts(h, p, a, A, step, subsets=ids)
    for b in range(3):
        sel = ids == b
        alone_h, alone_f = subset_shifts(
            h[sel], p[sel], a[sel], A[sel], step, subsets=np.zeros(sel.sum(), dtype=np.int64)
        )
        np.testing.assert_allclose([mh[b], mf[b]], [alone_h[0], alone_f[0]], rtol=EXACT_RTOL)


def test_no_subsets_means_each_token_alone():
    h, p, a, A = random_tokens(2)
    step = _adam_step()
    none = subset_shifts(h, p, a, A, step)
    each = subset_shifts(h, p, a, A, step, subsets=np.arange(6))
    np.testing.assert_allclose(none, each, rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_token_level_sgd_has_the_closed_form_of_design_section_2():
    """SGD, one token: v = η A ‖h‖² u, so m_F = ½ (η A ‖h‖²)² ‖u‖⁴ and gᵀΔ = η A² ‖h‖² ‖u‖²."""
    h, p, a, A = random_tokens(3)
    eta = 0.05
    mh, mf = subset_shifts(h, p, a, A, DenseSGDStep(lr=eta))
    u = np.eye(4)[a] - p
    c = eta * A * (h * h).sum(1)
    uu = (u * u).sum(1)
    vfv = c**2 * ((p * u * u).sum(1) - (p * u).sum(1) ** 2)
    np.testing.assert_allclose(mf, 0.5 * c**2 * uu**2, rtol=EXACT_RTOL)
    np.testing.assert_allclose(mh, A * c * uu + 0.5 * A * (c**2 * uu**2 - vfv), rtol=EXACT_RTOL)


def test_subset_shifts_does_not_change_adam_state():
    h, p, a, A = random_tokens(4)
    step = _adam_step()
    before = step.state.copy()
    subset_shifts(h, p, a, A, step, subsets=np.array([0, 1, 0, 1, 0, 1]))
    assert step.state.t == before.t
    np.testing.assert_array_equal(step.state.m, before.m)


def test_accept_uses_strict_inequalities_and_skips_none_bounds():
    mh = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    mf = np.array([0.0, 0.1, 0.2, 0.1, 0.0])
    np.testing.assert_array_equal(
        accept(mh, mf, -0.5, 1.0, 0.2), [False, False, False, True, False]
    )
    np.testing.assert_array_equal(accept(mh, mf, None, None, None), [True] * 5)
    np.testing.assert_array_equal(accept(mh, mf, None, None, 0.15), [True, True, False, True, True])


@pytest.mark.parametrize(
    ("subsets", "name"),
    [(np.array([0, 1]), "subsets"), (np.array([0, 0, 2, 2, 2, 2]), "subsets")],
)
def test_subset_shifts_rejects_bad_partitions(subsets, name):
    h, p, a, A = random_tokens(5)
    with pytest.raises(ValueError, match=name):
        subset_shifts(h, p, a, A, DenseSGDStep(lr=1.0), subsets=subsets)


def test_subset_shifts_rejects_probabilities_that_do_not_sum_to_one():
    h, p, a, A = random_tokens(5)
    with pytest.raises(ValueError, match="probs"):
        subset_shifts(h, 2 * p, a, A, DenseSGDStep(lr=1.0))
