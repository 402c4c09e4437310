"""Summary, figures, Markdown and JSON of the tiny-LLM stability experiment (:mod:`.stability`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from capo_app.experiments.analysis import (
    collapsed,
    completions_to_reach,
    mean_se,
    smooth,
    tail_mean,
)
from capo_app.experiments.methods import METHODS
from capo_app.experiments.plots import COLORS, Curve, Panel, plot_panels
from capo_app.experiments.stability import LLMResults, config_dict, train_curve

__all__ = ["SMOOTH", "summarize", "write_report"]

SMOOTH = 5
"""Trailing window (steps) smoothing the noisy per-step training reward (the paper smooths with an EMA)."""

SERIES = {
    "reward": "reward",
    "rejection_rate": "capo/rejection_rate",
    "token_m_H": "capo/m_H/mean",
    "token_m_F": "capo/m_F/mean",
    "global_m_H": "capo/global_m_H",
    "global_m_F": "capo/global_m_F",
    "true_kl": "capo/true_kl",
}
"""Report name -> metric logged by CAPOTrainer (baselines log them with ``capo_track_shifts``)."""


def _stack(recs: list[dict[str, Any]], key: str) -> np.ndarray:
    n = min(len(r["history"]) for r in recs)
    return np.stack([train_curve(r, key)[:n] for r in recs])


def _test(recs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(r["test_accuracy"]) for r in recs)
    acc = np.array([[p["accuracy"] for p in r["test_accuracy"][:n]] for r in recs], dtype=float)
    comp = np.array([p["completions"] for p in recs[0]["test_accuracy"][:n]], dtype=float)
    return acc, comp


def _completions(recs: list[dict[str, Any]]) -> np.ndarray:
    n = min(len(r["history"]) for r in recs)
    return np.array([h["completions"] for h in recs[0]["history"][:n]], dtype=float)


def _method(
    recs: list[dict[str, Any]], margin: float, targets: dict[str, float] | None
) -> dict[str, Any]:
    reward = np.stack([smooth(r, SMOOTH) for r in _stack(recs, "reward")])
    comp = _completions(recs)
    test, tcomp = _test(recs)
    rej, _ = mean_se(_stack(recs, SERIES["rejection_rate"]))
    half = len(rej) // 2
    out: dict[str, Any] = {
        "n_seeds": len(recs),
        "lr": recs[0]["lr"],
        "completions_total": float(comp[-1]),
        "test_base": float(test[:, 0].mean()),
        "test_final_mean": float(test[:, -1].mean()),
        "test_final_se": float(test[:, -1].std(ddof=1) / np.sqrt(len(recs)))
        if len(recs) > 1
        else 0.0,
        "test_peak_mean": float(test.max(axis=1).mean()),
        "train_final_mean": float(np.mean([tail_mean(r, 0.1) for r in reward])),
        "collapsed_test_seeds": int(sum(collapsed(t, margin) for t in test)),
        "collapsed_train_seeds": int(
            sum(collapsed(np.concatenate([[r[0]], r]), margin) for r in reward)
        ),
        "rejection_peak": float(np.nanmax(rej)),
        "rejection_late": float(np.nanmean(rej[half:])),
        "rejection_mean": float(np.nanmean(rej)),
        "true_kl_max_mean": float(np.nanmean(np.nanmax(_stack(recs, SERIES["true_kl"]), axis=1))),
        "global_m_F_max_mean": float(
            np.nanmean(np.nanmax(_stack(recs, SERIES["global_m_F"]), axis=1))
        ),
        "seconds_mean": float(np.mean([r["seconds"] for r in recs])),
    }
    if targets is not None:
        for split, curve, x, first in (
            ("train", reward.mean(0), comp, SMOOTH - 1),
            ("test", test.mean(0), tcomp, 1),
        ):
            out[f"{split}_completions_to_target"] = completions_to_reach(
                curve, x, targets[split], start=first
            )
    return out


def _curves(recs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"completions": _completions(recs).tolist()}
    for name, key in SERIES.items():
        x = _stack(recs, key)
        if name == "reward":
            x = np.stack([smooth(r, SMOOTH) for r in x])
        m, se = mean_se(x)
        out[name] = {"mean": m.tolist(), "se": se.tolist()}
    test, tcomp = _test(recs)
    m, se = mean_se(test)
    out["test"] = {"mean": m.tolist(), "se": se.tolist(), "completions": tcomp.tolist()}
    return out


def summarize(res: LLMResults) -> dict[str, Any]:
    """JSON-ready summary of the experiment."""
    cfg = res.config
    ev = res.runs.get("eval", {})
    ref = ev["grpo_conservative"]
    ref_reward = np.stack([smooth(r, SMOOTH) for r in _stack(ref, "reward")]).mean(0)
    ref_test, _ = _test(ref)
    targets = {"train": tail_mean(ref_reward, 0.1), "test": float(ref_test.mean(0)[-1])}
    methods = {k: _method(v, cfg.margin, targets) for k, v in ev.items()}
    for split in ("train", "test"):
        ref_need = methods["grpo_conservative"][f"{split}_completions_to_target"]
        for v in methods.values():
            need = v[f"{split}_completions_to_target"]
            v[f"{split}_ratio_vs_conservative"] = ref_need / need if ref_need and need else None
    sweep_rows = []
    for name, recs in res.runs.get("lr_sweep", {}).items():
        key, lr = name.split("@")
        r = np.stack([smooth(x, SMOOTH) for x in _stack(recs, "reward")])
        t, _ = _test(recs)
        sweep_rows.append(
            {
                "method": key,
                "lr": float(lr),
                "train_final": float(tail_mean(r.mean(0), 0.2)),
                "test_final": float(t[:, -1].mean()),
                "test_base": float(t[:, 0].mean()),
            }
        )
    th_rows = []
    for name, recs in res.runs.get("threshold_sweep", {}).items():
        r = np.stack([smooth(x, SMOOTH) for x in _stack(recs, "reward")])
        th_rows.append(
            {
                "setting": name,
                "train_final": float(tail_mean(r.mean(0), 0.2)),
                "mean_rejection": float(np.nanmean(_stack(recs, SERIES["rejection_rate"]))),
            }
        )
    return {
        "config": config_dict(cfg),
        "definitions": {
            "collapse (test)": f"max held-out accuracy over the last 20% of evaluations < base - {cfg.margin}",
            "collapse (train)": f"max smoothed training reward over the last 20% of steps < first - {cfg.margin}",
            "targets": "conservative GRPO's final seed-mean smoothed training reward / final test accuracy",
            "ratio": "completions at which conservative GRPO's seed-mean curve first reaches the target / "
            f"the same for the method (train: only full {SMOOTH}-step windows; test: the base model at 0 "
            "completions never counts)",
            "baselines' rejection": "what CAPO's test would have rejected (capo_track_shifts); nothing masked",
        },
        "lr_aggressive": res.lr_aggressive,
        "lr_conservative": res.lr_aggressive / 5.0,
        "lr_rule": res.lr_rule,
        "lr_sweep": sweep_rows,
        "thresholds": res.thresholds,
        "threshold_rule": res.threshold_rule,
        "threshold_sweep": th_rows,
        "targets": targets,
        "methods": methods,
        "ablation_sgd": {
            k: _method(v, cfg.margin, None) for k, v in res.runs.get("ablation", {}).items()
        },
        "curves": {k: _curves(v) for k, v in ev.items()},
        "ablation_curves": {k: _curves(v) for k, v in res.runs.get("ablation", {}).items()},
        "seconds": res.seconds,
        "notes": res.notes,
    }


def _lines(
    s: dict, name: str, keys: list[str], x: str = "completions", abl: bool = False
) -> list[Curve]:
    src = s["ablation_curves"] if abl else s["curves"]
    out = []
    for k in keys:
        c = src[k]
        xs = (
            c["test"]["completions"]
            if name == "test"
            else (
                c["completions"] if x == "completions" else list(range(1, len(c[name]["mean"]) + 1))
            )
        )
        label = METHODS[k].label + (" (SGD model)" if abl else "")
        out.append(
            Curve(
                label,
                xs,
                c[name]["mean"],
                c[name]["se"],
                "k" if abl else COLORS.get(k),
                "--" if abl else "-",
            )
        )
    return out


def _figures(s: dict, out: Path) -> dict[str, str]:
    keys = [k for k in METHODS if k in s["curves"]]
    capo_keys = [k for k in keys if METHODS[k].capo]
    base = s["methods"]["grpo_conservative"]["test_base"]
    figs = {
        "accuracy": plot_panels(
            out / "accuracy.png",
            [
                Panel(
                    f"Training reward (trailing mean of {SMOOTH} steps; Fig. 1/2)",
                    "completions",
                    "train accuracy",
                    _lines(s, "reward", keys),
                    xscale="log",
                ),
                Panel(
                    "Held-out test accuracy (greedy; Fig. 1/2)",
                    "completions",
                    "test accuracy",
                    _lines(s, "test", keys),
                    xscale="log",
                    hline=base,
                ),
            ],
        )
    }
    if capo_keys:
        figs["rejection"] = plot_panels(
            out / "rejection.png",
            [
                Panel(
                    "Token rejection rate (Fig. 5)",
                    "step",
                    "rejected fraction",
                    _lines(s, "rejection_rate", capo_keys, x="step"),
                )
            ],
            ncols=1,
        )
    figs["shifts"] = plot_panels(
        out / "shifts.png",
        [
            Panel(
                f"{lvl} {q} (Fig. 3)",
                "step",
                q,
                _lines(s, f"{lvl}_{q}", keys, x="step"),
                yscale="symlog" if q == "m_H" else "log",
            )
            for q in ("m_F", "m_H")
            for lvl in ("token", "global")
        ],
    )
    figs["kl"] = plot_panels(
        out / "kl.png",
        [
            Panel(
                "Exact full-vocabulary KL(π_t ‖ π_t+1) per step (Fig. 9)",
                "step",
                "KL",
                _lines(s, "true_kl", keys, x="step"),
                yscale="log",
            )
        ],
        ncols=1,
    )
    if s["ablation_curves"]:
        figs["ablation"] = plot_panels(
            out / "ablation.png",
            [
                Panel(
                    f"{METHODS[k].label}: Adam vs SGD step model (Fig. 6)",
                    "completions",
                    "test accuracy",
                    _lines(s, "test", [k]) + _lines(s, "test", [k], abl=True),
                    xscale="log",
                    hline=base,
                )
                for k in s["ablation_curves"]
            ],
            ncols=3,
        )
    return {k: v.name for k, v in figs.items()}


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "not reached"
    if isinstance(x, float):
        return f"{x:.{nd}g}" if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4) else f"{x:.{nd}f}"
    return str(x)


def _markdown(s: dict, figs: dict[str, str]) -> str:
    c = s["config"]
    lines = [
        "# Tiny-LLM stability experiment (CAPOTrainer, synthetic arithmetic)",
        "",
        f"{c['steps']} steps per run, G = {c['group_size']}, aggressive batch {c['prompts_aggressive'] * c['group_size']} "
        f"completions, conservative {c['prompts_aggressive'] * c['group_size'] * c['batch_ratio']}; "
        f"seeds {c['seeds']} (tuning seeds {c['tuning_seeds']}); {c['num_test_problems']} held-out problems.",
        "",
        *[f"- **{k}**: {v}" for k, v in s["definitions"].items()],
        "",
        f"Aggressive lr **{s['lr_aggressive']:g}** (conservative {s['lr_conservative']:g}): {s['lr_rule']}.",
        "",
    ]
    if s["lr_sweep"]:
        lines += [
            "| lr | method | train reward final | test base | test final |",
            "|---|---|---|---|---|",
            *[
                f"| {r['lr']:g} | {r['method']} | {_fmt(r['train_final'])} | {_fmt(r['test_base'])} | "
                f"{_fmt(r['test_final'])} |"
                for r in s["lr_sweep"]
            ],
            "",
        ]
    lines += [
        f"Thresholds ({s['threshold_rule']}): "
        + "; ".join(
            f"{k}: ±{t['hessian_high']:g}, δ_F {t['fisher_max']:g}"
            for k, t in s["thresholds"].items()
        ),
        "",
    ]
    if s["threshold_sweep"]:
        lines += [
            "| setting | train reward final | mean rejection |",
            "|---|---|---|",
            *[
                f"| {r['setting']} | {_fmt(r['train_final'])} | {_fmt(r['mean_rejection'])} |"
                for r in s["threshold_sweep"]
            ],
            "",
        ]
    lines += [
        f"Targets: train {_fmt(s['targets']['train'])}, test {_fmt(s['targets']['test'])}.",
        "",
        "| method | seeds | test base → final (± s.e.) | collapsed test / train | train ratio | test ratio "
        "| rejection peak / late | max KL/step | s/run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, v in s["methods"].items():
        lines.append(
            f"| {METHODS[k].label} | {v['n_seeds']} | {_fmt(v['test_base'])} → {_fmt(v['test_final_mean'])} ± "
            f"{_fmt(v['test_final_se'])} | {v['collapsed_test_seeds']} / {v['collapsed_train_seeds']} | "
            f"{_fmt(v.get('train_ratio_vs_conservative'), 2)} | {_fmt(v.get('test_ratio_vs_conservative'), 2)} | "
            f"{_fmt(v['rejection_peak'])} / {_fmt(v['rejection_late'])} | {_fmt(v['true_kl_max_mean'])} | "
            f"{v['seconds_mean']:.0f} |"
        )
    if s["ablation_sgd"]:
        lines += [
            "",
            "SGD step model (Fig. 6): "
            + "; ".join(
                f"{METHODS[k].label} test final {_fmt(v['test_final_mean'])} (Adam "
                f"{_fmt(s['methods'][k]['test_final_mean'])}), rejection mean {_fmt(v['rejection_mean'])}"
                for k, v in s["ablation_sgd"].items()
                if k in s["methods"]
            ),
        ]
    lines += [
        "",
        *[f"Note: {n}" for n in s["notes"]],
        "",
        "## Figures",
        "",
        *[f"- {k}: ![{k}]({f})" for k, f in figs.items()],
        "",
        "Run time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s["seconds"].items()),
        "",
    ]
    return "\n".join(lines)


def write_report(res: LLMResults, out: Path) -> Path:
    """Write ``results.json``, the figures and ``report.md`` under ``out``; returns the report path."""
    out.mkdir(parents=True, exist_ok=True)
    s = summarize(res)
    figs = _figures(s, out)
    s["figures"] = figs
    (out / "results.json").write_text(json.dumps(s, indent=1, default=float))
    path = out / "report.md"
    path.write_text(_markdown(s, figs))
    return path
