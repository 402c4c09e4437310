"""Extra memory and time of the KL budget per GPU: projected at the paper's shapes, measured on the CPU here.

The budget (``capo_kl_budget``, docs/design.md §5.1) applies the optimizer's step, measures its KL with one
no-grad forward and moves the parameters along the step (``capo.applied_step``). What it adds per rank:

- the output layer before the step and the step's final hidden states (π_before; as the true-KL diagnostic);
- the [C, V] logits chunks of the full-vocabulary KL (counted by ``projection_step.measure_true_kl``);
- the move's temporaries: a few [CHUNK] float32 tensors (counted here with ``allocations.OpCounter``);
- no copy of the parameters (the lookahead used to back them all up: 2 bytes per bf16 parameter under DDP).

Projected (``--project``; H100 SXM figures of ``projection_step.Hardware``, stated with the table): memory from
counted allocations scaled to the target's shapes; time of one lookahead forward (2·P FLOPs per token at an
assumed MFU), of its KL (the logits before and after), and of one move (its bytes at HBM bandwidth, plus under
ZeRO-1/2 the bit16 all-gather at an assumed NVLink bandwidth; ZeRO-3 gathers at the next forward).

Measured (``--measure``, run it alone or under ``accelerate launch`` with a ZeRO config): ``capo train`` on the
embedded tiny default at lr 1e-3 with a budget, the control's peak allocation per step (``OpCounter`` around
``StepKLControl.after_optimizer_step``) against the parameters' bytes, and its wall time against the step's.

Usage:
    python benchmarks/kl_budget_memory.py --project [--quick] --out docs/kl_budget
    python benchmarks/kl_budget_memory.py --measure --out docs/kl_budget
    accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 2 --mixed_precision no \\
        benchmarks/kl_budget_memory.py --measure --out docs/kl_budget
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from allocations import OpCounter
from arguments import positive_int
from projection_step import Hardware, measure_true_kl

from capo_app.kl_budget_plan import extra_memory_mib

MIB = 2**20


@dataclass(frozen=True)
class Paper:
    """Qwen2.5-Math-7B on 4 H100s in the aggressive regime (recipes/grpo_aggressive.yaml)."""

    params: float = 7.62e9
    hidden: int = 3584
    vocab: int = 152_064
    ranks: int = 4
    completions_per_rank: int = 24  # 96 per step over 4 ranks: 3 micro-batches of 8
    prompt_tokens: int = 512
    completion_tokens: int = 1024
    kl_chunk: int = 1024  # full_vocab_kl's token chunk
    mfu: float = 0.4  # assumed model-FLOP utilisation of a forward
    nvlink: float = 450e9  # assumed all-gather bandwidth per rank (bytes/s, one direction)


def move_scratch_per_element() -> float:
    """Peak bytes a move allocates per element of one chunk (Adam, float32 master), counted."""
    from capo import applied_step

    chunk, saved = 1 << 12, applied_step.CHUNK
    applied_step.CHUNK = chunk
    try:
        p = torch.nn.Parameter(torch.randn(8 * chunk))
        opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.1)
        p.grad = torch.randn_like(p)
        opt.step()
        line = applied_step.AppliedStep(opt, [1e-3])
        with OpCounter() as counter, counter.phase("move") as move:
            line.move_to(0.5)
    finally:
        applied_step.CHUNK = saved
    return move.peak / chunk


def project(target: Paper, hw: Hardware, quick: bool) -> dict[str, Any]:
    """Extra memory (MiB) and time (ms) per GPU of the budget at ``target``, and the bounds it is held to.

    The memory is the dry run's own projection (``capo_app.kl_budget_plan.extra_memory_mib``); beside it, the
    parts counted here op by op, which check its constants.
    """
    from capo.applied_step import CHUNK

    tokens = target.completions_per_rank * target.completion_tokens
    kl = measure_true_kl(
        target.hidden, target.vocab, 64 if quick else target.kl_chunk, torch.bfloat16
    )
    counted = {
        "output layer before the step": kl["head_copy"] / MIB,
        "KL logits scratch": kl["scratch"] * (target.kl_chunk / kl["tokens"]) / MIB,  # linear in C
        "move temporaries": move_scratch_per_element() * CHUNK / MIB,
    }
    memory = extra_memory_mib(target.hidden, target.vocab, tokens, 2)
    partition = target.params / target.ranks * 4 / MIB
    forward_tokens = target.completions_per_rank * (target.prompt_tokens + target.completion_tokens)
    forward_s = 2 * target.params * forward_tokens / (hw.bf16_flops * target.mfu)
    partition_s = (
        (16 + 6) * target.params / target.ranks / hw.bandwidth
    )  # θ, m, v read, θ written; bit16
    gather_s = 2 * target.params * (target.ranks - 1) / target.ranks / target.nvlink
    time_ms = {
        "lookahead forward": 1e3 * forward_s,
        "its full-vocabulary KL (logits before and after)": 1e3
        * 4 * tokens * target.hidden * target.vocab / hw.bf16_flops,
        "one move, ZeRO-2 (partition + bit16 copy + all-gather)": 1e3 * (partition_s + gather_s),
        "one move, ZeRO-3 (partition + bit16 copy)": 1e3 * partition_s,
        "training forward + backward with checkpointing (~4 forwards), for scale": 4e3 * forward_s,
    }  # fmt: skip
    return {
        "target": asdict(target),
        "memory_mib": memory,
        "counted_mib": counted,
        "memory_total_mib": sum(memory.values()),
        "bound_mib": {
            "one rank's fp32 partition of the parameters (the control's memory bound)": partition,
            "the old lookahead's parameter backup (bf16, DDP only)": target.params * 2 / MIB,
        },
        "time_ms": time_ms,
    }


def measure(steps: int) -> dict[str, Any]:
    """The control's peak allocation and time per step in ``capo train`` on the embedded default (this rank)."""
    import capo.kl_budget as kb
    import capo_app.train as cli

    rows: list[dict[str, float]] = []
    original = kb.StepKLControl.after_optimizer_step
    param_bytes: list[int] = []

    def counted(self: Any, step: Any, model: Any, optimizer: Any, reduce: Any) -> None:
        param_bytes[:] = [sum(p.numel() * p.element_size() for p in model.parameters())]
        t0 = time.perf_counter()
        with OpCounter() as counter, counter.phase("control") as phase:
            original(self, step, model, optimizer, reduce)
        rows.append({"peak_bytes": phase.peak, "seconds": time.perf_counter() - t0})

    kb.StepKLControl.after_optimizer_step = counted  # type: ignore[method-assign]
    leave = cli.exit_launched_process
    cli.exit_launched_process = lambda code=0: None  # a launched rank leaves at the end of main()
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            argv = [
                "--learning_rate",
                "1e-3",
                "--capo_kl_budget",
                "1e-3",
                "--max-steps",
                str(steps),
            ]
            if cli.main([*argv, "--output-dir", f"{tmp}/run"]) != 0:
                raise RuntimeError("capo train failed")
    finally:
        kb.StepKLControl.after_optimizer_step = original  # type: ignore[method-assign]
        cli.exit_launched_process = leave
    return {
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "deepspeed": os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true",
        "parameter_bytes": param_bytes[0],
        "control_peak_bytes_max": max(r["peak_bytes"] for r in rows),
        "control_seconds_median": statistics.median(r["seconds"] for r in rows),
        "steps": rows,
    }


