"""Shared pieces of the verification reports: check records, error metrics, slope fits, JSON output.

A :class:`Check` is one row of a report's summary table. ``must_hold`` marks the checks whose failure
makes the command exit non-zero: agreement of our own implementations and mathematically certain
identities. The paper's claims are checked too, but a claim that fails is a finding, not an error.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from tqdm import tqdm

HOLDS, FAILS = "holds", "fails"
"""Verdict words; a conditional verdict reads "holds only ..." (see :func:`conditional`)."""


def conditional(condition: str) -> str:
    """The verdict "holds only <condition>"."""
    return f"holds only {condition}"


@dataclass
class Check:
    """One row of a report's summary table.

    Attributes:
        claim: What is checked, in words.
        equation: The paper's equation / lemma (or "ours" for implementation checks).
        verdict: "holds", "fails" or "holds only <condition>".
        worst: The worst figure, as text (e.g. "max rel err 3.1e-15").
        must_hold: Whether a failure makes the exit code non-zero.
        ok: Whether the check passed (for a paper claim: whether the claim held as stated).
        details: Any figures behind the row (written to the JSON).
    """

    claim: str
    equation: str
    verdict: str
    worst: str
    must_hold: bool
    ok: bool
    details: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The summary-table fields (no details)."""
        d = asdict(self)
        d.pop("details")
        return d


def rel_error(value: ArrayLike, expected: ArrayLike) -> float:
    """Norm-wise relative error max|value − expected| / max|expected| (0 when both vanish).

    Args:
        value: The computed array.
        expected: The reference array (same shape).

    Returns:
        The relative error (inf if ``expected`` is all zero and ``value`` is not).
    """
    v = np.asarray(value, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if v.shape != e.shape:
        raise ValueError(f"shapes differ: value {v.shape} vs expected {e.shape}")
    if v.size == 0:
        return 0.0
    err = float(np.max(np.abs(v - e)))
    scale = float(np.max(np.abs(e)))
    if scale == 0.0:
        return 0.0 if err == 0.0 else math.inf
    return err / scale


def fit_slope(x: ArrayLike, y: ArrayLike, floor: float = 0.0) -> float:
    """Least-squares slope of log|y| against log x over the points with |y| > floor.

    Args:
        x: Positive abscissae (e.g. ‖Δ‖).
        y: Residuals (signs ignored).
        floor: Points with |y| ≤ floor (round-off level) are dropped.

    Returns:
        The fitted slope, NaN with fewer than three usable points.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.abs(np.asarray(y, dtype=np.float64))
    keep = (ys > floor) & np.isfinite(ys) & (xs > 0)
    if keep.sum() < 3:
        return math.nan
    return float(np.polyfit(np.log(xs[keep]), np.log(ys[keep]), 1)[0])


def fmt(x: float) -> str:
    """Short scientific format for report tables."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, int | np.integer):
        return str(int(x))
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e4:
        return f"{x:.3g}"
    return f"{x:.2e}"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        x = float(obj)
        return x if math.isfinite(x) else str(x)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (NaN/inf as strings, arrays as lists)."""
    path.write_text(json.dumps(_jsonable(payload), indent=1, ensure_ascii=False) + "\n")


def all_ok(checks: Iterable[Check]) -> bool:
    """Whether every check that must hold passed."""
    return all(c.ok for c in checks if c.must_hold)


def progress(iterable: Iterable[Any], desc: str, total: int | None = None) -> Iterable[Any]:
    """A tqdm progress bar on stderr (disabled when ``CAPO_VERIFY_NO_PROGRESS`` is set)."""
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        leave=False,
        disable=bool(os.environ.get("CAPO_VERIFY_NO_PROGRESS")),
        dynamic_ncols=True,
    )
