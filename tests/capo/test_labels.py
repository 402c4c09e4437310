"""Labels come from what happened: granularity, "would reject" without masking, the KL budget shown."""

from __future__ import annotations

from capo import metrics
from capo.config import CAPOConfig
from capo_app import report
from capo_app.plots import plot_log
from capo_app.run import method_label

HISTORY = [
    {"step": s, metrics.REJECTION_RATE: r, metrics.KL_SCALE: k, metrics.KL_LOOKAHEADS: n}
    for s, r, k, n in ((1, 0.02, 1.0, 1.0), (2, 0.01, 0.25, 3.0), (3, 0.03, 0.5, 2.0))
]


def test_rejection_rows_name_the_granularity_and_say_would_reject_without_masking():
    masked = report.format_summary_table(report.summarize(HISTORY, granularity="completion"))
    assert "completion rejection rate, peak" in masked and "token" not in masked
    tracked = report.format_summary_table(report.summarize(HISTORY, masking=False))
    assert "tokens CAPO would reject, peak" in tracked and "rejection rate" not in tracked


def test_a_kl_budget_shows_in_the_label_the_summary_and_a_plot(tmp_path):
    config = CAPOConfig(
        output_dir=str(tmp_path), capo_enabled=False, capo_kl_budget=1e-3, bf16=False
    )
    assert method_label(config) == "GRPO + KL budget δ = 0.001"
    summary = report.summarize(HISTORY)
    assert (summary["kl_scale_min"], summary["kl_scale_median"]) == (0.25, 0.5)
    assert (summary["kl_steps_scaled"], summary["kl_steps"]) == (2, 3)
    table = report.format_summary_table(summary)
    assert "KL budget lr scale, min" in table and "2 of 3" in table
    assert summary["kl_lookaheads"] == 6 and "lookahead forwards" in table
    log = {"history": HISTORY, "run": {"kl_budget": 1e-3}, "summary": summary}
    assert (tmp_path / "kl_scale.png") in plot_log(log, tmp_path)


def test_without_a_budget_no_scale_row_and_no_scale_plot(tmp_path):
    flat = [{**h, metrics.KL_SCALE: 1.0} for h in HISTORY]
    assert "KL budget" not in report.format_summary_table(report.summarize(flat))
    assert (tmp_path / "kl_scale.png") not in plot_log({"history": flat, "run": {}}, tmp_path)
