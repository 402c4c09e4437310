"""Hypothesis properties of the sample matrices on random small shapes: shapes, symmetry, PSD."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from reference import (
    DenseSGDStep,
    directional,
    directional_fisher_trace,
    sample_fisher,
    sample_gradient,
    sample_hessian,
    subset_shifts,
)
from tests.reference._data import softmax
from tests.tolerances import EXACT_ATOL, EXACT_RTOL

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


@st.composite
def tokens(draw):
    n = draw(st.integers(1, 5))
    k = draw(st.integers(1, 4))
    d = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    h = scale * rng.normal(size=(n, d))
    probs = softmax(scale * rng.normal(size=(n, k)))
    return h, probs, rng.integers(0, k, n), rng.normal(size=n), rng


@SETTINGS
@given(tokens())
def test_sample_matrices_have_shape_K_d_and_are_symmetric(tok):
    h, p, a, A, _ = tok
    kd = p.shape[1] * h.shape[1]
    g, H, F = sample_gradient(h, p, a, A), sample_hessian(h, p, a, A), sample_fisher(h, p, a)
    assert g.shape == (kd,)
    assert H.shape == F.shape == (kd, kd)
    np.testing.assert_allclose(H, H.T, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    np.testing.assert_allclose(F, F.T, rtol=EXACT_RTOL, atol=EXACT_ATOL)


@SETTINGS
@given(tokens())
def test_sample_fisher_is_positive_semi_definite(tok):
    h, p, a, _, rng = tok
    F = sample_fisher(h, p, a)
    scale = max(1.0, float(np.abs(F).max()))
    assert np.linalg.eigvalsh(F).min() >= -EXACT_RTOL * scale
    U = rng.normal(size=(p.shape[1], h.shape[1]))
    assert directional(F, U) >= 0.0
    assert directional_fisher_trace(h, p, a, U) >= 0.0


@SETTINGS
@given(tokens())
def test_token_shifts_have_one_entry_per_token_and_nonnegative_m_F(tok):
    h, p, a, A, _ = tok
    mh, mf = subset_shifts(h, p, a, A, DenseSGDStep(lr=0.1))
    assert mh.shape == mf.shape == (h.shape[0],)
    assert np.all(mf >= 0.0)
