"""Resuming ``capo train``: which checkpoint to start from, and the run record each checkpoint carries.

``--resume_from_checkpoint PATH`` resumes from that checkpoint; ``--resume_from_checkpoint true`` from the last
complete checkpoint of ``--output-dir`` (a fresh start when the folder holds no checkpoint yet, so one command
line restarts a pre-empted job). A checkpoint is complete when :func:`capo.checkpoint.missing_files` finds
nothing missing and it holds the run record ``capo_run.json`` (when none holds a record, the last checkpoint
complete without one is taken, and the held-out accuracy measured before it is lost). Naming a checkpoint that
lacks the CAPO state (a run killed while saving) is refused unless ``--resume_without_capo_state true`` accepts
that the moments restart from zero. A fresh run into a folder that holds checkpoints is refused by
:mod:`capo_app.run_folder`.

The run record (:class:`capo_app.run_record.RunRecorder`) is what ``capo train`` reports beyond the trainer
state: the per-step history, the held-out accuracy points, the wall time and the resumes so far. With it, the
summary, ``log.json`` and plots of a resumed run cover the whole run. The trainer state restores the weights,
optimizer, scheduler, CAPO moments and the Python, NumPy and torch RNG states (transformers' ``rng_state.pth``).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capo.checkpoint import (
    TRAINER_STATE_FILE,
    checkpoint_folders,
    last_complete_checkpoint,
    missing_files,
)
from capo_app.checks import UsageError
from capo_app.run_folder import LOG_FILE, holds_run

__all__ = [
    "IDENTITY_FIELDS",
    "RUN_RECORD_FILE",
    "ResumeError",
    "ResumePoint",
    "check_same_run",
    "is_complete",
    "last_resumable",
    "resume_point",
    "run_identity",
]

#: The settings that make a run what it is; a resume that changes one of them would train another run.
IDENTITY_FIELDS = (
    "model_name_or_path", "dataset_name", "dataset_config", "dataset_train_split", "synthetic_task",
    "num_train_problems", "reward_funcs", "capo_enabled", "capo_variant", "hessian_low", "hessian_high",
    "fisher_max", "capo_step_model", "capo_granularity", "capo_support_size", "capo_track_shifts",
    "capo_kl_budget", "capo_kl_model", "capo_kl_mode", "capo_kl_max_scale", "capo_kl_backtrack",
    "max_steps", "num_train_epochs", "learning_rate",
    "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "weight_decay", "optim",
    "adam_beta1", "adam_beta2", "adam_epsilon", "per_device_train_batch_size",
    "gradient_accumulation_steps", "num_generations", "max_completion_length", "temperature", "beta",
    "loss_type", "seed",
)  # fmt: skip

RUN_RECORD_FILE = "capo_run.json"
"""The application's run record inside a checkpoint (history, accuracy points, wall time, resumes)."""

_LAST = ("true", "yes", "1", "last")
_NONE = ("", "false", "no", "0", "none")


