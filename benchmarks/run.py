"""Benchmark the CAPO step (capo/) against the naive implementation (benchmarks/naive.py).

Times and peak extra memory of: support extraction from hidden states + output weight, directional
shifts (SGD / Adam, token level / batch level), select, batch gradient + moments update; the output
layer's forward+backward on the same tokens is timed as the yardstick of a training step. Every case
runs naive and fast in the same process, repetitions interleaved (naive, fast, naive, fast, ...), and
reports medians, their ratio, and the max relative disagreement (max |naive − fast| / max |naive|).

Memory: each shape is re-run in a fresh subprocess with ``MALLOC_MMAP_THRESHOLD_=65536`` (every
tensor of 64 KiB or more gets its own mapping and is returned to the OS when freed). Before each
operation the peak-RSS counter is reset (``/proc/self/clear_refs`` = 5) and the resident size read;
peak extra = VmHWM after − VmRSS before. Inputs and the moments state exist before and do not count.

Usage:
    python benchmarks/run.py                 # full grid (a few minutes on 2 cores)
    python benchmarks/run.py --quick         # small shapes, seconds
    python benchmarks/run.py --out outputs/bench --threads 1 --reps 3
    python benchmarks/run.py --only fused    # the fused token-level shift vs plain vs a read bound
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import positive_int
from cases import LR, make_case, moments_agreement, ops_for
from fused import SHAPES as FUSED_SHAPES
from fused import fused_comparison, fused_text
from measure import fit_exponent, peak_extra_bytes, time_ops, timed

import capo

# ----------------------------------------------------------------------------- timing / memory


def memory_child(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    case = make_case(**spec["shape"])
    ops = ops_for(case, spec["ops"])
    res: dict[str, dict] = {}
    for op, impls in ops.items():
        res[op] = {}
        for name, fn in impls.items():
            if op == "grad_moments":
                fn()  # the first update grows the sparse tables: state, not extra memory
            res[op][name + "_bytes"] = peak_extra_bytes(fn)
    mom = case["mom"]
    res["_moments_state"] = {
        "sparse_bytes": mom.num_rows * mom.hidden_size * 2 * 4,
        "dense_bytes": mom.vocab_size * mom.hidden_size * 2 * 4,
        "rows_touched": mom.num_rows,
    }
    return res


def measure_memory(shape: dict, ops: list[str], threads: int) -> dict:
    spec = {"shape": shape, "ops": ops, "threads": threads}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed for {shape}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- scaling


def chunk_sweep(shape: dict, chunks: list[int], reps: int) -> list[dict]:
    """Fast Adam token level at one shape for several chunk sizes: where it becomes memory-bound."""
    case = make_case(**shape)
    b, adam = case["batch"], capo.AdamStep(LR, case["mom"])
    n_elem = shape["N"] * shape["k"] * shape["H"]
    fns = {c: (lambda c=c: capo.directional_shifts(b, adam, chunk_size=c)) for c in chunks}
    for fn in fns.values():
        fn()
    times: dict[int, list[float]] = {c: [] for c in chunks}
    for _ in range(reps):
        for c, fn in fns.items():
            times[c].append(timed(fn)[0])
    out = []
    for c in chunks:
        t = statistics.median(times[c])
        out.append(
            {
                "chunk_tokens": c,
                "block_MiB": c * shape["k"] * shape["H"] * 4 / 2**20,
                "time_s": t,
                "ns_per_elem": 1e9 * t / n_elem,
            }
        )
    return out


def moments_growth(vocab: int, hidden: int, rows: list[int]) -> list[dict]:
    """Bytes held by SparseAdamMoments after touching R rows (one update) vs the dense [V, H] tables."""
    out = []
    g = torch.Generator().manual_seed(0)
    for r in rows:
        mom = capo.SparseAdamMoments(vocab, hidden)
        ids = torch.randperm(vocab, generator=g)[:r]
        mom.update(ids, torch.ones(r, hidden))
        held = sum(
            t.numel() * t.element_size()
            for t in mom.state_dict().values()
            if isinstance(t, torch.Tensor)
        )
        cap = sum(
            t.numel() * t.element_size() for t in (mom._m, mom._v, mom._slot, mom._ids, mom._last)
        )
        out.append(
            {
                "rows": r,
                "state_bytes": held,
                "allocated_bytes": cap,
                "dense_bytes": 2 * vocab * hidden * 4,
            }
        )
        del mom
    return out


# ----------------------------------------------------------------------------- report


def _fmt_ms(x: float | None) -> str:
    return "-" if x is None else (f"{1e3 * x:9.1f}" if x >= 0.01 else f"{1e3 * x:9.3f}")


def _fmt_mb(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**20:8.1f}"


def table(rows: list[dict]) -> str:
    head = (
        f"{'case':<10} {'op':<18} {'N':>6} {'k':>4} {'H':>5} {'V':>6} | {'naive ms':>9} "
        f"{'fast ms':>9} {'speedup':>8} | {'naive MB':>8} {'fast MB':>8} {'mem ×':>7} | rel err"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        s = r["shape"]
        sp = r.get("speedup")
        nb, fb = r.get("naive_bytes"), r.get("fast_bytes")
        mr = f"{nb / fb:7.1f}" if nb and fb else "      -"
        err = r.get("max_rel_err")
        lines.append(
            f"{r['case']:<10} {r['op']:<18} {s['N']:>6} {s['k']:>4} {s['H']:>5} {s['V']:>6} | "
            f"{_fmt_ms(r.get('naive_s')):>9} {_fmt_ms(r.get('fast_s')):>9} "
            f"{(f'{sp:7.1f}x' if sp else '-'):>8} | {_fmt_mb(nb):>8} {_fmt_mb(fb):>8} {mr} | "
            f"{'-' if err is None else f'{err:.1e}'}"
        )
    return "\n".join(lines)


def run_case(
    name: str, shape: dict, ops: list[str], reps: int, threads: int, memory: bool
) -> list[dict]:
    print(f"[{name}] {shape} ops={ops}", file=sys.stderr, flush=True)
    case = make_case(**shape)
    res = time_ops(ops_for(case, ops), reps)
    if "grad_moments" in ops:
        res["grad_moments"]["max_rel_err"] = moments_agreement(case)
    del case
    gc.collect()
    mem = measure_memory(shape, ops, threads) if memory else {}
    rows = []
    for op in ops:
        row = {"case": name, "op": op, "shape": shape, **res[op], **mem.get(op, {})}
        if op == "grad_moments" and mem:
            row["moments_state"] = mem["_moments_state"]
        rows.append(row)
    return rows


TOKEN_OPS = ["shifts_adam_token", "shifts_sgd_token", "select"]
PLANS: dict[str, dict] = {
    "quick": {
        "cases": [
            (
                "target",
                {"N": 512, "k": 16, "H": 128, "V": 1024},
                [
                    "support",
                    *TOKEN_OPS,
                    "shifts_adam_batch",
                    "shifts_sgd_batch",
                    "yardstick_fwd_bwd",
                ],
            ),
            ("moments", {"N": 128, "k": 16, "H": 256, "V": 1024}, ["grad_moments"]),
        ],
        "grid_base": {"N": 256, "k": 8, "H": 64, "V": 1024},
        "grid": {"N": [128, 512], "k": [4, 16], "H": [32, 128]},
        "sweep_shape": {"N": 512, "k": 16, "H": 128, "V": 1024},
        "sweep_chunks": [8, 64, 512],
        "growth_rows": [100, 1000, 8000],
    },
    "full": {
        "cases": [
            (
                "target",
                {"N": 8192, "k": 50, "H": 1024, "V": 4096},
                ["support", *TOKEN_OPS, "yardstick_fwd_bwd"],
            ),
            (
                "batch",
                {"N": 2048, "k": 50, "H": 1024, "V": 4096},
                ["shifts_adam_batch", "shifts_sgd_batch"],
            ),
            ("moments", {"N": 1024, "k": 50, "H": 3584, "V": 8192}, ["grad_moments"]),
        ],
        "grid_base": {"N": 2048, "k": 32, "H": 512, "V": 4096},
        "grid": {"N": [512, 2048, 8192], "k": [8, 32, 128], "H": [128, 512, 2048]},
        "sweep_shape": {"N": 4096, "k": 50, "H": 1024, "V": 4096},
        "sweep_chunks": [2, 4, 8, 12, 20, 40, 81, 256],
        "growth_rows": [1000, 8000, 32000],
    },
}
"""Shapes of the quick (CI smoke) and full benchmark."""

GROWTH_V, GROWTH_H = 152064, 1024
"""The paper's vocabulary (Qwen2.5) and a 1024-wide head, for the moments-growth table."""


