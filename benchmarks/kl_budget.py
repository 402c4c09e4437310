"""Overhead of the KL budget (capo.kl_budget; an extension beyond the paper) on the tiny embedded default.

Runs ``capo train`` (the embedded tiny default, CAPO on) with ``--capo_kl_budget`` and each
``--capo_kl_model`` (plus ``--capo_log_true_kl true``), and times, per optimizer step and inside the same run:

- ``step``: the whole optimizer step (``on_step_begin`` -> ``on_step_end``: generation, forward, backward,
  CAPO, optimizer step, the diagnostics);
- ``predict``: the budget's work right after ``optimizer.step()`` (``StepKLControl.after_optimizer_step``:
  the measured KL of the step, the moves along it, the backtracking checks);
- ``true_kl``: the true-KL diagnostic after the step (``CAPOStep.true_kl``: one no-grad forward of
  the step's completions plus the full-vocabulary KL and its head-only part) — the "one extra forward" yardstick.

Figures: ``predict / (step − true_kl)`` (the budget's share of a step without the diagnostic; issue 13's bar
for ``last_layer``: <= 5%) and ``predict / true_kl`` (``lookahead``'s bar: <= one extra forward, i.e. <= ~1).
The first ``--skip`` steps are dropped (warm-up); rounds interleave the two models.

Usage:
    python benchmarks/kl_budget.py --steps 6 --rounds 2 --out outputs/bench
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from arguments import non_negative_int, positive_int

MODELS = ("last_layer", "lookahead")
TIMED = ("predict", "true_kl")


def _timed(record: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            record[name] = record.get(name, 0.0) + time.perf_counter() - t0

    return wrapper


@contextlib.contextmanager
def instrumented(steps: list[dict[str, float]]) -> Iterator[None]:
    """Patch the trainer: a step timer and timers around the prediction and the true-KL diagnostic."""
    from transformers import TrainerCallback

    import capo.kl_budget as kb
    import capo.optimizer_step as ops
    import capo.trainer as tr

    current: dict[str, float] = {}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            current.clear()
            current["t0"] = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            # the trainer's step boundary (the true KL) is registered before this timer: it has run
            steps.append({"step": time.perf_counter() - current.pop("t0"), **current})

    cls, ctl, step = tr.CAPOTrainer, kb.StepKLControl, ops.CAPOStep
    originals = (cls.__init__, step.true_kl, ctl.after_optimizer_step)

    def init(self: Any, *a: Any, **kw: Any) -> None:
        originals[0](self, *a, **kw)
        self.add_callback(StepTimer())

    cls.__init__ = init  # type: ignore[method-assign]
    step.true_kl = _timed(current, "true_kl", originals[1])  # type: ignore[method-assign]
    ctl.after_optimizer_step = _timed(current, "predict", originals[2])  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.__init__, step.true_kl = originals[0], originals[1]  # type: ignore[method-assign]
        ctl.after_optimizer_step = originals[2]  # type: ignore[method-assign]


def run_once(model: str, steps: int, seed: int, workdir: Path) -> list[dict[str, float]]:
    """Per-step timings of one ``capo train`` run with the budget and ``capo_kl_model=model``."""
    from capo_app.train import main as train_main

    argv = ["--capo_kl_budget", "1e-3", "--capo_kl_model", model, "--capo_log_true_kl", "true"]
    argv += [
        "--max-steps",
        str(steps),
        "--seed",
        str(seed),
        "--output-dir",
        str(workdir / f"{model}-{seed}"),
    ]
    out: list[dict[str, float]] = []
    with instrumented(out), contextlib.redirect_stdout(io.StringIO()):
        code = train_main(argv)
    if code != 0:
        raise RuntimeError(f"capo train {argv} exited with {code}")
    return out


def summarise(rows: list[dict[str, float]]) -> dict[str, Any]:
    """Medians of the per-step times and of the two ratios of the module docstring."""
    med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in ("step", *TIMED)}
    share = statistics.median(r["predict"] / (r["step"] - r["true_kl"]) for r in rows)
    per_forward = statistics.median(r["predict"] / r["true_kl"] for r in rows)
    return {
        **{f"{k}_s_median": v for k, v in med.items()},
        "predict_share_of_step": share,
        "predict_per_extra_forward": per_forward,
        "steps": len(rows),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the interleaved rounds, print the table, write ``kl_budget.json`` under ``--out``."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--steps", type=positive_int, default=6, help="optimizer steps per run")
    ap.add_argument(
        "--skip", type=non_negative_int, default=2, help="warm-up steps dropped (lr 0 at step 1)"
    )
    ap.add_argument(
        "--rounds", type=positive_int, default=2, help="interleaved rounds of both models"
    )
    ap.add_argument(
        "--threads", type=positive_int, default=None, help="torch threads (default: torch's)"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for model in MODELS:
                print(f"[round {rnd}] capo_kl_model={model}", file=sys.stderr, flush=True)
                rows[model] += run_once(model, args.steps, rnd, Path(tmp))[args.skip :]
    result = {m: summarise(rows[m]) for m in MODELS}
    print(
        f"{'model':<11} {'step s':>8} {'predict s':>10} {'true-KL s':>10} {'share':>7} {'/fwd':>6}"
    )
    for m, r in result.items():
        print(
            f"{m:<11} {r['step_s_median']:8.3f} {r['predict_s_median']:10.4f} "
            f"{r['true_kl_s_median']:10.4f} {100 * r['predict_share_of_step']:6.1f}% "
            f"{r['predict_per_extra_forward']:6.2f}"
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "results": result}
        (args.out / "kl_budget.json").write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
