"""PNG plots of a ``capo train`` run (matplotlib, Agg backend): accuracy/reward, rejection rate, m_H/m_F, KL.

:func:`plot_log` draws them all from a run's log. Every other function takes the per-step records of :mod:`capo_app.report` and writes one PNG, returning its path, or
None when the metrics it needs were not logged. Curves are drawn raw (thin) with an exponential moving average
on top, as in the paper's figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from capo_app.report import (
    KL_SCALE,
    REJECTION,
    REJECTION_FISHER,
    REJECTION_HESSIAN,
    REWARD,
    TRUE_KL,
    curvature_keys,
    series,
)
from capo_app.run_folder import PLOT_FILES

Records = Sequence[Mapping[str, Any]]
_COLORS = {
    "mean": "#1f77b4",
    "p50": "#2ca02c",
    "p99": "#ff7f0e",
    "max": "#d62728",
    "min": "#9467bd",
}


def ema(values: Sequence[float], alpha: float = 0.3) -> list[float]:
    """Exponential moving average ``s_t = α x_t + (1 - α) s_{t-1}``, ``s_0 = x_0``."""
    out: list[float] = []
    for value in values:
        out.append(value if not out else alpha * value + (1.0 - alpha) * out[-1])
    return out


def _not_logged(ax: Any) -> None:
    """Mark an empty panel."""
    ax.text(
        0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#888888"
    )


def _style(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)


def _save(fig: Figure, path: Path, suptitle: str) -> Path:
    fig.suptitle(suptitle, fontsize=12, fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _curve(
    ax: Axes, xs: Sequence[float], ys: Sequence[float], color: str, label: str, smooth: bool = True
) -> None:
    if not xs:
        return
    if smooth and len(xs) > 3:
        ax.plot(xs, ys, color=color, alpha=0.25, linewidth=1.0)
        ax.plot(xs, ema(ys), color=color, linewidth=2.0, label=f"{label} (EMA)")
    else:
        ax.plot(xs, ys, color=color, linewidth=2.0, marker="o", markersize=3, label=label)


def accuracy_and_reward(
    history: Records, test_accuracy: Records, path: Path, title: str
) -> Path | None:
    """Train reward and held-out accuracy against the number of completions trained on."""
    x_key = "completions" if any("completions" in r for r in history) else "step"
    xs, ys = series(history, REWARD, x=x_key)
    points = [p for p in test_accuracy if isinstance(p.get("accuracy"), int | float)]
    if not xs and not points:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    _curve(ax, xs, ys, "#1f77b4", "train reward (mean over the batch)")
    px = [float(p.get(x_key, p.get("step", 0)) or 0) for p in points]
    sampled = [p for p in points if isinstance(p.get("sampled"), int | float)]
    if sampled:  # the primary score: the policy's own samples at the training temperature
        sx = [float(p.get(x_key, p.get("step", 0)) or 0) for p in sampled]
        sy = [float(p["sampled"]) for p in sampled]
        se = [float(p.get("sampled_se") or 0.0) for p in sampled]
        ax.errorbar(sx, sy, yerr=se, color="#2ca02c", linewidth=2.0, marker="o", markersize=6, capsize=3,
                    label="held-out accuracy, sampled at the training temperature (± MC SE)")  # fmt: skip
        _annotate_ends(ax, sx, sy, "#2ca02c")
    if points:
        py = [float(p["accuracy"]) for p in points]
        ax.plot(px, py, color="#d62728", linewidth=1.5, linestyle="--", marker="s", markersize=5,
                label="held-out accuracy, greedy")  # fmt: skip
        _annotate_ends(ax, px, py, "#d62728")
    ax.set_ylim(-0.02, 1.02)
    _style(ax, "completions trained on" if x_key == "completions" else "optimizer step", "reward / accuracy",
           "accuracy and reward vs. completions")  # fmt: skip
    ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path, title)


def _annotate_ends(ax: Any, xs: list[float], ys: list[float], color: str) -> None:
    """The first and last value of a curve, as percentages beside their points."""
    for i in sorted({0, len(ys) - 1}):
        ax.annotate(
            f"{ys[i]:.0%}", (xs[i], ys[i]), textcoords="offset points", xytext=(4, 6), color=color
        )


def rejection_rate(
    history: Records, path: Path, title: str, unit: str = "token", masking: bool = True
) -> Path | None:
    """Fraction of units rejected per step: total and per criterion (Hessian band, Fisher bound).

    Without masking (shift tracking) the fractions are what CAPO would reject, and the plot says so.
    """
    curves = [(REJECTION, "#000000", "total"), (REJECTION_HESSIAN, "#1f77b4", "Hessian band"),
              (REJECTION_FISHER, "#ff7f0e", "Fisher bound")]  # fmt: skip
    data = [(series(history, key), color, label) for key, color, label in curves]
    if not any(xs for (xs, _), _, _ in data):
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (xs, ys), color, label in data:
        if xs:
            ax.plot(xs, [100.0 * y for y in ys], color=color, linewidth=2.0 if label == "total" else 1.3,
                    marker="o" if len(xs) <= 60 else None, markersize=2.5, label=label)  # fmt: skip
    ax.set_ylim(bottom=0.0)
    verb = "rejected" if masking else "CAPO would reject (not masked)"
    _style(ax, "optimizer step", f"{unit}s {verb} (%)", f"{unit} rejection rate (paper Fig. 5)"
           if masking else f"{unit}s CAPO would reject: shift tracking, nothing masked")  # fmt: skip
    ax.legend(fontsize=9)
    return _save(fig, path, title)


def _symlog(ax: Axes, ys: Sequence[float]) -> None:
    """Symmetric log scale spanning four decades below the largest |value| (values can be negative)."""
    nonzero = [abs(y) for y in ys if y != 0]
    if nonzero:
        ax.set_yscale("symlog", linthresh=max(max(nonzero) * 1e-4, min(nonzero)))


def _positive_only(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    """Keep the points a log axis can show (m_F is >= 0; exact zeros, e.g. at lr = 0, are dropped)."""
    kept = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
    return [x for x, _ in kept], [y for _, y in kept]


def _marker(xs: Sequence[float]) -> str | None:
    return "o" if len(xs) <= 60 else None


def curvature(
    history: Records,
    keys: Mapping[str, Mapping[str, str]],
    path: Path,
    title: str,
    thresholds: Mapping[str, float | None],
    unit: str = "token",
) -> Path | None:
    """Per-subset (``unit``: token, completion, group, batch) m_H / m_F statistics and the global (batch) m_H / m_F of the update (paper Fig. 3).

    m_H panels use a symmetric log scale (m_H has either sign), m_F panels a log scale; the acceptance bounds
    of eq 11 are drawn as dashed lines.
    """
    if not any(keys.get(group) for group in ("token_m_H", "token_m_F", "global")):
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [
        (
            axes[0][0],
            "m_H",
            f"{unit}-level m_H (predicted objective shift)",
            ("hessian_low", "hessian_high"),
        ),
        (axes[0][1], "m_F", f"{unit}-level m_F (predicted policy shift)", ("fisher_max",)),
    ]
    for ax, kind, label, bounds in panels:
        stats = keys.get(f"token_{kind}", {})
        all_ys: list[float] = []
        for stat in _COLORS:
            if stat not in stats:
                continue
            xs, ys = series(history, stats[stat])
            if kind == "m_F":
                xs, ys = _positive_only(xs, ys)
            all_ys += ys
            ax.plot(
                xs,
                ys,
                color=_COLORS[stat],
                linewidth=1.6,
                marker=_marker(xs),
                markersize=2.5,
                label=stat,
            )
        for name in bounds:
            bound = thresholds.get(name)
            if bound is not None:
                ax.axhline(
                    float(bound),
                    color="#555555",
                    linestyle="--",
                    linewidth=1.0,
                    label=f"{name} = {bound:g}",
                )
                all_ys.append(float(bound))
        if kind == "m_F" and len(set(all_ys)) > 1:  # one value (the bound alone) has no log range
            ax.set_yscale("log")
        else:
            _symlog(ax, all_ys)
        _style(ax, "optimizer step", kind, label)
        if all_ys:
            ax.legend(fontsize=8, ncol=2)
        else:
            _not_logged(ax)
    for ax, kind in ((axes[1][0], "m_H"), (axes[1][1], "m_F")):
        key = keys.get("global", {}).get(kind)
        xs, ys = series(history, key) if key else ([], [])
        if kind == "m_F":
            xs, ys = _positive_only(xs, ys)
        if xs:
            ax.plot(xs, ys, color="#6a3d9a", linewidth=1.8, marker=_marker(xs), markersize=2.5)
            if kind == "m_F":
                ax.set_yscale("log")
            else:
                _symlog(ax, ys)
        else:
            _not_logged(ax)
        _style(ax, "optimizer step", kind, f"global {kind} of the accepted update (batch level)")
    return _save(fig, path, title)


def true_kl(history: Records, global_mf_key: str | None, path: Path, title: str) -> Path | None:
    """The measured KL between the policy before and after each step, beside the model's prediction m_F."""
    xs, ys = _positive_only(*series(history, TRUE_KL))
    if not xs:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot(xs, ys, color="#d62728", linewidth=1.8, marker=_marker(xs), markersize=2.5,
            label="true KL(π_before ‖ π_after), full vocabulary")  # fmt: skip
    if global_mf_key:
        mx, my = _positive_only(*series(history, global_mf_key))
        if mx:
            ax.plot(mx, my, color="#6a3d9a", linewidth=1.4, linestyle="--", marker=_marker(mx), markersize=2.5,
                    label="global m_F (last-layer prediction)")  # fmt: skip
    ax.set_yscale("log")
    _style(
        ax,
        "optimizer step",
        "KL per completion token",
        "true policy shift vs. the curvature model (App. L)",
    )
    ax.legend(fontsize=9)
    return _save(fig, path, title)


