"""The race's criteria (fixed before the evaluation runs), its statistics and its verdict.

Scores are held-out sampled accuracy at the training temperature (k samples per problem, one fixed held-out
set); a run's *final score* is the mean of its last two evaluations; the *base* is the step-0 score.

- R1 (the regime learns): conservative GRPO's final score exceeds the base by more than 2 paired SE (over
  seeds) and by at least 0.10 absolute.
- R2 (the regime crashes): GRPO (A) crashed in at least 4 of 5 seeds. A run *crashed* if its final score is
  more than 0.10 below its base, or its training reward averaged over the last 20% of steps is <= 0.05.
- The target is conservative GRPO's final score (mean over seeds); it must lie above the base (R1).
- S (sample efficiency, per arm): the arm reaches the target without crashing in at least 4/5 seeds, and
  its completions to the target (first evaluation at which the seed-mean score curve reaches the target)
  are fewer than conservative GRPO's, with the 95% bootstrap CI (seeds resampled, paired) of the ratio
  conservative / arm excluding 1.
- Verdict: ``invalid regime`` unless R1 and R2; else ``sample-efficient`` if a curvature-aware arm (CAPO,
  KL cap, δ-driven steps) meets S, ``control only`` if only a control (random mask, lower lr) does, and
  ``no gain`` if none does.
- The hoped-for result: a curvature-aware arm meets S with a ratio >= 10 and 0/5 crashes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "CRASH_MARGIN",
    "CRITERIA",
    "CURVATURE_KINDS",
    "HOPED_RATIO",
    "completions_to",
    "crashed",
    "final_score",
    "judge",
]

CRITERIA = (__doc__ or "").split("\n\n", 1)[1].rsplit("\n", 1)[0]
"""The criteria as written above (the report prints them before the results)."""

CRASH_MARGIN = 0.10
"""A run crashed if its final score is more than this below its base."""
NEAR_ZERO_REWARD = 0.05
"""... or its training reward over the last 20% of steps is at most this."""
MIN_GAIN = 0.10
"""R1: conservative GRPO's smallest absolute gain over the base."""
MIN_SEEDS_FRACTION = 0.8
"""R2 and S: 4 of 5 seeds."""
HOPED_RATIO = 10.0
"""The hoped-for completions ratio conservative / arm."""
CURVATURE_KINDS = ("capo", "kl_cap", "kl_target")
"""Arms whose gain would be the curvature-aware control's (the others are controls)."""
BOOTSTRAP = 4000
"""Bootstrap resamples."""
FINAL_EVALS = 2
"""A run's final score averages this many last evaluations."""


def scores(record: dict[str, Any]) -> np.ndarray:
    """The run's sampled scores at its evaluation points."""
    return np.asarray([e["sampled"] for e in record["evals"]], dtype=np.float64)


def completions(record: dict[str, Any]) -> np.ndarray:
    """Completions seen at the run's evaluation points."""
    return np.asarray([e["completions"] for e in record["evals"]], dtype=np.float64)


def final_score(record: dict[str, Any]) -> float:
    """Mean of the last :data:`FINAL_EVALS` evaluations."""
    return float(scores(record)[1:][-FINAL_EVALS:].mean())


def crashed(record: dict[str, Any]) -> bool:
    """Final score below base − :data:`CRASH_MARGIN`, or training reward ~0 over the last 20% of steps."""
    reward = np.asarray([np.nan if r is None else r for r in record["train_reward"]], dtype=float)
    tail = float(np.nanmean(reward[-max(1, round(0.2 * reward.size)) :]))
    return bool(final_score(record) < scores(record)[0] - CRASH_MARGIN or tail <= NEAR_ZERO_REWARD)


def completions_to(curve: np.ndarray, done: np.ndarray, target: float) -> float | None:
    """Completions at the first evaluation after step 0 where ``curve`` >= target (None: never)."""
    hit = np.flatnonzero(curve[1:] >= target)
    return None if hit.size == 0 else float(done[1:][hit[0]])


def _paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0


