"""The mechanism study's protocol: regimes × arms × seeds -> per-step run records.

Per regime (``toy``, ``head``, ``full``), on *tuning* seeds only:

1. Aggressive lr, per optimizer: GRPO (A) over ``lr_grid``; the smallest lr at which it crashes on a
   majority of the tuning seeds (:func:`crashed`), else the largest lr of the grid (noted).
2. Percentile thresholds: δ_F at the 99th / 95th / 80th percentile of the token m_F that GRPO (A)'s tuning
   runs at that lr produced (same step model as the arm's optimizer); with the band on, also ±the same
   percentile of |m_H|.
3. ``select_best`` regimes (the tiny LLM, where not every arm fits the budget): the percentile with the best
   final training reward on the tuning seeds is the one evaluated (with its random control and SGD twin).

Then every kept arm runs on the evaluation seeds (seeds in the outer loop; a ``random`` arm after the
``capo`` arm whose per-step rejection rate it copies on the same seed). Each run is saved to
``raw/<regime>/<arm>-<seed>.json`` as soon as it ends and reused when its settings are unchanged.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from capo.selection import Thresholds
from capo_app.experiments.arms import GROUPS, PAPER, Arm
from capo_app.experiments.llm_regime import LLMSetup, run_llm
from capo_app.experiments.toy_regime import ToySetup, run_toy

__all__ = [
    "CRASH_MARGIN",
    "KEEP_MARGIN",
    "RegimeConfig",
    "arms_of",
    "crashed",
    "final",
    "run_regime",
]

CRASH_MARGIN = 0.10
"""A run crashed if its final score is more than this below the base (or its training reward ~0)."""
KEEP_MARGIN = 0.05
"""A run "kept" its accuracy if its final score is at least base − this."""
NEAR_ZERO_REWARD = 0.05
"""Training reward (mean over the last 20% of steps) at or below which a run has crashed."""


@dataclass(frozen=True)
class RegimeConfig:
    """One regime of the study.

    Attributes:
        name: "toy", "head" or "full".
        setup: The regime's training constants.
        lr_grid: Candidate aggressive learning rates per optimizer, ascending.
        tuning_seeds: Seeds of the lr choice and the thresholds.
        seeds: Evaluation seeds (paired across arms).
        percentiles: Percentiles of GRPO (A)'s token m_F for the percentile arms.
        bands: Percentile arms with the m_H band off (False) and/or on (True).
        lr_scales: Lower-lr GRPO (A) arms (× the aggressive lr).
        sgd: Whether to run the SGD twins.
        select_best: Evaluate only the best percentile (chosen on the tuning seeds).
        groups: Run the sign(A) × π_a group ablation on the evaluation seeds.
        conservative: Conservative GRPO's (lr scale, batch ratio); None: no such arm.
        paper_control: Also a random-mask control at the paper's arm's rate.
        kl_budgets: GRPO (A) with a per-step KL budget (Adam), one arm per value.
    """

    name: str
    setup: ToySetup | LLMSetup
    lr_grid: dict[str, tuple[float, ...]]
    tuning_seeds: tuple[int, ...] = (1000, 1001)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    percentiles: tuple[float, ...] = (99.0, 95.0, 80.0)
    bands: tuple[bool, ...] = (False, True)
    lr_scales: tuple[float, ...] = (0.5, 0.25)
    sgd: bool = True
    select_best: bool = False
    groups: bool = True
    conservative: tuple[float, int] | None = (0.2, 12)
    paper_control: bool = True
    kl_budgets: tuple[float, ...] = ()


def last_fifth_mean(values: Any) -> float:
    """The mean of the last 20% of ``values`` (round(0.2 n), at least the last one): the study's one tail."""
    v = np.asarray(values, dtype=np.float64)
    return float(v[-max(1, round(0.2 * v.shape[0])) :].mean())


def final(record: dict[str, Any]) -> float:
    """The run's final score: mean of the last 20% of its evaluations (at least the last one)."""
    return last_fifth_mean(record["score"][1:])


def crashed(record: dict[str, Any]) -> bool:
    """Final score below base − :data:`CRASH_MARGIN`, or training reward ~0 over the last 20% of steps."""
    tail = last_fifth_mean(record["train_reward"])
    return final(record) < record["score"][0] - CRASH_MARGIN or tail <= NEAR_ZERO_REWARD


