"""Dense step models: what the optimizer would do with a proposed last-layer gradient g [K, d].

Ascent convention: J is maximised, so a step is Δ = +η · (direction). ``propose`` never changes state;
``DenseAdamState.update`` is the one optimizer step (docs/design.md §2). Adam moments cover all K rows: a row
absent from g gets g = 0, so its moments decay — the sparse lazy-decay table must equal this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from reference._checks import as_float

__all__ = ["DenseAdamState", "DenseAdamStep", "DenseSGDStep", "StepModel"]


class StepModel(Protocol):
    """Anything that maps a proposed gradient g [K, d] to a step Δ [K, d] without changing state."""

    def propose(self, g: ArrayLike) -> NDArray[np.float64]:
        """Return the step Δ [K, d] for gradient g [K, d]."""
        ...


@dataclass
class DenseSGDStep:
    """SGD step model, Δ = η g.

    Attributes:
        lr: The learning rate η.
    """

    lr: float

    def propose(self, g: ArrayLike) -> NDArray[np.float64]:
        """Propose Δ = η g.

        Args:
            g: The gradient, shape [K, d].

        Returns:
            Δ, shape [K, d].
        """
        return self.lr * as_float("g", g, 2)


@dataclass
class DenseAdamState:
    """Dense Adam moments of the last layer W [K, d].

    Attributes:
        K: Rows of W (actions / vocabulary).
        d: Columns of W (features / hidden size).
        betas: (β1, β2).
        eps: ε, added to the bias-corrected sqrt(v).
        m: First moment, shape [K, d].
        v: Second moment, shape [K, d].
        t: Optimizer steps taken so far.
    """

    K: int
    d: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    m: NDArray[np.float64] = field(init=False)
    v: NDArray[np.float64] = field(init=False)
    t: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        """Validate hyper-parameters and zero the moments."""
        if self.K < 1 or self.d < 1:
            raise ValueError(f"K and d must be positive, got K={self.K}, d={self.d}")
        b1, b2 = self.betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        if self.eps < 0.0:
            raise ValueError(f"eps must be non-negative, got {self.eps}")
        self.m = np.zeros((self.K, self.d))
        self.v = np.zeros((self.K, self.d))

    def _grad(self, g: ArrayLike) -> NDArray[np.float64]:
        """Validate g against [K, d]."""
        gg = as_float("g", g, 2)
        if gg.shape != (self.K, self.d):
            raise ValueError(f"g must have shape [K, d] = {(self.K, self.d)}, got {gg.shape}")
        return gg

    def prospective(self, g: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Moments after one more step with g, without storing them.

        m' = β1 m + (1 − β1) g, v' = β2 v + (1 − β2) g².

        Args:
            g: The gradient, shape [K, d].

        Returns:
            (m', v'), each of shape [K, d].
        """
        gg = self._grad(g)
        b1, b2 = self.betas
        return b1 * self.m + (1.0 - b1) * gg, b2 * self.v + (1.0 - b2) * gg**2

    def update(self, g: ArrayLike) -> None:
        """Take one optimizer step: m, v ← m', v' (see :meth:`prospective`), t ← t + 1.

        Args:
            g: The gradient, shape [K, d] (rows not in the batch are zero rows).
        """
        self.m, self.v = self.prospective(g)
        self.t += 1

    def copy(self) -> DenseAdamState:
        """Return an independent deep copy."""
        out = DenseAdamState(self.K, self.d, self.betas, self.eps)
        out.m = self.m.copy()
        out.v = self.v.copy()
        out.t = self.t
        return out


@dataclass
class DenseAdamStep:
    """Adam step model (docs/design.md §2), proposing from prospective moments without changing them.

    Δ = η · (m' / (1 − β1^{t+1})) / (sqrt(v' / (1 − β2^{t+1})) + ε).

    Attributes:
        lr: The learning rate η.
        state: The tracked moments (read only here).
    """

    lr: float
    state: DenseAdamState

    def propose(self, g: ArrayLike) -> NDArray[np.float64]:
        """Propose the Adam step for gradient g.

        Args:
            g: The gradient, shape [K, d].

        Returns:
            Δ, shape [K, d].
        """
        m1, v1 = self.state.prospective(g)
        b1, b2 = self.state.betas
        t1 = self.state.t + 1
        m_hat = m1 / (1.0 - b1**t1)
        v_hat = v1 / (1.0 - b2**t1)
        return self.lr * m_hat / (np.sqrt(v_hat) + self.state.eps)
