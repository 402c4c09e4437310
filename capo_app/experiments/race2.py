"""Race 2, tuning: ``python -m capo_app.experiments.race2 [--worker] [--report-only] [--quick] [--out DIR]``.

The race (docs/race) ran its aggressive arms at 1 prompt per step, below this task's noise floor. Race 2
holds the batch: every aggressive arm trains on conservative GRPO's 12 prompts × G = 8 = 96 completions per
step at 5× its learning rate (1e-3), so that a collapse comes from the step's size, not from a noisy
direction. Conservative GRPO is the race's own (its five evaluation runs and target are reused).

This module runs the tuning stage, on seeds 1000 and 1001 (disjoint from the evaluation seeds 1-5), and
writes the choice before any evaluation run:

- a pre-pilot: GRPO (A) at lr 5e-4 and 1e-3 (does the paper's learn-then-collapse shape appear?);
- CAPO (A) over δ_F ∈ {1e-4, 1e-5, 1e-6, 1e-7} × δ_H ∈ {1e-2, 1e-3, off} (the band −δ_H < m_H < δ_H);
- the KL cap and δ-driven steps (``target``) over δ ∈ {½, 1, 2, 4} × conservative GRPO's median per-step true
  KL while its learning rate is at least half its peak (:func:`kl_basis`, from the race's tuning runs).

Every tuning run is the first :data:`TUNING_STEPS` steps of an evaluation run (same 300-step schedule), with
held-out sampled accuracy every 25 steps. The rule (:func:`choose`, fixed before any run): per family, the
configuration with the highest mean over the tuning seeds of the held-out sampled accuracy at the last
tuning step; ties go to the earlier configuration in grid order (the paper's thresholds and δ × 1 first).

Runs are saved to ``<out>/raw/<name>-<seed>.json`` when they end and reused, so tuning resumes run by run
across sessions; ``--worker`` lets two processes share the job list (a lock file per run).
``--report-only`` rewrites ``tuning.md`` and ``tuning.json`` from the saved runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from capo_app.experiments.race import FULL as RACE
from capo_app.experiments.race import Store, race_command_line
from capo_app.experiments.race2_report import write_race2_report
from capo_app.experiments.race2_run import diagnosed_trainer
from capo_app.experiments.race_run import RaceArm, RaceSetup, arm_lr

__all__ = [
    "FISHER_GRID",
    "HESSIAN_GRID",
    "KL_FACTORS",
    "SETUP",
    "TUNING_STEPS",
    "choose",
    "kl_basis",
    "main",
    "tuning_arms",
]

SETUP = replace(RACE.setup, batch_ratio=1)
"""The regime: the race's, with the aggressive arms at conservative GRPO's batch (96 completions/step)."""
TUNING_STEPS = 100
"""A tuning run is an evaluation run's first 100 steps."""
TUNING_SETUP = replace(SETUP, stop_at=TUNING_STEPS, evals=12)  # every 25 of 300 steps
"""Tuning runs: stopped at step 100, evaluated every 25 steps."""
TUNING_SEEDS = (1000, 1001)
EVALUATION_SETUP = replace(SETUP, track_shifts=True)
"""Evaluation runs: 300 steps, evaluated every 50; the curvature model runs in every arm (diagnostics)."""
EVALUATION_SEEDS = (1, 2, 3, 4, 5)
"""Paired with the race's conservative GRPO runs on the same seeds."""


@dataclass(frozen=True)
class Race2Config:
    """Race 2's configuration: the tuning and evaluation setups and seeds."""

    tuning: RaceSetup = TUNING_SETUP
    evaluation: RaceSetup = EVALUATION_SETUP
    tuning_seeds: tuple[int, ...] = TUNING_SEEDS
    seeds: tuple[int, ...] = EVALUATION_SEEDS
    reuse_conservative: bool = True
    """Conservative GRPO from the race's runs (False: trained here, the smoke run's own)."""


FULL = Race2Config()
PRE_PILOT_LR_SCALES = (0.5, 1.0)
"""GRPO (A) at lr 5e-4 and 1e-3."""
FISHER_GRID = (1e-4, 1e-5, 1e-6, 1e-7)
"""δ_F of CAPO's tuning grid (the paper's 1e-4 first)."""
HESSIAN_GRID: tuple[float | None, ...] = (1e-2, 1e-3, None)
"""δ_H of CAPO's tuning grid: the band −δ_H < m_H < δ_H, or off (the paper's 1e-2 first)."""
KL_FACTORS = (1.0, 0.5, 2.0, 4.0)
"""δ of the KL arms, × :func:`kl_basis` (× 1 first)."""
S_MAX = 10.0
"""The largest lr factor of the δ-driven arm (as in the race)."""

