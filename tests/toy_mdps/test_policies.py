"""Linear-softmax policies, tabular / random features and top-k truncation (toy_mdps/policies.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.tolerances import EXACT_ATOL, EXACT_RTOL
from toy_mdps import LinearSoftmaxPolicy, random_features, tabular_features


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_tabular_features_give_the_tabular_softmax() -> None:
    """With one-hot features π(a | s) = softmax(W[:, s] / temperature)."""
    W = np.random.default_rng(0).standard_normal((3, 5))
    pi = LinearSoftmaxPolicy(tabular_features(5), W, temperature=0.5)
    np.testing.assert_allclose(pi.probs(), softmax(W.T / 0.5), rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_logits_are_features_times_weights_over_temperature() -> None:
    h, W = random_features(4, 3, seed=1), np.random.default_rng(2).standard_normal((5, 3))
    pi = LinearSoftmaxPolicy(h, W, temperature=2.0)
    np.testing.assert_allclose(pi.logits(), h @ W.T / 2.0, rtol=EXACT_RTOL)


@pytest.mark.parametrize("k", [1, 2, 4, 5])
def test_top_k_rows_sum_to_one_with_k_nonzeros_on_the_largest_logits(k: int) -> None:
    h, W = random_features(6, 3, seed=3), np.random.default_rng(4).standard_normal((5, 3))
    pi = LinearSoftmaxPolicy(h, W, top_k=k)
    p, logits = pi.probs(), pi.logits()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=EXACT_RTOL)
    assert np.all((p > 0).sum(axis=1) == k)
    kth = np.sort(logits, axis=1)[:, -k]
    np.testing.assert_array_equal(p > 0, logits >= kth[:, None])
    # renormalised softmax over the support
    support = np.where(p > 0, logits, -np.inf)
    np.testing.assert_allclose(p, softmax(support), rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_with_weights_keeps_features_temperature_and_top_k() -> None:
    h = random_features(4, 2, seed=5)
    pi = LinearSoftmaxPolicy(h, np.zeros((3, 2)), temperature=0.7, top_k=2)
    W2 = np.ones((3, 2))
    pi2 = pi.with_weights(W2)
    assert (pi2.temperature, pi2.top_k) == (0.7, 2)
    np.testing.assert_array_equal(pi2.features, h)
    np.testing.assert_array_equal(pi2.W, W2)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"W": np.zeros((3, 4))}, "W"),
        ({"features": np.zeros(4)}, "features"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_k": 4}, "top_k"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs: dict, name: str) -> None:
    base = {"features": np.zeros((5, 2)), "W": np.zeros((3, 2))} | kwargs
    with pytest.raises(ValueError, match=name):
        LinearSoftmaxPolicy(**base)
