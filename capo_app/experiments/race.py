"""The race: ``python -m capo_app.experiments.race [--quick] [--report-only] [--out DIR] [--worker]``.

Does curvature-aware control buy sample efficiency without collapse? The paper's claim (arXiv 2510.00819:
aggressive CAPO reaches conservative GRPO's accuracy with far fewer completions) measured on the embedded
tiny model, on the paper's own metric: held-out sampled accuracy at the training temperature.

The regime follows the paper's Table 3 ratios: conservative GRPO at lr η with 12 prompts × G = 8 = 96
completions per step; every aggressive arm at 5η with 1 prompt × 8 = 8 completions per step (12× smaller),
the same number of optimizer steps. Arms (:data:`ARMS`): conservative GRPO; GRPO (A); CAPO (A), the paper's
thresholds; a random-mask control at CAPO's realised per-step rate; GRPO (A) at lr ×0.5 and ×0.2; GRPO (A)
with the KL budget (``cap``); GRPO (A) with δ-driven steps (``capo_kl_mode: target``). δ is fixed from the
tuning runs (:func:`delta_from_tuning`) before any KL arm runs.

Every run is saved to ``<out>/raw/<arm>-<seed>.json`` when it ends and reused by later invocations, so
the race resumes run by run; ``--worker`` lets two processes share the job list (a lock file per run).
``--report-only`` rewrites the report, ``results.json`` and the figures from the saved runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from capo_app.experiments.race_run import RaceArm, RaceSetup, run_race, saved_fields

__all__ = ["ARMS", "FULL", "QUICK", "RaceConfig", "delta_from_tuning", "main"]

ARMS = (
    RaceArm("conservative", "conservative"),
    RaceArm("grpo_a", "grpo_a"),
    RaceArm("capo", "capo"),
    RaceArm("kl_target", "kl_target", s_max=10.0),
    RaceArm("kl_cap", "kl_cap"),
    RaceArm("random", "random", control_of="capo"),
    RaceArm("grpo_a_lr0.5", "lower_lr", lr_scale=0.5),
    RaceArm("grpo_a_lr0.2", "lower_lr", lr_scale=0.2),
)
"""The arms, in priority order (δ of the KL arms is filled in from the tuning runs)."""


@dataclass(frozen=True)
class RaceConfig:
    """The race's configuration.

    Attributes:
        setup: The regime's constants.
        seeds: Evaluation seeds (paired across arms).
        tuning_seeds: Seeds of the conservative tuning runs (δ, the learning check); disjoint from ``seeds``.
        secondary_seeds: The evaluation seeds of the secondary arms (``random``, ``lower_lr``).
        label: Printed at the top of the report.
    """

    setup: RaceSetup
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    tuning_seeds: tuple[int, ...] = (1000, 1001)
    secondary_seeds: tuple[int, ...] = (1, 2, 3, 4, 5)
    label: str = ""


FULL = RaceConfig(RaceSetup())
"""The reported configuration."""
QUICK = RaceConfig(
    RaceSetup(
        prompts=2, batch_ratio=2, group_size=4, conservative_steps=3, aggressive_steps=3, evals=1,
        num_test_problems=4, num_train_problems=64, eval_k=2, max_completion_length=40,
    ),
    seeds=(1, 2), tuning_seeds=(1000,), secondary_seeds=(1,),
    label="**QUICK SMOKE RUN** (micro configuration, not the race's results).",
)  # fmt: skip
"""The smoke configuration (seconds)."""

SECONDARY = ("random", "lower_lr")

POST_HOC = {
    "post_hoc/kl_cap_delta0.1": (RaceArm("post_hoc/kl_cap_delta0.1", "kl_cap"), 0.1),
    "post_hoc/kl_target_delta0.1": (
        RaceArm("post_hoc/kl_target_delta0.1", "kl_target", s_max=10.0),
        0.1,
    ),
}
"""Added after every arm's results were in (never part of the verdict): the KL arms at δ / 10 on seeds 1-3,
to ask whether a tighter bound on each step prevents the collapse at 8 completions per step."""
POST_HOC_SEEDS = (1, 2, 3)


def delta_from_tuning(tuning: Sequence[dict[str, Any]]) -> float:
    """δ: the median per-step true KL of conservative GRPO over the tuning runs' steps that moved (KL > 0)."""
    kl = [v for rec in tuning for v in rec["true_kl"] if v is not None and np.isfinite(v) and v > 0]
    if not kl:
        raise ValueError("the tuning runs logged no true KL")
    return float(np.median(kl))


