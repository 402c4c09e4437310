"""What the micro-batches of one optimizer step leave for the step boundary, and the step's statistics.

The trainer fills one :class:`StepRecord` per optimizer step on each rank; at the step end the counts are
all-reduced in one call (host counts are tensor sizes, device counts are accumulated without a host sync).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from capo.masking import MicroBatchSelection
from capo.metrics import SHIFT_STATS
from capo.tokens import TokenBatch

__all__ = [
    "COUNTS",
    "DEVICE_COUNTS",
    "HOST_COUNTS",
    "StepRecord",
    "record_micro_batch",
    "shift_stats",
]

HOST_COUNTS = ("completions", "valid")
"""Counts known on the host without a device sync (tensor sizes)."""
DEVICE_COUNTS = ("applied", "rejected", "rej_hessian", "rej_fisher", "nonfinite", "all_rejected")
"""Data-dependent counts, accumulated on the device and synced once per optimizer step."""
COUNTS = HOST_COUNTS + DEVICE_COUNTS
"""All counts, in the order of the one all-reduce."""


@dataclass
class StepRecord:
    """What the micro-batches of one optimizer step leave for the step boundary (this rank only).

    Attributes:
        counts: Host counts (:data:`HOST_COUNTS`).
        device_counts: [len(DEVICE_COUNTS)] float64 running sums, None before the first micro-batch.
        lr: η of the step, as the step model saw it.
        grad_parts: Per micro-batch (row ids [R], row sums [R, H]) of the applied last-layer gradient.
        accepted: Per micro-batch, the applied tokens.
        m_h: Per micro-batch, the per-token m_H [N] of the finite tokens.
        m_f: Per micro-batch, the per-token m_F [N] of the finite tokens.
        kl_inputs: Per micro-batch, what the true-KL diagnostic re-runs: (input_ids, attention_mask,
            logits_to_keep, valid [B, T], hidden of the valid tokens [N, H]).
        head_before: (W, b) of the output layer before the step (true-KL diagnostic).
    """

    counts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(HOST_COUNTS, 0.0))
    device_counts: torch.Tensor | None = None
    lr: float | None = None
    grad_parts: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    accepted: list[TokenBatch] = field(default_factory=list)
    m_h: list[torch.Tensor] = field(default_factory=list)
    m_f: list[torch.Tensor] = field(default_factory=list)
    kl_inputs: list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]] = field(
        default_factory=list
    )
    head_before: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def add_selection(
        self, sel: MicroBatchSelection, applied: torch.Tensor, kept: torch.Tensor | None = None
    ) -> None:
        """Count one micro-batch's acceptance test (no host sync) and keep its finite shifts.

        Args:
            sel: the micro-batch's :class:`~capo.masking.MicroBatchSelection`.
            applied: [N] bool, the tokens whose gradient the step applies.
            kept: [N] bool, the tokens the mask keeps (the rejection counts are its complement; a
                criterion's count is the rejected tokens failing it); None: CAPO's ``sel.keep_flat``.
        """
        finite = sel.shifts.token_finite
        kept = sel.keep_flat if kept is None else kept
        self.counts["valid"] += float(finite.numel())
        all_rejected = ~kept.any() if finite.numel() else torch.zeros_like(finite[:1].any())
        fail_h, fail_f = sel.fail_hessian & ~kept, sel.fail_fisher & ~kept
        parts = (applied, ~kept, fail_h, fail_f, ~finite, all_rejected)
        micro = torch.stack([x.sum().double() for x in parts])  # in DEVICE_COUNTS order
        self.device_counts = micro if self.device_counts is None else self.device_counts + micro
        ok = sel.shifts.valid
        self.m_h.append(sel.shifts.m_H[ok].float())
        self.m_f.append(sel.shifts.m_F[ok].float())


def shift_stats(name: str, values: torch.Tensor) -> dict[str, float]:
    """``{name}/{stat}`` for each of :data:`capo.metrics.SHIFT_STATS` over ``values`` [N]; {} when empty."""
    if values.numel() == 0:
        return {}
    v = values.double()
    q = torch.quantile(v, torch.tensor([0.5, 0.99], dtype=torch.float64, device=v.device))
    stats = {"mean": v.mean(), "p50": q[0], "p99": q[1], "max": v.max()}
    return {f"{name}/{stat}": float(stats[stat]) for stat in SHIFT_STATS}


def record_micro_batch(
    record: list[dict[str, torch.Tensor]],
    inputs: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    lr: float,
    valid: torch.Tensor,
    keep: torch.Tensor,
) -> None:
    """Append one micro-batch's inputs and masks to ``CAPOTrainer.capo_record`` (tests and debugging)."""
    record.append(
        {
            "completion_index": inputs["capo_completion_index"].detach().cpu(),
            **{name: t.detach().cpu() for name, t in tensors.items()},
            "lr": torch.tensor(lr),
            "valid": valid.cpu(),
            "keep": keep.cpu(),
        }
    )
