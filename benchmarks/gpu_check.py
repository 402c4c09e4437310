"""The prepared GPU check: CAPO's core on CUDA vs float64, the paper-shape step, and training overhead.

One command, one H100/H200, a few minutes (README "Checking on a GPU"):

1. ``agreement``: the curvature core (shifts token/batch level with the Adam step model, the batch
   gradient, the moments update) in bf16 and float32 on the device against float64 on the CPU from the
   same (rounded) inputs, and the top-k support against the float64 support; max |x − x64| / max |x64|.
2. ``paper_step``: one CAPO optimizer step of one GPU at the paper's shapes (N = 24,576 tokens as 3
   micro-batches of 8,192, k = 50, H = 3584, V = 152,064, bf16): median time and peak extra memory
   against the goal (50 ms, 512 MiB), with U (rows the gradient touches) at the worst case (V) and at
   V / 4 rows, as in training (the fused kernels; the support folded from TRL's LM-head tiles, whose own
   time, the policy forward's, is measured alone and subtracted), and at the worst case as before issue 23
   (plain kernels, the support recomputed from the hidden states).
3. ``fused_shift``: the token-level Adam shift of one paper-shape micro-batch (N = 8,192, k = 50,
   H = 3584, moments on V / 2 rows) with the fused kernel (:mod:`capo.fused_shift`, Triton on CUDA)
   and the plain path: median times, peak extra memory, fused vs plain, and both against float64 on
   the CPU on the first tokens.
4. ``training``: two timed training steps (after one warm-up step) of a randomly initialised Qwen2
   model of the 0.5B shape with the real vocabulary (151,936), CAPO on vs off: step time, overhead %,
   peak memory (:mod:`gpu_train_check`; needs trl and its dependencies, see the README).

``--dry-run`` runs the same code on the CPU at small shapes (CI). Results: JSON + Markdown in ``--out``.

Usage:
    PYTHONPATH=. python benchmarks/gpu_check.py --out docs/gpu     # on the GPU box
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu-check   # anywhere
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from allocations import OpCounter
from cases import make_case
from projection_step import POOL_SCALE, run_step, synthetic_inputs, trl_lm_head

import capo
from capo.gradients import last_layer_gradient
from reference.tolerances import FLOAT32_RTOL

PAPER = {"n_total": 24_576, "micro_batches": 3, "k": 50, "hidden": 3584, "vocab": 152_064}
DRY = {"n_total": 512, "micro_batches": 2, "k": 8, "hidden": 64, "vocab": 4096}
AGREEMENT = {"n": 2048, "k": 50, "hidden": 256, "vocab": 8192}
AGREEMENT_DRY = {"n": 256, "k": 8, "hidden": 32, "vocab": 512}
GOAL_SECONDS, GOAL_BYTES = 0.050, 512 * 2**20
SECTIONS = ("agreement", "paper_step", "fused_shift", "training")
FUSED = {"n": 8192, "k": 50, "hidden": 3584, "vocab": 152_064, "ref_tokens": 256}
FUSED_DRY = {"n": 512, "k": 8, "hidden": 64, "vocab": 4096, "ref_tokens": 64}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """max |x − ref| / max |ref| (float64, on the CPU)."""
    x64, r64 = x.detach().double().cpu(), ref.detach().double().cpu()
    return float((x64 - r64).abs().max() / r64.abs().max().clamp_min(1e-300))


def _core(batch: capo.TokenBatch, moments: capo.SparseAdamMoments) -> dict[str, torch.Tensor]:
    step = capo.AdamStep(1e-3, moments)
    tok = capo.directional_shifts(batch, step)
    whole = capo.directional_shifts(batch, step, torch.zeros_like(batch.action_index))
    rows, grad = last_layer_gradient(batch)
    moments.update(rows, grad.to(moments.dtype))
    m, v = moments.read(rows)
    return {"m_H token": tok.m_H, "m_F token": tok.m_F, "m_H batch": whole.m_H,
            "m_F batch": whole.m_F, "gradient rows": grad, "moments m": m, "moments v": v}  # fmt: skip


def _run_core(
    hidden: torch.Tensor,
    support: capo.Support,
    adv: torch.Tensor,
    warm: list[tuple[torch.Tensor, torch.Tensor]],
    vocab: int,
    acc_dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """:func:`_core` on ``hidden``'s device, moments in ``acc_dtype`` after the ``warm`` updates."""
    dev = hidden.device
    batch = capo.TokenBatch(
        hidden=hidden,
        support_ids=support.support_ids.to(dev),
        support_probs=support.support_probs.to(device=dev, dtype=acc_dtype),
        action_index=support.action_index.to(dev),
        advantages=adv.to(device=dev, dtype=acc_dtype),
    )
    mom = capo.SparseAdamMoments(vocab, hidden.shape[1], dtype=acc_dtype, device=dev)
    for rows, grads in warm:
        mom.update(rows.to(dev), grads.to(device=dev, dtype=acc_dtype))
    return _core(batch, mom)