FAMILIES = ("grpo_a", "capo", "kl_cap", "kl_target")


def kl_basis(conservative: Sequence[dict[str, Any]], setup: RaceSetup = SETUP) -> float:
    """The median per-step true KL of conservative GRPO over the steps whose lr is ≥ half its peak.

    The race's δ was a whole-run median, which the cosine tail pulls down; this one is the KL of the steps
    that move at the learning rates the aggressive arms are compared at.
    """
    high = _high_lr_steps(setup)
    kl = [
        v
        for rec in conservative
        for step, v in enumerate(rec["true_kl"], start=1)
        if step in high and v is not None and np.isfinite(v) and v > 0
    ]
    if not kl:
        raise ValueError("the conservative runs logged no true KL at high learning rate")
    return float(np.median(kl))


def _high_lr_steps(setup: RaceSetup) -> set[int]:
    """Optimizer steps (1-based) whose scheduled lr is ≥ half the peak, from the recipe's own scheduler."""
    import torch
    from transformers import get_scheduler

    from capo_app.recipe import parse_recipe

    steps = setup.conservative_steps
    _, config, _ = parse_recipe(
        ["--method", "grpo"], overrides={"max_steps": steps, "output_dir": "-"}
    )
    kwargs = config.lr_scheduler_kwargs if isinstance(config.lr_scheduler_kwargs, dict) else {}
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = get_scheduler(
        config.lr_scheduler_type, opt, config.get_warmup_steps(steps), steps,
        scheduler_specific_kwargs=kwargs,
    )  # fmt: skip
    high = set()
    for step in range(1, steps + 1):  # the lr of step t is the schedule's value after t - 1 updates
        if sched.get_last_lr()[0] >= 0.5:
            high.add(step)
        opt.step()
        sched.step()
    return high


def _num(x: float | None) -> str:
    return "off" if x is None else f"{x:.0e}"


