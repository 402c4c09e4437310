import json
import math

import pytest

from capo_app import report
from capo_app.plots import ema, plot_log
from tests.capo._synthetic_log import TEST_ACCURACY, synthetic_log_history

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def history():
    return report.history_from_log_history(synthetic_log_history(steps=20, per_step=32))


def test_history_has_one_record_per_step_and_drops_the_end_of_training_entry(history):
    assert [r["step"] for r in history] == list(range(1, 21))
    assert all("train_runtime" not in r for r in history)
    assert history[-1]["epoch"] == 1.0  # same-step entries merge, the later value wins


def test_completions_come_from_the_trainer_counter_else_from_the_batch_size():
    logged = report.history_from_log_history(synthetic_log_history(steps=3, per_step=32))
    assert [r["completions"] for r in logged] == [32, 64, 96]
    bare = [{"step": s, "reward": 0.5} for s in (1, 2)]
    assert [
        r["completions"] for r in report.history_from_log_history(bare, completions_per_step=96)
    ] == [96, 192]


def test_summary_matches_the_closed_form_curves(history):
    summary = report.summarize(history, TEST_ACCURACY, method="CAPO", wall_time_s=1.0)
    # rejection_rate = 0 at step 1 (lr 0), then 0.1 / step: peak at step 2, final at step 20.
    assert summary["rejection_rate_peak"] == pytest.approx(0.1 / 2)
    assert summary["rejection_rate_final"] == pytest.approx(0.1 / 20)
    expected_mean = sum(0.1 / s for s in range(2, 21)) / 20
    assert summary["rejection_rate_mean"] == pytest.approx(expected_mean)
    assert summary["train_reward_first"] == pytest.approx(0.32)
    assert summary["train_reward_last"] == pytest.approx(0.70)
    assert summary["test_accuracy_before"] == 0.40
    assert summary["test_accuracy_after"] == 0.50
    assert summary["completions"] == 640
    assert summary["steps"] == 20
    assert summary["global_m_F_peak"] == pytest.approx(1e-6 / 2)
    assert summary["true_kl_peak"] == pytest.approx(1e-3 * math.exp(-2 / 5))


def test_summary_of_a_baseline_has_no_rejection_rows():
    history = report.history_from_log_history(
        [{"step": 1, "reward": 0.25}, {"step": 2, "reward": 0.5}], 8
    )
    summary = report.summarize(history, [], method="GRPO")
    assert summary["rejection_rate_peak"] is None and summary["test_accuracy_before"] is None
    table = report.format_summary_table(summary)
    assert "rejection" not in table and "GRPO" in table and "0.500" in table


def test_summary_table_lists_the_headline_numbers(history):
    table = report.format_summary_table(report.summarize(history, TEST_ACCURACY, method="CAPO"))
    for text in (
        "test accuracy, greedy before",
        "40.0%",
        "test accuracy, greedy after",
        "50.0%",
        "5.00%",
        "0.50%",
        "640",
    ):
        assert text in table


def test_log_is_strict_json_with_non_finite_numbers_as_null(tmp_path, history):
    log = {
        "summary": {"x": float("nan")},
        "history": [*history, {"step": 21, "reward": float("inf")}],
    }
    path = report.write_log(tmp_path / "log.json", log)
    loaded = json.loads(path.read_text())  # strict parser would reject NaN / Infinity tokens
    assert loaded["summary"]["x"] is None
    assert loaded["history"][-1]["reward"] is None
    assert report.read_log(path)["history"][0]["step"] == 1


def test_curvature_keys_group_the_trainer_metric_names(history):
    keys = report.curvature_keys(history)
    assert keys["token_m_H"] == {s: f"capo/m_H/{s}" for s in ("mean", "p50", "p99", "max")}
    assert keys["token_m_F"]["p99"] == "capo/m_F/p99"
    assert keys["global"] == {"m_H": "capo/global_m_H", "m_F": "capo/global_m_F"}


def test_plot_log_writes_the_four_pngs(tmp_path, history):
    log = {
        "run": {
            "title": "synthetic",
            "hessian_low": -1e-2,
            "hessian_high": 1e-2,
            "fisher_max": 1e-4,
        },
        "history": history,
        "test_accuracy": TEST_ACCURACY,
    }
    paths = plot_log(log, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["accuracy_reward.png", "curvature.png", "rejection_rate.png", "true_kl.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000


def test_plot_log_skips_plots_whose_metrics_were_not_logged(tmp_path):
    history = report.history_from_log_history(
        [{"step": s, "reward": 0.1 * s} for s in (1, 2, 3)], 8
    )
    paths = plot_log({"history": history, "test_accuracy": []}, tmp_path)
    assert [p.name for p in paths] == ["accuracy_reward.png"]


def test_ema_is_the_recursive_average():
    assert ema([1.0, 0.0, 0.0], alpha=0.5) == [1.0, 0.5, 0.25]


def test_sampled_accuracy_is_stored_as_numbers_and_written_as_text_only_in_the_table():
    points = [
        {"step": s, "accuracy": 0.4, "sampled": m, "sampled_se": 0.02, "temperature": 0.9, "k": 8}
        for s, m in ((0, 0.375), (10, 0.5))
    ]
    summary = report.summarize([{"step": 10}], points)
    assert (summary["test_sampled_before"], summary["test_sampled_after"]) == (0.375, 0.5)
    assert (summary["test_sampled_after_se"], summary["test_sampled_k"]) == (0.02, 8)
    assert "50.0% ± 2.0% (T 0.9, k 8)" in report.format_summary_table(summary)
