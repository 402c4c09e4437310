"""PNG plots of the verification reports (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from verification.common import fit_slope
from verification.theorems.expansions import FIT_MAX, RESIDUALS, ROUNDOFF


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def agreement_errors(records: list[dict[str, Any]], path: Path) -> None:
    """Max relative error of each route pair per grid point (log scale)."""
    plt = _plt()
    keys = sorted({k for r in records for k in r if k.startswith(("capo_vs", "ref_vs"))})
    points = list(dict.fromkeys(r["point"] for r in records))
    fig, ax = plt.subplots(figsize=(9, 4))
    for j, key in enumerate(keys):
        ys = [
            max([r[key] for r in records if r["point"] == p and key in r] or [np.nan])
            for p in points
        ]
        ax.scatter(
            np.arange(len(points)) + 0.08 * (j - len(keys) / 2),
            np.maximum(ys, 1e-18),
            label=key,
            s=18,
        )
    ax.set_yscale("log")
    ax.axhline(1e-10, color="k", ls="--", lw=0.8, label="tolerance 1e-10")
    ax.set_xticks(range(len(points)), points, rotation=20, fontsize=8)
    ax.set_ylabel("max relative error (float64)")
    ax.legend(fontsize=6, ncol=3)
    ax.set_title("capo vs reference vs autodiff")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def truncation(records: list[dict[str, Any]], path: Path) -> None:
    """Relative error of the top-k model vs k (one panel per source)."""
    plt = _plt()
    sources = list(dict.fromkeys(r["source"] for r in records))
    fig, axes = plt.subplots(1, len(sources), figsize=(5 * len(sources), 4), squeeze=False)
    for ax, src in zip(axes[0], sources, strict=True):
        for step in ("sgd", "adam"):
            rs = [r for r in records if r["source"] == src and r["step"] == step]
            for key in ("token_m_F", "token_m_H", "batch_m_F", "batch_m_H"):
                ax.plot(
                    [r["k"] for r in rs],
                    [max(r[key], 1e-17) for r in rs],
                    marker="o",
                    ms=3,
                    label=f"{step} {key}",
                )
        rs = [r for r in records if r["source"] == src and r["step"] == "sgd"]
        ax.plot(
            [r["k"] for r in rs],
            [max(r["mean_tail_mass"], 1e-17) for r in rs],
            "k--",
            label="tail mass",
        )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("support size k")
        ax.set_ylabel("relative error vs full vocabulary")
        ax.set_title(src, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def remainders(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """|remainder| vs ‖Δ‖ on log-log axes, one panel per toy family, with fitted slopes."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4), squeeze=False)
    for ax, (kind, c) in zip(axes[0], curves.items(), strict=True):
        eps = np.array(c["eps"])
        fit = eps <= FIT_MAX * 1.0001
        for name in RESIDUALS:
            r = np.abs(np.array(c[name]))
            s = fit_slope(eps[fit], r[fit], ROUNDOFF)
            ax.loglog(eps, np.maximum(r, 1e-18), marker="o", ms=3, label=f"{name} (slope {s:.2f})")
        ax.loglog(eps, eps**3 * 1e-1, "k:", lw=0.8, label="∝ ‖Δ‖³")
        ax.loglog(eps, eps**2 * 1e-1, "k--", lw=0.8, label="∝ ‖Δ‖²")
        ax.set_title(kind)
        ax.set_xlabel("‖Δ‖")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("|remainder|")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lemma(records: list[dict[str, Any]], path: Path) -> None:
    """Observed (L − J')/(ε√KL) against the paper's C/ε for every random pair."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for setting, marker in (("finite", "o"), ("discounted", "^")):
        rs = [r for r in records if r["setting"] == setting and r["paper_ratio"] > 0]
        ax.scatter(
            [r["paper_ratio"] for r in rs],
            [max(r["ratio"], 1e-8) for r in rs],
            s=8,
            marker=marker,
            label=setting,
            alpha=0.6,
        )
    lim = [1e-2, 1e5]
    ax.plot(lim, lim, "k--", lw=0.8, label="bound (ratio = C/ε)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("paper constant C/ε")
    ax.set_ylabel("observed (L_π(π') − J(π')) / (ε √KL)")
    ax.set_title("Lemma E.1 / K.3 over random pairs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def theorem(records: list[dict[str, Any]], path: Path) -> None:
    """Exact J gain against the claimed lower bound ω − C√δ_F (accepted sets with ω > 0)."""
    plt = _plt()
    rs = [r for r in records if r["omega"] > 0]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    x = np.array([r["claim_bound"] for r in rs])
    y = np.array([r["J_gain"] for r in rs])
    ax.scatter(x, y, s=8, c=[r["lr"] for r in rs], cmap="viridis")
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="gain = bound")
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("claimed bound ω − C√δ_F")
    ax.set_ylabel("exact J(θ+Δθ) − J(θ)")
    ax.set_title("Theorem 5.1 end claim (colour: lr)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def spearman_panel(result: dict[str, Any], path: Path) -> None:
    """m̂_F against the exact KL: global per step, and token-level own steps."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for variant in ("grpo", "capo"):
        s, rho = result[variant]["series"], result[variant]["rho"]
        axes[0].loglog(s["kl"], s["global"], "o", ms=3, label=f"{variant} ρ={rho['global']:.2f}")
        axes[1].loglog(
            s["own_kl"],
            s["own_mF"],
            "o",
            ms=2,
            alpha=0.5,
            label=f"{variant} ρ={rho['token_own_step']:.2f}",
        )
    axes[0].set_title("global m̂_F vs exact step KL")
    axes[1].set_title("token m̂_F vs exact KL of the token's own step")
    for ax in axes:
        ax.set_xlabel("exact D̄_KL")
        ax.set_ylabel("m̂_F")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
