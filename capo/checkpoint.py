"""The CAPO state inside a training checkpoint, written atomically, and which checkpoints are complete.

:class:`capo.CAPOTrainer` first writes ``capo_moments.pt`` (the sparse Adam moments, when tracked) and
``capo_state.json`` (the counters, naming the moments file) into ``checkpoint-<step>``; then
``Trainer._save_checkpoint`` writes the model, optimizer, scheduler, RNG states and, last, ``trainer_state.json``,
and only then deletes checkpoints beyond ``save_total_limit``. The CAPO files are written under a temporary name
and renamed, so each is whole or absent. A checkpoint is complete when ``trainer_state.json`` reads back and the
CAPO files it needs are present (:func:`missing_files`); a run killed while saving leaves an incomplete one, which
:func:`last_complete_checkpoint` skips, and never has deleted the previous complete one by then.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from typing import IO, Any

import torch

from capo.moments import SparseAdamMoments

__all__ = [
    "MOMENTS_FILE",
    "STATE_FILE",
    "TRAINER_STATE_FILE",
    "atomic_write",
    "checkpoint_folders",
    "last_complete_checkpoint",
    "load_capo_state",
    "missing_files",
    "save_capo_state",
]

MOMENTS_FILE = "capo_moments.pt"
"""Checkpoint file of the sparse Adam moments (``SparseAdamMoments.state_dict()``)."""
STATE_FILE = "capo_state.json"
"""Checkpoint file of the other CAPO counters, written after the moments; it names the moments file."""
TRAINER_STATE_FILE = "trainer_state.json"
"""transformers' ``TRAINER_STATE_NAME``: the last file ``Trainer._save_checkpoint`` writes (not atomically)."""

_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def atomic_write(path: str, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, flush it to disk, then rename it to ``path``.

    A reader (or a resumed run) sees the old file or the whole new one, never a partial one.
    """
    tmp = f"{path}.{os.getpid()}.tmp"  # same folder, so the rename is atomic; the umask applies
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_json(path: str, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj).encode()))


def save_capo_state(folder: str, moments: SparseAdamMoments | None, completions_seen: int) -> None:
    """Write ``capo_moments.pt`` (when the Adam step model is tracked), then ``capo_state.json``, atomically."""
    os.makedirs(folder, exist_ok=True)
    if moments is not None:
        state = moments.state_dict()
        atomic_write(os.path.join(folder, MOMENTS_FILE), lambda f: torch.save(state, f))
    _write_json(
        os.path.join(folder, STATE_FILE),
        {
            "completions_seen": completions_seen,
            "moments_file": MOMENTS_FILE if moments is not None else None,
        },
    )


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            loaded = json.load(f)
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def missing_files(folder: str) -> list[str]:
    """What keeps ``folder`` from being a complete CAPO checkpoint: absent or unreadable files, [] if none."""
    if _read_json(os.path.join(folder, TRAINER_STATE_FILE)) is None:
        return [TRAINER_STATE_FILE]
    state = _read_json(os.path.join(folder, STATE_FILE))
    if state is None:
        return [STATE_FILE]
    named = state.get("moments_file")
    if named and not os.path.isfile(os.path.join(folder, str(named))):
        return [str(named)]
    return []


def checkpoint_folders(output_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-<step>`` folder in ``output_dir``, by step; [] if none."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_NAME.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The complete checkpoint (see the module doc) of ``output_dir`` with the highest step, or None."""
    for _, path in reversed(checkpoint_folders(output_dir)):
        if not missing_files(path):
            return path
    return None


def load_capo_state(folder: str, moments: SparseAdamMoments | None) -> int | None:
    """Load the moments of ``folder`` into ``moments`` (in place); return its completions count.

    A checkpoint without ``capo_moments.pt`` while moments are tracked warns that they restart from zero.
    Returns None when the folder holds no ``capo_state.json``.
    """
    moments_path = os.path.join(folder, MOMENTS_FILE)
    if moments is not None:
        if os.path.exists(moments_path):
            moments.load_state_dict(torch.load(moments_path, map_location=moments.device))
        else:
            warnings.warn(
                f"{folder} has no {MOMENTS_FILE}: the CAPO moments restart from zero", stacklevel=3
            )
    state = _read_json(os.path.join(folder, STATE_FILE))
    return None if state is None else int(state["completions_seen"])
