"""The mechanism study's report: ``report.md`` (criteria first, then results), ``results.json``, figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from capo_app.experiments.arms import GROUPS
from capo_app.experiments.figures import write_figures
from capo_app.experiments.protocol import CRASH_MARGIN, NEAR_ZERO_REWARD, RegimeResult
from capo_app.experiments.verdict import CRITERIA, arm_summary, judge, paired

__all__ = ["PREVIOUS", "PRIMARY", "summarize", "write_report"]

PRIMARY = ("toy", "head", "full")
"""The regimes with a verdict in ``results.json``; any other regime is reported as supplementary."""

PREVIOUS = """Headline numbers of the previous small-scale stability study (retired with this one), for comparison:
tiny LLM, 30 steps, aggressive lr 3e-4 (16 completions/step), 5 seeds: held-out accuracy base 0.432 ->
GRPO (A) 0.190 ± 0.013, CAPO (A) with swept thresholds 0.200 ± 0.020, ReinCAPO (A) 0.228 ± 0.014,
conservative GRPO (lr 6e-5, 192 completions/step) 0.468 ± 0.020; the measured true KL per step was 2,600x
(conservative GRPO) to 88,000x (CAPO) the logged global m_F. Exact toy MDP (old task): no baseline collapsed
at any lr; CAPO ended at J 0.56 vs GRPO (A) 0.91; random masking at CAPO's rate 0.83."""


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _mean_se(values: list[float]) -> str:
    x = np.asarray(values, dtype=np.float64)
    se = x.std(ddof=1) / np.sqrt(x.size) if x.size > 1 else 0.0
    return f"{x.mean():.3f} ± {se:.3f}"


def _kl_max(values: list[float | None]) -> str:
    finite = [v for v in values if v is not None]
    return "not measured" if not finite else _fmt(float(np.median(finite)))


def summarize(res: RegimeResult) -> dict[str, dict[str, Any]]:
    """Arm summaries (``results.json`` rows) keyed by arm name, in run order."""
    out = {}
    for arm in res.arms:
        lr = res.lr[arm["optimizer"]] * arm["lr_scale"]
        out[arm["name"]] = arm_summary(arm, lr, res.runs[arm["name"]])
    return out


