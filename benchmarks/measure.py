"""Timing (interleaved repetitions, medians) and peak extra memory (VmHWM − VmRSS) of benchmark ops."""

from __future__ import annotations

import ctypes
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable

from cases import SLOW_S, max_rel_err


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def time_ops(ops: dict, reps: int) -> dict[str, dict]:
    """Per op: interleaved repetitions of all its implementations; medians, ratio, agreement."""
    res: dict[str, dict] = {}
    for op, impls in ops.items():
        times: dict[str, list[float]] = {name: [] for name in impls}
        outs: dict[str, object] = {}
        for name, fn in impls.items():  # warm-up (allocator, first-call overheads)
            dt, outs[name] = timed(fn)
            if dt > SLOW_S:  # a slow call is its own warm-up: keep it as the first repetition
                times[name].append(dt)
        for _ in range(reps):
            for name, fn in impls.items():
                if len(times[name]) >= reps:
                    continue
                gc.collect()
                dt, _ = timed(fn)
                times[name].append(dt)
        entry: dict = {name + "_s": statistics.median(ts) for name, ts in times.items()}
        entry.update({name + "_all_s": ts for name, ts in times.items()})
        if "naive" in impls and "fast" in impls:
            entry["speedup"] = entry["naive_s"] / entry["fast_s"]
            entry["max_rel_err"] = (
                None if op == "grad_moments" else max_rel_err(outs["naive"], outs["fast"], op)
            )
        res[op] = entry
    return res


_libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak resident memory above the level before ``fn`` (needs Linux, see module docstring)."""
    gc.collect()
    if _libc is not None:
        _libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    out = fn()
    peak = _status_kb("VmHWM")
    del out
    return max(0, peak - before) * 1024


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-12)) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den