def tuning_arms(basis: float | None) -> list[tuple[str, RaceArm]]:
    """(family, arm) in run order: the pre-pilot, then the grids interleaved (KL arms once δ is known)."""
    pilot = [
        ("grpo_a", RaceArm(f"tune-grpo_a-lr{s:g}", "grpo_a" if s == 1 else "lower_lr", lr_scale=s))
        for s in PRE_PILOT_LR_SCALES
    ]
    capo = [
        ("capo", RaceArm(f"tune-capo-F{_num(f)}-H{_num(h)}", "capo",
                         thresholds=(None if h is None else -h, h, f)))
        for h in HESSIAN_GRID for f in FISHER_GRID
    ]  # fmt: skip
    kl: list[list[tuple[str, RaceArm]]] = [[] for _ in KL_FACTORS]
    if basis is not None:
        for i, f in enumerate(KL_FACTORS):
            kl[i] = [
                ("kl_cap", RaceArm(f"tune-kl_cap-x{f:g}", "kl_cap", kl_delta=f * basis)),
                ("kl_target", RaceArm(f"tune-kl_target-x{f:g}", "kl_target", kl_delta=f * basis,
                                      s_max=S_MAX)),
            ]  # fmt: skip
    order = list(pilot)
    for i, arm in enumerate(capo):
        order.append(arm)
        if i % 3 == 2 and i // 3 < len(kl):
            order.extend(kl[i // 3])
    return order


def choose(
    runs: dict[str, list[dict[str, Any]]], arms: Sequence[tuple[str, RaceArm]], n_seeds: int
) -> dict[str, Any]:
    """Per family, the arm with the best mean held-out sampled accuracy at the last tuning step.

    Only arms with every tuning seed done compete; a family is chosen only once all its arms are done.
    Ties go to the earlier arm in grid order.
    """
    out: dict[str, Any] = {}
    for family in FAMILIES:
        members = [a for f, a in arms if f == family]
        if not members:
            continue
        scored = {a.name: _tuning_score(runs.get(a.name, []), n_seeds) for a in members}
        done = all(v is not None for v in scored.values())
        best, best_score = None, -np.inf
        for a in members:
            v = scored[a.name]
            if v is not None and v > best_score:
                best, best_score = a.name, v
        out[family] = {"complete": done, "best": best, "scores": scored}
    return out


def _tuning_score(records: Sequence[dict[str, Any]], n_seeds: int) -> float | None:
    """Mean over the tuning seeds of the sampled accuracy at the last tuning step (None until all are done)."""
    at = [r["evals"][-1]["sampled"] for r in records]
    return float(np.mean(at)) if len(at) == n_seeds else None


def run_jobs(out: Path, cfg: Race2Config, say: Callable[[str], None], worker: bool) -> None:
    """Every tuning job, then (once every family's choice is final) every evaluation job, not yet saved.

    A worker waits for jobs another process holds; the matched control waits for its CAPO twin.
    """
    while True:
        basis = _basis_or_none()
        tuning = Store(out, cfg.tuning)
        todo: list[tuple[Store, RaceArm, int]] = [
            (tuning, a, s) for _, a in tuning_arms(basis) for s in cfg.tuning_seeds
        ]
        choice = collect(out, cfg)["choice"]
        evaluating = Store(out, cfg.evaluation)
        final = all(c["complete"] for c in choice.values())
        if final and basis is not None:
            arms = evaluation_arms(choice, basis)
            if not cfg.reuse_conservative:
                arms = [RaceArm("conservative", "conservative"), *arms]
            todo += [(evaluating, a, s) for s in cfg.seeds for a in arms]
        ran, waiting = False, False
        for store, arm, seed in todo:
            twin_cells, rates = None, None
            if arm.control_of is not None:
                twin = evaluating.load(next(a for a in arms if a.name == arm.control_of), seed)
                if twin is None:
                    waiting = True
                    continue
                twin_cells, rates = twin["cells"], twin["rejection"]
            if store.load(arm, seed, rates) is not None:
                continue
            trainer = diagnosed_trainer(twin_cells, seed) if store is evaluating else None
            if store.run(arm, seed, rates, say, trainer) is not None:
                ran = True
                break
            waiting = True
        if not ran and not waiting and final:
            return
        if not ran and not worker:
            raise RuntimeError("every job left is locked or waits for another; rerun when they end")
        if not ran:
            time.sleep(20)


def evaluation_arms(choice: dict[str, Any], basis: float) -> list[RaceArm]:
    """The evaluation arms, each family at its tuned configuration (seeds outer, these inner)."""
    tuned = {
        f: next(a for fam, a in tuning_arms(basis) if a.name == c["best"])
        for f, c in choice.items()
    }
    arms = [
        RaceArm("grpo_a", "grpo_a"),
        replace(tuned["capo"], name="capo"),
        replace(tuned["kl_cap"], name="kl_cap"),
        replace(tuned["kl_target"], name="kl_target"),
        RaceArm("matched", "random", control_of="capo"),
        RaceArm("grpo_a_lr0.5", "lower_lr", lr_scale=0.5),
        RaceArm("grpo_a_lr0.2", "lower_lr", lr_scale=0.2),
    ]
    return arms


def _basis_or_none() -> float | None:
    conservative = _race_conservative()
    return kl_basis(conservative) if conservative else None


def _race_conservative() -> list[dict[str, Any]]:
    """The race's conservative tuning runs (seeds 1000, 1001), reused as race 2's conservative arm."""
    raw = Path(__file__).resolve().parents[2] / "docs" / "race" / "raw"
    paths = [raw / f"tune-conservative-{s}.json" for s in RACE.tuning_seeds]
    return [json.loads(p.read_text()) for p in paths if p.exists()]


def collect(out: Path, cfg: Race2Config) -> dict[str, Any]:
    """The saved tuning runs and the choice (whatever is done)."""
    basis = _basis_or_none()
    arms = tuning_arms(basis)
    runs: dict[str, list[dict[str, Any]]] = {}
    for _, arm in arms:
        recs = [
            json.loads(p.read_text())
            for s in cfg.tuning_seeds
            if (p := out / "raw" / f"{arm.name}-{s}.json").exists()
        ]
        if recs:
            runs[arm.name] = recs
    return {
        "kl_basis": basis,
        "arms": arms,
        "runs": runs,
        "choice": choose(runs, arms, len(cfg.tuning_seeds)),
    }


def collect_evaluation(out: Path, cfg: Race2Config) -> dict[str, Any]:
    """The evaluation runs saved so far, with the race's conservative runs as the reference arm."""
    tuning = collect(out, cfg)
    arms = [RaceArm("conservative", "conservative")]
    if tuning["kl_basis"] is not None and all(c["complete"] for c in tuning["choice"].values()):
        arms += evaluation_arms(tuning["choice"], tuning["kl_basis"])
    race_raw = Path(__file__).resolve().parents[2] / "docs" / "race" / "raw"
    runs: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        reused = arm.kind == "conservative" and cfg.reuse_conservative
        folder = race_raw if reused else out / "raw"
        recs = [
            json.loads(p.read_text())
            for s in cfg.seeds
            if (p := folder / f"{arm.name}-{s}.json").exists()
        ]
        if recs:
            runs[arm.name] = recs
    choice = {f: c["best"] for f, c in tuning["choice"].items()}
    return {
        "arms": arms,
        "runs": runs,
        "tuning": {"kl_basis": tuning["kl_basis"], "choice": choice},
    }


def write_tuning_report(collected: dict[str, Any], out: Path, setup: RaceSetup) -> Path:
    """``tuning.json`` (grid, runs' curves, choice) and ``tuning.md`` from the saved runs."""
    arms, runs = collected["arms"], collected["runs"]
    rows = []
    for family, arm in arms:
        for rec in runs.get(arm.name, []):
            rows.append({
                "family": family, "arm": asdict(arm), "seed": rec["seed"], "lr": arm_lr(setup, arm),
                "evals": [{"step": e["step"], "sampled": e["sampled"], "greedy": e["greedy"]} for e in rec["evals"]],
                "median_rejection": _median(rec["rejection"]),
                "median_true_kl": _median(rec["true_kl"]),
                "seconds": rec["seconds"],
            })  # fmt: skip
    data = {"setup": asdict(setup), "kl_basis": collected["kl_basis"], "runs": rows,
            "choice": collected["choice"]}  # fmt: skip
    (out / "tuning.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = [
        "# Race 2: tuning",
        "",
        "Regenerated by `python -m capo_app.experiments.race2 --report-only` from `raw/`.",
        "",
        f"Regime: 12 prompts × G = 8 = 96 completions per step for every arm; aggressive lr "
        f"{setup.lr * setup.lr_ratio:g} (5× conservative's {setup.lr:g}). Tuning runs: the first "
        f"{TUNING_STEPS} steps of the 300-step schedule, seeds {', '.join(map(str, TUNING_SEEDS))}.",
        "",
        f"KL basis (conservative GRPO's median per-step true KL while lr ≥ ½ peak, the race's tuning runs): "
        f"{collected['kl_basis']:.3g} nats."
        if collected["kl_basis"]
        else "KL basis: not available.",
        "",
        "Rule, fixed before any run: per family, the highest mean over the tuning seeds of held-out sampled "
        f"accuracy at step {TUNING_STEPS}; ties to the earlier configuration.",
        "",
        "| family | configuration | seed | sampled accuracy at each evaluation (every 25 steps from 0) "
        "| median rejection | median true KL/step |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        curve = ", ".join(f"{e['sampled']:.3f}" for e in r["evals"])
        rej = "-" if r["median_rejection"] is None else f"{r['median_rejection']:.3f}"
        kl = "-" if r["median_true_kl"] is None else f"{r['median_true_kl']:.2e}"
        lines.append(
            f"| {r['family']} | {r['arm']['name']} | {r['seed']} | {curve} | {rej} | {kl} |"
        )
    lines += ["", "## Choice", ""]
    for family, c in collected["choice"].items():
        state = "final" if c["complete"] else "provisional (grid not finished)"
        if family == "grpo_a":
            lines.append(
                f"- grpo_a (the pre-pilot, not a tuned arm: GRPO (A) runs at lr 1e-3 and its ×0.5 and ×0.2 "
                f"are arms of their own): best {c['best']} ({state})"
            )
            continue
        lines.append(f"- {family}: **{c['best']}** ({state})")
    path = out / "tuning.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _median(x: Sequence[float | None]) -> float | None:
    v = [a for a in x if a is not None]
    return float(np.median(v)) if v else None


_SMOKE = dict(
    prompts=2, group_size=4, conservative_steps=4, aggressive_steps=4, evals=2, num_test_problems=4,
    num_train_problems=64, eval_k=2,
)  # fmt: skip
QUICK = Race2Config(
    tuning=replace(TUNING_SETUP, **_SMOKE, stop_at=2),  # type: ignore[arg-type]
    evaluation=replace(EVALUATION_SETUP, **_SMOKE),  # type: ignore[arg-type]
    tuning_seeds=(1000,),
    seeds=(1, 2),
    reuse_conservative=False,
)
"""The smoke configuration (seconds; not the race's results)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module doc)."""
    args, out, say = race_command_line("capo_app.experiments.race2", __doc__, argv, "docs/race2")
    cfg = QUICK if args.quick else FULL
    if not args.report_only:
        run_jobs(out, cfg, say, args.worker)
    out.mkdir(parents=True, exist_ok=True)
    print(f"report: {write_tuning_report(collect(out, cfg), out, cfg.tuning)}", flush=True)
    report = write_race2_report(collect_evaluation(out, cfg), out, cfg.evaluation)
    print(f"report: {report}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
