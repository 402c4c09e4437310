"""The run record ``capo train`` saves into each checkpoint, so that a resumed run reports the whole run.

The trainer state restores what training needs (weights, optimizer, scheduler, CAPO moments, RNG states); the run
record adds what the report needs beyond it: the per-step history, the held-out accuracy points, the wall time and
the resumes so far (:data:`capo_app.resume.RUN_RECORD_FILE`, written atomically after the checkpoint).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from capo.checkpoint import atomic_write
from capo_app.report import history_from_log_history
from capo_app.resume import RUN_RECORD_FILE, ResumePoint
from capo_app.run_folder import record_run_files

__all__ = ["RunRecorder"]


class RunRecorder(TrainerCallback):
    """Saves the run record into each checkpoint the trainer writes (main process) and merges it on resume.

    Args:
        resume: The checkpoint this run resumes from, or None.
        started: ``time.perf_counter()`` when this command started.
        completions_per_step: For the history's completions count (:func:`capo_app.report.history_from_log_history`).
        test_accuracy: The held-out accuracy points so far.
        identity: The settings that make the run what it is (:func:`capo_app.resume.run_identity`).
    """

    def __init__(
        self,
        resume: ResumePoint | None,
        started: float,
        completions_per_step: int,
        test_accuracy: Callable[[], list[dict[str, Any]]],
        identity: dict[str, Any] | None = None,
    ) -> None:
        self.started = started
        self.identity = identity or {}
        self.resume = resume
        self.previous = resume.record if resume is not None else {}
        self.completions_per_step = completions_per_step
        self.test_accuracy = test_accuracy
        here = [{"checkpoint": resume.checkpoint, "step": resume.step}] if resume else []
        self.resumes: list[dict[str, Any]] = list(self.previous.get("resumes", [])) + here

    def wall_time_s(self) -> float:
        """Wall time of the whole run: this command's plus that of the runs it resumes."""
        return time.perf_counter() - self.started + float(self.previous.get("wall_time_s", 0.0))

    def earlier_accuracy(self) -> list[dict[str, Any]]:
        """The accuracy points the resumed checkpoint carries (steps up to its own)."""
        return list(self.previous.get("test_accuracy", []))

    def whole_history(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``history`` with the steps up to the resumed checkpoint taken from its record."""
        if self.resume is None or "history" not in self.previous:
            return history
        step = self.resume.step
        earlier = [r for r in self.previous["history"] if int(r["step"]) <= step]
        return earlier + [r for r in history if int(r["step"]) > step]

    def record(self, state: Any) -> dict[str, Any]:
        """The run record at this point of training."""
        return {
            "history": self.whole_history(
                history_from_log_history(state.log_history, self.completions_per_step)
            ),
            "test_accuracy": self.test_accuracy(),
            "wall_time_s": self.wall_time_s(),
            "resumes": self.resumes,
            "identity": self.identity,
        }

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The trainer wrote ``checkpoint-<step>``: add the run record to it."""
        folder = os.path.join(str(args.output_dir), f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            text = json.dumps(self.record(state), allow_nan=True).encode()
            atomic_write(os.path.join(folder, RUN_RECORD_FILE), lambda f: f.write(text))
            record_run_files(str(args.output_dir))

    def annotate(self, log: dict[str, Any]) -> None:
        """Say in the log (run, summary, plot titles) that the run was resumed and from where."""
        if not self.resumes:
            return
        where = ", ".join(
            f"step {r['step']} ({os.path.basename(r['checkpoint'])})" for r in self.resumes
        )
        log["run"]["resumes"] = self.resumes
        log["run"]["title"] = f"{log['run'].get('title', '')} · resumed at {where}"
        log["summary"]["resumed_from"] = where
        log["summary"]["wall_time_s"] = self.wall_time_s()
