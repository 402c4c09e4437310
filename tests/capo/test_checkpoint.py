"""capo.checkpoint: atomic CAPO state files, and which checkpoints are complete."""

from __future__ import annotations

import json
import os

import pytest
import torch

from capo.checkpoint import (
    MOMENTS_FILE,
    STATE_FILE,
    TRAINER_STATE_FILE,
    atomic_write,
    checkpoint_folders,
    last_complete_checkpoint,
    load_capo_state,
    missing_files,
    save_capo_state,
)
from capo.moments import SparseAdamMoments


def stepped_moments() -> SparseAdamMoments:
    moments = SparseAdamMoments(7, 3, dtype=torch.float64)
    moments.update(torch.tensor([1, 4]), torch.randn(2, 3, dtype=torch.float64))
    return moments


def write_checkpoint(folder, moments: SparseAdamMoments | None = None, seen: int = 16) -> str:
    """A checkpoint folder as CAPOTrainer leaves it: the trainer state, then the CAPO state."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, TRAINER_STATE_FILE), "w") as f:
        json.dump({"global_step": 2, "log_history": []}, f)
    save_capo_state(str(folder), moments, seen)
    return str(folder)


def test_saved_state_is_complete_and_loads_back_exactly(tmp_path):
    saved = stepped_moments()
    folder = write_checkpoint(tmp_path / "checkpoint-2", saved, seen=48)
    assert missing_files(folder) == []
    loaded = SparseAdamMoments(7, 3, dtype=torch.float64)
    assert load_capo_state(folder, loaded) == 48
    assert loaded.t == saved.t == 1
    for a, b in zip(saved.to_dense(), loaded.to_dense(), strict=True):
        assert torch.equal(a, b)
    assert [p for p in os.listdir(folder) if p.endswith(".tmp")] == []


def test_a_checkpoint_without_tracked_moments_needs_no_moments_file(tmp_path):
    folder = write_checkpoint(tmp_path / "checkpoint-2", None)
    assert not os.path.exists(os.path.join(folder, MOMENTS_FILE))
    assert missing_files(folder) == []


@pytest.mark.parametrize(
    ("damage", "missing"),
    [
        ("remove", MOMENTS_FILE),
        ("remove", STATE_FILE),
        ("remove", TRAINER_STATE_FILE),
        ("truncate", TRAINER_STATE_FILE),
    ],
)
def test_a_checkpoint_with_a_file_absent_or_cut_short_is_incomplete(tmp_path, damage, missing):
    folder = write_checkpoint(tmp_path / "checkpoint-2", stepped_moments())
    path = os.path.join(folder, missing)
    if damage == "remove":
        os.remove(path)
    else:
        with open(path, "r+") as f:
            f.truncate(5)
    assert missing_files(folder) == [missing]


def test_last_complete_checkpoint_skips_an_incomplete_newer_one_and_orders_steps_numerically(
    tmp_path,
):
    for step in (2, 9, 10):
        write_checkpoint(tmp_path / f"checkpoint-{step}", stepped_moments())
    (tmp_path / "checkpoint-notastep").mkdir()
    assert [s for s, _ in checkpoint_folders(str(tmp_path))] == [2, 9, 10]
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")
    os.remove(tmp_path / "checkpoint-10" / STATE_FILE)  # killed before the CAPO state was written
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-9")
    assert last_complete_checkpoint(str(tmp_path / "absent")) is None


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = str(tmp_path / "f.json")
    atomic_write(path, lambda f: f.write(b"old"))

    def fails_midway(f):
        f.write(b"half of the new")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, fails_midway)
    assert open(path, "rb").read() == b"old"
    assert os.listdir(tmp_path) == ["f.json"]


def test_the_trainer_writes_the_capo_state_before_trl_completes_and_rotates_checkpoints(
    tmp_path, monkeypatch
):
    """A kill while saving checkpoint-2 leaves checkpoint-1 whole: TRL's trainer_state.json (its last file,
    after which it deletes checkpoints beyond save_total_limit) comes after the CAPO files."""
    from trl import GRPOTrainer

    from tests.capo import _trainer_helpers as H

    seen = []
    trl_save = GRPOTrainer._save_checkpoint

    def recording_save(self, model, trial):
        folder = tmp_path / f"checkpoint-{self.state.global_step}"
        seen.append(sorted(p.name for p in folder.iterdir()))
        trl_save(self, model, trial)

    monkeypatch.setattr(GRPOTrainer, "_save_checkpoint", recording_save)
    H.trainer(str(tmp_path), save_strategy="steps", save_steps=1, save_total_limit=1).train()
    assert seen == [[MOMENTS_FILE, STATE_FILE]] * 2
    assert [s for s, _ in checkpoint_folders(str(tmp_path))] == [2]
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
