"""Trainer callbacks of ``capo train``: a log record per optimizer step, held-out accuracy, a compact progress bar."""

from __future__ import annotations

import math
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from capo import metrics
from capo_app.evaluation.sampled import eval_seed, sampled_accuracy
from capo_app.tiny import accuracy


class LogEveryStep(TrainerCallback):
    """Log at every optimizer step, whatever ``logging_steps`` says.

    TRL averages its metrics (and CAPOTrainer's) over the steps since the last log, so with ``logging_steps 2``
    the first step's reward, the rejection peak and the completions count would be two-step averages. The
    summary, the plots and ``log.json`` are built from one record per step instead.
    """

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Ask the trainer to log this step."""
        control.should_log = True


class CompactProgressCallback(ProgressCallback):
    """TRL's tqdm bar, with the headline metrics in the bar instead of one printed dict per step."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start the bar at the step a resumed run starts from (transformers starts it at 0)."""
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None and state.global_step > 0:
            self.training_bar.update(state.global_step)
            self.training_bar.refresh()  # show it now, not at the next step
        self.current_step = state.global_step

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Show reward, rejection rate and loss of the logged step in the bar."""
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        shown = {"reward": "reward", metrics.REJECTION_RATE: "rej", "loss": "loss"}
        postfix = {}
        for key, label in shown.items():
            value = logs.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                postfix[label] = f"{value:.3g}"
        self.training_bar.set_postfix(postfix, refresh=True)


class AccuracyTracker:
    """Held-out accuracy at given steps (main process only); records ``{step, completions, accuracy}``.

    ``accuracy`` is greedy; with ``samples`` k > 0 a point also has ``sampled`` (mean over k samples per
    problem at ``temperature``), ``sampled_se`` (its Monte Carlo SE), ``k`` and ``temperature``, each
    evaluation from its own RNG stream (:func:`capo_app.evaluation.sampled.eval_seed` of ``seed``).
    """

    def __init__(
        self,
        test: datasets.Dataset | None,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int,
        completions_per_step: int,
        samples: int = 0,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.test = test
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.completions_per_step = completions_per_step
        self.samples, self.temperature, self.seed = samples, temperature, seed
        self.points: list[dict[str, Any]] = []

    def measure(self, model: Any, step: int, completions: int | None = None) -> float | None:
        """Measure and record the accuracy at ``step`` (a second measure at the same step replaces the first)."""
        if self.test is None or len(self.test) == 0:
            return None
        value = accuracy(
            model, self.tokenizer, self.test, max_new_tokens=self.max_new_tokens, temperature=0.0
        )
        if self.points and self.points[-1]["step"] == step:
            self.points.pop()
        done = completions if completions is not None else step * self.completions_per_step
        point: dict[str, Any] = {"step": step, "completions": done, "accuracy": value}
        if self.samples > 0 and self.temperature > 0:
            score = sampled_accuracy(
                model, self.tokenizer, list(self.test["prompt"]), [str(a) for a in self.test["answer"]],
                temperature=self.temperature, k=self.samples, max_new_tokens=self.max_new_tokens,
                seed=eval_seed(self.seed, step), greedy=False,
            )  # fmt: skip
            point.update(sampled=score.sampled, sampled_se=score.sampled_se, k=self.samples)
            point["temperature"] = self.temperature
        self.points.append(point)
        return value


class AccuracyCallback(TrainerCallback):
    """Measure held-out accuracy every ``every`` optimizer steps before the last (main process)."""

    def __init__(self, tracker: AccuracyTracker, every: int, trainer: Any) -> None:
        self.tracker = tracker
        self.every = every
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Measure when the step is a multiple of ``every``."""
        step = state.global_step
        if self.every > 0 and step % self.every == 0 and step < state.max_steps:
            if state.is_world_process_zero:
                model = self.trainer.accelerator.unwrap_model(self.trainer.model)
                self.tracker.measure(model, step)
