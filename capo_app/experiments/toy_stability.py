"""The paper's stability comparison on an exact toy token MDP: ``python -m capo_app.experiments.toy_stability``.

Protocol (each choice is made on the *training* signal — the sampled batch rewards — of separate tuning
seeds; the exact J of the evaluation seeds is only reported):

1. Learning-rate sweep: the three aggressive baselines (12 prompts × G = 8 completions per step) over
   ``lr_grid``. The aggressive lr is the smallest grid lr at which a baseline collapses on a tuning seed
   (training reward ends ``margin`` below where it started), else — if none ever collapses — the
   smallest lr at which a baseline's final training reward falls ``margin`` below its best over the grid
   (the onset of degradation). The conservative regime uses lr / 5 and a 12× larger batch.
2. Threshold sweep: for each CAPO variant, a symmetric Hessian band ±δ_H and a Fisher bound δ_F over
   orders of magnitude; the pair with the best final training reward is kept.
3. Evaluation: the seven methods on ``seeds``; then CAPO variants with an SGD step model (Fig. 6).

Outputs under ``--out``: ``toy_report.md``, ``toy_results.json`` and PNG figures.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import capo
from capo_app.experiments.analysis import tail_mean
from capo_app.experiments.methods import BASELINE_OF_VARIANT, CAPO_OF_VARIANT, LR_RATIO, METHODS
from capo_app.experiments.toy_task import ArithmeticTree, TaskSpec, arithmetic_tree
from capo_app.experiments.toy_train import RunLog, TrainSpec, train

__all__ = ["FULL", "QUICK", "ToyConfig", "main", "run_experiment"]


@dataclass(frozen=True)
class ToyConfig:
    """Everything the toy experiment depends on.

    Attributes:
        task: The arithmetic tree.
        base: Shared training hyperparameters (warm start, steps, G; lr and batch are set per method).
        prompts_aggressive: Prompts per step of the aggressive regime (× G completions).
        batch_ratio: Conservative batch / aggressive batch.
        lr_grid: Learning rates of the sweep.
        hessian_grid: δ_H values of the threshold sweep (band ±δ_H).
        fisher_grid: δ_F values of the threshold sweep.
        tuning_seeds: Seeds of both sweeps.
        seeds: Evaluation seeds.
        margin: Collapse / degradation margin on J (and on the training reward in the sweep).
        ablation: Whether to run the SGD step-model ablation.
    """

    task: TaskSpec = field(default_factory=TaskSpec)
    base: TrainSpec = field(default_factory=TrainSpec)
    prompts_aggressive: int = 12
    batch_ratio: int = 12
    lr_grid: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
    hessian_grid: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0)
    fisher_grid: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    tuning_seeds: tuple[int, ...] = (1000, 1001)
    seeds: tuple[int, ...] = tuple(range(10))
    margin: float = 0.05
    ablation: bool = True


FULL = ToyConfig(
    task=TaskSpec(
        vocab_size=10,
        horizon=3,
        n_prompts=32,
        n_random=48,
        cue_scale=1.0,
        cue_noise=0.3,
        bias_scale=3.0,
        n_junk=2,
        seed=0,
    ),
    base=TrainSpec(steps=100, group_size=8, cue_weight=2.0, init_scale=0.3, junk_logit=-3.0),
)
"""The reported configuration (about 10 minutes on one CPU core)."""

QUICK = ToyConfig(
    task=TaskSpec(vocab_size=6, horizon=2, n_prompts=8, n_random=8, n_junk=1, seed=0),
    base=TrainSpec(steps=12, group_size=4, cue_weight=1.0, init_scale=0.3),
    prompts_aggressive=2,
    batch_ratio=3,
    lr_grid=(0.3, 3.0),
    hessian_grid=(0.1,),
    fisher_grid=(1e-3, 1e-1),
    tuning_seeds=(1000,),
    seeds=(0, 1),
    ablation=True,
)
"""A micro configuration for tests and smoke runs (seconds)."""


@dataclass
class Results:
    """Raw results of the toy experiment (logs per method per seed, plus the sweeps)."""

    config: ToyConfig
    lr_sweep: list[dict[str, Any]] = field(default_factory=list)
    lr_aggressive: float = float("nan")
    lr_rule: str = ""
    threshold_sweep: list[dict[str, Any]] = field(default_factory=list)
    thresholds: dict[str, capo.Thresholds] = field(default_factory=dict)
    logs: dict[str, list[RunLog]] = field(default_factory=dict)
    ablation: dict[str, list[RunLog]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _spec(cfg: ToyConfig, variant: str, lr: float, aggressive: bool, **kw: Any) -> TrainSpec:
    prompts = cfg.prompts_aggressive * (1 if aggressive else cfg.batch_ratio)
    return replace(cfg.base, variant=variant, lr=lr, prompts_per_step=prompts, **kw)


def _train_signal(logs: Sequence[RunLog]) -> tuple[float, float]:
    """(mean final training reward, mean starting training reward) over runs: the tuning signal."""
    final = [tail_mean(lg.train_reward, 0.2) for lg in logs]
    start = [float(np.mean(lg.train_reward[: max(1, len(lg.train_reward) // 10)])) for lg in logs]
    return float(np.mean(final)), float(np.mean(start))


def sweep_lr(cfg: ToyConfig, tree: ArithmeticTree) -> tuple[list[dict[str, Any]], float, str]:
    """Step 1 of the protocol: returns (table rows, aggressive lr, the rule that picked it)."""
    rows: list[dict[str, Any]] = []
    for lr, variant in itertools.product(cfg.lr_grid, BASELINE_OF_VARIANT):
        logs = [train(tree, _spec(cfg, variant, lr, True), s) for s in cfg.tuning_seeds]
        final, start = _train_signal(logs)
        starts = [
            float(np.mean(lg.train_reward[: max(1, len(lg.train_reward) // 10)])) for lg in logs
        ]
        n_coll = sum(
            tail_mean(lg.train_reward, 0.2) < s0 - cfg.margin
            for lg, s0 in zip(logs, starts, strict=True)
        )
        rows.append(
            {
                "lr": lr,
                "variant": variant,
                "train_final": final,
                "train_start": start,
                "collapsed_seeds": int(n_coll),
                "J_final": float(np.mean([lg.J[-1] for lg in logs])),
            }
        )
    for lr in cfg.lr_grid:
        if any(r["collapsed_seeds"] for r in rows if r["lr"] == lr):
            return (
                rows,
                lr,
                "smallest lr at which an aggressive baseline collapsed on a tuning seed",
            )
    best = {
        v: max((r for r in rows if r["variant"] == v), key=lambda r: r["train_final"])
        for v in BASELINE_OF_VARIANT
    }
    for lr in cfg.lr_grid:
        for r in rows:
            b = best[r["variant"]]
            if r["lr"] == lr > b["lr"] and r["train_final"] < b["train_final"] - cfg.margin:
                return (
                    rows,
                    lr,
                    (
                        "no baseline collapsed at any lr; smallest lr, above a baseline's best lr, at "
                        "which its final training reward fell more than the margin below its best"
                    ),
                )
    return rows, cfg.lr_grid[-1], "no collapse or degradation on the grid; largest lr of the grid"


def sweep_thresholds(
    cfg: ToyConfig, tree: ArithmeticTree, lr: float
) -> tuple[list[dict[str, Any]], dict[str, capo.Thresholds]]:
    """Step 2 of the protocol: best (±δ_H, δ_F) per CAPO variant by final training reward."""
    rows: list[dict[str, Any]] = []
    chosen: dict[str, capo.Thresholds] = {}
    for variant, key in CAPO_OF_VARIANT.items():
        best: tuple[float, float] | None = None
        for dh, df in itertools.product(cfg.hessian_grid, cfg.fisher_grid):
            th = capo.Thresholds(hessian_low=-dh, hessian_high=dh, fisher_max=df)
            logs = [
                train(tree, _spec(cfg, variant, lr, True, thresholds=th), s)
                for s in cfg.tuning_seeds
            ]
            final, _ = _train_signal(logs)
            rej = float(np.mean([np.mean(lg.rejection_rate) for lg in logs]))
            rows.append(
                {
                    "method": key,
                    "delta_H": dh,
                    "delta_F": df,
                    "train_final": final,
                    "mean_rejection": rej,
                }
            )
            score = (round(final, 6), -rej)
            if best is None or score > best:
                best, chosen[key] = score, th
    return rows, chosen


def run_experiment(cfg: ToyConfig, progress: bool = False) -> Results:
    """Run the whole protocol.

    Args:
        cfg: The configuration.
        progress: Print one line per phase.

    Returns:
        The raw results.
    """
    import torch

    torch.set_num_threads(1)
    tree = arithmetic_tree(cfg.task)
    res = Results(cfg)
    t0 = time.perf_counter()
    res.lr_sweep, res.lr_aggressive, res.lr_rule = sweep_lr(cfg, tree)
    res.seconds["lr_sweep"] = time.perf_counter() - t0
    if progress:
        print(
            f"[toy] lr sweep done: lr_A = {res.lr_aggressive} ({res.seconds['lr_sweep']:.0f} s)",
            flush=True,
        )
    t0 = time.perf_counter()
    res.threshold_sweep, res.thresholds = sweep_thresholds(cfg, tree, res.lr_aggressive)
    res.seconds["threshold_sweep"] = time.perf_counter() - t0
    if progress:
        print(
            f"[toy] threshold sweep done ({res.seconds['threshold_sweep']:.0f} s): {res.thresholds}",
            flush=True,
        )
    t0 = time.perf_counter()
    for key, m in METHODS.items():
        lr = res.lr_aggressive if m.aggressive else res.lr_aggressive / LR_RATIO
        th = res.thresholds[key] if m.capo else None
        spec = _spec(cfg, m.variant, lr, m.aggressive, thresholds=th)
        res.logs[key] = [train(tree, spec, s) for s in cfg.seeds]
    res.seconds["evaluation"] = time.perf_counter() - t0
    if progress:
        print(f"[toy] evaluation done ({res.seconds['evaluation']:.0f} s)", flush=True)
    if cfg.ablation:
        t0 = time.perf_counter()
        for key in CAPO_OF_VARIANT.values():
            m = METHODS[key]
            spec = _spec(
                cfg,
                m.variant,
                res.lr_aggressive,
                True,
                thresholds=res.thresholds[key],
                step_model="sgd",
            )
            res.ablation[key] = [train(tree, spec, s) for s in cfg.seeds]
        res.seconds["ablation"] = time.perf_counter() - t0
    return res


def config_dict(cfg: ToyConfig) -> dict[str, Any]:
    """The configuration as JSON-ready data."""
    d = asdict(cfg)
    d["base"].pop("thresholds", None)
    return d


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m capo_app.experiments.toy_stability [--quick] [--out DIR] [--seeds N]``."""
    parser = argparse.ArgumentParser(
        prog="python -m capo_app.experiments.toy_stability", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", default="outputs/stability/toy", help="output folder")
    parser.add_argument("--quick", action="store_true", help="micro configuration (seconds)")
    parser.add_argument("--seeds", type=int, default=None, help="number of evaluation seeds")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = QUICK if args.quick else FULL
    if args.seeds is not None:
        cfg = replace(cfg, seeds=tuple(range(args.seeds)))
    from capo_app.experiments.toy_report import write_report

    start = time.perf_counter()
    res = run_experiment(cfg, progress=True)
    res.seconds["total"] = time.perf_counter() - start
    path = write_report(res, Path(args.out))
    print(f"[toy] report: {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