def agreement(device: torch.device, n: int, k: int, hidden: int, vocab: int) -> dict[str, Any]:
    """Section 1 (module docstring): errors per dtype and quantity, and whether each is within tolerance."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(vocab, hidden, generator=g, dtype=torch.float64) / math.sqrt(hidden)
    h = torch.randn(n, hidden, generator=g, dtype=torch.float64)
    sampled = torch.randint(0, vocab, (n,), generator=g)
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    warm = []
    for _ in range(2):
        rows = torch.randperm(vocab, generator=g)[: vocab // 2].sort().values
        warm.append(
            (rows, 1e-2 * torch.randn(rows.numel(), hidden, generator=g, dtype=torch.float64))
        )
    out: dict[str, Any] = {
        "shape": {"N": n, "k": k, "H": hidden, "V": vocab},
        "tolerance": FLOAT32_RTOL,
    }
    for dtype in (torch.float32, torch.bfloat16):
        w_d, h_d = weight.to(dtype), h.to(dtype)  # the device's inputs; the reference rounds alike
        sup64 = capo.support_from_hidden(h_d.double(), w_d.double(), sampled, k, 0.9)
        sup_d = capo.support_from_hidden(h_d.to(device), w_d.to(device), sampled.to(device), k, 0.9)
        same = (sup_d.support_ids.cpu().sort(1).values == sup64.support_ids.sort(1).values).all(1)
        ref = _run_core(h_d.double(), sup64, adv, warm, vocab, torch.float64)
        got = _run_core(h_d.to(device), sup64, adv, warm, vocab, torch.float32)
        errs = {q: rel_err(got[q], ref[q]) for q in ref}
        out[str(dtype).removeprefix("torch.")] = {
            "max_rel_err": errs,
            "support_rows_identical": float(same.double().mean()),
            "ok": all(e <= FLOAT32_RTOL for e in errs.values()),
        }
    return out


def _timed_step(device: torch.device, run: Callable[[], object]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _peak_extra(device: torch.device, run: Callable[[], object]) -> int:
    """Peak bytes allocated by ``run`` above those allocated before (CUDA stats, or OpCounter on CPU)."""
    if device.type != "cuda":
        with OpCounter() as counter:
            run()
        return counter.peak
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _lm_head(device: torch.device, weight: torch.Tensor, inputs: list[tuple]) -> tuple[float, int]:
    """Time and peak memory of TRL's fused LM head alone on the micro-batches (the policy forward's)."""

    def heads() -> None:
        for x in inputs:
            trl_lm_head(weight, x)

    heads()
    seconds = statistics.median(_timed_step(device, heads) for _ in range(3))
    return seconds, _peak_extra(device, heads)


def paper_step(
    device: torch.device, shape: dict[str, int], pool: int, reps: int, mode: str = "training"
) -> dict[str, Any]:
    """Section 2 (module docstring) for one pool size: time and peak extra memory of one CAPO step.

    ``mode``: ``training`` (fused kernels, support from TRL's tiles) or ``before`` (plain, recomputed).
    """
    n, m, k = shape["n_total"] // shape["micro_batches"], shape["micro_batches"], shape["k"]
    g = torch.Generator(device=device).manual_seed(0)
    weight = torch.randn(
        shape["vocab"], shape["hidden"], generator=g, device=device, dtype=torch.bfloat16
    )
    weight /= math.sqrt(shape["hidden"])
    inputs, rows = synthetic_inputs(weight, m, n, pool, seed=1)
    weight[rows] *= POOL_SCALE
    moments = capo.SparseAdamMoments(shape["vocab"], shape["hidden"], device=device)
    out: dict[str, Any] = {"pool_rows": pool, "tokens": n * m, "micro_batches": m, "mode": mode}
    alloc = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    kernel, support = ("fused", "forward") if mode == "training" else ("plain", "hidden")
    step = functools.partial(run_step, weight, inputs, moments, k, kernel=kernel, support=support)
    out["lm_head_s"], out["lm_head_peak_bytes"] = (
        _lm_head(device, weight, inputs) if support == "forward" else (0.0, 0)
    )
    out["first_step_s"] = _timed_step(device, step)
    if device.type == "cuda":
        out["moments_bytes_after_first_step"] = torch.cuda.memory_allocated(device) - alloc
    out["rows_touched"] = moments.num_rows
    times = [_timed_step(device, step) - out["lm_head_s"] for _ in range(reps)]
    out["step_s_median"], out["step_s_all"] = statistics.median(times), times
    out["peak_extra_bytes"] = _peak_extra(device, step)  # TRL's LM head included (GRPO's too)
    if device.type == "cuda":  # the goal is for the paper's shapes on a GPU
        capo_peak = (
            out["peak_extra_bytes"] - out["lm_head_peak_bytes"]
        )  # when CAPO's phases peak later
        out["meets_goal"] = {"time": out["step_s_median"] <= GOAL_SECONDS,
                             "memory": out["peak_extra_bytes"] <= GOAL_BYTES,
                             "memory_without_lm_head": capo_peak <= GOAL_BYTES}  # fmt: skip
    else:
        out["meets_goal"] = None
    return out


def _shift_inputs(
    device: torch.device, n: int, k: int, hidden: int, vocab: int
) -> tuple[capo.TokenBatch, capo.SparseAdamMoments, capo.SparseAdamMoments]:
    """The benchmarks' random case (:func:`cases.make_case`) on ``device``, hidden states rounded to bf16:
    (float32 token batch, its moments there, the same moments in float64 on the CPU)."""
    case = make_case(n, k, hidden, vocab, weight=False)
    b = case["batch"]
    batch = capo.TokenBatch(
        hidden=b.hidden.to(torch.bfloat16).float().to(device), support_ids=b.support_ids.to(device),
        support_probs=b.support_probs.to(device), action_index=b.action_index.to(device),
        advantages=b.advantages.to(device),
    )  # fmt: skip
    moments = capo.SparseAdamMoments(vocab, hidden, device=device)
    reference = capo.SparseAdamMoments(vocab, hidden, dtype=torch.float64)
    for mom in (moments, reference):
        mom.load_state_dict(case["mom"].state_dict())
    return batch, moments, reference


def fused_shift(device: torch.device, shape: dict[str, int], reps: int) -> dict[str, Any]:
    """Section 3 (module docstring): the fused token-level Adam shift against the plain path."""
    batch, moments, cpu = _shift_inputs(
        device, shape["n"], shape["k"], shape["hidden"], shape["vocab"]
    )
    step = capo.AdamStep(1e-3, moments)
    runs = {kernel: functools.partial(capo.directional_shifts, batch, step, kernel=kernel)
            for kernel in ("fused", "plain")}  # fmt: skip
    out: dict[str, Any] = {"shape": shape, "first_fused_call_s": _timed_step(device, runs["fused"])}
    times: dict[str, list[float]] = {kernel: [] for kernel in runs}
    for _ in range(reps):
        for kernel, run in runs.items():
            times[kernel].append(_timed_step(device, run))
    fused, plain = runs["fused"](), runs["plain"]()
    r = shape["ref_tokens"]
    ref_batch = capo.TokenBatch(
        hidden=batch.hidden[:r].double().cpu(), support_ids=batch.support_ids[:r].cpu(),
        support_probs=batch.support_probs[:r].double().cpu(),
        action_index=batch.action_index[:r].cpu(), advantages=batch.advantages[:r].double().cpu(),
    )  # fmt: skip
    ref = capo.directional_shifts(ref_batch, capo.AdamStep(1e-3, cpu), kernel="plain")
    for kernel, got in (("fused", fused), ("plain", plain)):
        out[kernel] = {
            "median_s": statistics.median(times[kernel]), "all_s": times[kernel],
            "peak_extra_bytes": _peak_extra(device, runs[kernel]),
            "max_rel_err_vs_float64": max(rel_err(got.m_H[:r], ref.m_H), rel_err(got.m_F[:r], ref.m_F)),
        }  # fmt: skip
    out["fused_vs_plain"] = max(rel_err(fused.m_H, plain.m_H), rel_err(fused.m_F, plain.m_F))
    out["speedup"] = out["plain"]["median_s"] / out["fused"]["median_s"]
    return out


def _section(results: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    """Run one section; record its result, or its error (the other sections still run)."""
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:  # a GPU check reports every failure instead of stopping at the first
        results[name] = {
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    results[name + "_wall_s"] = time.perf_counter() - t0
    print(
        f"[{name}] {time.perf_counter() - t0:.1f} s: {json.dumps(results[name], default=str)[:600]}"
    )


def environment(device: torch.device) -> dict[str, Any]:
    """Device name and library versions."""
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    env["device"] = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    for lib in ("transformers", "trl", "accelerate", "datasets"):
        try:
            env[lib] = __import__(lib).__version__
        except ImportError:
            env[lib] = None
    return env


def summary(results: dict[str, Any]) -> str:
    """A short Markdown account of the results (committed next to the JSON under docs/gpu/)."""
    env = results["environment"]
    lines = [f"# gpu_check on {env['device']}", "", f"torch {env['torch']}, transformers "
             f"{env['transformers']}, trl {env['trl']}; dry run: {results['dry_run']}", ""]  # fmt: skip
    for name, value in results.items():
        if name in ("environment", "dry_run") or name.endswith("_wall_s"):
            continue
        wall = results.get(name + "_wall_s", 0.0)
        if "error" in value:
            lines.append(f"- **{name}** ({wall:.0f} s): FAILED {value['error']}")
        elif name == "agreement":
            for dt in ("float32", "bfloat16"):
                worst = max(value[dt]["max_rel_err"].values())
                lines.append(f"- **agreement {dt}**: worst max-rel-err {worst:.1e} (tolerance "
                             f"{value['tolerance']:.0e}), support rows identical "
                             f"{value[dt]['support_rows_identical']:.3f}")  # fmt: skip
        elif name.startswith("paper_step"):
            lines.append(f"- **{name}** ({value['tokens']} tokens, {value['rows_touched']} rows): "
                         f"{1e3 * value['step_s_median']:.1f} ms (TRL's LM head alone, subtracted: "
                         f"{1e3 * value['lm_head_s']:.1f} ms), peak extra "
                         f"{value['peak_extra_bytes'] / 2**20:.0f} MiB; goal met: {value['meets_goal']}")  # fmt: skip
        elif name == "fused_shift":
            lines.append(f"- **fused_shift** ({value['shape']['n']} tokens, k {value['shape']['k']}, H "
                         f"{value['shape']['hidden']}): fused {1e3 * value['fused']['median_s']:.1f} ms vs "
                         f"plain {1e3 * value['plain']['median_s']:.1f} ms ({value['speedup']:.1f}x); "
                         f"fused vs plain {value['fused_vs_plain']:.1e}, vs float64 "
                         f"{value['fused']['max_rel_err_vs_float64']:.1e}; first call "
                         f"{value['first_fused_call_s']:.1f} s")  # fmt: skip
        elif name == "training":
            lines.append(f"- **training** CAPO off {value['capo_off']['step_s_median']:.2f} s/step, on "
                         f"{value['capo_on']['step_s_median']:.2f} s/step: overhead "
                         f"{value['overhead_percent']:.1f} %")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, small shapes (CI)")
    ap.add_argument("--out", default="outputs/gpu_check", help="folder for gpu_check.json / .md")
    ap.add_argument("--skip", nargs="*", default=[], choices=list(SECTIONS))
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run to exercise the check on the CPU")
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    shape, reps = (DRY, 1) if args.dry_run else (PAPER, 3)
    results: dict[str, Any] = {"dry_run": args.dry_run, "environment": environment(device)}
    if "agreement" not in args.skip:
        small = AGREEMENT_DRY if args.dry_run else AGREEMENT
        _section(results, "agreement", lambda: agreement(device, **small))
    if "paper_step" not in args.skip:
        for pool, mode in (
            (shape["vocab"], "training"),
            (shape["vocab"] // 4, "training"),
            (shape["vocab"], "before"),
        ):
            run = functools.partial(paper_step, device, shape, pool, reps, mode)
            _section(results, f"paper_step_U{pool}_{mode}", run)
    if "fused_shift" not in args.skip:
        small = FUSED_DRY if args.dry_run else FUSED
        _section(results, "fused_shift", lambda: fused_shift(device, small, reps))
    if "training" not in args.skip:
        from gpu_train_check import training_overhead

        _section(results, "training", lambda: training_overhead(device, args.dry_run))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "gpu_check.md").write_text(summary(results))
    print(summary(results))
    print(f"wrote {out / 'gpu_check.json'} and gpu_check.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