def kl_scale(history: Records, path: Path, title: str, budget: float | None) -> Path | None:
    """The KL budget's lr scale per step (1: the step fits the budget), drawn when a budget was set."""
    xs, ys = series(history, KL_SCALE)
    if budget is None or not xs:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot(xs, ys, color="#2ca02c", linewidth=2.0, marker=_marker(xs), markersize=2.5,
            label=f"lr scale s (KL budget δ = {budget:g})")  # fmt: skip
    ax.axhline(1.0, color="#555555", linestyle="--", linewidth=1.0, label="unscaled")
    ax.set_ylim(0.0, 1.05)
    _style(ax, "optimizer step", "lr scale", "KL budget: step scale (extension, not CAPO)")
    ax.legend(fontsize=9)
    return _save(fig, path, title)


def plot_log(
    log: Mapping[str, Any],
    output_dir: str | os.PathLike[str],
    thresholds: Mapping[str, float | None] | None = None,
) -> list[Path]:
    """Draw the run's PNG plots from a log object (see the module docstring).

    Args:
        log: The log (``history``, ``test_accuracy``, ``summary``).
        output_dir: Folder for the PNG files.
        thresholds: ``hessian_low`` / ``hessian_high`` / ``fisher_max`` drawn as dashed lines (default: the
            ones in ``log["run"]`` when present).

    Returns:
        The files written: ``accuracy_reward.png``, ``rejection_rate.png`` and ``curvature.png`` when their
        metrics were logged, ``true_kl.png`` when the true KL was.
    """
    history = list(log.get("history", []))
    run = dict(log.get("run", {}))
    if thresholds is None:
        thresholds = {k: run.get(k) for k in ("hessian_low", "hessian_high", "fisher_max")}
    title = run.get("title") or (log.get("summary") or {}).get("method") or "capo train"
    accuracy_png, rejection_png, curvature_png, kl_png, kl_scale_png = PLOT_FILES
    unit = str(run.get("granularity") or "token")
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = [
        accuracy_and_reward(
            history, list(log.get("test_accuracy", [])), folder / accuracy_png, title
        ),
        rejection_rate(
            history, folder / rejection_png, title, unit, bool(run.get("masking", True))
        ),
        curvature(
            history, curvature_keys(history), folder / curvature_png, title, dict(thresholds), unit
        ),
        kl_scale(history, folder / kl_scale_png, title, run.get("kl_budget")),
        true_kl(history, curvature_keys(history)["global"].get("m_F"), folder / kl_png, title),
    ]
    return [p for p in written if p is not None]
