"""Per-GPU extra memory and step time of CAPO at the paper's shapes, from counted real allocations.

Method (no hand-written memory formula): one CAPO optimizer step of one rank is run for real on the
CPU, with the library functions the trainer calls, in the trainer's order (``CAPOTrainer.
_capo_micro_batch`` per micro-batch: ``accept_micro_batch``, ``last_layer_gradient``, the accepted-token
copy; then ``CAPOStep.finish`` at the step end: ``merge_rows``, ``allreduce_sparse_rows``,
``global_shifts``, ``SparseAdamMoments.update``), under :class:`allocations.OpCounter`, which records
every tensor allocation and every op's FLOPs and bytes. H, V, k, the dtypes and the number of
micro-batches are the target's, so every chunk size is the one the GPU run will use; only the tokens
per micro-batch n and the number U of distinct vocabulary rows the accepted gradient touches are
scaled down. Each quantity is then fitted as  q = a + b·n + c·U  by least squares over a grid of
(n, U) runs (the fit's worst relative residual is reported) and evaluated at the target's n and U.

Assumptions (printed with the table): hidden states and the output layer in bf16, CAPO's moments and
gradient rows in float32 (the trainer's defaults under ``bf16: true``); every valid token accepted
(the largest buffers); U = min(V, n·k) unless ``--unique-rows`` is given (the worst case; the real U
depends on how concentrated the top-k supports are); the micro-batches of a step touch the same
rows. Times are an H100 SXM roofline: each op takes max(FLOPs / peak, bytes / bandwidth) (no fusion,
no cache reuse), plus a fixed launch cost per kernel and per host sync, listed separately.

Usage:
    python benchmarks/projection.py                  # paper shapes, table + outputs/projection.json
    python benchmarks/projection.py --quick          # small shapes, seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import positive_int
from projection_step import (
    MICRO_PHASES,
    STEP_END_PHASES,
    Hardware,
    measure_moments_update,
    measure_step,
    measure_true_kl,
    rows_key,
)

from capo.moments import UPDATE_BLOCK_BYTES
from capo.shifts import default_chunk_size


@dataclass(frozen=True)
class Target:
    """The run shape of one GPU's optimizer step."""

    hidden: int = 3584
    vocab: int = 152_064
    support: int = 50
    micro_batches: int = 3
    tokens_per_micro_batch: int = 8 * 1024
    unique_rows: int | None = None
    chunk_size: int | None = None
    kernel: str = "fused"
    support_source: str = "forward"

    @property
    def chunk(self) -> int:
        """The chunk size a GPU run uses: ``chunk_size``, or the library's CUDA default for these shapes."""
        return self.chunk_size or default_chunk_size(
            self.support, self.hidden, torch.float32, "cuda"
        )

    @property
    def rows(self) -> int:
        """U: the given number of distinct rows, or the worst case min(V, n·k)."""
        worst = min(self.vocab, self.tokens_per_micro_batch * self.support)
        return worst if self.unique_rows is None else min(self.unique_rows, self.vocab)


PAPER = Target()
"""Qwen2.5-Math-7B (H 3584, V 152,064), k 50, 24 completions x 1024 tokens per GPU as 3 micro-batches."""
QUICK = Target(hidden=64, vocab=4096, support=8, micro_batches=2, tokens_per_micro_batch=1024)


def fit_linear(points: list[dict[str, float]], key: str) -> tuple[list[float], float]:
    """Least-squares (a, b, c) of q = a + b·n + c·U over the runs, and the worst relative residual.

    U is the micro-batch's own rows for micro-batch quantities, the step's union otherwise.
    """
    rows = rows_key(key)
    x = torch.tensor([[1.0, p["n"], p[rows]] for p in points], dtype=torch.float64)
    y = torch.tensor([p[key] for p in points], dtype=torch.float64)
    coef = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    resid = (x @ coef - y).abs() / y.abs().clamp_min(1.0)
    return coef.tolist(), float(resid.max())