def render(result: dict[str, Any]) -> str:
    """The projection as a table."""
    counted = result["counted_mib"]
    lines = [
        f"KL budget per GPU at {result['target']}",
        f"{'extra memory':<70} {'MiB':>9} {'counted':>9}",
    ]
    lines += [
        f"{k:<70} {v:9.1f} " + (f"{counted[k]:9.1f}" if k in counted else f"{'-':>9}")
        for k, v in result["memory_mib"].items()
    ]
    lines.append(f"{'total':<70} {result['memory_total_mib']:9.1f}")
    lines += [f"{'for comparison: ' + k:<70} {v:9.1f}" for k, v in result["bound_mib"].items()]
    lines.append(f"{'time':<70} {'ms':>9}")
    lines += [f"{k:<70} {v:9.1f}" for k, v in result["time_ms"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``--project`` and/or ``--measure``; prints the tables, writes JSON under ``--out``."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--project", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small KL chunk for the counted scratch")
    ap.add_argument("--measure", action="store_true")
    ap.add_argument("--steps", type=positive_int, default=6)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from capo_app.launch import skip_unused_deepspeed_build

    skip_unused_deepspeed_build()
    outputs: dict[str, Any] = {}
    if args.project:
        outputs["projection"] = project(Paper(), Hardware(), args.quick)
        print(render(outputs["projection"]))
    if args.measure:
        m = measure(args.steps)
        outputs["measured"] = m
        print(
            f"measured (world {m['world_size']}, DeepSpeed {m['deepspeed']}): control peak "
            f"{m['control_peak_bytes_max'] / MIB:.2f} MiB vs parameters {m['parameter_bytes'] / MIB:.2f} MiB, "
            f"{1e3 * m['control_seconds_median']:.1f} ms per step"
        )
    rank = int(os.environ.get("RANK", "0"))
    if args.out is not None and rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        kind = "project" if args.project else f"measure_ws{outputs['measured']['world_size']}"
        (args.out / f"kl_budget_memory_{kind}.json").write_text(
            json.dumps(outputs, indent=1) + "\n"
        )
    from capo_app.launch import exit_launched_process

    exit_launched_process()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
