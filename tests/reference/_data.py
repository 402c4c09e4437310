"""Small random last-layer problems shared by the reference tests (pure NumPy, seeded)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class States:
    weights: np.ndarray  # [S], sums to 1
    h: np.ndarray  # [S, d]
    probs: np.ndarray  # [S, K]
    adv: np.ndarray  # [S, K]
    logits_w: np.ndarray  # [K, d] the W that produced probs (before top-k truncation)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def random_states(
    seed: int, S: int = 3, K: int = 3, d: int = 2, top_k: int | None = None
) -> States:
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.2, 1.0, S)
    h = rng.normal(size=(S, d))
    W = rng.normal(size=(K, d))
    logits = h @ W.T
    if top_k is not None:
        cut = np.sort(logits, axis=1)[:, -top_k][:, None]
        logits = np.where(logits >= cut, logits, -np.inf)
    return States(w / w.sum(), h, softmax(logits), rng.normal(size=(S, K)), W)


def draw_tokens(states: States, n: int, rng: np.random.Generator):
    """n i.i.d. tokens: s ~ weights, a ~ π(·|s), A = adv[s, a]. Returns (h, probs, actions, adv)."""
    s = rng.choice(states.weights.shape[0], size=n, p=states.weights)
    u = rng.random(n)
    cdf = np.cumsum(states.probs[s], axis=1)
    a = np.minimum((u[:, None] > cdf).sum(axis=1), states.probs.shape[1] - 1)
    return states.h[s], states.probs[s], a, states.adv[s, a]


def random_tokens(seed: int, N: int = 6, K: int = 4, d: int = 3):
    """N unrelated tokens (h, probs, actions, advantages) for shift and curvature tests."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(N, d))
    probs = softmax(rng.normal(size=(N, K)))
    actions = rng.integers(0, K, N)
    adv = rng.normal(size=N)
    return h, probs, actions, adv