def _arm_table(summaries: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| arm | lr | final (mean ± SE) | min | crashed | rejection | max KL (median) | "
        "max predicted KL | vs GRPO (A) (paired) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries.values():
        ref = summaries.get(f"{s['optimizer']}/grpo_a")
        d, se = paired(s["final"], ref["final"]) if ref else (float("nan"), float("nan"))
        lines.append(
            f"| {s['label']} | {_fmt(s['lr'])} | {_mean_se(s['final'])} | {_mean_se(s['min'])} | "
            f"{sum(s['crashed'])}/{len(s['crashed'])} | {np.mean(s['rejection_mean']):.3f} | "
            f"{_kl_max(s['true_kl_max'])} | {_kl_max(s['kl_predicted_max'])} | {d:+.3f} ± {se:.3f} |"
        )
    return lines


def _kl_agreement(res: RegimeResult) -> list[str]:
    """Spearman and median ratio of measured KL to the predictions, over all steps of all arms.

    The KL-budget arms are left out: their logged prediction is the exact lookahead.
    """
    from scipy.stats import spearmanr

    plain = [a["name"] for a in res.arms if a.get("kl_budget") is None]
    lines = []
    for key, measured, what in (
        ("kl_predicted", "true_kl", "½vᵀFv of the step taken (all tokens) vs the measured KL"),
        ("kl_predicted", "true_kl_head", "½vᵀFv vs the measured head-only KL (old hidden states)"),
        (
            "global_m_F",
            "true_kl",
            "the paper's global m_F (kept tokens; all tokens for arms without CAPO masking) vs the measured KL",
        ),
    ):
        pairs = np.asarray(
            [
                (p, t)
                for name in plain
                for r in res.runs[name]
                for p, t in zip(r[key], r[measured], strict=False)
                if p is not None and t is not None and p > 0 and 0 < t < np.inf
            ]
        )
        if pairs.size == 0:
            lines.append(f"- {what}: not measured")
            continue
        rho = float(spearmanr(pairs[:, 0], pairs[:, 1]).statistic)
        ratio = np.median(pairs[:, 1] / pairs[:, 0])
        lines.append(
            f"- {what}: Spearman {rho:.2f} over {len(pairs)} steps; "
            f"median measured / predicted {ratio:.3g}"
        )
    return lines


def _group_counts(records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    rej = np.sum([np.sum(r["rejected_by_group"], axis=0) for r in records], axis=0)
    tot = np.sum([np.sum(r["tokens_by_group"], axis=0) for r in records], axis=0)
    return rej, tot


def _group_lines(res: RegimeResult, summaries: dict[str, dict[str, Any]]) -> list[str]:
    """Group ablation of GRPO (A), and where CAPO's rejections fall (rate in group; share of rejections)."""
    best, sgd = _best_capo(summaries), _best_capo(summaries, "sgd")
    names = ("adam/capo_paper", best["name"] if best else "", sgd["name"] if sgd else "")
    shown = [n for n in names if n in res.runs]
    shown = list(dict.fromkeys(shown))
    lines = [
        "| token group | share of GRPO (A)'s tokens | GRPO (A) without it: final | crashed | "
        + " | ".join(f"{n} rejects (rate; share of its rejections)" for n in shown)
        + " |",
        "|---|---|---|---|" + "---|" * len(shown),
    ]
    _, base_tot = _group_counts(res.runs["adam/grpo_a"])
    counts = {n: _group_counts(res.runs[n]) for n in shown}
    for g, group in enumerate(GROUPS):
        s = summaries.get(f"adam/grpo_a_minus_g{g}")
        fin = _mean_se(s["final"]) if s else "not run"
        crash = f"{sum(s['crashed'])}/{len(s['crashed'])}" if s else "-"
        cells = [
            f"{rej[g] / max(tot[g], 1):.3f}; {rej[g] / max(rej.sum(), 1):.3f}"
            for rej, tot in counts.values()
        ]
        share = base_tot[g] / max(base_tot.sum(), 1)
        lines.append(f"| {group} | {share:.3f} | {fin} | {crash} | " + " | ".join(cells) + " |")
    return lines


def _check_lines(v: dict[str, Any], title: str) -> list[str]:
    """The verdict line (or the secondary reading) and the C1-C3 table of one optimizer's arms."""
    gains = ", ".join(f"{k}: {m:+.3f} ± {se:.3f}" for k, (m, se) in v["gains_over_base"].items())
    lines = [
        f"**{title}: {v['verdict']}** ({v['reason']}). V1 (GRPO (A) crashes in >= 4/5): {v['V1']}; "
        f"V2 (conservative or lower-lr GRPO (A) beats base by > 2 SE): {v['V2']} (gains {gains}).",
        "",
        "| capo arm | rejection | kept seeds | vs random (paired) | C1 | C2 | completions to "
        f"target {_fmt(v['target'])} (lower-lr: {v['target_arm']}) | C3 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in v["checks"]:
        lines.append(
            f"| {c['arm']} | {c['rejection']:.3f} | {c['kept_seeds']}/{c['n_seeds']} | "
            f"{c['vs_random'][0]:+.3f} ± {c['vs_random'][1]:.3f} | {c['C1']} | {c['C2']} | "
            f"{_fmt(c['completions_to_target'])} vs {_fmt(c['lower_lr_completions'])} | {c['C3']} |"
        )
    return [*lines, ""]


def _regime_section(
    name: str,
    res: RegimeResult,
    summaries: dict[str, Any],
    v: dict[str, Any],
    sgd: dict[str, Any] | None = None,
) -> list[str]:
    extra = "" if name in PRIMARY else " (supplementary, post hoc: not one of the three verdicts)"
    lines = [f"## Regime `{name}`{extra}", ""]
    for opt, lr in res.lr.items():
        lines.append(f"- {opt}: aggressive lr **{lr:g}** ({res.lr_rule[opt]})")
    if res.best:
        lines.append(f"- percentile selected on the tuning seeds: {res.best}")
    n_runs = sum(len(x["seconds"]) for x in summaries.values())
    compute = sum(sum(x["seconds"]) for x in summaries.values())
    lines.append(f"- evaluation: {n_runs} runs, {compute:.0f} s of one CPU core in total (their own "
                 "run times, whenever they ran; tuning runs not counted)")  # fmt: skip
    lines += [
        "",
        "Tuning (GRPO (A), tuning seeds):",
        "",
        "| optimizer | lr | seed | base | final | train reward (last 20%) | crashed |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['optimizer']} | {r['lr']:g} | {r['seed']} | {r['base']:.3f} | {r['final']:.3f} | "
        f"{r['train_tail']:.3f} | {r['crashed']} |"
        for r in res.lr_sweep
    ]
    lines += ["", *_arm_table(summaries), "", *_check_lines(v, "Verdict (Adam arms)")]
    if sgd is not None:
        lines += _check_lines(
            sgd, "The same criteria on the SGD arms (secondary reading, not the verdict)"
        )
    lines += [
        "What drives the crash (GRPO (A) with one token group's gradient removed) and whether CAPO "
        "rejects those tokens:",
        "",
        *_group_lines(res, summaries),
        "",
        "Predicted vs measured KL per step:",
        "",
        *_kl_agreement(res),
        "",
    ]
    return lines


def _best_capo(summaries: dict[str, dict[str, Any]], opt: str = "adam") -> dict[str, Any] | None:
    capo = [s for s in summaries.values() if s["optimizer"] == opt and s["masking"] == "capo"]
    return max(capo, key=lambda s: float(np.mean(s["final"]))) if capo else None


def _summary_row(name: str, res: RegimeResult, s: dict[str, Any], opt: str, verdict: str) -> str:
    grpo, best = s[f"{opt}/grpo_a"], _best_capo(s, opt)
    control = next(
        (a["name"] for a in res.arms if best and a.get("control_of") == best["name"]), None
    )
    lower = [v for k, v in s.items() if k.startswith(f"{opt}/grpo_a_lr")]
    low = max(lower, key=lambda v: float(np.mean(v["final"]))) if lower else None
    best_cell = (f"{best['name']}: {_mean_se(best['final'])}, {np.mean(best['rejection_mean']):.3f}"
                 if best else "-")  # fmt: skip
    low_cell = f"{low['name']}: {_mean_se(low['final'])}" if low else "-"
    return (
        f"| {name} | {opt} | {res.lr[opt]:g} | {sum(grpo['crashed'])}/{len(grpo['crashed'])} | "
        f"{grpo['base']:.3f} | {_mean_se(grpo['final'])} | {best_cell} | "
        f"{_mean_se(s[control]['final']) if control else '-'} | {low_cell} | {verdict} |"
    )


def _verdict_cell(name: str, verdict: dict[str, Any]) -> str:
    return (
        f"**{verdict['verdict']}**" if name in PRIMARY else f"(supplementary: {verdict['verdict']})"
    )


def _summary_rows(
    results: dict[str, RegimeResult], summaries: dict[str, Any], verdicts: dict[str, Any],
    sgd: dict[str, Any],
) -> list[str]:  # fmt: skip
    """One row per regime and optimizer: the closing note's numbers (SGD: the secondary reading)."""
    lines = ["| regime | optimizer | aggressive lr | GRPO (A) crashed | base | GRPO (A) final | best CAPO "
             "arm (final, rejection) | its random control | lower-lr GRPO (A) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, res in results.items():
        lines.append(
            _summary_row(name, res, summaries[name], "adam", _verdict_cell(name, verdicts[name]))
        )
        if name in sgd:
            reading = f"(secondary: {sgd[name]['verdict']})"
            lines.append(_summary_row(name, res, summaries[name], "sgd", reading))
    return lines


def _key_arms(res: RegimeResult) -> dict[str, list[str]]:
    """The arms of the group-rejection figure (Adam paper and percentile arms, one SGD arm) and of the curves."""
    names = [a["name"] for a in res.arms]
    adam = [n for n in names if n.startswith("adam/capo")][:2]
    sgd = [n for n in names if n.startswith("sgd/capo_p95")] or [
        n for n in names if n.startswith("sgd/capo")
    ]
    curves = [n for n in names if "minus" not in n and "random" not in n and n.startswith("adam/")]
    return {"groups": adam + sgd[:1] or names[:1], "curves": curves[:7]}


def write_report(results: dict[str, RegimeResult], out: Path, header: str, notes: str = "") -> Path:
    """Write ``report.md``, ``results.json`` and the figures under ``out``; returns the report path."""
    out.mkdir(parents=True, exist_ok=True)
    summaries = {name: summarize(res) for name, res in results.items()}
    verdicts = {name: judge(res, summaries[name]) for name, res in results.items()}
    sgd = {
        n: judge(r, summaries[n], "sgd") for n, r in results.items() if "sgd/grpo_a" in summaries[n]
    }
    figures = write_figures(
        out,
        {
            n: {"summaries": summaries[n], "runs": r.runs, "key_arms": _key_arms(r)}
            for n, r in results.items()
        },
    )
    regime_data = {
        n: {
            "arms": list(summaries[n].values()),
            "lr": r.lr,
            "lr_rule": r.lr_rule,
            "lr_sweep": r.lr_sweep,
            "best_percentile": r.best,
            "checks": verdicts[n],
            "sgd_checks": sgd.get(n),
            "seconds": r.seconds,
        }
        for n, r in results.items()
    }
    primary = [n for n in results if n in PRIMARY]
    data = {
        "regimes": {n: regime_data[n] for n in primary},
        "verdict": {n: verdicts[n]["verdict"] for n in primary},
        "supplementary": {n: {**d, "verdict": verdicts[n]["verdict"]}
                          for n, d in regime_data.items() if n not in PRIMARY},
        "figures": figures,
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(data, indent=1, default=float))
    lines = [
        header,
        "",
        "## Criteria (fixed before the results)",
        "",
        CRITERIA,
        "",
        f"A run *crashed* if its final score (mean of the last 20% of its evaluations) is more than "
        f"{CRASH_MARGIN} below its base score, or its training reward over the last 20% of steps is "
        f"<= {NEAR_ZERO_REWARD}.",
        "",
        "## Before this study",
        "",
        PREVIOUS,
        "",
        "## Summary",
        "",
        *_summary_rows(results, summaries, verdicts, sgd),
        "",
        notes,
        "",
    ]
    for name, res in results.items():
        lines += _regime_section(name, res, summaries[name], verdicts[name], sgd.get(name))
    lines += ["## Figures", ""] + [f"- {k}: ![{k}]({v})" for k, v in figures.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
