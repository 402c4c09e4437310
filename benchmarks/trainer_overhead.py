"""CAPO's share of a whole training step of the tiny embedded default (``capo train``), CAPO on vs off.

Runs ``capo train`` (the embedded tiny default) in this process for a few optimizer steps with each of

- ``grpo``:  the baseline, CAPO off (no hidden-state capture, no curvature model);
- ``capo``:  CAPO on (support, shifts, select, masked loss, batch gradient, moments update);
- ``capo+fused``: CAPO on with ``--capo_shift_kernel fused`` (compiled once, in the first, dropped step);
- ``capo+kl``: CAPO on plus the default true-KL diagnostic (``capo_log_true_kl``, a full-vocabulary
  KL of the output layer before/after the step; a diagnostic, not part of CAPO);

and times every optimizer step (a TrainerCallback: ``on_step_begin`` → ``on_step_end``). Inside the CAPO
runs the trainer's CAPO hooks (``_capo_micro_batch``: support + shifts + select + gradient rows;
``_capo_step_end``: merge, global shifts, moments update, statistics, the true KL) are wrapped
with timers, so the overhead is also measured *within* one run (robust to machine noise). The first
``--skip`` steps are dropped (warm-up). The run order is interleaved over ``--rounds``.

Usage:
    python benchmarks/trainer_overhead.py --steps 6 --rounds 2 --out outputs/bench
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
from pathlib import Path
from typing import Any

import torch
from arguments import non_negative_int, positive_int

METHODS = {
    "grpo": ["--method", "grpo", "--capo_log_true_kl", "false"],
    "capo": ["--method", "capo", "--capo_log_true_kl", "false"],
    "capo+kl": ["--method", "capo"],
    # CAPO on with the fused shift kernel (capo.fused_shift; 'auto' keeps the plain path on a CPU)
    "capo+fused": [
        "--method",
        "capo",
        "--capo_log_true_kl",
        "false",
        "--capo_shift_kernel",
        "fused",
    ],
}


HOOKS = ("_capo_micro_batch", "_capo_step_end")


class Recorder:
    def __init__(self) -> None:
        self.steps: list[float] = []
        self.hooks: dict[str, list[float]] = defaultdict(list)
        self._t0 = 0.0
        self._hook_step: dict[str, float] = defaultdict(float)

    def step_begin(self) -> None:
        self._t0 = time.perf_counter()
        self._hook_step.clear()

    def step_end(self) -> None:
        self.steps.append(time.perf_counter() - self._t0)
        for name in HOOKS:
            self.hooks[name].append(self._hook_step.get(name, 0.0))

    def add(self, name: str, dt: float) -> None:
        self._hook_step[name] += dt


def instrument(rec: Recorder) -> contextlib.ExitStack:
    """Patch CAPOTrainer: a step-timing callback and timers around the CAPO hooks."""
    from transformers import TrainerCallback

    import capo.trainer as tr

    stack = contextlib.ExitStack()
    cls = tr.CAPOTrainer

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            rec.step_begin()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            rec.step_end()

    orig_init = cls.__init__

    def init(self: Any, *a: Any, **kw: Any) -> None:
        orig_init(self, *a, **kw)
        self.add_callback(StepTimer())

    def timed(name: str, fn: Any) -> Any:
        def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(self, *a, **kw)
            finally:
                rec.add(name, time.perf_counter() - t0)

        return wrapper

    patches = {"__init__": init, **{h: timed(h, getattr(cls, h)) for h in HOOKS if hasattr(cls, h)}}
    originals = {name: cls.__dict__[name] for name in patches if name in cls.__dict__}
    for name, fn in patches.items():
        setattr(cls, name, fn)

    def restore() -> None:
        for name in patches:
            if name in originals:
                setattr(cls, name, originals[name])
            else:
                delattr(cls, name)

    stack.callback(restore)
    return stack


def run_once(method: str, steps: int, seed: int, workdir: Path) -> Recorder:
    from capo_app.train import main as train_main

    rec = Recorder()
    argv = [
        *METHODS[method],
        "--max-steps",
        str(steps),
        "--seed",
        str(seed),
        "--output-dir",
        str(workdir / f"{method}-{seed}"),  # one run per folder (capo train refuses a used one)
    ]
    with instrument(rec), contextlib.redirect_stdout(io.StringIO()):
        code = train_main(argv)
    if code != 0:
        raise RuntimeError(f"capo train {argv} exited with {code}")
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=positive_int, default=6, help="optimizer steps per run")
    ap.add_argument(
        "--skip", type=non_negative_int, default=1, help="warm-up steps dropped from the medians"
    )
    ap.add_argument(
        "--rounds", type=positive_int, default=2, help="interleaved rounds of all methods"
    )
    ap.add_argument(
        "--threads", type=positive_int, default=None, help="torch threads (default: torch's)"
    )
    ap.add_argument("--methods", default="grpo,capo,capo+fused,capo+kl")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    recs: dict[str, list[Recorder]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for m in methods:
                print(f"[round {r}] capo train {' '.join(METHODS[m])}", file=sys.stderr, flush=True)
                recs[m].append(run_once(m, args.steps, seed=r, workdir=Path(tmp)))
    res: dict[str, dict] = {}
    for m, rs in recs.items():
        steps = [t for rec in rs for t in rec.steps[args.skip :]]
        hooks = {
            h: [x for rec in rs for x in rec.hooks[h][args.skip :]] for h in HOOKS if rs[0].hooks[h]
        }
        capo_s = [
            sum(hooks[h][i] for h in ("_capo_micro_batch", "_capo_step_end") if h in hooks)
            for i in range(len(steps))
        ]
        res[m] = {
            "step_s_median": statistics.median(steps),
            "step_s_all": steps,
            "capo_hooks_s_median": statistics.median(capo_s),
            "capo_share_in_run": statistics.median(
                c / s for c, s in zip(capo_s, steps, strict=True)
            ),
            "hooks_s_median": {h: statistics.median(v) for h, v in hooks.items()},
        }
    base = res.get("grpo", {}).get("step_s_median")
    lines = [
        f"{'method':<9} {'step s (median)':>15} {'vs grpo':>8} {'CAPO hooks s':>13} {'share':>7}"
    ]
    for m, r in res.items():
        rel = f"{100 * (r['step_s_median'] / base - 1):+7.1f}%" if base else "-"
        lines.append(
            f"{m:<9} {r['step_s_median']:>15.3f} {rel:>8} {r['capo_hooks_s_median']:>13.4f} "
            f"{100 * r['capo_share_in_run']:>6.2f}%"
        )
        for h, v in r["hooks_s_median"].items():
            lines.append(f"{'':<9}   {h:<20} {v:.4f} s / step")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {
            "steps": args.steps,
            "skip": args.skip,
            "rounds": args.rounds,
            "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        (args.out / "trainer_overhead.json").write_text(
            json.dumps({"meta": meta, "results": res}, indent=1)
        )
        (args.out / "trainer_overhead.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