def scaling_fits(plan: dict, reps: int, threads: int, memory: bool, rows: list[dict]) -> dict:
    """Log-log exponents of time and memory of ``shifts_adam_token`` along each grid axis."""
    scaling: dict[str, dict] = {}
    for axis, values in plan["grid"].items():
        pts = []
        for x in values:
            shape = {**plan["grid_base"], axis: x}
            pts.extend(
                run_case(f"scale-{axis}", shape, ["shifts_adam_token"], reps, threads, memory)
            )
        rows.extend(pts)
        xs = [float(p["shape"][axis]) for p in pts]
        scaling[axis] = {
            impl + "_" + what: fit_exponent(xs, [float(p[f"{impl}_{key}"]) for p in pts])
            for impl in ("naive", "fast")
            for what, key in (("time_exp", "s"), ("mem_exp", "bytes"))
            if all(p.get(f"{impl}_{key}") for p in pts)
        }
    return scaling


def report_text(
    rows: list[dict], growth: list[dict], scaling: dict, sweep: list[dict], plan: dict
) -> str:
    """The printed table: per-case figures, moments growth, fitted exponents, chunk sweep."""
    text = table(rows)
    text += (
        f"\n\nsparse Adam moments held after touching R rows (V = {GROWTH_V}, H = {GROWTH_H}):\n"
    )
    for gr in growth:
        text += (
            f"  R={gr['rows']:>6}: {gr['allocated_bytes'] / 2**20:8.1f} MiB allocated "
            f"(dense [V, H] m+v: {gr['dense_bytes'] / 2**20:.0f} MiB)\n"
        )
    if scaling:
        text += "\n\nfitted exponents (shifts_adam_token, log-log slope over the grid axis):\n"
        for axis, fits in scaling.items():
            text += f"  {axis}: " + ", ".join(f"{k}={v:.2f}" for k, v in fits.items()) + "\n"
    if sweep:
        text += f"\nchunk sweep (fast shifts_adam_token at {plan['sweep_shape']}):\n"
        for s in sweep:
            text += (
                f"  chunk={s['chunk_tokens']:>5} tokens  block={s['block_MiB']:7.2f} MiB  "
                f"{1e3 * s['time_s']:8.1f} ms  {s['ns_per_elem']:.3f} ns/(N·k·H)\n"
            )
    return text


