"""The paper's stability experiment on the tiny embedded LLM: ``python -m capo_app.experiments.stability``.

Trains the warm-started tiny Qwen2 model (:mod:`capo_app.tiny`) on the synthetic arithmetic task
(:mod:`capo_app.data`, held-out test problems) with :class:`capo.CAPOTrainer`, for the seven methods of
:mod:`capo_app.experiments.methods`. The two regimes keep the paper's ratios: the aggressive one has a 5×
larger learning rate and a 12× smaller batch (``prompts_aggressive`` × G completions per step) than the
conservative GRPO. Protocol (all tuning on the *training* reward of a separate tuning seed):

1. lr sweep of the aggressive baselines; the aggressive lr is picked by the rule of
   :func:`capo_app.experiments.toy_stability.sweep_lr` (first collapse, else onset of degradation).
2. Threshold sweep of each CAPO variant over orders of magnitude of ±δ_H and δ_F.
3. Evaluation: seeds in the outer loop (all seven methods per seed), so a time budget cuts whole seeds.
4. Ablation: CAPO variants with the SGD step model (Fig. 6).

Every run is saved as ``raw/<phase>-<method>-<tag>.json`` as soon as it ends and is reused when the
command is re-run with the same ``--out`` (resume). ``--quick`` is a CI smoke test (< 10 minutes).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from capo_app.experiments.analysis import tail_mean
from capo_app.experiments.methods import BASELINE_OF_VARIANT, CAPO_OF_VARIANT, LR_RATIO, METHODS

__all__ = ["FULL", "MICRO", "QUICK", "LLMConfig", "main", "run_experiment"]

RECIPE_KEY = {
    "grpo": ("grpo", "capo"),
    "dr_grpo": ("dr_grpo", "dr_capo"),
    "reinforce": ("reinforce", "reincapo"),
}
"""variant -> (``capo train --method`` of the baseline, of the CAPO variant)."""


@dataclass(frozen=True)
class LLMConfig:
    """Everything the tiny-LLM experiment depends on.

    Attributes:
        steps: Optimizer steps per run (both regimes, as in the paper's Table 2).
        group_size: G, completions per prompt.
        prompts_aggressive: Prompts per step in the aggressive regime.
        batch_ratio: Conservative batch / aggressive batch (12 in the paper).
        lr_grid: Aggressive learning rates of the sweep (None: no sweep, use ``lr_fixed``).
        lr_fixed: The aggressive lr when ``lr_grid`` is None.
        hessian_grid: ±δ_H values of the threshold sweep (empty: the paper's thresholds).
        fisher_grid: δ_F values of the threshold sweep.
        tuning_seeds: Seeds of both sweeps.
        seeds: Evaluation seeds.
        methods: Method keys to evaluate (conservative GRPO is always included).
        ablation_seeds: Seeds of the SGD step-model ablation (empty: skipped).
        eval_every: Held-out accuracy every this many steps.
        num_test_problems: Held-out problems.
        num_train_problems: Training problems.
        max_completion_length: Completion tokens.
        support_size: k of the curvature model.
        warm_start_steps: Supervised warm-start steps of the tiny model (None: capo_app.tiny's default).
        tiny_cache_dir: Cache folder of the warm-started tiny model (None: capo's default cache).
        margin: Collapse / degradation margin (accuracy).
        min_seeds: Evaluation seeds that always run (then the ablation, then the other seeds).
        budget_minutes: Start no evaluation seed beyond ``min_seeds`` after this much wall time.
    """

    steps: int = 30
    group_size: int = 8
    prompts_aggressive: int = 2
    batch_ratio: int = 12
    lr_grid: tuple[float, ...] | None = (1e-4, 3e-4, 1e-3)
    lr_fixed: float = 1e-3
    hessian_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    fisher_grid: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3)
    tuning_seeds: tuple[int, ...] = (100,)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    methods: tuple[str, ...] = tuple(METHODS)
    ablation_seeds: tuple[int, ...] = (0, 1, 2)
    eval_every: int = 5
    num_test_problems: int = 100
    num_train_problems: int = 2000
    max_completion_length: int = 40
    support_size: int = 16
    warm_start_steps: int | None = None
    tiny_cache_dir: str | None = None
    margin: float = 0.05
    min_seeds: int = 3
    budget_minutes: float = 80.0


FULL = LLMConfig()
"""The reported configuration (targets < 90 minutes on two CPU cores; see the report for what ran)."""

QUICK = LLMConfig(
    steps=8,
    lr_grid=None,
    hessian_grid=(),
    fisher_grid=(),
    seeds=(0,),
    min_seeds=1,
    methods=("grpo_conservative", "grpo_a", "capo_a"),
    ablation_seeds=(),
    eval_every=4,
    num_test_problems=30,
    budget_minutes=9.0,
)
"""CI smoke test: one seed, 8 steps, three methods, the paper's thresholds (< 10 minutes)."""

MICRO = replace(
    QUICK,
    steps=2,
    group_size=4,
    prompts_aggressive=1,
    batch_ratio=2,
    methods=("grpo_conservative", "capo_a"),
    eval_every=2,
    num_test_problems=4,
    num_train_problems=64,
    max_completion_length=24,
    warm_start_steps=2,
)
"""Unit-test configuration (a few seconds per run)."""


@dataclass
class LLMResults:
    """Raw runs of the experiment: ``runs[phase][method]`` is a list of run records."""

    config: LLMConfig
    runs: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    lr_aggressive: float = float("nan")
    lr_rule: str = ""
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    threshold_rule: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _overrides(
    cfg: LLMConfig, out: Path, method: str, lr: float, seed: int, extra: dict[str, Any]
) -> dict[str, Any]:
    m = METHODS[method]
    prompts = cfg.prompts_aggressive * (1 if m.aggressive else cfg.batch_ratio)
    base = {
        "seed": seed,
        "max_steps": cfg.steps,
        "learning_rate": lr,
        "per_device_train_batch_size": prompts * cfg.group_size,
        "gradient_accumulation_steps": 1,
        "num_generations": cfg.group_size,
        "max_completion_length": cfg.max_completion_length,
        "capo_support_size": cfg.support_size,
        "capo_track_shifts": True,
        "capo_log_true_kl": True,
        "eval_every": cfg.eval_every,
        "num_test_problems": cfg.num_test_problems,
        "num_train_problems": cfg.num_train_problems,
        "plots": False,
        "disable_tqdm": True,
        "output_dir": str(out / "runs" / f"{method}-{seed}"),
        "save_strategy": "no",
    }
    if cfg.warm_start_steps is not None:
        base["warm_start_steps"] = cfg.warm_start_steps
    if cfg.tiny_cache_dir is not None:
        base["tiny_cache_dir"] = cfg.tiny_cache_dir
    return {**base, **extra}


def run_one(
    cfg: LLMConfig,
    out: Path,
    phase: str,
    method: str,
    lr: float,
    seed: int,
    tag: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one (method, seed) with CAPOTrainer, or load the saved record of an identical earlier run.

    Args:
        cfg: Experiment configuration.
        out: Output folder (records under ``out/raw``).
        phase: "lr_sweep", "threshold_sweep", "eval" or "ablation".
        method: Method key.
        lr: Peak learning rate.
        seed: Seed.
        tag: Extra name part (e.g. the thresholds).
        extra: More CAPOConfig / ScriptArguments fields.

    Returns:
        ``{"method", "seed", "lr", "phase", "overrides", "history", "test_accuracy", "seconds"}``.
    """
    from capo_app.recipe import parse_recipe
    from capo_app.train import train

    raw = out / "raw" / f"{phase}-{method}-{seed}{'-' + tag if tag else ''}.json"
    overrides = _overrides(cfg, out, method, lr, seed, extra or {})
    if raw.exists():
        rec = json.loads(raw.read_text())
        if rec.get("overrides") == json.loads(json.dumps(overrides)):
            return dict(rec)
    variant = METHODS[method].variant
    recipe = RECIPE_KEY[variant][int(METHODS[method].capo)]
    start = time.perf_counter()
    script_args, config, _ = parse_recipe(["--method", recipe], overrides=overrides)
    log = train(script_args, config)
    rec = {
        "method": method,
        "seed": seed,
        "lr": lr,
        "phase": phase,
        "overrides": overrides,
        "history": log["history"],
        "test_accuracy": log["test_accuracy"],
        "seconds": time.perf_counter() - start,
    }
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(rec, default=float))
    return rec


def train_curve(rec: dict[str, Any], key: str = "reward") -> np.ndarray:
    """A metric per logged step of a run record (NaN where absent)."""
    return np.array([float(h.get(key, np.nan)) for h in rec["history"]], dtype=np.float64)


def _signal(recs: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """(final, start) training reward averaged over runs: tail / head 20% of the steps."""
    final = [tail_mean(train_curve(r), 0.2) for r in recs]
    start = [float(np.nanmean(train_curve(r)[: max(1, len(r["history"]) // 5)])) for r in recs]
    return float(np.mean(final)), float(np.mean(start))


def sweep_lr(cfg: LLMConfig, out: Path, res: LLMResults) -> None:
    """Protocol step 1 (same rule as the toy experiment)."""
    if cfg.lr_grid is None:
        res.lr_aggressive, res.lr_rule = cfg.lr_fixed, "fixed (no sweep in this configuration)"
        return
    rows: list[dict[str, Any]] = []
    for lr, variant in itertools.product(cfg.lr_grid, BASELINE_OF_VARIANT):
        key = BASELINE_OF_VARIANT[variant]
        recs = [
            run_one(cfg, out, "lr_sweep", key, lr, s, tag=f"lr{lr:g}") for s in cfg.tuning_seeds
        ]
        res.runs.setdefault("lr_sweep", {}).setdefault(f"{key}@{lr:g}", []).extend(recs)
        final, start = _signal(recs)
        rows.append(
            {
                "lr": lr,
                "variant": variant,
                "final": final,
                "start": start,
                "collapsed": final < start - cfg.margin,
            }
        )
    for lr in cfg.lr_grid:
        if any(r["collapsed"] for r in rows if r["lr"] == lr):
            res.lr_aggressive = lr
            res.lr_rule = "smallest lr at which an aggressive baseline collapsed on the tuning seed"
            return
    best = {
        v: max((r for r in rows if r["variant"] == v), key=lambda r: float(r["final"]))
        for v in BASELINE_OF_VARIANT
    }
    for lr in cfg.lr_grid:
        for r in rows:
            b = best[str(r["variant"])]
            if (
                r["lr"] == lr
                and lr > float(b["lr"])
                and r["final"] < float(b["final"]) - cfg.margin
            ):
                res.lr_aggressive = lr
                res.lr_rule = (
                    "no baseline collapsed; smallest lr above a baseline's best lr at which "
                    "its final training reward fell more than the margin below its best"
                )
                return
    res.lr_aggressive = cfg.lr_grid[-1]
    res.lr_rule = "no collapse or degradation on the grid; largest lr of the grid"


def sweep_thresholds(cfg: LLMConfig, out: Path, res: LLMResults) -> None:
    """Protocol step 2: best ±δ_H, δ_F per CAPO variant by final training reward (paper's if no grid)."""
    from capo.methods import PAPER_THRESHOLDS

    paper = {"capo_a": "capo", "dr_capo_a": "dr_capo", "rein_capo_a": "reincapo"}
    for key in CAPO_OF_VARIANT.values():
        t = PAPER_THRESHOLDS[paper[key]]
        res.thresholds[key] = {
            "hessian_low": float(t.hessian_low or 0),
            "hessian_high": float(t.hessian_high or 0),
            "fisher_max": float(t.fisher_max or 0),
        }
    if not cfg.hessian_grid or not cfg.fisher_grid:
        res.threshold_rule = "the paper's thresholds (no sweep in this configuration)"
        return
    res.threshold_rule = "best final training reward on the tuning seed (ties: fewer rejections)"
    for key in CAPO_OF_VARIANT.values():
        if key not in cfg.methods:
            continue
        best: tuple[float, float] | None = None
        for dh, df in itertools.product(cfg.hessian_grid, cfg.fisher_grid):
            th = {"hessian_low": -dh, "hessian_high": dh, "fisher_max": df}
            recs = [
                run_one(
                    cfg,
                    out,
                    "threshold_sweep",
                    key,
                    res.lr_aggressive,
                    s,
                    tag=f"h{dh:g}-f{df:g}",
                    extra=th,
                )
                for s in cfg.tuning_seeds
            ]
            res.runs.setdefault("threshold_sweep", {}).setdefault(
                f"{key}@h{dh:g},f{df:g}", []
            ).extend(recs)
            final, _ = _signal(recs)
            rej = float(np.mean([np.nanmean(train_curve(r, "capo/rejection_rate")) for r in recs]))
            score = (round(final, 6), -rej)
            if best is None or score > best:
                best, res.thresholds[key] = score, th


def run_experiment(cfg: LLMConfig, out: Path, progress: bool = True) -> LLMResults:
    """Run the protocol (resuming from ``out/raw``) and return the raw results."""
    import torch

    torch.set_num_threads(int(os.environ.get("CAPO_EXPERIMENT_THREADS", "1")))
    res = LLMResults(cfg)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if progress:
            print(f"[llm {time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    sweep_lr(cfg, out, res)
    res.seconds["lr_sweep"] = time.perf_counter() - t0
    say(f"aggressive lr {res.lr_aggressive:g}: {res.lr_rule}")
    t1 = time.perf_counter()
    sweep_thresholds(cfg, out, res)
    res.seconds["threshold_sweep"] = time.perf_counter() - t1
    say(f"thresholds {res.thresholds}")
    t1 = time.perf_counter()
    methods = ["grpo_conservative", *[k for k in cfg.methods if k != "grpo_conservative"]]

    def evaluate(seed: int) -> None:
        for key in methods:
            m = METHODS[key]
            lr = res.lr_aggressive if m.aggressive else res.lr_aggressive / LR_RATIO
            extra = dict(res.thresholds[key]) if m.capo else {}
            rec = run_one(cfg, out, "eval", key, lr, seed, extra=extra)
            res.runs.setdefault("eval", {}).setdefault(key, []).append(rec)
            say(f"eval seed {seed} {m.label}: {rec['seconds']:.0f} s")

    def ablate(seed: int) -> None:
        for key in CAPO_OF_VARIANT.values():
            if key in cfg.methods:
                extra = {"capo_step_model": "sgd", **res.thresholds[key]}
                rec = run_one(cfg, out, "ablation", key, res.lr_aggressive, seed, extra=extra)
                res.runs.setdefault("ablation", {}).setdefault(key, []).append(rec)
                say(
                    f"ablation seed {seed} {METHODS[key].label} (SGD model): {rec['seconds']:.0f} s"
                )

    def over_budget() -> bool:
        return time.perf_counter() - t0 > 60 * cfg.budget_minutes

    # the first min_seeds seeds and the ablation always run; further seeds only within the budget
    for seed in cfg.seeds[: cfg.min_seeds]:
        evaluate(seed)
    t2 = time.perf_counter()
    for seed in cfg.ablation_seeds:
        ablate(seed)
    res.seconds["ablation"] = time.perf_counter() - t2
    done = list(cfg.seeds[: cfg.min_seeds])
    for seed in cfg.seeds[cfg.min_seeds :]:
        if over_budget():
            break
        evaluate(seed)
        done.append(seed)
    if len(done) < len(cfg.seeds):
        res.notes.append(
            f"time budget ({cfg.budget_minutes:g} min) reached: evaluated seeds {done} of "
            f"{list(cfg.seeds)}"
        )
    res.seconds["evaluation"] = time.perf_counter() - t1 - res.seconds["ablation"]
    res.seconds["total"] = time.perf_counter() - t0
    return res


def config_dict(cfg: LLMConfig) -> dict[str, Any]:
    """The configuration as JSON-ready data."""
    return asdict(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m capo_app.experiments.stability [--quick] [--out DIR] [--seeds N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m capo_app.experiments.stability", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--out", default="outputs/stability", help="output folder")
    parser.add_argument("--quick", action="store_true", help="CI smoke configuration (< 10 min)")
    parser.add_argument("--seeds", type=int, default=None, help="number of evaluation seeds")
    parser.add_argument("--budget-minutes", type=float, default=None, help="wall-time budget")
    parser.add_argument("--no-toy", action="store_true", help="skip the toy-MDP comparison")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = QUICK if args.quick else FULL
    if args.seeds is not None:
        cfg = replace(cfg, seeds=tuple(range(args.seeds)))
    if args.budget_minutes is not None:
        cfg = replace(cfg, budget_minutes=args.budget_minutes)
    out = Path(args.out)
    if not args.no_toy:
        from capo_app.experiments import toy_stability

        toy_stability.main(["--out", str(out / "toy"), *(["--quick"] if args.quick else [])])
    from capo_app.experiments.stability_report import write_report

    res = run_experiment(cfg, out)
    path = write_report(res, out)
    if not args.no_toy:
        with path.open("a") as f:
            f.write(
                "\n## Exact toy token-MDP comparison\n\nSee [toy/toy_report.md](toy/toy_report.md) "
                "(key figure: [toy/toy_accuracy.png](toy/toy_accuracy.png)).\n"
            )
    print(f"[llm] report: {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