def grid(target: Target, quick: bool) -> list[tuple[int, int]]:
    """(tokens per micro-batch, pool rows) of the runs: n above every chunk size, U from 4k to 4n·k."""
    base = 256 if quick else 512
    pools = (64, 256) if quick else (512, 2048)
    return [(n, u) for n in (base, 2 * base) for u in pools] + [(3 * base // 2, pools[0] * 2)]


def _moments_update_at_target(target: Target, out: dict, reuse: dict | None) -> None:
    """Replace the fitted moments-update quantities by the update measured at the target's U itself.

    Its live bytes at the start stay the fitted ones (peak − scratch − retained, linear in n and U).
    """
    same_rows = reuse is not None and reuse["target"].get("rows_used") == target.rows
    direct = (reuse or {}).get("moments_update_at_target") if same_rows else None
    if direct is None:
        direct = measure_moments_update(
            target.vocab, target.hidden, target.rows, UPDATE_BLOCK_BYTES["cuda"]
        )
    name = "mem.moments_update."
    start = (
        out[name + "peak"]["value"]
        - out[name + "scratch"]["value"]
        - out[name + "retained"]["value"]
    )
    for key, value in direct.items():
        out[key] = {"value": value, "measured_at_target": True}
    out[name + "peak"]["value"] += start
    out["moments_update_at_target"] = direct


def project(target: Target, quick: bool, dtype: torch.dtype, reuse: dict | None = None) -> dict:
    """Run the grid (or reuse the runs and true-KL counts of ``reuse``), fit, evaluate at the target."""
    runs = (
        reuse["runs"]
        if reuse
        else [
            measure_step(
                target.hidden,
                target.vocab,
                target.support,
                target.micro_batches,
                n,
                u,
                dtype,
                target.chunk,
                target.kernel,
                target.support_source,
            )
            for n, u in grid(target, quick)
        ]
    )
    at = {"n": float(target.tokens_per_micro_batch), "U": float(target.rows)}
    out: dict[str, dict[str, float]] = {}
    for key in runs[0]:
        if key in ("n", "U", "U_micro"):
            continue
        (a, b, c), resid = fit_linear(runs, key)
        value = a + b * at["n"] + c * at["U"]
        out[key] = {
            "value": value,
            "a": a,
            "b_per_token": b,
            "c_per_row": c,
        }
        out[key]["fit_max_rel_residual"] = resid
    _moments_update_at_target(target, out, reuse)
    # A peak is the max over phases of linear functions: take the max of the projected phase peaks.
    for peak, phases in (
        ("mem.peak_forward", MICRO_PHASES),
        ("mem.peak_step_end", STEP_END_PHASES),
    ):
        out[peak] = {"value": max(out[f"mem.{name}.peak"]["value"] for name in phases)}
    moments_dense = {"n": at["n"], "U": float(target.vocab)}
    (a, b, c), _ = fit_linear(runs, "mem.moments_update.retained")
    out["mem.moments_tables_dense"] = {"value": a + b * moments_dense["n"] + c * target.vocab}
    kl = (
        reuse["true_kl"]
        if reuse
        else measure_true_kl(target.hidden, target.vocab, 64 if quick else 1024, dtype)
    )
    direct = out.pop("moments_update_at_target")
    return {
        "moments_update_at_target": direct,
        "target": asdict(target) | {"rows_used": target.rows, "chunk_used": target.chunk},
        "runs": runs,
        "projected": out,
        "true_kl": kl,
    }


MiB = 2**20

MEMORY_ROWS = [
    ("moments tables after the step (R = U rows)", "mem.moments_update.retained", 1),
    ("moments tables, all V rows touched (steady-state worst)", "mem.moments_tables_dense", 1),
    ("micro-batch: hidden copy + top-k support + shifts", "mem.select.retained", 1),
    ("micro-batch: support/shift chunk scratch", "mem.select.scratch", 1),
    (
        "accepted tokens kept to the step end (global shift), per micro-batch",
        "mem.accepted.retained",
        "M",
    ),
    (
        "running sum of the accepted gradient rows (U rows), per micro-batch",
        "mem.gradient.retained+mem.accumulate.retained",
        "M",
    ),
    ("one micro-batch's gradient rows", "mem.gradient.retained", 1),
    ("gradient chunk scratch", "mem.gradient.scratch", 1),
    ("summing into the running gradient: scratch", "mem.accumulate.scratch", 1),
    ("PEAK during the last micro-batch's forward", "mem.peak_forward", 1),
    ("step end, all CAPO buffers at the peak of: merging the parts", "mem.merge.peak", 1),
    ("  the all-reduce of the union rows", "mem.allreduce.peak", 1),
    ("  the global shifts (proposed step Δ)", "mem.global_shifts.peak", 1),
    (
        "  the moments update (incl. growing the tables from 0 to U rows)",
        "mem.moments_update.peak",
        1,
    ),
    ("PEAK at the step end", "mem.peak_step_end", 1),
]


def render(result: dict, hw: Hardware) -> str:
    """The table of named buffers and phase times (MiB, ms)."""
    p, t = result["projected"], result["target"]
    lines = [
        f"CAPO per GPU at H={t['hidden']} V={t['vocab']} k={t['support']}, {t['micro_batches']} "
        f"micro-batches x {t['tokens_per_micro_batch']} tokens, U = {t['rows_used']} rows, "
        f"chunk = {t.get('chunk_used', t['chunk_size'])} tokens, capo_shift_kernel = {t.get('kernel', 'plain')}, "
        f"support from the {t.get('support_source', 'hidden')}",
        f"{'buffer':74s} {'MiB':>10s}  fit resid",
    ]
    for label, key, mult in MEMORY_ROWS:
        m = t["micro_batches"] if mult == "M" else 1
        keys = key.split("+")  # a sum of quantities
        v = max(sum(p[k]["value"] for k in keys), 0.0) * m / MiB  # retained < 0: a phase frees
        resid = max(p[k].get("fit_max_rel_residual", 0.0) for k in keys)
        lines.append(f"{label + (' x M' if m > 1 else ''):74s} {v:10.1f}  {resid:.1e}")
    kl = result["true_kl"]
    lines.append(f"{'diagnostic true KL: output-layer copy':74s} {kl['head_copy'] / MiB:10.1f}")
    lines.append(
        f"{'diagnostic true KL: logits scratch (1024-token chunks)':74s} {kl['scratch'] / MiB:10.1f}"
    )
    lines.append("")
    lines.append(
        f"{'phase (whole step)':24s} {'GFLOP':>9s} {'GB moved':>9s} {'roofline ms':>12s} "
        f"{'kernels':>9s} {'syncs':>7s} {'launch ms':>10s}"
    )
    total_roof = total_launch = 0.0
    for phase in MICRO_PHASES + STEP_END_PHASES:
        f, b = p[f"work.{phase}.flops"]["value"], p[f"work.{phase}.bytes"]["value"]
        roof, kern = p[f"work.{phase}.roofline_s"]["value"], p[f"work.{phase}.kernels"]["value"]
        sync = p[f"work.{phase}.syncs"]["value"]
        launch = kern * hw.launch_s + sync * hw.sync_s
        total_roof, total_launch = total_roof + roof, total_launch + launch
        lines.append(
            f"{phase:24s} {f / 1e9:9.1f} {b / 1e9:9.2f} {roof * 1e3:12.2f} {kern:9.0f} "
            f"{sync:7.0f} {launch * 1e3:10.2f}"
        )
    lines.append(
        f"{'total':24s} {'':9s} {'':9s} {total_roof * 1e3:12.2f} {'':9s} {'':7s} "
        f"{total_launch * 1e3:10.2f}"
    )
    sel = ("support", "select")
    sel_bytes = sum(p[f"work.{ph}.bytes"]["value"] for ph in sel)
    sel_kernels = sum(p[f"work.{ph}.kernels"]["value"] for ph in sel)
    sel_flops = sum(p[f"work.{ph}.flops"]["value"] for ph in sel)
    lines.append(
        f"selection (support + select): {sel_bytes / 1e9:.1f} GB moved, {sel_kernels:.0f} kernels, "
        f"{sel_flops / 1e12:.2f} TFLOP of matmuls"
    )
    lines.append(
        f"H100 SXM roofline: bf16 {hw.bf16_flops / 1e12:.0f} TFLOP/s, fp32 {hw.fp32_flops / 1e12:.0f} "
        f"TFLOP/s, {hw.bandwidth / 1e12:.2f} TB/s; launch {hw.launch_s * 1e6:.0f} us/kernel, "
        f"{hw.sync_s * 1e6:.0f} us/host sync (the step takes at least max(roofline, launch) time)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: project, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small target shape (seconds)")
    ap.add_argument("--tokens-per-micro-batch", type=positive_int, default=None)
    ap.add_argument("--micro-batches", type=positive_int, default=None)
    ap.add_argument(
        "--unique-rows", type=positive_int, default=None, help="U (default: min(V, n·k))"
    )
    ap.add_argument(
        "--chunk-size", type=int, default=None,
        help="capo_chunk_size (default: None, the library's CUDA default for the target's shapes)",
    )  # fmt: skip
    ap.add_argument("--kernel", choices=("fused", "plain"), default=None, help="capo_shift_kernel")
    ap.add_argument(
        "--support", choices=("forward", "hidden"), default=None,
        help="forward: from TRL's LM head tiles (training); hidden: recomputed (a second LM head)",
    )  # fmt: skip
    ap.add_argument("--reuse", help="a JSON this tool wrote: refit its runs at the new n, M, U")
    ap.add_argument("--out", default="outputs/projection.json")
    args = ap.parse_args(argv)
    target = QUICK if args.quick else PAPER
    changes = {
        "tokens_per_micro_batch": args.tokens_per_micro_batch,
        "micro_batches": args.micro_batches,
        "unique_rows": args.unique_rows,
        "chunk_size": args.chunk_size,
        "kernel": args.kernel,
        "support_source": args.support,
    }
    target = Target(**(asdict(target) | {k: v for k, v in changes.items() if v is not None}))
    if min(target.tokens_per_micro_batch, target.micro_batches, target.chunk_size or 1) < 1:
        ap.error("--tokens-per-micro-batch, --micro-batches and --chunk-size must be >= 1")
    reuse = None
    if args.reuse:
        reuse = json.loads(Path(args.reuse).read_text())
        same = ("hidden", "vocab", "support", "chunk_size", "kernel", "support_source")
        old = {"kernel": "plain", "support_source": "hidden"}  # records made before these options
        if any(reuse["target"].get(key, old.get(key)) != getattr(target, key) for key in same):
            ap.error(f"--reuse {args.reuse} was measured at other {', '.join(same)}")
    result = project(target, args.quick, torch.bfloat16, reuse)
    hw = Hardware()
    result["hardware"] = asdict(hw)
    print(render(result, hw))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
