"""``python -m verification {agreement,theorems} --out DIR [--quick]``: write report.md, JSON and PNGs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capo_app.boundary import OneLineParser, guarded
from capo_app.run_folder import claim_report_folder, record_run_files
from verification import agreement as ag
from verification import plots, report
from verification import truncation as tr
from verification.common import Check, fmt
from verification.theorems import expansions, kl_budget, lemma_bounds, monotonic, spearman

ERROR_COLS = (
    "capo_vs_ref_m_H",
    "capo_vs_ref_m_F",
    "capo_vs_ref_g",
    "capo_vs_auto_m_H",
    "capo_vs_auto_m_F",
    "ref_vs_auto_m_H",
)
DTYPE_COLS = [
    "point",
    "step",
    "dtype",
    "granularity",
    *(
        f"{part}_{m}"
        for m in ("m_H", "m_F")
        for part in ("total", "accumulation", "input_rounding")
    ),
]
TRUNCATION_COLS = [
    "source",
    "step",
    "k",
    "mean_tail_mass",
    "token_m_H",
    "token_m_F",
    "batch_m_H",
    "batch_m_F",
]
VIOLATION_COLS = [
    "toy",
    "lr",
    "B",
    "omega",
    "delta_F",
    "J_gain",
    "claim_bound",
    "R2_hessian_mismatch",
    "R3_cubic",
    "RF_kl",
    "lemma_slack",
]
"""Columns of the report tables."""


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``cols`` (numbers in short format)."""
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = []
    for r in rows:
        cells = [
            fmt(r[c]) if isinstance(r.get(c), float | np.floating) else str(r.get(c, ""))
            for c in cols
        ]
        body.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(body)


def _agreement_sections(
    recs: list[dict[str, Any]],
    drecs: list[dict[str, Any]],
    trecs: list[dict[str, Any]],
    crows: list[dict[str, Any]],
    twins_rows: list[dict[str, Any]],
) -> list[tuple[str, str]]:
    """The agreement report's (title, Markdown) sections."""
    err_cols = [c for c in ERROR_COLS if any(c in r for r in recs)]
    causes = "\n".join(f"- **{k}**: {v}" for k, v in ag.DTYPE_CAUSES.items())
    sections = [
        (
            "Grid (float64)",
            "Relative error = max|a − b| / max|b| over the S subsets.\n\n"
            + _table(recs, ["point", "step", "granularity", "S", *err_cols]),
        ),
        (
            "Lower precisions",
            causes
            + "\n\n"
            + _table(
                drecs,
                DTYPE_COLS,
            )
            + "\n\nThe float64 recomputation on bf16-rounded inputs builds the TokenBatch "
            "without validation: capo's float64 check (row sums within 1e-6) rejects bf16-rounded "
            "probabilities upcast to float64 (they sum to 1 only within ~1e-3).",
        ),
        (
            "Top-k truncation vs the full-vocabulary model",
            _table(
                trecs,
                TRUNCATION_COLS,
            ),
        ),
        ("Chunk-size invariance", _table(crows, ["what", "N", "max_rel"])),
        (
            "Exact-expectation twins (toy MDP cases)",
            _table(twins_rows, ["case", "quantity", "max_rel"]),
        ),
    ]
    return sections


def agreement(out: Path, quick: bool) -> bool:
    """The agreement report (capo vs reference vs autodiff, dtypes, top-k truncation, chunking)."""
    t0 = time.time()
    grid = ag.GRID_QUICK if quick else ag.GRID_FULL
    recs = ag.grid_agreement(grid)
    drecs = ag.dtype_agreement(grid[:2] if quick else grid[2:5])
    twins_rows, twins_check = ag.expectation_twins()
    trecs = tr.random_logits_curve(quick) + tr.token_mdp_curve(quick)
    crows, cchecks = tr.chunk_invariance(quick)
    checks: list[Check] = [
        *ag.grid_checks(recs),
        twins_check,
        *cchecks,
        *ag.dtype_checks(drecs),
        *tr.truncation_checks(trecs),
    ]
    out.mkdir(parents=True, exist_ok=True)
    plots.agreement_errors(recs, out / "agreement_errors.png")
    plots.truncation(trecs, out / "topk_truncation.png")
    sections = _agreement_sections(recs, drecs, trecs, crows, twins_rows)
    payload = {
        "grid": recs,
        "dtypes": drecs,
        "expectation_twins": twins_rows,
        "truncation": trecs,
        "chunk_invariance": crows,
    }
    return report.write(
        out,
        "agreement",
        "CAPO verification: agreement report",
        checks,
        sections,
        payload,
        ["agreement_errors.png", "topk_truncation.png"],
        time.time() - t0,
        quick,
    )