def arms_of(cfg: RegimeConfig, best: dict[str, float] | None = None) -> list[Arm]:
    """The regime's arms in run order (``best``: optimizer -> selected percentile, for select_best)."""
    arms: list[Arm] = []
    for opt in ("adam", "sgd") if cfg.sgd else ("adam",):
        arms.append(Arm(f"{opt}/grpo_a", opt))
        if opt == "adam" or not cfg.select_best:
            arms += [Arm(f"{opt}/grpo_a_lr{s:g}", opt, lr_scale=s) for s in cfg.lr_scales]
        if opt == "adam" and cfg.conservative is not None:
            scale, ratio = cfg.conservative
            arms.append(Arm(f"{opt}/grpo_conservative", opt, lr_scale=scale, batch_ratio=ratio))
        if opt == "adam" or not cfg.select_best:
            arms.append(Arm(f"{opt}/capo_paper", opt, "capo", thresholds=PAPER.thresholds))
        if cfg.paper_control:
            arms.append(Arm(f"{opt}/random_paper", opt, "random", control_of=f"{opt}/capo_paper"))
        for p in cfg.percentiles:
            if best is not None and best.get(opt) != p:
                continue
            for band in cfg.bands:
                name = f"{opt}/capo_p{p:g}{'_band' if band else ''}"
                arms.append(Arm(name, opt, "capo", percentile=p, band=band))
                if opt == "adam" or not cfg.select_best:
                    arms.append(
                        Arm(name.replace("capo_", "random_"), opt, "random", control_of=name)
                    )
    arms += [Arm(f"adam/grpo_a_kl{b:g}", kl_budget=b) for b in cfg.kl_budgets]
    if cfg.groups:
        arms += [
            Arm(f"adam/grpo_a_minus_g{g}", "adam", "group", group=g) for g in range(len(GROUPS))
        ]
    return arms


def _pooled(tuning: list[dict[str, Any]], key: str) -> np.ndarray:
    """The positive |values| of a token shift over every step of every tuning run."""
    parts = [np.abs(np.asarray(x, dtype=np.float64)).ravel() for r in tuning for x in r[key]]
    values = np.concatenate(parts) if parts else np.zeros(0)
    return values[np.isfinite(values) & (values > 0)]


def percentile_thresholds(tuning: list[dict[str, Any]], p: float, band: bool) -> Thresholds:
    """δ_F (and ±δ_H with the band) at percentile ``p`` of GRPO (A)'s nonzero token shifts (tuning runs).

    Tokens with A = 0 have m_F = m_H = 0 and are never rejected; the percentile is over the others. Without
    any nonzero shift (no reward signal in the tuning runs) no bound is set.
    """
    m_f, m_h = _pooled(tuning, "token_m_F"), _pooled(tuning, "token_m_H")
    if m_f.size == 0:
        return Thresholds()
    fisher = float(np.percentile(m_f, p))
    if not band or m_h.size == 0:
        return Thresholds(fisher_max=fisher)
    h = float(np.percentile(m_h, p))
    return Thresholds(-h, h, fisher)


Runner = Callable[[Arm, float, int, "list[float] | None"], dict[str, Any]]


def runner_of(cfg: RegimeConfig, out: Path) -> Runner:
    """The training function of the regime: (arm, peak lr, seed, random rates) -> run record."""
    setup = cfg.setup
    if isinstance(setup, ToySetup):
        toy = setup
        return lambda arm, lr, seed, rates: run_toy(toy, arm, lr, seed, rates)
    llm = setup
    work = out / "work" / cfg.name

    def run(arm: Arm, lr: float, seed: int, rates: list[float] | None) -> dict[str, Any]:
        return run_llm(llm, arm, lr, seed, work / f"{_slug(arm.name)}-{seed}", rates)

    return run


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def _settings(arm: Arm, lr: float, rates: list[float] | None) -> dict[str, Any]:
    """What a saved run must match to be reused (``kl_budget``, added later, only when set)."""
    data = {k: v for k, v in asdict(arm).items() if k != "kl_budget" or v is not None}
    return json.loads(json.dumps({"arm": data, "lr": lr, "rates": rates}, default=str))


@dataclass
class RegimeResult:
    """Everything a regime produced (the report reads this).

    Attributes:
        config: The regime's configuration, as data.
        lr: The aggressive lr per optimizer.
        lr_rule: How each lr was chosen.
        lr_sweep: Tuning rows ``{optimizer, lr, seed, final, base, crashed, train_tail}``.
        thresholds: Resolved thresholds of each ``capo`` arm.
        best: Selected percentile per optimizer (select_best regimes).
        arms: The evaluated arms, as data.
        runs: Evaluation records per arm (seed order).
        seconds: Wall time per phase.
    """

    config: dict[str, Any]
    lr: dict[str, float] = field(default_factory=dict)
    lr_rule: dict[str, str] = field(default_factory=dict)
    lr_sweep: list[dict[str, Any]] = field(default_factory=list)
    thresholds: dict[str, dict[str, float | None]] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    arms: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class _Runs:
    """Cached runs of one regime: a record is reused when its settings are unchanged."""

    def __init__(self, cfg: RegimeConfig, out: Path, say: Callable[[str], None]) -> None:
        self.cfg, self.folder, self.say = cfg, out / "raw" / cfg.name, say
        self.train = runner_of(cfg, out)

    def get(
        self, arm: Arm, lr: float, seed: int, rates: list[float] | None = None, tag: str = ""
    ) -> dict[str, Any]:
        path = self.folder / f"{_slug(arm.name)}{tag}-{seed}.json"
        settings = _settings(arm, lr, rates)
        if path.exists():
            rec = json.loads(path.read_text())
            if rec.get("settings") == settings:
                return dict(rec)
        rec = {**self.train(arm, lr, seed, rates), "settings": settings}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec, default=float))
        self.say(
            f"{self.cfg.name} {arm.name} lr {lr:g} seed {seed}: final {final(rec):.3f} "
            f"(base {rec['score'][0]:.3f}) {rec['seconds']:.0f} s"
        )
        return rec


