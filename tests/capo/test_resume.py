"""capo_app.resume: which checkpoint ``capo train --resume_from_checkpoint`` resumes from, and what it refuses."""

from __future__ import annotations

import json
import os

import pytest
import torch

from capo.checkpoint import MOMENTS_FILE, STATE_FILE, TRAINER_STATE_FILE, save_capo_state
from capo.moments import SparseAdamMoments
from capo_app.resume import RUN_RECORD_FILE, ResumeError, last_resumable, resume_point
from capo_app.run_record import RunRecorder


def checkpoint(output_dir, step: int, drop: str | None = None) -> str:
    """``output_dir/checkpoint-<step>`` as ``capo train`` leaves it, less the file ``drop``."""
    folder = os.path.join(output_dir, f"checkpoint-{step}")
    os.makedirs(folder)
    with open(os.path.join(folder, TRAINER_STATE_FILE), "w") as f:
        json.dump({"global_step": step, "log_history": []}, f)
    save_capo_state(folder, SparseAdamMoments(5, 2, dtype=torch.float64), 8 * step)
    history = [{"step": s, "reward": 0.1 * s} for s in range(1, step + 1)]
    with open(os.path.join(folder, RUN_RECORD_FILE), "w") as f:
        json.dump({"history": history, "test_accuracy": [{"step": 0, "accuracy": 0.5}]}, f)
    if drop is not None:
        os.remove(os.path.join(folder, drop))
    return folder


def test_true_resumes_the_last_complete_checkpoint(tmp_path):
    checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 4)
    checkpoint(tmp_path, 6, drop=MOMENTS_FILE)  # killed while saving
    point = resume_point(str(tmp_path), "true")
    assert point is not None
    assert (point.checkpoint, point.step) == (str(tmp_path / "checkpoint-4"), 4)
    assert point.record["test_accuracy"] == [{"step": 0, "accuracy": 0.5}]
    assert last_resumable(str(tmp_path)) == point.checkpoint


def test_true_prefers_a_checkpoint_with_its_run_record_and_else_takes_one_without(tmp_path, capsys):
    checkpoint(tmp_path, 2)
    checkpoint(
        tmp_path, 4, drop=RUN_RECORD_FILE
    )  # killed after the trainer's files, before the record
    point = resume_point(str(tmp_path), "true")
    assert point is not None and point.step == 2
    (tmp_path / "checkpoint-2" / RUN_RECORD_FILE).unlink()
    point = resume_point(str(tmp_path), "true")
    assert point is not None and (point.step, point.record) == (4, {})
    assert "accuracy measured before it is lost" in capsys.readouterr().out


@pytest.mark.parametrize("request_", [None, "false", ""])
def test_no_request_is_a_fresh_run(tmp_path, request_):
    checkpoint(tmp_path, 2)
    assert resume_point(str(tmp_path), request_) is None


def test_true_starts_fresh_without_checkpoints_and_refuses_only_incomplete_ones(tmp_path, capsys):
    assert resume_point(str(tmp_path / "new"), "true") is None
    assert "starting a fresh run" in capsys.readouterr().out
    checkpoint(tmp_path, 2, drop=STATE_FILE)
    with pytest.raises(ResumeError, match=r"no complete checkpoint .*checkpoint-2"):
        resume_point(str(tmp_path), "true")


def test_a_named_checkpoint_without_capo_state_is_refused_unless_accepted(tmp_path):
    folder = checkpoint(tmp_path, 2, drop=MOMENTS_FILE)
    with pytest.raises(ResumeError, match="--resume_without_capo_state true"):
        resume_point(str(tmp_path), folder)
    with pytest.warns(UserWarning, match="moments restart from zero"):
        point = resume_point(str(tmp_path), folder, without_capo_state=True)
    assert point is not None and point.step == 2


@pytest.mark.parametrize("named", ["checkpoint-9", "no_trainer_state"])
def test_a_named_folder_that_is_no_checkpoint_is_refused(tmp_path, named):
    folder = checkpoint(tmp_path, 2, drop=TRAINER_STATE_FILE)
    path = str(tmp_path / named) if named == "checkpoint-9" else folder
    with pytest.raises(ResumeError):
        resume_point(str(tmp_path), path, without_capo_state=True)


def test_the_recorder_takes_the_steps_up_to_the_checkpoint_from_its_record(tmp_path):
    point = resume_point(str(tmp_path), checkpoint(tmp_path, 2))
    assert point is not None
    recorder = RunRecorder(point, 0.0, 8, lambda: [])
    after = [{"step": 2, "reward": -1.0}, {"step": 3, "reward": 0.3}]
    assert recorder.whole_history(after) == [
        {"step": 1, "reward": 0.1},
        {"step": 2, "reward": 0.2},
        {"step": 3, "reward": 0.3},
    ]
    assert recorder.resumes == [{"checkpoint": point.checkpoint, "step": 2}]


def test_the_progress_bar_of_a_resumed_run_starts_at_its_step(capsys):
    from transformers import TrainerControl, TrainerState

    from capo_app.callbacks import CompactProgressCallback

    bar = CompactProgressCallback()
    state = TrainerState(global_step=2, max_steps=4)
    bar.on_train_begin(None, state, TrainerControl())
    shown = bar.training_bar
    assert shown is not None and (shown.n, shown.total) == (2, 4)
    assert "2/4" in capsys.readouterr().err
    state.global_step = 3
    bar.on_step_end(None, state, TrainerControl())
    assert shown.n == 3
    shown.close()
