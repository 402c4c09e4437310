"""Markdown + JSON report writer: a one-screen summary table first, then sections and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from verification.common import Check, all_ok, write_json

EXIT_POLICY = (
    "Exit code: 0 only if every row marked **must hold** passes. Those rows are our own "
    "implementations' agreement checks and mathematically certain identities; a failure there is a "
    "bug. The paper's claims are checked as well, but a claim that fails is reported as a finding "
    "and does not make the exit code non-zero."
)


def summary_table(checks: list[Check]) -> str:
    """The summary table as Markdown."""
    lines = [
        "| # | claim | equation | verdict | worst figure | must hold |",
        "|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(checks, 1):
        mark = ("yes" if c.ok else "**NO**") if c.must_hold else "finding"
        verdict = c.verdict if c.ok or not c.must_hold else f"**{c.verdict}**"
        cells = [str(i), c.claim, c.equation, verdict, c.worst, mark]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines)


def write(
    out: Path,
    name: str,
    title: str,
    checks: list[Check],
    sections: list[tuple[str, str]],
    payload: dict[str, Any],
    plots: list[str],
    seconds: float,
    quick: bool,
) -> bool:
    """Write ``report.md`` (or ``<name>.md`` beside others) and ``<name>.json`` under ``out``.

    Args:
        out: Output folder (created).
        name: Report name: "agreement" or "theorems".
        title: Report title.
        checks: Summary rows, in table order.
        sections: (heading, Markdown body) after the summary.
        payload: Every figure, written to the JSON.
        plots: PNG file names (already written under ``out``).
        seconds: Run time.
        quick: Whether this was the quick mode.

    Returns:
        Whether every must-hold check passed.
    """
    out.mkdir(parents=True, exist_ok=True)
    ok = all_ok(checks)
    mode = "quick" if quick else "full"
    md = [
        f"# {title}",
        "",
        f"Mode: {mode}; run time {seconds:.1f} s; must-hold checks: "
        f"{'all pass' if ok else 'FAILURES'}.",
        "",
        summary_table(checks),
        "",
        EXIT_POLICY,
        "",
    ]
    for heading, body in sections:
        md += [f"## {heading}", "", body.strip(), ""]
    if plots:
        md += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    (out / "report.md").write_text("\n".join(md))
    write_json(
        out / f"{name}.json",
        {
            "report": name,
            "mode": mode,
            "seconds": seconds,
            "all_must_hold_pass": ok,
            "summary": [c.row() for c in checks],
            "checks": [{**c.row(), "details": c.details} for c in checks],
            **payload,
        },
    )
    return ok
