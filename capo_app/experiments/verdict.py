"""Per-arm summaries, the criteria of the verdict (fixed before any result) and the verdict per regime.

The criteria, applied to the Adam arms of a regime (the SGD arms get the same table, without a verdict:
the paper's method is specified with Adam):

- V1 (GRPO (A) crashes): ``adam/grpo_a`` crashed (:func:`capo_app.experiments.protocol.crashed`) in at
  least 4 of 5 seeds.
- V2 (the regime can learn): conservative GRPO or a lower-lr GRPO (A) improves on the base score by more than
  2 paired SE (mean of final − base over seeds > 2 SE).
- C1 (damage control at small cost): a ``capo`` arm with mean rejection <= 10% keeps its final score >= base
  − 0.05 in at least 4/5 of the seeds.
- C2 (the selection matters): that arm's final score beats its random-mask control (same per-step rejection
  rate, same seeds) by at least 2 paired SE.
- C3 (sample efficiency): its seed-mean score curve reaches the target — the best seed-mean final score of the
  lower-lr GRPO (A) arms, which must lie above the base score — with fewer completions than that lower-lr arm
  does.

Verdict: ``confirms`` if V1, V2 and one arm meets C1, C2 and C3; ``refutes`` if V1 holds and no ``capo`` arm
meets C1 and C2; ``inconclusive`` otherwise (no crash to prevent, or damage control without a measurable
sample-efficiency gain), with the reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from capo_app.experiments.protocol import KEEP_MARGIN, RegimeResult, crashed, final

__all__ = ["CRITERIA", "arm_summary", "judge", "paired"]

CRITERIA = (__doc__ or "").split("\n\n", 1)[1].rsplit("\n", 1)[0]
"""The criteria as written above (the report prints them before the results)."""

MAX_REJECTION = 0.10
"""C1: the largest mean rejection rate of an arm that may confirm the mechanism."""
MIN_SEEDS_FRACTION = 0.8
"""V1 and C1: the fraction of seeds (4 of 5)."""


def _max_finite(values: list[Any]) -> float | None:
    x = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.max()) if x.size else None


def arm_summary(arm: dict[str, Any], lr: float, records: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm of ``results.json``: per-seed final / min / crashed / rejection / max KL, and the base."""
    return {
        "name": arm["name"],
        "label": arm["label"],
        "optimizer": arm["optimizer"],
        "masking": arm["masking"] if arm["masking"] != "group" else "none",
        "group_removed": arm.get("group"),
        "lr": lr,
        "batch_ratio": arm["batch_ratio"],
        "thresholds": arm["thresholds"] or None,
        "seeds": [r["seed"] for r in records],
        "final": [final(r) for r in records],
        "min": [float(np.min(r["score"])) for r in records],
        "base": float(np.mean([r["score"][0] for r in records])),
        "base_per_seed": [float(r["score"][0]) for r in records],
        "crashed": [crashed(r) for r in records],
        "rejection_mean": [float(np.mean(r["rejection"])) for r in records],
        "true_kl_max": [_max_finite(r["true_kl"]) for r in records],
        "true_kl_head_max": [_max_finite(r["true_kl_head"]) for r in records],
        "kl_predicted_max": [_max_finite(r["kl_predicted"]) for r in records],
        "seconds": [float(r["seconds"]) for r in records],
    }


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of the paired differences a − b (SE 0 for one pair)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
    return float(d.mean()), se


def _curve(records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Seed-mean score and the completions at each evaluation point."""
    return np.mean([r["score"] for r in records], axis=0), np.asarray(records[0]["completions"])


def _reach(records: list[dict[str, Any]], target: float) -> float | None:
    score, done = _curve(records)
    hit = np.flatnonzero(score[1:] >= target)
    return None if hit.size == 0 else float(done[1:][hit[0]])


def _checks(s: dict[str, Any], control: dict[str, Any] | None) -> dict[str, Any]:
    """C1 and C2 of one capo arm."""
    kept = [f >= b - KEEP_MARGIN for f, b in zip(s["final"], s["base_per_seed"], strict=True)]
    rejection = float(np.mean(s["rejection_mean"]))
    c1 = rejection <= MAX_REJECTION and np.mean(kept) >= MIN_SEEDS_FRACTION
    diff, se = paired(s["final"], control["final"]) if control else (float("nan"), float("nan"))
    c2 = control is not None and diff > 0 and diff >= 2 * se
    return {
        "arm": s["name"],
        "rejection": rejection,
        "kept_seeds": int(sum(kept)),
        "n_seeds": len(kept),
        "vs_random": [diff, se],
        "C1": bool(c1),
        "C2": bool(c2),
    }


def judge(
    res: RegimeResult, summaries: dict[str, dict[str, Any]], optimizer: str = "adam"
) -> dict[str, Any]:
    """The verdict of one regime and every check behind it (module doc), on one optimizer's arms."""
    opt = optimizer
    base_arm = summaries[f"{opt}/grpo_a"]
    v1 = float(np.mean(base_arm["crashed"])) >= MIN_SEEDS_FRACTION
    learners = [
        s
        for n, s in summaries.items()
        if n.startswith(f"{opt}/grpo_a_lr") or n == f"{opt}/grpo_conservative"
    ]
    gains = {s["name"]: paired(s["final"], s["base_per_seed"]) for s in learners}
    v2 = any(m > 2 * se and m > 0 for m, se in gains.values())
    lower = [s for s in learners if s["name"].startswith(f"{opt}/grpo_a_lr")]
    ref = max(lower, key=lambda s: float(np.mean(s["final"]))) if lower else None
    target = float(np.mean(ref["final"])) if ref else float("nan")
    checks = []
    for arm in res.arms:
        if arm["optimizer"] != opt or arm["masking"] != "capo":
            continue
        control = next((a["name"] for a in res.arms if a.get("control_of") == arm["name"]), None)
        c = _checks(summaries[arm["name"]], summaries.get(control) if control else None)
        reach = _reach(res.runs[arm["name"]], target) if ref else None
        ref_reach = _reach(res.runs[ref["name"]], target) if ref else None
        c["completions_to_target"], c["lower_lr_completions"] = reach, ref_reach
        # a target at or below the base is "reached" by an arm that never moves: C3 needs it above
        above = ref is not None and target > ref["base"]
        c["C3"] = bool(above and reach is not None and (ref_reach is None or reach < ref_reach))
        checks.append(c)
    if v1 and v2 and any(c["C1"] and c["C2"] and c["C3"] for c in checks):
        verdict, why = "confirms", "an arm met C1, C2 and C3 where GRPO (A) crashed"
    elif v1 and not any(c["C1"] and c["C2"] for c in checks):
        verdict, why = "refutes", "GRPO (A) crashed and no capo arm met both C1 and C2"
    elif not v1:
        verdict, why = "inconclusive", "GRPO (A) did not crash in >= 4/5 seeds (V1 failed)"
    else:
        verdict, why = "inconclusive", "damage control (C1, C2) without V2 or C3"
    return {
        "verdict": verdict,
        "reason": why,
        "V1": v1,
        "V2": v2,
        "gains_over_base": gains,
        "target": target,
        "target_arm": ref["name"] if ref else None,
        "checks": checks,
    }
