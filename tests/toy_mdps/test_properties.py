"""Hypothesis properties of the exact evaluation over random small MDPs and policies."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tolerances import EXACT_ATOL, EXACT_RTOL
from toy_mdps import (
    LinearSoftmaxPolicy,
    evaluate,
    kl_weights,
    random_features,
    random_mdp,
    state_weights,
    time_advantages,
)


@settings(max_examples=40, deadline=None)
@given(
    S=st.integers(1, 6),
    K=st.integers(1, 4),
    T=st.integers(1, 5),
    d=st.integers(1, 4),
    top_k=st.none() | st.integers(1, 4),
    discounted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_shapes_and_invariants_hold_for_random_small_mdps(
    S: int, K: int, T: int, d: int, top_k: int | None, discounted: bool, seed: int
) -> None:
    """Shapes follow the setting; d_t sums to 1 (d_γ to 1/(1−γ)); E_π A = 0; V_t = E_π Q_t."""
    gamma = 0.85 if discounted else 1.0
    setting = "discounted" if discounted else "finite"
    mdp = random_mdp(S, K, T, gamma=gamma, seed=seed)
    W = np.random.default_rng(seed + 1).standard_normal((K, d))
    policy = LinearSoftmaxPolicy(random_features(S, d, seed=seed), W, top_k=min(top_k or K, K))
    probs = policy.probs()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=EXACT_RTOL)
    ev = evaluate(mdp, probs, setting)
    if discounted:
        assert ev.V.shape == (S,) and ev.Q.shape == ev.A.shape == (S, K) and ev.d.shape == (S,)
        np.testing.assert_allclose(ev.d.sum(), 1.0 / (1.0 - gamma), rtol=EXACT_RTOL)
    else:
        assert ev.V.shape == (T + 1, S) and ev.Q.shape == ev.A.shape == (T, S, K)
        assert ev.d.shape == (T, S)
        np.testing.assert_allclose(ev.d.sum(axis=1), 1.0, rtol=EXACT_RTOL)
    assert np.all(ev.d >= -EXACT_ATOL)
    assert state_weights(ev).shape == kl_weights(ev).shape == (S,)
    scale = 1.0 + np.abs(ev.Q).max()
    mean_A = np.einsum("sa,tsa->ts", probs, time_advantages(ev))
    np.testing.assert_allclose(mean_A / scale, 0.0, atol=EXACT_ATOL)
    np.testing.assert_allclose(ev.J, mdp.rho0 @ (ev.V if discounted else ev.V[0]), rtol=EXACT_RTOL)
