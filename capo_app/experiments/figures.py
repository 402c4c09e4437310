"""Figures of the mechanism study (matplotlib, Agg): Pareto, predicted vs measured KL, rejection by group, curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from capo_app.experiments.arms import GROUPS

__all__ = ["FIGURES", "write_figures"]

FIGURES = ("pareto", "kl", "rejection_groups", "curves")
"""Figure names (``<name>.png``)."""

_COLORS = {"none": "tab:gray", "capo": "tab:blue", "random": "tab:orange", "group": "tab:green"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pareto(ax: Any, regime: str, arms: list[dict[str, Any]]) -> None:
    for s in arms:
        kl = [k for k in s["true_kl_max"] if k is not None]
        size = 20 + 60 * np.log10(1 + (np.mean(kl) if kl else 0.0))
        marker = "o" if s["optimizer"] == "adam" else "s"
        ax.scatter(
            np.mean(s["rejection_mean"]),
            np.mean(s["final"]),
            s=size,
            marker=marker,
            color=_COLORS["group" if s.get("group_removed") is not None else s["masking"]],
            alpha=0.7,
        )
        if s["masking"] == "none" and s.get("group_removed") is None:
            ax.annotate(
                s["name"].split("/")[1],
                (np.mean(s["rejection_mean"]), np.mean(s["final"])),
                fontsize=6,
            )
    if arms:
        ax.axhline(arms[0]["base"], color="k", lw=0.8, ls="--", label="base")
    for kind, color in _COLORS.items():
        ax.scatter([], [], color=color, label=kind if kind != "group" else "group removed")
    ax.scatter([], [], marker="s", color="k", label="SGD (circles: Adam)")
    ax.legend(fontsize=6)
    ax.set(
        title=f"{regime}: rejection vs final (size: max KL)",
        xlabel="mean rejection rate",
        ylabel="final score",
    )


def _kl(ax: Any, regime: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    """Every step of every arm: measured KL against ½vᵀFv (all tokens) and against the global m_F."""
    for key, marker, color in (
        ("kl_predicted", ".", "tab:blue"),
        ("global_m_F", "x", "tab:orange"),
    ):
        pairs = [
            (p, t)
            for records in runs.values()
            for r in records
            for p, t in zip(r[key], r["true_kl"], strict=False)
            if p is not None and t is not None and p > 1e-12 and 1e-12 < t < np.inf
        ]
        if pairs:
            x, y = np.asarray(pairs).T
            ax.scatter(x, y, s=4, marker=marker, color=color, alpha=0.3, label=key)
    ax.plot([1e-12, 1e3], [1e-12, 1e3], "k--", lw=0.8, label="y = x")
    ax.set(xscale="log", yscale="log", title=f"{regime}: predicted vs measured KL per step",
           xlabel="predicted (kl_predicted: ½vᵀFv, all tokens; global_m_F: kept tokens, all tokens without CAPO masking)",
           ylabel="measured KL")  # fmt: skip
    ax.legend(fontsize=6)


def _groups(ax: Any, regime: str, runs: dict[str, list[dict[str, Any]]], arms: list[str]) -> None:
    width = 0.8 / max(1, len(arms))
    for i, name in enumerate(arms):
        rej = np.sum([np.sum(r["rejected_by_group"], axis=0) for r in runs[name]], axis=0)
        tot = np.sum([np.sum(r["tokens_by_group"], axis=0) for r in runs[name]], axis=0)
        ax.bar(np.arange(len(GROUPS)) + i * width, rej / np.maximum(tot, 1), width, label=name)
    ax.set_xticks(np.arange(len(GROUPS)) + 0.4 - width / 2, GROUPS, rotation=30, fontsize=6)
    ax.set(title=f"{regime}: rejection by sign(A) × π_a", ylabel="rejected fraction")
    ax.legend(fontsize=5)


def _curves(ax: Any, regime: str, runs: dict[str, list[dict[str, Any]]], arms: list[str]) -> None:
    for name in arms:
        score = np.mean([r["score"] for r in runs[name]], axis=0)
        ax.plot(runs[name][0]["completions"][1:], score[1:], label=name, lw=1)
    ax.set(title=f"{regime}: seed-mean score", xlabel="completions", ylabel="score", xscale="log")
    ax.legend(fontsize=5)


def write_figures(out: Path, study: dict[str, Any]) -> dict[str, str]:
    """Write the figures for every regime of ``study`` (regime -> {summaries, runs, key_arms})."""
    plt = _pyplot()
    regimes = list(study)
    paths = {}
    for name in FIGURES:
        fig, axes = plt.subplots(1, len(regimes), figsize=(5.5 * len(regimes), 4.2), squeeze=False)
        for ax, regime in zip(axes[0], regimes, strict=True):
            data = study[regime]
            if name == "pareto":
                _pareto(ax, regime, list(data["summaries"].values()))
            elif name == "kl":
                _kl(ax, regime, data["runs"])
            elif name == "rejection_groups":
                _groups(ax, regime, data["runs"], data["key_arms"]["groups"])
            else:
                _curves(ax, regime, data["runs"], data["key_arms"]["curves"])
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        paths[name] = f"{name}.png"
    return paths