class ResumeError(UsageError):
    """A resume request that ``capo train`` refuses; the message is one line for the user."""


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint to resume from.

    Attributes:
        checkpoint: Its folder.
        step: The optimizer steps it holds (``global_step`` of its trainer state).
        record: Its run record (``{}`` when it has none).
    """

    checkpoint: str
    step: int
    record: dict[str, Any] = field(default_factory=dict)


def _missing(folder: str) -> list[str]:
    missing = missing_files(folder)
    if not missing and not os.path.isfile(os.path.join(folder, RUN_RECORD_FILE)):
        missing = [RUN_RECORD_FILE]
    return missing


def last_resumable(output_dir: str) -> str | None:
    """The complete checkpoint (module doc) of ``output_dir`` with the highest step, or None."""
    for _, path in reversed(checkpoint_folders(output_dir)):
        if not _missing(path):
            return path
    return None


def _read(folder: str, name: str) -> dict[str, Any]:
    try:
        with open(os.path.join(folder, name)) as f:
            loaded = json.load(f)
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _checked(path: str, without_capo_state: bool) -> ResumePoint:
    """Validate an explicitly named checkpoint (refuse or warn, module doc)."""
    if not os.path.isdir(path):
        raise ResumeError(f"--resume_from_checkpoint {path}: no such folder")
    missing = _missing(path)
    if TRAINER_STATE_FILE in missing:
        raise ResumeError(
            f"{path} is not a complete checkpoint (no readable {TRAINER_STATE_FILE}); "
            f"resume from an earlier one or with --resume_from_checkpoint true"
        )
    if missing and missing != [RUN_RECORD_FILE]:
        if not without_capo_state:
            raise ResumeError(
                f"{path} lacks {missing[0]} (the run stopped while saving it): the CAPO moments would "
                f"restart from zero; pass --resume_without_capo_state true to accept that, or resume "
                f"with --resume_from_checkpoint true (the last complete checkpoint)"
            )
        warnings.warn(
            f"{path} lacks {missing[0]}: the CAPO moments restart from zero", stacklevel=2
        )
    step = int(_read(path, TRAINER_STATE_FILE).get("global_step", 0))
    if not os.path.isfile(os.path.join(path, RUN_RECORD_FILE)):
        print(
            f"capo train: {path} has no {RUN_RECORD_FILE}: the accuracy measured before it is lost"
        )
    return ResumePoint(path, step, _read(path, RUN_RECORD_FILE))


class RunComplete(Exception):
    """``--resume_from_checkpoint true`` on a run that finished every requested step: nothing to train."""


def resume_point(
    output_dir: str, request: str | None, without_capo_state: bool = False, max_steps: int = -1
) -> ResumePoint | None:
    """Resolve ``--resume_from_checkpoint`` (module doc): the checkpoint to resume from, or None for a fresh run.

    Args:
        output_dir: The run's output folder.
        request: A checkpoint folder, ``true`` (the last complete checkpoint of ``output_dir``), or None/``false``.
        without_capo_state: Accept a named checkpoint that lacks the CAPO state (the moments restart from zero).
        max_steps: The steps the run asks for (a finished run with as many is complete).

    Raises:
        ResumeError: The checkpoint cannot be resumed from.
        RunComplete: The folder's run finished every requested step without a checkpoint.
    """
    text = "" if request is None else str(request).strip()
    if text.lower() in _NONE:
        return None
    if text.lower() in _LAST:
        last = last_resumable(output_dir) or last_complete_checkpoint(output_dir)  # else no record
        found = checkpoint_folders(output_dir)
        if last is None and found:
            names = ", ".join(os.path.basename(p) for _, p in found)
            raise ResumeError(
                f"no complete checkpoint in {output_dir} ({names} are incomplete); name one with "
                f"--resume_from_checkpoint PATH"
            )
        if last is None and holds_run(
            output_dir
        ):  # a run that saved no checkpoint: nothing to continue
            steps = finished_steps(output_dir)
            if steps is not None and 0 < max_steps <= steps:
                raise RunComplete(
                    f"capo train: the run in {output_dir} is complete ({steps} optimizer steps); "
                    "nothing to train"
                )
            state = "was stopped" if steps is None else f"finished after {steps} optimizer steps"
            raise ResumeError(
                f"{output_dir} holds a run that {state} without saving a checkpoint, so there is nothing to "
                "resume (save checkpoints with --save_strategy steps --save_steps N); pass "
                "--overwrite_output_dir true to train it again, or --output-dir DIR for a new run"
            )
        if last is None:
            print(f"capo train: no checkpoint in {output_dir} yet; starting a fresh run")
            return None
        text = last
    point = _checked(text, without_capo_state)
    print(f"capo train: resuming from {point.checkpoint} (step {point.step})")
    return point


def finished_steps(output_dir: str) -> int | None:
    """The optimizer steps of the finished run in ``output_dir`` (its log's summary), or None if none finished."""
    try:
        summary = json.loads((Path(output_dir) / LOG_FILE).read_text()).get("summary") or {}
    except (OSError, ValueError, AttributeError):
        return None
    steps = summary.get("steps") if isinstance(summary, dict) else None
    return int(steps) if isinstance(steps, int | float) else None


def _plain(value: Any) -> Any:
    value = getattr(value, "value", value)  # an Enum (optim, lr_scheduler_type)
    return (
        value
        if isinstance(value, bool | int | float | str | type(None))
        else json.dumps(value, sort_keys=True, default=str)
    )


def run_identity(script_args: Any, config: Any) -> dict[str, Any]:
    """The values of :data:`IDENTITY_FIELDS` (JSON-ready), read from the two dataclasses."""
    out = {}
    for name in IDENTITY_FIELDS:
        for source in (script_args, config):
            if hasattr(source, name):
                out[name] = _plain(getattr(source, name))
    return out


def check_same_run(point: ResumePoint, identity: dict[str, Any]) -> None:
    """Refuse a resume whose settings change what the run is (method, thresholds, schedule, batch, ...).

    Raises:
        ResumeError: One line naming each changed field with its recorded and its new value.
    """
    recorded = point.record.get("identity")
    if not isinstance(recorded, dict):
        return  # a checkpoint written before runs recorded their identity
    changed = [
        f"{name} {recorded[name]!r} -> {identity[name]!r}"
        for name in identity
        if name in recorded and recorded[name] != identity[name]
    ]
    if changed:
        raise ResumeError(
            f"resuming {point.checkpoint} with other settings would mix two runs: "
            f"{'; '.join(changed)}; resume with the run's own settings, or start a new run in another "
            "--output-dir"
        )


def is_complete(point: ResumePoint, max_steps: int) -> bool:
    """True when the checkpoint already holds every optimizer step of the run."""
    planned = int(_read(point.checkpoint, TRAINER_STATE_FILE).get("max_steps", 0) or 0)
    target = max_steps if max_steps > 0 else planned
    return target > 0 and point.step >= target
