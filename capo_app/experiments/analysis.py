"""Seed aggregation, collapse detection and the sample-efficiency ratio (shared by both experiments).

Definitions (fixed before any run, reported with every result):

- *Collapse*: a run collapses when the best value of its metric over the last ``tail`` fraction of
  the evaluations stays below the starting value minus ``margin``: it fell below the base model and
  did not come back.
- *Completions to reach a target*: the first evaluation point whose metric, smoothed by a trailing mean
  over ``window`` evaluations, is ≥ the target (the base model at 0 completions does not count); None
  if it never is. The headline ratio is (completions conservative GRPO needs to reach its own final
  value) / (completions the method needs to reach it), computed on the seed-mean curves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

__all__ = [
    "collapsed",
    "completions_to_reach",
    "mean_se",
    "smooth",
    "spearman",
    "tail_mean",
]


def mean_se(runs: Sequence[Sequence[float]] | Array) -> tuple[Array, Array]:
    """Mean and standard error over seeds of equally long curves.

    Args:
        runs: [n_seeds, n_points] values.

    Returns:
        (mean [n_points], standard error [n_points]; zeros for a single seed).
    """
    x = np.asarray(runs, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"runs must have shape [n_seeds, n_points], got {x.shape}")
    se = x.std(axis=0, ddof=1) / np.sqrt(x.shape[0]) if x.shape[0] > 1 else np.zeros(x.shape[1])
    return x.mean(axis=0), se


def smooth(curve: Sequence[float] | Array, window: int) -> Array:
    """Trailing mean over ``window`` points (shorter at the start)."""
    x = np.asarray(curve, dtype=np.float64)
    if window <= 1:
        return x.copy()
    c = np.cumsum(np.concatenate([[0.0], x]))
    idx = np.arange(1, x.shape[0] + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def tail_mean(curve: Sequence[float] | Array, tail: float = 0.1) -> float:
    """Mean of the last ``tail`` fraction of a curve (at least one point)."""
    x = np.asarray(curve, dtype=np.float64)
    n = max(1, round(tail * x.shape[0]))
    return float(x[-n:].mean())


def collapsed(curve: Sequence[float] | Array, margin: float, tail: float = 0.2) -> bool:
    """Whether a run collapsed: max over the last ``tail`` of the curve < curve[0] − ``margin``."""
    x = np.asarray(curve, dtype=np.float64)
    n = max(1, round(tail * x.shape[0]))
    return bool(np.nanmax(np.where(np.isfinite(x[-n:]), x[-n:], -np.inf)) < x[0] - margin)


def completions_to_reach(
    curve: Sequence[float] | Array,
    completions: Sequence[float] | Array,
    target: float,
    window: int = 1,
    start: int = 0,
) -> float | None:
    """Completions at the first point where the trailing-mean curve reaches ``target``.

    Args:
        curve: Metric at each evaluation point.
        completions: Completions consumed at each evaluation point (same length).
        target: Value to reach.
        window: Trailing-mean window (in evaluation points).
        start: First eligible point (e.g. 1 to skip the base model at 0 completions, or
            ``window`` − 1 so that only full windows count).

    Returns:
        The completions, or None if the target is never reached.
    """
    s = smooth(curve, window)
    hit = np.flatnonzero(s >= target)
    hit = hit[hit >= start]
    return None if hit.size == 0 else float(np.asarray(completions)[hit[0]])


def spearman(x: Sequence[float] | Array, y: Sequence[float] | Array) -> float:
    """Spearman rank correlation (NaN when undefined)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)
