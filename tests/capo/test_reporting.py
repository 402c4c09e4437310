"""``--report_to tensorboard`` writes event files (the ``tensorboard`` extra); a missing package is one line."""

from __future__ import annotations

import importlib.util

import pytest

from capo_app.cli import main as capo_main

TINY_RUN = [
    "--max-steps", "1", "--per_device_train_batch_size", "8", "--num_generations", "4",
    "--max_completion_length", "8", "--num_train_problems", "8", "--num_test_problems", "0",
    "--eval_every", "0", "--plots", "false", "--disable_tqdm", "true", "--use_cpu", "true",
]  # fmt: skip


@pytest.mark.slow
def test_report_to_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "out"
    assert (
        capo_main(["train", *TINY_RUN, "--output-dir", str(out), "--report_to", "tensorboard"]) == 0
    )
    assert list(out.rglob("events.out.tfevents.*")), sorted(p.name for p in out.rglob("*"))


@pytest.mark.parametrize("reporter", ["tensorboard", "wandb"])
def test_a_missing_reporting_package_is_one_line_naming_the_extra(
    tmp_path, capsys, monkeypatch, reporter
):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == reporter else real(name, *a)
    )
    argv = ["train", "--output-dir", str(tmp_path / "out"), "--report_to", reporter]
    assert capo_main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"capo: error: report_to {reporter} needs the {reporter} package, which is not installed: "
        f"pip install 'capo-rl[{reporter}]'"
    )
