"""Linear-softmax policies π_W(a | s) = softmax(W h(s) / temperature), optionally top-k truncated.

This is the paper's last-layer model (§4.1): logits f(s) = W h(s) with W [K, d] and features h(s) [d].
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray


def tabular_features(n_states: int) -> NDArray[np.float64]:
    """One-hot features, so that the linear-softmax policy is the tabular softmax.

    Args:
        n_states: S ≥ 1.

    Returns:
        The identity matrix, shape [S, S] (d = S).
    """
    if n_states < 1:
        raise ValueError(f"n_states must be >= 1, got {n_states}")
    return np.eye(n_states, dtype=np.float64)


def random_features(n_states: int, dim: int, seed: int = 0) -> NDArray[np.float64]:
    """Gaussian features h(s) ~ N(0, I_d / d), so that ‖h(s)‖ ≈ 1.

    Args:
        n_states: S ≥ 1.
        dim: d ≥ 1.
        seed: Seed of the NumPy generator.

    Returns:
        Features, shape [S, d].
    """
    if n_states < 1:
        raise ValueError(f"n_states must be >= 1, got {n_states}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_states, dim)) / np.sqrt(dim)


def top_k_mask(logits: NDArray[np.float64], top_k: int | None) -> NDArray[np.bool_]:
    """Boolean mask of the k largest logits of each row (ties broken towards the lower index).

    Args:
        logits: Logits, shape [S, K].
        top_k: k in [1, K], or None for all actions.

    Returns:
        Mask, shape [S, K], with exactly k True entries per row (K when ``top_k`` is None).

    Raises:
        ValueError: If ``top_k`` is outside [1, K].
    """
    S, K = logits.shape
    if top_k is None:
        return np.ones((S, K), dtype=bool)
    if not 1 <= top_k <= K:
        raise ValueError(f"top_k must lie in [1, K={K}], got {top_k}")
    order = np.argsort(-logits, axis=1, kind="stable")[:, :top_k]
    mask = np.zeros((S, K), dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def masked_softmax(logits: NDArray[np.float64], mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Softmax over the True entries of each row, zeros elsewhere.

    Args:
        logits: Logits, shape [S, K].
        mask: Support, shape [S, K], at least one True per row.

    Returns:
        Probabilities, shape [S, K], rows sum to 1.
    """
    z = np.where(mask, logits, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    e = np.where(mask, np.exp(z), 0.0)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True, eq=False)
class LinearSoftmaxPolicy:
    """π_W(a | s) = softmax over the support of (W h(s) / temperature).

    The support is all K actions, or (``top_k`` = k) the k largest logits: probability renormalised over
    them, zeros elsewhere (as in top-k sampling, paper §4.1).

    Attributes:
        features: h(s), shape [S, d].
        W: Last-layer weights, shape [K, d]; ψ = W.reshape(-1) (row-major, index a * d + j).
        temperature: Logits are divided by it (> 0).
        top_k: Support size k, or None for the full softmax.
    """

    features: NDArray[np.float64]
    W: NDArray[np.float64]
    temperature: float = 1.0
    top_k: int | None = None

    def __post_init__(self) -> None:
        """Validate shapes and options; store float64 copies."""
        h = np.array(self.features, dtype=np.float64)
        W = np.array(self.W, dtype=np.float64)
        if h.ndim != 2:
            raise ValueError(f"features must have shape [S, d], got {h.shape}")
        if W.ndim != 2 or W.shape[1] != h.shape[1]:
            raise ValueError(f"W must have shape [K, d] with d = {h.shape[1]}, got {W.shape}")
        if not (np.all(np.isfinite(h)) and np.all(np.isfinite(W))):
            raise ValueError("features and W must be finite")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and not 1 <= self.top_k <= W.shape[0]:
            raise ValueError(f"top_k must lie in [1, K={W.shape[0]}], got {self.top_k}")
        object.__setattr__(self, "features", h)
        object.__setattr__(self, "W", W)

    @property
    def n_actions(self) -> int:
        """Number of actions K."""
        return int(self.W.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension d."""
        return int(self.W.shape[1])

    def logits(self) -> NDArray[np.float64]:
        """Logits f(s) = W h(s) / temperature, shape [S, K] (before any truncation)."""
        return (self.features @ self.W.T) / self.temperature

    def support(self) -> NDArray[np.bool_]:
        """Support mask, shape [S, K] (all True without top-k)."""
        return top_k_mask(self.logits(), self.top_k)

    def probs(self) -> NDArray[np.float64]:
        """Action probabilities π(a | s), shape [S, K], rows sum to 1."""
        logits = self.logits()
        return masked_softmax(logits, top_k_mask(logits, self.top_k))

    def with_weights(self, W: NDArray[np.float64]) -> LinearSoftmaxPolicy:
        """The same policy family (features, temperature, top-k) at other weights.

        Args:
            W: New weights, shape [K, d].

        Returns:
            A new policy.
        """
        return replace(self, W=W)