class Store:
    """Saved runs under ``<out>/raw``: reuse when the settings match; a lock file per running job."""

    def __init__(self, out: Path, setup: RaceSetup) -> None:
        self.folder, self.work, self.setup = out / "raw", out / "work", setup

    def path(self, name: str, seed: int) -> Path:
        return self.folder / f"{name}-{seed}.json"

    def settings(self, arm: RaceArm, rates: Sequence[float] | None) -> dict[str, Any]:
        """What a saved run must have been trained with.

        Fields added later are left out while None, so that runs saved before they existed still match.
        """
        data = {"setup": saved_fields(self.setup), "arm": saved_fields(arm), "rates": rates}
        return dict(json.loads(json.dumps(data)))

    def load(self, arm: RaceArm, seed: int, rates: Sequence[float] | None = None) -> Any:
        path = self.path(arm.name, seed)
        if not path.exists():
            return None
        rec = json.loads(path.read_text())
        return rec if rec.get("settings") == self.settings(arm, rates) else None

    def run(
        self,
        arm: RaceArm,
        seed: int,
        rates: Sequence[float] | None,
        say: Callable[[str], None],
        trainer_class: type | None = None,
    ) -> dict[str, Any] | None:
        """The saved record, or train it now (None if another worker holds its lock)."""
        rec = self.load(arm, seed, rates)
        if rec is not None:
            return dict(rec)
        lock = self.path(arm.name, seed).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _alive(lock):
                return None
            lock.unlink(missing_ok=True)
            return self.run(arm, seed, rates, say, trainer_class)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        try:
            work = self.work / f"{arm.name}-{seed}"
            rec = run_race(self.setup, arm, seed, work, rates, trainer_class)
            rec["settings"] = self.settings(arm, rates)
            self.path(arm.name, seed).write_text(json.dumps(rec, separators=(",", ":")))
        finally:
            lock.unlink(missing_ok=True)
        evals = rec["evals"]
        say(
            f"{arm.name} seed {seed}: sampled {evals[0]['sampled']:.3f} -> {evals[-1]['sampled']:.3f} "
            f"(greedy {evals[-1]['greedy']}) {rec['seconds']:.0f} s"
        )
        return dict(rec)


