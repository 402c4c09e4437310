"""The counts and shift statistics of one optimizer step (filled by :class:`capo.optimizer_step.CAPOStep`).

At the step end the counts are all-reduced in one call (host counts are tensor sizes, device counts are
accumulated without a host sync).
"""

from __future__ import annotations

import torch

from capo.metrics import SHIFT_STATS

__all__ = [
    "COUNTS",
    "DEVICE_COUNTS",
    "HOST_COUNTS",
    "shift_stats",
]

HOST_COUNTS = ("completions", "valid")
"""Counts known on the host without a device sync (tensor sizes)."""
DEVICE_COUNTS = ("applied", "rejected", "rej_hessian", "rej_fisher", "nonfinite", "all_rejected")
"""Data-dependent counts, accumulated on the device and synced once per optimizer step."""
COUNTS = HOST_COUNTS + DEVICE_COUNTS
"""All counts, in the order of the one all-reduce."""


def shift_stats(name: str, values: torch.Tensor) -> dict[str, float]:
    """``{name}/{stat}`` for each of :data:`capo.metrics.SHIFT_STATS` over ``values`` [N]; {} when empty."""
    if values.numel() == 0:
        return {}
    v = values.double()
    q = torch.quantile(v, torch.tensor([0.5, 0.99], dtype=torch.float64, device=v.device))
    stats = {"mean": v.mean(), "p50": q[0], "p99": q[1], "max": v.max()}
    return {f"{name}/{stat}": float(stats[stat]) for stat in SHIFT_STATS}
