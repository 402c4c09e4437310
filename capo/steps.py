"""Step models of the last-layer optimizer: the step Δ = step(g) a gradient would cause (docs/design.md §2).

A step model maps gradient rows to step rows, row by row, without changing any state:

- :class:`SGDStep`: Δ = η g.
- :class:`AdamStep`: with the tracked moments m, v, t of :class:`~capo.SparseAdamMoments`,
  m' = β1 m + (1 − β1) g, v' = β2 v + (1 − β2) g², Δ = η (m'/(1 − β1^{t+1})) / (√(v'/(1 − β2^{t+1})) + ε)
  (the paper's Adam step model, Section 4.1 "Modeling the step").

Both apply to a gradient given on a set of rows; rows of W outside it do not enter m_H or m_F.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from capo.moments import SparseAdamMoments

__all__ = ["AdamStep", "SGDStep", "StepModel"]


def _check_lr(lr: float) -> float:
    lr = float(lr)
    if not (math.isfinite(lr) and lr >= 0.0):
        raise ValueError(f"lr must be a finite number >= 0, got {lr}")
    return lr


@dataclass(frozen=True)
class SGDStep:
    """The SGD step model Δ = η g.

    Args:
        lr: η, the learning rate the scheduler gives the current step.
    """

    lr: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _check_lr(self.lr))

    @property
    def vocab_size(self) -> int | None:
        """SGD knows no vocabulary size."""
        return None

    def propose(self, row_ids: torch.Tensor, row_grads: torch.Tensor) -> torch.Tensor:
        """Δ rows for gradient rows ``row_grads`` [R, H] on vocabulary ids ``row_ids`` [R]: η g."""
        del row_ids
        return row_grads * self.lr

    def token_directions(
        self, ids: torch.Tensor, coef: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        """v_i = Δ_i[S_i] h_i of each token's own step Δ_i = η coef_i ⊗ h_i: η ‖h_i‖² coef_i, [C, k].

        Args:
            ids: [C, k] support ids (unused by SGD).
            coef: [C, k] gradient coefficients (A_i u_i, so that g_i = coef_i ⊗ h_i, eq 7).
            hidden: [C, H] hidden states in the compute dtype.
        """
        del ids
        return coef * (hidden.square().sum(dim=1) * self.lr)[:, None]


@dataclass(frozen=True)
class AdamStep:
    """The Adam step model with bias correction at t + 1, read from ``moments`` without mutating them.

    Args:
        lr: η, the learning rate the scheduler gives the current step.
        moments: the tracked last-layer moments (β1, β2, ε and t are taken from them).
    """

    lr: float
    moments: SparseAdamMoments

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _check_lr(self.lr))
        if not isinstance(self.moments, SparseAdamMoments):
            raise ValueError(
                f"moments must be a SparseAdamMoments, got {type(self.moments).__name__}"
            )

    @property
    def vocab_size(self) -> int | None:
        """V of the tracked moments."""
        return self.moments.vocab_size

    def propose(self, row_ids: torch.Tensor, row_grads: torch.Tensor) -> torch.Tensor:
        """Δ rows [R, H] for gradient rows ``row_grads`` [R, H] on vocabulary ids ``row_ids`` [R].

        Rows are independent, so ``row_ids`` may repeat (each row gets its own prospective moments);
        they must lie in [0, V) (not re-checked here: :func:`capo.directional_shifts` checks them).
        Computed in the dtype of ``row_grads``; the moments are cast to it.
        """
        mom = self.moments
        b1, b2 = mom.betas
        t1 = mom.t + 1
        bc1 = 1.0 - b1**t1
        bc2 = 1.0 - b2**t1
        m, v = mom.read(row_ids.to(mom.device), check=False)  # validated with the batch
        m = m.to(device=row_grads.device, dtype=row_grads.dtype)
        v = v.to(device=row_grads.device, dtype=row_grads.dtype)
        m.mul_(b1).add_(row_grads, alpha=1.0 - b1)
        v.mul_(b2).addcmul_(row_grads, row_grads, value=1.0 - b2)
        v.div_(bc2).sqrt_().add_(mom.eps)
        return m.div_(v).mul_(self.lr / bc1)

    def token_directions(
        self, ids: torch.Tensor, coef: torch.Tensor, hidden: torch.Tensor
    ) -> torch.Tensor:
        """v_i = Δ_i[S_i] h_i of each token's own step Δ_i = step(coef_i ⊗ h_i), [C, k], fused.

        The same step as :meth:`propose` on the k rows g_i = coef_i ⊗ h_i of each token, without
        forming g_i: m' = β1 m + (1 − β1) coef ⊗ h and v' = β2 v + (1 − β2) coef² ⊗ h² are built
        in place on the gathered moment rows, and the bias corrections are folded into scalars,
        Δ = η √(1 − β2^{t+1}) / (1 − β1^{t+1}) · m' / (√v' + ε √(1 − β2^{t+1})) (equal to
        :meth:`propose` up to rounding). Temporaries: two [C, k, H] blocks.

        Args:
            ids: [C, k] support ids, already checked to lie in [0, V).
            coef: [C, k] gradient coefficients (A_i u_i, so that g_i = coef_i ⊗ h_i, eq 7).
            hidden: [C, H] hidden states in the compute dtype.
        """
        mom = self.moments
        c, k = ids.shape
        hs = hidden.shape[1]
        dt, dev = hidden.dtype, hidden.device
        b1, b2 = mom.betas
        t1 = mom.t + 1
        bc1 = 1.0 - b1**t1
        sq_bc2 = math.sqrt(1.0 - b2**t1)
        slots, d1, d2 = mom.lookup(ids.reshape(-1), check=False)
        m, v = mom.gather(slots, scratch=True)  # consumed in place below, before returning
        m = m.to(device=dev, dtype=dt).view(c, k, hs)
        v = v.to(device=dev, dtype=dt).view(c, k, hs)
        m.mul_((d1 * b1).to(device=dev, dtype=dt).view(c, k, 1))
        m.addcmul_(coef[:, :, None], hidden[:, None, :], value=1.0 - b1)
        v.mul_((d2 * b2).to(device=dev, dtype=dt).view(c, k, 1))
        v.addcmul_(coef.square()[:, :, None], hidden.square()[:, None, :], value=1.0 - b2)
        m.div_(v.sqrt_().add_(mom.eps * sq_bc2))
        return m.mul_(hidden[:, None, :]).sum(dim=2).mul_(self.lr * sq_bc2 / bc1)


StepModel = SGDStep | AdamStep
"""The step models :func:`capo.directional_shifts` accepts."""
