"""The fused token-level Adam shift against the plain path and a memory-bandwidth bound, in one run.

At one shape, repetitions interleaved (plain, fused, floor, read, plain, ...), medians reported:

- ``plain``: ``directional_shifts(kernel="plain")`` at the default chunk size (the code before the kernel);
- ``fused``: ``directional_shifts(kernel="fused")`` (:mod:`capo.fused_shift`);
- ``fused_cached``: the fused shift on the same tokens with a 64-row vocabulary, so that every gathered
  moment row comes from the core's cache: the kernel's arithmetic floor (sqrt and division per element);
- ``read``: a STREAM-like read (``torch.sum``) of as many bytes as the kernel's gathered rows, N·k·H values
  of m and of v: the memory-bandwidth bound of one pass over them.

Also: the first fused call's time (compilation, or loading it from inductor's on-disk cache), how many graphs
the repetitions compiled after it (0 means one compilation served every call), and the worst relative
difference between fused and plain.

Usage:
    python benchmarks/fused.py                   # N 8192, k 50, H 1024, V 4096, 1 thread
    python benchmarks/fused.py --quick           # small shapes, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import positive_int
from cases import LR, make_case, max_rel_err
from measure import timed

import capo

SHAPES = {
    "full": {"N": 8192, "k": 50, "H": 1024, "V": 4096},
    "quick": {"N": 512, "k": 16, "H": 128, "V": 1024},
}
CACHED_V = 64
"""Vocabulary of the cache-resident variant: 32 touched rows of m and v, 256 KiB at H = 1024."""


def fused_comparison(shape: dict, reps: int) -> dict:
    """Medians (s) of plain, fused, fused_cached and read at ``shape``; compile time, recompiles, error."""
    case, small = (
        make_case(**shape, weight=False),
        make_case(**shape | {"V": CACHED_V}, weight=False),
    )
    batch, adam = case["batch"], capo.AdamStep(LR, case["mom"])
    small_batch, small_adam = small["batch"], capo.AdamStep(LR, small["mom"])
    n_values = 2 * shape["N"] * shape["k"] * shape["H"]
    buffer = torch.ones(n_values // shape["H"], shape["H"])
    compile_s, fused_out = timed(lambda: capo.directional_shifts(batch, adam, kernel="fused"))
    capo.directional_shifts(small_batch, small_adam, kernel="fused")
    graphs = counters["stats"]["unique_graphs"]
    fns = {
        "plain": lambda: capo.directional_shifts(batch, adam, kernel="plain"),
        "fused": lambda: capo.directional_shifts(batch, adam, kernel="fused"),
        "fused_cached": lambda: capo.directional_shifts(small_batch, small_adam, kernel="fused"),
        "read": lambda: buffer.sum(),
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    plain_out = fns["plain"]()
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timed(fn)[0])
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "shape": shape,
        "median_s": med,
        "all_s": times,
        "first_fused_call_s": compile_s,
        "graphs_compiled_during_reps": counters["stats"]["unique_graphs"] - graphs,
        "read_bytes": n_values * 4,
        "read_GBps": n_values * 4 / med["read"] / 1e9,
        "speedup_vs_plain": med["plain"] / med["fused"],
        "fused_over_read": med["fused"] / med["read"],
        "floor_over_read": med["fused_cached"] / med["read"],
        "max_rel_err": max_rel_err(plain_out, fused_out, "shifts"),
    }


def fused_text(res: dict) -> str:
    """The printed lines of one comparison."""
    med = res["median_s"]
    s = res["shape"]
    return (
        f"fused token-level Adam shift at N={s['N']} k={s['k']} H={s['H']} V={s['V']}:\n"
        f"  plain {1e3 * med['plain']:8.1f} ms   fused {1e3 * med['fused']:8.1f} ms   "
        f"({res['speedup_vs_plain']:.2f}x faster)\n"
        f"  read of the gathered bytes ({res['read_bytes'] / 1e9:.2f} GB, {res['read_GBps']:.1f} GB/s) "
        f"{1e3 * med['read']:8.1f} ms: fused is {res['fused_over_read']:.2f}x the read bound\n"
        f"  fused with cache-resident rows (arithmetic floor) {1e3 * med['fused_cached']:8.1f} ms "
        f"= {res['floor_over_read']:.2f}x the read bound\n"
        f"  first fused call {res['first_fused_call_s']:.1f} s (compilation or inductor's cache); "
        f"graphs compiled during the repetitions: {res['graphs_compiled_during_reps']}; "
        f"fused vs plain: {res['max_rel_err']:.1e}\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shape (seconds)")
    ap.add_argument(
        "--reps", type=positive_int, default=5, help="interleaved repetitions (default 5)"
    )
    ap.add_argument(
        "--threads", type=positive_int, default=1, help="torch intra-op threads (default 1)"
    )
    ap.add_argument("--out", type=Path, default=None, help="write fused.json here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    res = fused_comparison(SHAPES["quick" if args.quick else "full"], args.reps)
    res["threads"] = args.threads
    print(fused_text(res), end="")
    print(f"({time.time() - t0:.0f} s)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fused.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
