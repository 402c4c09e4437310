"""One optimizer step of CAPO as data: the micro-batch inputs the acceptance test and the mask seam see.

Shapes follow :mod:`capo.shapes`: B completions of a micro-batch, T completion positions (TRL's
``logits_to_keep``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capo.masking import MicroBatchSelection

__all__ = ["MicroBatch", "applied_mask"]


@dataclass(frozen=True, eq=False)
class MicroBatch:
    """The TRL inputs of one training micro-batch, as :meth:`capo.CAPOTrainer.token_mask` receives them.

    Attributes:
        completion_ids: [B, T] int64 sampled token ids.
        completion_mask: [B, T] bool, TRL's completion mask (with its tool mask, if any): the tokens that
            enter the loss at all (``MicroBatchSelection.valid``).
        advantages: [B] or [B, T] float, the advantages as TRL's batch holds them (the variant's).
        group_ids: [B] int64 prompt-group id of each completion, or None.
        completion_index: [B] int64 global index of each completion in the step's batch, or None.
        lr: η, the learning rate the scheduler gives the current optimizer step.
    """

    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    advantages: torch.Tensor
    group_ids: torch.Tensor | None
    completion_index: torch.Tensor | None
    lr: float

    @property
    def token_advantages(self) -> torch.Tensor:
        """[B, T] the advantage of each token (a [B] advantage broadcast over the completion)."""
        adv = self.advantages
        return adv[:, None].expand(self.completion_mask.shape) if adv.dim() == 1 else adv


def applied_mask(
    selection: MicroBatchSelection, mask: torch.Tensor | None, capo_enabled: bool
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """What a micro-batch applies, from the mask :meth:`capo.CAPOTrainer.token_mask` returned.

    Args:
        selection: the micro-batch's acceptance test.
        mask: [B, T] bool keep mask of the seam, or None for CAPO's rule (no mask when not ``capo_enabled``).
        capo_enabled: whether CAPO's rule masks the loss.

    Returns:
        (keep [B, T] for the loss coefficients or None for no masking, applied [N] the finite tokens whose
        gradient enters the moments and the global shifts, kept [N] the tokens the rejection metrics count
        as kept or None for CAPO's keep mask).
    """
    if mask is None:
        if capo_enabled:
            return selection.keep, selection.keep_flat, None
        return None, selection.shifts.token_finite, None
    valid = selection.valid
    if mask.shape != valid.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"token_mask must return a bool [B, T] = {list(valid.shape)} tensor or None, "
            f"got {mask.dtype} {list(mask.shape)}"
        )
    keep = mask.to(valid.device) & valid
    kept = keep[valid]
    return keep, kept & selection.shifts.token_finite, kept