def _theorem_sections(
    ex: dict[str, Any], lb: dict[str, Any], mo: dict[str, Any], sp: dict[str, Any]
) -> list[tuple[str, str]]:
    """The theorem report's (title, Markdown) sections."""
    slope_cols = [
        "kind",
        "toy",
        "direction",
        "hessian_mismatch",
        *[f"slope {n}" for n in expansions.RESIDUALS],
    ]
    viol = [r for r in mo["records"] if r["omega"] > 0 and r["claim_slack"] < 0]
    rho_rows = [{"variant": v, **sp[v]["rho"]} for v in ("grpo", "capo")]
    sections = [
        (
            "Remainders as ‖Δ‖ → 0 (eqs 5/16, 66, 6/26)",
            expansions.__doc__ or "",
        ),
        ("Fitted slopes", _table(ex["records"], slope_cols)),
        (
            "Lemma E.1 / K.3",
            (lemma_bounds.__doc__ or "")
            + "\n\nAdversarial search:\n\n"
            + _table(
                lb["adversarial"], ["mdp", "setting", "T", "gamma", "best_ratio", "paper_ratio"]
            ),
        ),
        (
            "Theorem 5.1",
            (monotonic.__doc__ or "") + "\n\nAdversarial search (normalised gap, "
            "negative = counterexample):\n\n"
            + _table(mo["adversarial"], ["c", "min_normalised_gap", "at", "theory_inf"])
            + "\n\nEnd-claim violations (first 20):\n\n"
            + (
                _table(
                    viol[:20],
                    VIOLATION_COLS,
                )
                if viol
                else "none"
            ),
        ),
        (
            "Appendix L: Spearman correlations",
            (spearman.__doc__ or "")
            + "\n\n"
            + _table(rho_rows, ["variant", "global", "token_mean", "token_own_step"]),
        ),
    ]
    return sections


def theorems(out: Path, quick: bool) -> bool:
    """The theorem report (expansions, Lemma E.1 / K.3, Theorem 5.1, App. L) on toy MDPs."""
    t0 = time.time()
    ex = expansions.run(quick)
    lb = lemma_bounds.run(quick)
    mo = monotonic.run(quick)
    sp = spearman.run(quick)
    kb = kl_budget.run(quick)
    checks = [
        *expansions.checks(ex),
        *lemma_bounds.checks(lb),
        *monotonic.checks(mo),
        *spearman.checks(sp),
        *kl_budget.checks(kb),
    ]
    out.mkdir(parents=True, exist_ok=True)
    plots.remainders(ex["curves"], out / "remainders.png")
    plots.lemma(lb["records"], out / "lemma_bounds.png")
    plots.theorem(mo["records"], out / "theorem_5_1.png")
    plots.spearman_panel(sp, out / "spearman.png")
    sections = _theorem_sections(ex, lb, mo, sp)
    sections.append(("KL budget (extension beyond the paper)", kl_budget.__doc__ or ""))
    payload = {
        "expansions": ex,
        "lemma_bounds": lb,
        "theorem_5_1": mo,
        "spearman": sp,
        "kl_budget": kb,
    }
    return report.write(
        out,
        "theorems",
        "CAPO verification: theorem checks on toy MDPs",
        checks,
        sections,
        payload,
        ["remainders.png", "lemma_bounds.png", "theorem_5_1.png", "spearman.png"],
        time.time() - t0,
        quick,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the chosen report, print its summary table, return the exit code."""
    prog = "python -m verification"

    def run() -> int:
        parser = OneLineParser(prog=prog, description=__doc__)
        parser.add_argument("command", choices=["agreement", "theorems"])
        parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
        parser.add_argument(
            "--quick", action="store_true", help="small grids (< 60 s), as in the tests"
        )
        args = parser.parse_args(argv)
        # before minutes of computation, not after: a writable folder, nothing of someone else replaced
        claim_report_folder(args.out, ("report.md", "*.json", "*.png"), "--out")
        torch.set_num_threads(1)
        ok = (agreement if args.command == "agreement" else theorems)(args.out, args.quick)
        record_run_files(args.out)
        text = (args.out / "report.md").read_text()
        print(text.split("\n\nExit code")[0])
        print(f"\nreport: {args.out / 'report.md'}; must-hold checks {'pass' if ok else 'FAIL'}")
        return 0 if ok else 1

    return guarded(prog, run)


if __name__ == "__main__":
    sys.exit(main())
