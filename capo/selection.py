"""The local trust-region acceptance test of CAPO (paper eq 11, Algorithm 1).

A subset b is kept iff  hessian_low < m_H(b) < hessian_high  and  m_F(b) < fisher_max, with strict
inequalities; a bound set to None is not applied. Subsets whose shifts are not finite, or that hold no
finite token, are always rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from capo.shifts import Shifts

__all__ = ["Thresholds", "acceptance", "select"]


@dataclass(frozen=True)
class Thresholds:
    """Bounds of the acceptance test (eq 11); None disables a bound.

    Args:
        hessian_low: δ_H, keep only m_H > hessian_low.
        hessian_high: δ_H^high, keep only m_H < hessian_high.
        fisher_max: δ_F, keep only m_F < fisher_max.
    """

    hessian_low: float | None = None
    hessian_high: float | None = None
    fisher_max: float | None = None

    def __post_init__(self) -> None:
        for name in ("hessian_low", "hessian_high", "fisher_max"):
            value = getattr(self, name)
            if value is None:
                continue
            value = float(value)
            if math.isnan(value):
                raise ValueError(f"{name} must be a number or None, got NaN")
            object.__setattr__(self, name, value)
        lo, hi = self.hessian_low, self.hessian_high
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"hessian_low = {lo} must be < hessian_high = {hi}")

    def as_dict(self) -> dict[str, float | None]:
        """``{"hessian_low": ..., "hessian_high": ..., "fisher_max": ...}`` (the CAPOConfig field names)."""
        return {name: getattr(self, name) for name in ("hessian_low", "hessian_high", "fisher_max")}


def acceptance(
    shifts: Shifts, thresholds: Thresholds
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The test of eq 11 and each criterion: (keep, passes the m_H band, passes m_F < fisher_max), [S] bool.

    ``keep`` = both criteria; a subset whose shifts are not finite (or that holds no finite token) passes
    neither.
    """
    if not isinstance(thresholds, Thresholds):
        raise ValueError(f"thresholds must be a Thresholds, got {type(thresholds).__name__}")
    m_h, m_f, ok = shifts.m_H, shifts.m_F, shifts.valid
    hessian = ok.clone()
    if thresholds.hessian_low is not None:
        hessian &= m_h > thresholds.hessian_low
    if thresholds.hessian_high is not None:
        hessian &= m_h < thresholds.hessian_high
    fisher = ok.clone()
    if thresholds.fisher_max is not None:
        fisher &= m_f < thresholds.fisher_max
    return hessian & fisher, hessian, fisher


def select(shifts: Shifts, thresholds: Thresholds) -> torch.Tensor:
    """The acceptance mask of eq 11.

    Args:
        shifts: per-subset m_H, m_F from :func:`capo.directional_shifts`.
        thresholds: the bounds (strict; None = not applied).

    Returns:
        [S] bool, True for the subsets kept.
    """
    return acceptance(shifts, thresholds)[0]
