"""Summary statistics, figures, Markdown and JSON of the toy stability experiment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from capo_app.experiments.analysis import (
    collapsed,
    completions_to_reach,
    mean_se,
    spearman,
    tail_mean,
)
from capo_app.experiments.methods import METHODS
from capo_app.experiments.plots import COLORS, Curve, Panel, plot_panels
from capo_app.experiments.toy_stability import Results, config_dict
from capo_app.experiments.toy_train import RunLog

__all__ = ["summarize", "write_report"]

REFERENCE = "grpo_conservative"


def _stack(logs: list[RunLog], name: str) -> np.ndarray:
    return np.stack([lg.as_arrays()[name] for lg in logs])


def _curve(logs: list[RunLog], name: str) -> dict[str, list[float]]:
    m, se = mean_se(_stack(logs, name))
    return {"mean": m.tolist(), "se": se.tolist()}


def _method_summary(logs: list[RunLog], margin: float, target: float | None) -> dict:
    J = _stack(logs, "J")
    comp = np.asarray(logs[0].completions, float)
    mean_J, _ = mean_se(J)
    rej_m, _ = mean_se(_stack(logs, "rejection_rate"))
    half = len(rej_m) // 2
    out: dict[str, Any] = {
        "n_seeds": len(logs),
        "J0": float(J[0, 0]),
        "J_final_mean": float(J[:, -1].mean()),
        "J_final_se": float(J[:, -1].std(ddof=1) / np.sqrt(len(logs))) if len(logs) > 1 else 0.0,
        "J_peak_mean": float(J.max(axis=1).mean()),
        "collapsed_seeds": int(sum(collapsed(j, margin) for j in J)),
        "dropped_from_peak_seeds": int(sum(j[-1] < j.max() - margin for j in J)),
        "entropy_final_mean": float(_stack(logs, "entropy")[:, -1].mean()),
        "completions_total": float(comp[-1]),
        "rejection_peak": float(rej_m.max()),
        "rejection_late": float(rej_m[half:].mean()),
        "rejection_mean": float(rej_m.mean()),
        "kl_max_mean": float(_stack(logs, "kl").max(axis=1).mean()),
        "kl_median": float(np.median(_stack(logs, "kl"))),
        "global_m_F_max_mean": float(_stack(logs, "global_m_F").max(axis=1).mean()),
    }
    if target is not None:
        need = completions_to_reach(mean_J, comp, target, start=1)
        out["completions_to_target"] = need
        per_seed = [completions_to_reach(j, comp, target, start=1) for j in J]
        out["seeds_reaching_target"] = int(sum(x is not None for x in per_seed))
        need90 = completions_to_reach(mean_J, comp, J[0, 0] + 0.9 * (target - J[0, 0]), start=1)
        out["completions_to_90pct_gain"] = need90
    return out


def summarize(res: Results) -> dict[str, Any]:
    """JSON-ready summary: sweeps, per-method statistics, headline ratios, correlations, curves."""
    cfg = res.config
    ref = res.logs[REFERENCE]
    ref_J = _stack(ref, "J")
    target = tail_mean(mean_se(ref_J)[0], 0.1)
    methods = {k: _method_summary(v, cfg.margin, target) for k, v in res.logs.items()}
    ablation = {k: _method_summary(v, cfg.margin, target) for k, v in res.ablation.items()}
    ref_need = methods[REFERENCE]["completions_to_target"]
    ref_need90 = methods[REFERENCE]["completions_to_90pct_gain"]
    for v in [*methods.values(), *ablation.values()]:
        need, need90 = v["completions_to_target"], v["completions_to_90pct_gain"]
        v["ratio_vs_conservative"] = ref_need / need if ref_need and need else None
        v["ratio_90pct_gain"] = ref_need90 / need90 if ref_need90 and need90 else None
    corr = {}
    for key in ("grpo_a", "capo_a"):
        if key in res.logs:
            kl = _stack(res.logs[key], "kl").ravel()
            corr[key] = {
                "token_m_F_vs_kl": spearman(_stack(res.logs[key], "token_m_F").ravel(), kl),
                "global_m_F_vs_kl": spearman(_stack(res.logs[key], "global_m_F").ravel(), kl),
            }
    curves = {
        k: {
            name: _curve(v, name)
            for name in (
                "J",
                "train_reward",
                "rejection_rate",
                "token_m_H",
                "token_m_F",
                "global_m_H",
                "global_m_F",
                "kl",
                "entropy",
            )
        }
        | {"completions": [float(c) for c in v[0].completions]}
        for k, v in res.logs.items()
    }
    abl_curves = {k: {"J": _curve(v, "J")} for k, v in res.ablation.items()}
    return {
        "config": config_dict(cfg),
        "definitions": {
            "collapse": f"max J over the last 20% of evaluations < J0 - {cfg.margin}",
            "dropped_from_peak": f"final J < peak J - {cfg.margin}",
            "target": "tail mean (last 10% of steps) of the seed-mean J of conservative GRPO",
            "ratio": "completions at which conservative GRPO's seed-mean J first reaches the target / "
            "the same for the method (0 completions, the base policy, never counts)",
            "rejection_late": "mean rejection rate over the second half of training",
            "ratio_90pct_gain": "completions conservative GRPO needs to reach J0 + 0.9 (target - J0) / "
            "completions the method needs to reach it (seed-mean curves)",
        },
        "lr_sweep": res.lr_sweep,
        "lr_aggressive": res.lr_aggressive,
        "lr_conservative": res.lr_aggressive / 5.0,
        "lr_rule": res.lr_rule,
        "threshold_sweep": res.threshold_sweep,
        "thresholds": {k: vars(t) for k, t in res.thresholds.items()},
        "target_J": target,
        "methods": methods,
        "ablation_sgd": ablation,
        "spearman": corr,
        "seconds": res.seconds,
        "curves": curves,
        "ablation_curves": abl_curves,
    }


def _curves(summary: dict, name: str, keys: list[str], x: str = "completions") -> list[Curve]:
    out = []
    for k in keys:
        c = summary["curves"][k]
        xs = c["completions"] if x == "completions" else list(range(len(c[name]["mean"])))
        if name != "J" and x == "completions":
            xs = xs[1:]
        out.append(Curve(METHODS[k].label, xs, c[name]["mean"], c[name]["se"], COLORS.get(k)))
    return out


def _figures(summary: dict, out: Path) -> dict[str, str]:
    keys = [k for k in METHODS if k in summary["curves"]]
    capo_keys = [k for k in keys if METHODS[k].capo]
    J0 = summary["methods"][keys[0]]["J0"]
    figs = {}
    acc = [
        Panel(
            "Exact J vs completions (Fig. 1/2)",
            "completions",
            "exact J",
            _curves(summary, "J", keys),
            xscale="log",
            hline=J0,
        ),
        Panel(
            "Training reward vs completions",
            "completions",
            "batch reward",
            _curves(summary, "train_reward", keys),
            xscale="log",
            hline=J0,
        ),
    ]
    figs["accuracy"] = plot_panels(out / "toy_accuracy.png", acc).name
    figs["rejection"] = plot_panels(
        out / "toy_rejection.png",
        [
            Panel(
                "Token rejection rate (Fig. 5)",
                "step",
                "rejected fraction",
                _curves(summary, "rejection_rate", capo_keys, x="step"),
            )
        ],
        ncols=1,
    ).name
    figs["shifts"] = plot_panels(
        out / "toy_shifts.png",
        [
            Panel(
                f"{lvl} {q} (Fig. 3)",
                "step",
                q,
                _curves(summary, f"{lvl}_{q}", keys, x="step"),
                yscale="symlog" if q == "m_H" else "log",
            )
            for q in ("m_F", "m_H")
            for lvl in ("token", "global")
        ],
    ).name
    figs["kl"] = plot_panels(
        out / "toy_kl.png",
        [
            Panel(
                "Exact average KL per step (Fig. 9)",
                "step",
                "KL(π_t ‖ π_t+1)",
                _curves(summary, "kl", keys, x="step"),
                yscale="log",
            ),
            Panel("Policy entropy", "step", "nats", _curves(summary, "entropy", keys, x="step")),
        ],
    ).name
    if summary["ablation_curves"]:
        panels = []
        for k, c in summary["ablation_curves"].items():
            adam = summary["curves"][k]
            xs = adam["completions"]
            panels.append(
                Panel(
                    f"{METHODS[k].label}: step model (Fig. 6)",
                    "completions",
                    "exact J",
                    [
                        Curve("Adam model", xs, adam["J"]["mean"], adam["J"]["se"], COLORS.get(k)),
                        Curve("SGD model", xs, c["J"]["mean"], c["J"]["se"], "k", "--"),
                    ],
                    hline=J0,
                )
            )
        figs["ablation"] = plot_panels(out / "toy_ablation.png", panels, ncols=3).name
    sweep = summary["lr_sweep"]
    lrs = sorted({r["lr"] for r in sweep})
    figs["lr_sweep"] = plot_panels(
        out / "toy_lr_sweep.png",
        [
            Panel(
                "lr sweep, aggressive batch (tuning seeds)",
                "peak lr",
                "final training reward",
                [
                    Curve(v, lrs, [r["train_final"] for r in sweep if r["variant"] == v])
                    for v in dict.fromkeys(r["variant"] for r in sweep)
                ],
                xscale="log",
            )
        ],
        ncols=1,
    ).name
    return {k: str(v) for k, v in figs.items()}


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "not reached"
    if isinstance(x, float):
        return f"{x:.{nd}g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.{nd}f}"
    return str(x)


def _markdown(s: dict, figs: dict[str, str]) -> str:
    m = s["methods"]
    lines = [
        "# Toy token-MDP stability experiment (exact J)",
        "",
        f"Arithmetic token MDP: {s['config']['task']}. Linear-softmax policy (the last layer *is* the "
        "policy, so CAPO's curvature model is exact up to sampling). Seeds: "
        f"{len(s['config']['seeds'])} evaluation seeds, {len(s['config']['tuning_seeds'])} separate tuning seeds.",
        "",
        "## Definitions",
        "",
        *[f"- **{k}**: {v}" for k, v in s["definitions"].items()],
        "",
        "## Learning-rate sweep (aggressive batch, tuning seeds, training reward)",
        "",
        "| lr | variant | start reward | final reward | collapsed seeds | exact J final |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['lr']} | {r['variant']} | {_fmt(r['train_start'])} | {_fmt(r['train_final'])} | "
            f"{r['collapsed_seeds']} | {_fmt(r['J_final'])} |"
            for r in s["lr_sweep"]
        ],
        "",
        f"Chosen aggressive lr **{s['lr_aggressive']}** (conservative {s['lr_conservative']:g}): "
        f"{s['lr_rule']}.",
        "",
        "## Threshold sweep (±δ_H, δ_F; tuning seeds, training reward)",
        "",
        "| method | δ_H | δ_F | final reward | mean rejection |",
        "|---|---|---|---|---|",
        *[
            f"| {r['method']} | {r['delta_H']:g} | {r['delta_F']:g} | {_fmt(r['train_final'])} | "
            f"{_fmt(r['mean_rejection'])} |"
            for r in s["threshold_sweep"]
        ],
        "",
        "Chosen: "
        + "; ".join(
            f"{k}: ±{t['hessian_high']:g}, δ_F {t['fisher_max']:g}"
            for k, t in s["thresholds"].items()
        ),
        "",
        "## Results (evaluation seeds)",
        "",
        f"Target = conservative GRPO's final exact J = {_fmt(s['target_J'])}.",
        "",
        "| method | J final (± s.e.) | J peak | collapsed | dropped from peak | completions to target "
        "| ratio | ratio (90% gain) | rejection peak / late | max KL/step | final entropy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, v in m.items():
        lines.append(
            f"| {METHODS[k].label} | {_fmt(v['J_final_mean'])} ± {_fmt(v['J_final_se'])} | "
            f"{_fmt(v['J_peak_mean'])} | {v['collapsed_seeds']}/{v['n_seeds']} | "
            f"{v['dropped_from_peak_seeds']}/{v['n_seeds']} | {_fmt(v.get('completions_to_target'))} | "
            f"{_fmt(v.get('ratio_vs_conservative'), 2)} | {_fmt(v.get('ratio_90pct_gain'), 2)} | "
            f"{_fmt(v['rejection_peak'])} / "
            f"{_fmt(v['rejection_late'])} | {_fmt(v['kl_max_mean'])} | {_fmt(v['entropy_final_mean'])} |"
        )
    if s["ablation_sgd"]:
        lines += [
            "",
            "## Step-model ablation (Fig. 6): SGD model, same thresholds",
            "",
            "| method | J final (Adam model) | J final (SGD model) | collapsed (SGD) | rejection mean (SGD) |",
            "|---|---|---|---|---|",
        ]
        for k, v in s["ablation_sgd"].items():
            lines.append(
                f"| {METHODS[k].label} | {_fmt(m[k]['J_final_mean'])} | "
                f"{_fmt(v['J_final_mean'])} | {v['collapsed_seeds']}/{v['n_seeds']} | "
                f"{_fmt(v['rejection_mean'])} |"
            )
    lines += ["", "## Spearman ρ between predicted m_F and the exact KL of the step (Table 5)", ""]
    lines += [
        f"- {METHODS[k].label}: token {_fmt(v['token_m_F_vs_kl'])}, global "
        f"{_fmt(v['global_m_F_vs_kl'])}"
        for k, v in s["spearman"].items()
    ]
    lines += [
        "",
        "## Figures",
        "",
        *[f"- {k}: ![{k}]({f})" for k, f in figs.items()],
        "",
        "Run time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s["seconds"].items()),
        "",
    ]
    return "\n".join(lines)


def write_report(res: Results, out: Path) -> Path:
    """Write ``toy_results.json``, the figures and ``toy_report.md`` under ``out``.

    Args:
        res: Raw results.
        out: Output folder (created).

    Returns:
        Path of the Markdown report.
    """
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(res)
    figs = _figures(summary, out)
    summary["figures"] = figs
    (out / "toy_results.json").write_text(json.dumps(summary, indent=1, default=float))
    path = out / "toy_report.md"
    path.write_text(_markdown(summary, figs))
    return path