def _tune_lr(runs: _Runs, res: RegimeResult, opt: str) -> list[dict[str, Any]]:
    """Protocol step 1 for one optimizer; returns GRPO (A)'s tuning records at the chosen lr."""
    grid, seeds = runs.cfg.lr_grid[opt], runs.cfg.tuning_seeds
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for lr in grid:
        by_lr[lr] = [
            runs.get(Arm(f"{opt}/grpo_a", opt), lr, s, tag=f"-tune-lr{lr:g}") for s in seeds
        ]
        for rec in by_lr[lr]:
            tail = last_fifth_mean(rec["train_reward"])
            res.lr_sweep.append(
                {
                    "optimizer": opt,
                    "lr": lr,
                    "seed": rec["seed"],
                    "final": final(rec),
                    "base": rec["score"][0],
                    "crashed": crashed(rec),
                    "train_tail": tail,
                }
            )
        if 2 * sum(crashed(r) for r in by_lr[lr]) > len(seeds):
            res.lr[opt] = lr
            res.lr_rule[opt] = (
                "smallest lr of the grid at which GRPO (A) crashed on most tuning seeds"
            )
            return by_lr[lr]
    res.lr[opt] = grid[-1]
    res.lr_rule[opt] = "GRPO (A) crashed at no lr of the grid on most tuning seeds: the largest lr"
    return by_lr[grid[-1]]


def _select_best(runs: _Runs, res: RegimeResult, opt: str, tuning: list[dict[str, Any]]) -> None:
    """Protocol step 3: the percentile (band off) with the best final training reward on tuning seeds."""
    scores = {}
    for p in runs.cfg.percentiles:
        arm = Arm(
            f"{opt}/capo_p{p:g}",
            opt,
            "capo",
            percentile=p,
            thresholds=percentile_thresholds(tuning, p, False),
        )
        recs = [runs.get(arm, res.lr[opt], s, tag="-tune") for s in runs.cfg.tuning_seeds]
        scores[p] = float(np.mean([last_fifth_mean(r["train_reward"]) for r in recs]))
    res.best[opt] = max(scores, key=lambda p: (scores[p], p))


def _resolve(arm: Arm, tuning: dict[str, list[dict[str, Any]]]) -> Arm:
    if arm.masking != "capo" or arm.percentile is None:
        return arm
    return replace(
        arm, thresholds=percentile_thresholds(tuning[arm.optimizer], arm.percentile, arm.band)
    )


def _thresholds_data(t: Thresholds | None) -> dict[str, float | None]:
    return {} if t is None else t.as_dict()


def _compact(rec: dict[str, Any]) -> dict[str, Any]:
    """An evaluation record without the token-shift samples (only the tuning runs need them)."""
    return {k: v for k, v in rec.items() if k not in ("token_m_F", "token_m_H", "settings")}


def run_regime(cfg: RegimeConfig, out: Path, say: Callable[[str], None] = print) -> RegimeResult:
    """Run one regime's protocol (module doc), resuming from ``out/raw/<regime>``."""
    t0 = time.perf_counter()
    res = RegimeResult(config=json.loads(json.dumps(asdict(cfg), default=str)))
    runs = _Runs(cfg, out, say)
    tuning = {opt: _tune_lr(runs, res, opt) for opt in (("adam", "sgd") if cfg.sgd else ("adam",))}
    if cfg.select_best:
        _select_best(runs, res, "adam", tuning["adam"])
        res.best["sgd"] = res.best["adam"]  # the SGD twin uses Adam's choice (budget)
    res.seconds["tuning"] = time.perf_counter() - t0
    arms = [_resolve(a, tuning) for a in arms_of(cfg, res.best if cfg.select_best else None)]
    by_name = {a.name: a for a in arms}
    res.arms = [
        {**asdict(a), "label": a.label, "thresholds": _thresholds_data(a.thresholds)} for a in arms
    ]
    res.thresholds = {a.name: _thresholds_data(a.thresholds) for a in arms if a.masking == "capo"}
    for seed in cfg.seeds:
        done: dict[str, dict[str, Any]] = {}
        for arm in arms:
            lr = res.lr[arm.optimizer] * arm.lr_scale
            rates = done[arm.control_of]["rejection"] if arm.control_of else None
            if arm.control_of and by_name[arm.control_of].masking != "capo":
                raise ValueError(f"{arm.name}: {arm.control_of} is not a capo arm")
            done[arm.name] = runs.get(arm, lr, seed, rates)
            res.runs.setdefault(arm.name, []).append(_compact(done[arm.name]))
    res.seconds["evaluation"] = time.perf_counter() - t0 - res.seconds["tuning"]
    return res
