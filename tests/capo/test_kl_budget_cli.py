"""``capo train`` with the KL budget (design §5): the run logs the budget's metrics; bad values fail in one line."""

from __future__ import annotations

import json

import pytest

from capo import metrics
from capo_app.cli import main as capo_main


@pytest.mark.slow
def test_budgeted_run_logs_prediction_scale_and_true_kl_every_step(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "--capo_kl_budget", "1e-3", "--capo_kl_model", "lookahead", "--capo_log_true_kl", "true",
        "--max-steps", "3", "--output-dir", str(out), "--per_device_train_batch_size", "8",
        "--num_generations", "4", "--max_completion_length", "16", "--num_train_problems", "32",
        "--num_test_problems", "8", "--warm_start_steps", "0", "--tiny_cache_dir", str(tmp_path / "c"),
        "--disable_tqdm", "true",
    ]  # fmt: skip
    assert capo_main(["train", *args]) == 0
    history = json.loads((out / "log.json").read_text())["history"]
    assert [r["step"] for r in history] == [1, 2, 3]
    for key in (metrics.KL_PREDICTED, metrics.KL_SCALE, metrics.TRUE_KL, metrics.TRUE_KL_HEAD):
        assert all(key in r for r in history), key
    assert all(0.0 <= r[metrics.KL_SCALE] <= 1.0 for r in history)


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--capo_kl_budget", "-1"], "capo_kl_budget must be > 0, got -1"),
        (["--capo_kl_model", "exact"], "capo_kl_model must be one of"),
    ],
)
def test_bad_budget_flags_fail_with_one_line(tmp_path, capsys, flags, match):
    code = capo_main(["train", *flags, "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code != 0 and match in err and "Traceback" not in err
