"""Dense SGD and Adam step models (docs/design.md §2)."""

from __future__ import annotations

import numpy as np
import pytest

from reference import DenseAdamState, DenseAdamStep, DenseSGDStep
from tests.tolerances import EXACT_ATOL, EXACT_RTOL


def test_sgd_proposes_lr_times_gradient():
    g = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(DenseSGDStep(lr=0.5).propose(g), 0.5 * g)


def test_adam_propose_does_not_mutate_state():
    state = DenseAdamState(3, 2)
    state.update(np.ones((3, 2)))
    before = state.copy()
    DenseAdamStep(lr=1e-3, state=state).propose(np.full((3, 2), 2.0))
    assert state.t == before.t
    np.testing.assert_array_equal(state.m, before.m)
    np.testing.assert_array_equal(state.v, before.v)


def test_adam_update_sequence_and_proposals_match_a_hand_written_loop():
    rng = np.random.default_rng(0)
    b1, b2, eps, lr = 0.8, 0.95, 1e-6, 0.1
    state = DenseAdamState(3, 2, betas=(b1, b2), eps=eps)
    step = DenseAdamStep(lr=lr, state=state)
    m, v = np.zeros((3, 2)), np.zeros((3, 2))
    for t in range(1, 6):
        g = rng.normal(size=(3, 2))
        g[t % 3] = 0.0  # an untouched row: its moments must decay as in dense Adam
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        expected = lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        np.testing.assert_allclose(step.propose(g), expected, rtol=EXACT_RTOL, atol=EXACT_ATOL)
        state.update(g)
        assert state.t == t
        np.testing.assert_allclose(state.m, m, rtol=EXACT_RTOL, atol=EXACT_ATOL)
        np.testing.assert_allclose(state.v, v, rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_adam_first_step_is_lr_times_sign_of_gradient_up_to_eps():
    g = np.array([[2.0, -3.0], [-0.5, 1e-3]])
    delta = DenseAdamStep(lr=0.1, state=DenseAdamState(2, 2, eps=0.0)).propose(g)
    np.testing.assert_allclose(delta, 0.1 * np.sign(g), rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_adam_state_copy_is_independent():
    state = DenseAdamState(2, 2)
    clone = state.copy()
    clone.update(np.ones((2, 2)))
    assert state.t == 0
    assert not state.m.any()


def test_adam_rejects_gradient_of_wrong_shape():
    with pytest.raises(ValueError, match="g must have shape"):
        DenseAdamStep(lr=1.0, state=DenseAdamState(3, 2)).propose(np.ones((2, 3)))