def run_meta(threads: int, reps: int) -> dict:
    """When and where the benchmark ran."""
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": threads,
        "reps": reps,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "memory_method": "fresh subprocess per shape, MALLOC_MMAP_THRESHOLD_=65536, VmHWM-VmRSS",
        "lr": LR,
    }


SECTIONS = {"scaling", "sweep", "fused"}
"""``--only`` names besides the cases: the scaling fits, the chunk sweep, the fused comparison."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, 1 repetition (CI smoke)")
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and table.txt")
    ap.add_argument(
        "--threads", type=positive_int, default=1, help="torch intra-op threads (default 1)"
    )
    ap.add_argument(
        "--reps", type=positive_int, default=None, help="timed repetitions per implementation"
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--only", default=None, help="comma-separated case names to run")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    known = {name for plan in PLANS.values() for name, _, _ in plan["cases"]} | SECTIONS
    unknown = sorted(set(args.only.split(",")) - known) if args.only else []
    if unknown:
        ap.error(f"--only: unknown {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    torch.set_num_threads(args.threads)
    reps = args.reps or (1 if args.quick else 3)
    memory = not args.no_memory and sys.platform.startswith("linux")
    plan = PLANS["quick" if args.quick else "full"]
    only = set(args.only.split(",")) if args.only else None
    rows: list[dict] = []
    for name, shape, ops in plan["cases"]:
        if only is None or name in only:
            rows.extend(run_case(name, shape, ops, reps, args.threads, memory))
    scaling = {}
    if only is None or "scaling" in only:
        scaling = scaling_fits(plan, reps, args.threads, memory, rows)
    sweep = []
    if only is None or "sweep" in only:
        print(
            f"[sweep] {plan['sweep_shape']} chunks={plan['sweep_chunks']}",
            file=sys.stderr,
            flush=True,
        )
        sweep = chunk_sweep(plan["sweep_shape"], plan["sweep_chunks"], reps)
    fused = None
    if only is None or "fused" in only:
        shape = FUSED_SHAPES["quick" if args.quick else "full"]
        print(f"[fused] {shape}", file=sys.stderr, flush=True)
        fused = fused_comparison(shape, max(reps, 3))
    growth = moments_growth(GROWTH_V, GROWTH_H, plan["growth_rows"])
    text = report_text(rows, growth, scaling, sweep, plan)
    if fused is not None:
        text += "\n" + fused_text(fused)
    meta = run_meta(args.threads, reps)
    header = (
        f"# CAPO benchmark {meta['date']}  torch {meta['torch']}  threads={args.threads}  "
        f"reps={reps} (median, interleaved)  load={meta['loadavg']}"
    )
    print(header)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {"meta": meta, "rows": rows, "scaling": scaling, "chunk_sweep": sweep}
        payload["fused"] = fused
        (args.out / "results.json").write_text(json.dumps(payload, indent=1))
        (args.out / "table.txt").write_text(header + "\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
