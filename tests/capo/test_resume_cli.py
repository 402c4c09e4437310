"""``capo train`` resumed from a checkpoint ends where the uninterrupted run ends, bit for bit (CPU).

What makes a resumed run identical: the weights, optimizer (AdamW moments) and scheduler state, the CAPO moments
(``capo_moments.pt``), and the Python, NumPy and torch CPU RNG states (transformers' ``rng_state.pth``, restored
before the first resumed step; completions are sampled from the torch RNG), which the checkpoint holds, and the
data order, which TRL's sampler derives from the seed and the step. The embedded tiny model is float32 (it has no
float64 option); on one CPU thread its arithmetic is deterministic, so the comparison is exact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from capo.checkpoint import MOMENTS_FILE
from capo_app.cli import main as capo_main

pytestmark = pytest.mark.slow

STEPS = 4
#: Logged once per optimizer step; its value is completions so far (8 per step).
SEEN = re.compile(r"'capo/completions_seen': '(\d+)'")
#: History keys that measure time, not training.
TIMING = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second")


def train_args(cache: Path, output_dir: Path) -> list[str]:
    return [
        "--max-steps", str(STEPS), "--seed", "1", "--output-dir", str(output_dir),
        "--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "40",
        "--num_train_problems", "32", "--num_test_problems", "8", "--eval_every", "2",
        "--warm_start_steps", "60", "--tiny_cache_dir", str(cache), "--cpu_threads", "1",
        "--disable_tqdm", "true", "--save_strategy", "steps", "--save_steps", "1", "--plots", "false",
        "--use_cpu", "true",  # bit-equality needs deterministic kernels, also where a GPU is present
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference: one uninterrupted 4-step run, a checkpoint after every step (the tiny model cached)."""
    root = tmp_path_factory.mktemp("resume")
    out = root / "uninterrupted"
    assert capo_main(["train", *train_args(root / "cache", out)]) == 0
    return out


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Identical final weights, CAPO moments, optimizer state and per-step metrics (timings aside)."""
    a, b = load_file(resumed / "model.safetensors"), load_file(reference / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = f"checkpoint-{STEPS}"
    for name in (MOMENTS_FILE, "optimizer.pt"):
        x, y = (torch.load(d / last / name, weights_only=False) for d in (resumed, reference))
        assert_equal_nested(x, y, name)
    logs = [json.loads((d / "log.json").read_text()) for d in (resumed, reference)]
    drop = lambda h: [{k: v for k, v in r.items() if k not in TIMING} for r in h]  # noqa: E731
    assert drop(logs[0]["history"]) == drop(logs[1]["history"])
    assert [r["step"] for r in logs[0]["history"]] == list(range(1, STEPS + 1))
    assert logs[0]["test_accuracy"] == logs[1]["test_accuracy"]


def assert_equal_nested(x, y, where: str) -> None:
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for key in x:
            assert_equal_nested(x[key], y[key], f"{where}/{key}")
    elif isinstance(x, list | tuple):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            assert_equal_nested(u, v, f"{where}/{i}")
    else:
        assert x == y, where


def test_the_reference_run_moves_the_policy_after_the_resume_point(uninterrupted):
    """Sensitivity of the comparisons below: steps 3-4 change the weights and the CAPO moments."""
    mid, end = (
        load_file(uninterrupted / f"checkpoint-{s}" / "model.safetensors") for s in (2, STEPS)
    )
    assert any(not torch.equal(mid[k], end[k]) for k in end)
    m_mid, m_end = (
        torch.load(uninterrupted / f"checkpoint-{s}" / MOMENTS_FILE) for s in (2, STEPS)
    )
    assert m_mid["t"] == 2 and m_end["t"] == STEPS
    rewards = [r["reward"] for r in json.loads((uninterrupted / "log.json").read_text())["history"]]
    assert any(r > 0 for r in rewards), rewards


def test_resume_from_checkpoint_2_equals_the_uninterrupted_run(uninterrupted, tmp_path, capsys):
    """A run stopped after step 2 (its checkpoint-2), resumed with --resume_from_checkpoint PATH."""
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-2", out / "checkpoint-2")
    args = train_args(uninterrupted.parent / "cache", out)
    assert capo_main(["train", *args, "--resume_from_checkpoint", str(out / "checkpoint-2")]) == 0
    printed = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint-2'} (step 2)" in printed
    assert SEEN.findall(printed) == ["24", "32"]  # only steps 3 and 4 were trained
    assert_same_run(out, uninterrupted)
    log = json.loads((out / "log.json").read_text())
    assert log["summary"]["resumed_from"] == "step 2 (checkpoint-2)"
    assert "resumed at step 2" in log["run"]["title"]
    assert "resumed at" in printed


def test_without_its_rng_state_a_resumed_run_samples_other_completions(uninterrupted, tmp_path):
    """Sensitivity: the RNG state the checkpoint restores is what makes step 3 sample the same completions."""
    out = tmp_path / "no_rng"
    out.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-2", out / "checkpoint-2")
    (out / "checkpoint-2" / "rng_state.pth").unlink()
    args = train_args(uninterrupted.parent / "cache", out)
    assert capo_main(["train", *args, "--resume_from_checkpoint", str(out / "checkpoint-2")]) == 0
    steps = [json.loads((d / "log.json").read_text())["history"][2] for d in (out, uninterrupted)]
    assert steps[0]["step"] == 3 and steps[0]["entropy"] != steps[1]["entropy"]


def test_a_killed_run_resumed_with_true_equals_the_uninterrupted_run(
    uninterrupted, tmp_path, capsys
):
    """SIGKILL once step 2 is logged (the kill may land while checkpoint-2 is written), resume the last
    complete checkpoint, finish: the same run as the uninterrupted one."""
    out = tmp_path / "killed"
    args = train_args(uninterrupted.parent / "cache", out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "capo_app", "train", *args]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as job:
        assert job.stdout is not None
        for line in job.stdout:
            if "16" in SEEN.findall(line):
                job.send_signal(signal.SIGKILL)
                break
        job.wait(timeout=60)
    assert job.returncode == -signal.SIGKILL
    assert not (out / "log.json").exists()
    assert capo_main(["train", *args, "--resume_from_checkpoint", "true"]) == 0
    printed = capsys.readouterr().out
    resumed = re.search(r"resuming from .*checkpoint-(\d+) \(step", printed)
    assert resumed is not None and 1 <= int(resumed.group(1)) <= 2
    assert_same_run(out, uninterrupted)


def test_resuming_a_finished_run_says_it_is_complete_and_trains_nothing(
    uninterrupted, tmp_path, capsys
):
    out = tmp_path / "done"
    shutil.copytree(uninterrupted, out)
    before = (out / "log.json").read_bytes()
    argv = train_args(uninterrupted.parent / "cache", out)
    assert capo_main(["train", *argv, "--resume_from_checkpoint", "true"]) == 0
    assert "is complete (4 optimizer steps" in capsys.readouterr().out
    assert (
        not (out / f"checkpoint-{STEPS + 1}").exists() and (out / "log.json").read_bytes() == before
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--method", "grpo"], "capo_enabled True -> False"),
        (["--max-steps", "6"], "max_steps 4 -> 6"),
        (["--learning_rate", "3e-4", "--seed", "2"], "seed 1 -> 2"),
        (["--per_device_train_batch_size", "4"], "per_device_train_batch_size 8 -> 4"),
    ],
)
def test_resuming_with_settings_that_change_the_run_is_refused(
    uninterrupted, capsys, change, named
):
    argv = [*train_args(uninterrupted.parent / "cache", uninterrupted), *change]
    assert capo_main(["train", *argv, "--resume_from_checkpoint", "true"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("capo: error: resuming") and named in line


def test_resuming_a_run_that_saved_no_checkpoint_is_one_line_not_a_fresh_start(tmp_path):
    """A finished run without checkpoints is named as such; resuming neither retrains nor tramples it."""
    from capo_app.resume import ResumeError, RunComplete, resume_point

    (tmp_path / "log.json").write_text(json.dumps({"summary": {"steps": 8}}))
    with pytest.raises(ResumeError, match="finished after 8 optimizer steps without saving"):
        resume_point(str(tmp_path), "true", max_steps=10)  # it asks for more: nothing to go on
    with pytest.raises(RunComplete, match="is complete \\(8 optimizer steps\\); nothing to train"):
        resume_point(str(tmp_path), "true", max_steps=8)  # capo train says so and exits 0
    (tmp_path / "log.json").unlink()
    assert resume_point(str(tmp_path), "true") is None  # an empty folder: a fresh start