def _bootstrap(
    arm: list[dict[str, Any]], ref: list[dict[str, Any]], target: float, rng: np.random.Generator
) -> dict[str, Any]:
    """Completions to target of the arm and ratio ref / arm, with 95% CIs (paired seed resampling)."""
    seeds = [r["seed"] for r in ref]
    by_seed = {r["seed"]: r for r in arm}
    common = [s for s in seeds if s in by_seed]
    a = np.stack([scores(by_seed[s]) for s in common])
    c = np.stack([scores(r) for r in ref if r["seed"] in by_seed])
    done_a, done_c = completions(arm[0]), completions(ref[0])
    point_a = completions_to(a.mean(0), done_a, target)
    point_c = completions_to(c.mean(0), done_c, target)
    draws_a, ratios = [], []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(common), len(common))
        xa = completions_to(a[pick].mean(0), done_a, target)
        xc = completions_to(c[pick].mean(0), done_c, target)
        draws_a.append(np.inf if xa is None else xa)
        xc = done_c[-1] if xc is None else xc  # not reached: its whole run, a lower bound
        ratios.append(0.0 if xa is None else xc / xa)
    lo, hi = np.percentile(draws_a, [2.5, 97.5])
    rlo, rhi = np.percentile(ratios, [2.5, 97.5])
    ratio = None if point_a is None or point_c is None else point_c / point_a
    return {
        "completions_to_target": point_a,
        "completions_ci": [_fin(lo), _fin(hi)],
        "ratio": ratio,
        "ratio_ci": [float(rlo), float(rhi)],
        "horizon": float(done_a[-1]),
    }


def _fin(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def judge(
    runs: dict[str, list[dict[str, Any]]], kinds: dict[str, str], hoped_ratio: float = HOPED_RATIO
) -> dict[str, Any]:
    """The verdict and every check behind it; ``runs``: arm -> records, ``kinds``: arm -> kind."""
    by_kind = {kinds[a]: a for a in runs}
    cons, grpo = runs[by_kind["conservative"]], runs[by_kind["grpo_a"]]
    base = float(np.mean([scores(r)[0] for rs in runs.values() for r in rs]))
    gain = _paired(np.array([final_score(r) for r in cons]), np.array([scores(r)[0] for r in cons]))
    r1 = gain[0] > 2 * gain[1] and gain[0] >= MIN_GAIN
    r2 = float(np.mean([crashed(r) for r in grpo])) >= MIN_SEEDS_FRACTION
    target = float(np.mean([final_score(r) for r in cons]))
    rng = np.random.default_rng(21)
    arms = {}
    for name, recs in runs.items():
        boot = _bootstrap(recs, cons, target, rng)
        reached = [
            completions_to(scores(r), completions(r), target) is not None and not crashed(r)
            for r in recs
        ]
        crashes = int(sum(crashed(r) for r in recs))
        s = (
            kinds[name] != "conservative"
            and np.mean(reached) >= MIN_SEEDS_FRACTION
            and boot["ratio"] is not None
            and boot["ratio"] > 1
            and boot["ratio_ci"][0] > 1
        )
        hoped = bool(
            s and kinds[name] in CURVATURE_KINDS and crashes == 0 and boot["ratio"] >= hoped_ratio
        )
        arms[name] = {**boot, "reached_clean": int(sum(reached)), "crashes": crashes}
        arms[name].update(n_seeds=len(recs), S=bool(s), hoped=hoped)
    curvature = [a for a, c in arms.items() if c["S"] and kinds[a] in CURVATURE_KINDS]
    controls = [a for a, c in arms.items() if c["S"] and kinds[a] not in CURVATURE_KINDS]
    if not (r1 and r2):
        verdict = "invalid regime"
        why = f"R1 (the regime learns) {'holds' if r1 else 'fails'}; R2 (GRPO (A) crashes) {'holds' if r2 else 'fails'}"
    elif curvature:
        verdict, why = "sample-efficient", f"S holds for {', '.join(curvature)}"
    elif controls:
        verdict, why = "control only", f"S holds only for the control(s) {', '.join(controls)}"
    else:
        verdict, why = (
            "no gain",
            "no arm reached the target with fewer completions (CI excluding 1x)",
        )
    return {
        "verdict": verdict,
        "reason": why,
        "R1": bool(r1),
        "R2": bool(r2),
        "base_score": base,
        "target": target,
        "conservative_gain": list(gain),
        "hoped_for": any(c["hoped"] for c in arms.values()),
        "arms": arms,
    }