def _alive(lock: Path) -> bool:
    try:
        os.kill(int(lock.read_text() or "0"), 0)
    except (ValueError, ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True
    return True


def has_mask_seam() -> bool:
    """Whether the trainer has the public mask seam ``CAPOTrainer.token_mask`` the random arm overrides."""
    from capo.trainer import CAPOTrainer

    return callable(getattr(CAPOTrainer, "token_mask", None))


def _arm(cfg: RaceConfig, name: str, delta: float | None) -> RaceArm:
    return next(a for a in resolve_arms(cfg, delta) if a.name == name)


def resolve_arms(cfg: RaceConfig, delta: float | None) -> list[RaceArm]:
    """The arms with δ filled in (KL arms dropped while δ is unknown)."""
    arms = []
    for arm in ARMS:
        if arm.kind in ("kl_cap", "kl_target"):
            if delta is None:
                continue
            arm = replace(arm, kl_delta=delta)
        arms.append(arm)
    return arms


def post_hoc_arms(delta: float | None) -> list[RaceArm]:
    """The post-hoc arms with their δ (none while δ is unknown)."""
    if delta is None:
        return []
    return [replace(arm, kl_delta=delta * f) for arm, f in POST_HOC.values()]


def jobs(
    cfg: RaceConfig, arms: Sequence[RaceArm], post_hoc: Sequence[RaceArm] = ()
) -> list[tuple[RaceArm, int]]:
    """(arm, seed) in run order: seeds in the outer loop, primary, secondary, then post-hoc arms."""
    primary = [(a, s) for s in cfg.seeds for a in arms if a.kind not in SECONDARY]
    secondary = [(a, s) for s in cfg.secondary_seeds for a in arms if a.kind in SECONDARY]
    return primary + secondary + [(a, seed) for seed in POST_HOC_SEEDS for a in post_hoc]


def run_all(cfg: RaceConfig, out: Path, say: Callable[[str], None], worker: bool) -> dict[str, Any]:
    """Tuning, then every evaluation job; returns {delta, tuning, runs} (runs: arm -> records)."""
    store = Store(out, cfg.setup)
    cons = replace(ARMS[0], name="tune-conservative")
    while True:  # one job per pass: δ and the CAPO twins are re-read after every run
        tuning = [store.load(cons, s) for s in cfg.tuning_seeds]
        delta = delta_from_tuning(tuning) if all(t is not None for t in tuning) else None
        ran, blocked = False, False
        todo = [(cons, s) for s in cfg.tuning_seeds] + jobs(
            cfg, resolve_arms(cfg, delta), post_hoc_arms(delta) if cfg is FULL else ()
        )
        for arm, seed in todo:
            rates = None
            if arm.control_of is not None:
                twin = store.load(_arm(cfg, arm.control_of, delta), seed)
                if twin is None or not has_mask_seam():  # the seam: CAPOTrainer.token_mask
                    blocked |= twin is None
                    continue
                rates = [0.0 if r is None else r for r in twin["rejection"]]
            if store.load(arm, seed, rates) is not None:
                continue
            ran = store.run(arm, seed, rates, say) is not None
            blocked |= not ran
            if ran:
                break
        if not ran and not (blocked or delta is None):
            break
        if not ran and not worker:
            raise RuntimeError("a job is locked by another process; rerun when it ends")
        if not ran:
            time.sleep(20)
    return collect(cfg, out)


def collect(cfg: RaceConfig, out: Path) -> dict[str, Any]:
    """The saved runs (whatever is there): {delta, tuning, runs, arms}."""
    raw = out / "raw"

    def read(name: str, seed: int) -> Any:
        path = raw / f"{name}-{seed}.json"
        return json.loads(path.read_text()) if path.exists() else None

    tuning = [t for s in cfg.tuning_seeds if (t := read("tune-conservative", s)) is not None]
    delta = delta_from_tuning(tuning) if len(tuning) == len(cfg.tuning_seeds) else None
    arms = resolve_arms(cfg, delta)
    runs: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        seeds = cfg.secondary_seeds if arm.kind in SECONDARY else cfg.seeds
        recs = [r for s in seeds if (r := read(arm.name, s)) is not None]
        if recs:
            runs[arm.name] = recs
    post_hoc = {}
    for arm in post_hoc_arms(delta):
        recs = [r for s in POST_HOC_SEEDS if (r := read(arm.name, s)) is not None]
        if recs:
            post_hoc[arm.name] = (arm, recs)
    return {"delta": delta, "tuning": tuning, "runs": runs, "arms": arms, "post_hoc": post_hoc}


def race_command_line(
    module: str, doc: str | None, argv: Sequence[str] | None, out: str
) -> tuple[argparse.Namespace, Path, Callable[[str], None]]:
    """The races' shared command line: ``(args, output folder, timed printer)``; one torch thread to train.

    Options: ``--out`` (default ``out``; quick: ``outputs/<name>-quick``), ``--quick``, ``--report-only``,
    ``--worker``.
    """
    name = module.rsplit(".", 1)[-1]
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}", description=(doc or "").splitlines()[0]
    )
    parser.add_argument(
        "--out", default=None, help=f"output folder (default {out}, quick: outputs/{name}-quick)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke configuration (seconds)")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from saved runs"
    )
    parser.add_argument("--worker", action="store_true", help="share the jobs with other workers")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if not args.report_only:
        import torch

        torch.set_num_threads(1)
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{name} {time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    return args, Path(args.out or (f"outputs/{name}-quick" if args.quick else out)), say


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module doc)."""
    args, out, say = race_command_line("capo_app.experiments.race", __doc__, argv, "docs/race")
    cfg = QUICK if args.quick else FULL
    from capo_app.experiments.race_report import write_race_report

    if not args.report_only:
        run_all(cfg, out, say, args.worker)
    path = write_race_report(cfg, collect(cfg, out), out)
    print(f"report: {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
