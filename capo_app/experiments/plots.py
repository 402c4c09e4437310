"""Matplotlib figures (PNG, Agg backend) for the stability experiments: curves with standard-error bands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["COLORS", "Curve", "Panel", "plot_panels"]

COLORS = {
    "grpo_conservative": "#555555",
    "grpo_a": "#d62728",
    "dr_grpo_a": "#ff7f0e",
    "reinforce_a": "#8c564b",
    "capo_a": "#1f77b4",
    "dr_capo_a": "#2ca02c",
    "rein_capo_a": "#9467bd",
}
"""One colour per method key (baselines warm, CAPO variants cool)."""


@dataclass
class Curve:
    """One line with an optional ±1 s.e. band.

    Attributes:
        label: Legend label.
        x: Abscissae.
        mean: Ordinates.
        se: Half-width of the band (None: no band).
        color: Matplotlib colour (None: automatic).
        style: Line style.
    """

    label: str
    x: Sequence[float] | np.ndarray
    mean: Sequence[float] | np.ndarray
    se: Sequence[float] | np.ndarray | None = None
    color: str | None = None
    style: str = "-"


@dataclass
class Panel:
    """One subplot.

    Attributes:
        title: Title.
        xlabel: X label.
        ylabel: Y label.
        curves: The lines.
        xscale: "linear", "log" or "symlog" ("log" becomes "symlog", linear below the smallest
            positive abscissa, when a curve starts at 0 — e.g. the base model at 0 completions).
        yscale: Likewise.
        hline: Optional horizontal reference line (e.g. the base model's value).
        hline_label: Its legend label.
    """

    title: str
    xlabel: str
    ylabel: str
    curves: list[Curve] = field(default_factory=list)
    xscale: str = "linear"
    yscale: str = "linear"
    hline: float | None = None
    hline_label: str = "base"


def plot_panels(
    path: str | Path, panels: Sequence[Panel], ncols: int = 2, suptitle: str | None = None
) -> Path:
    """Draw panels in a grid and save a PNG.

    Args:
        path: Output file.
        panels: Subplots, row-major.
        ncols: Columns of the grid.
        suptitle: Optional figure title.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax, panel in zip(axes.ravel(), panels, strict=False):
        for c in panel.curves:
            x, y = np.asarray(c.x, float), np.asarray(c.mean, float)
            (line,) = ax.plot(x, y, c.style, color=c.color, label=c.label, lw=1.6)
            if c.se is not None:
                se = np.asarray(c.se, float)
                ax.fill_between(x, y - se, y + se, color=line.get_color(), alpha=0.2, lw=0)
        if panel.hline is not None:
            ax.axhline(panel.hline, color="k", ls=":", lw=1, label=panel.hline_label)
        if panel.xscale == "log" and any(np.min(np.asarray(c.x, float)) <= 0 for c in panel.curves):
            positive = [x for c in panel.curves for x in np.asarray(c.x, float) if x > 0]
            ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
            ax.set_xlim(left=0.0)
        else:
            ax.set_xscale(panel.xscale)
        if panel.yscale == "symlog":
            ax.set_yscale("symlog", linthresh=1e-6)
        else:
            ax.set_yscale(panel.yscale)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if panel.curves:
            ax.legend(fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def method_color(key: str, palette: Mapping[str, str] = COLORS) -> str | None:
    """Colour of a method key (None if unknown)."""
    return palette.get(key)
