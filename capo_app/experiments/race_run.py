"""One run of the race (:mod:`capo_app.experiments.race`): an arm on a seed, on the embedded tiny model.

The run trains :class:`capo.CAPOTrainer` on the synthetic arithmetic task and records, per optimizer step,
the training reward (the paper's MATH curve), the rejection rate, the measured true KL of the step, the KL
budget's prediction and scale, and, at the arm's evaluation steps, the held-out sampled accuracy at the
training temperature (:func:`capo_app.evaluation.sampled.sampled_accuracy`; greedy beside it) on one fixed
held-out set shared by every seed and arm, each evaluation from its own RNG stream.

A ``random`` arm rejects, on each step, as many valid tokens as its CAPO twin rejected on the same seed and
step (its realised rate × the step's valid tokens), drawn uniformly from the tokens CAPO could reject
(A ≠ 0) with a generator of its own; it goes through the trainer's public mask seam
``CAPOTrainer.token_mask``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capo import metrics
from capo.selection import Thresholds
from capo_app.data.synthetic import HELD_OUT_SEED
from capo_app.experiments.arms import QUIET_RUN, random_keep

__all__ = ["RaceArm", "RaceSetup", "random_reject", "run_race", "saved_fields"]

TEST_SEED = HELD_OUT_SEED
"""The held-out set's seed: one fixed set of problems for every training seed and arm."""
RANDOM_STREAM = 0xA11D
"""The spawn key of a random arm's mask generator (independent of sampling and of evaluation)."""


@dataclass(frozen=True)
class RaceSetup:
    """The race regime's constants (the arm sets lr, batch and control).

    Attributes:
        lr: Conservative GRPO's learning rate (aggressive arms: ``lr_ratio`` × this).
        lr_ratio: Aggressive / conservative learning rate (the paper's Table 3: 5).
        prompts: Conservative prompts per step (× G completions).
        batch_ratio: Conservative / aggressive completions per step (the paper's Table 3: 12).
        group_size: G, completions per prompt.
        conservative_steps: Optimizer steps of the conservative arm.
        aggressive_steps: Optimizer steps of every aggressive arm.
        evals: Evaluations per run besides step 0, at equally spaced steps.
        num_test_problems: Held-out problems.
        num_train_problems: Training problems.
        eval_k: Samples per held-out problem.
        temperature: Training (and evaluation) temperature.
        max_completion_length: Completion cap, training and evaluation.
        tiny_cache_dir: The embedded model's cache (None: the default).
        stop_at: Stop training after this many optimizer steps, the learning-rate schedule still the full
            run's (tuning runs: the first part of an evaluation run); None: run every step.
        track_shifts: Run the curvature model in every arm (``capo_track_shifts``: m_H, m_F and the seam
            on GRPO arms too, for diagnostics); None: only where an arm needs it.
    """

    lr: float = 2e-4
    lr_ratio: float = 5.0
    prompts: int = 12
    batch_ratio: int = 12
    group_size: int = 8
    conservative_steps: int = 300
    aggressive_steps: int = 300
    evals: int = 6
    num_test_problems: int = 200
    num_train_problems: int = 2000
    eval_k: int = 8
    temperature: float = 0.9
    max_completion_length: int = 40
    tiny_cache_dir: str | None = None
    stop_at: int | None = None
    track_shifts: bool | None = None


@dataclass(frozen=True)
class RaceArm:
    """One arm of the race.

    Attributes:
        name: Unique key (file names, JSON).
        kind: ``conservative``, ``grpo_a``, ``capo``, ``random``, ``lower_lr``, ``kl_cap``, ``kl_target``.
        lr_scale: × the aggressive learning rate (conservative: × the conservative one).
        kl_delta: δ of a ``kl_cap`` / ``kl_target`` arm (nats per step).
        s_max: The largest lr factor of a ``kl_target`` arm.
        control_of: A ``random`` arm copies this ``capo`` arm's realised per-step rate.
        thresholds: A ``capo`` arm's (δ_H^low, δ_H^high, δ_F) of eq 11 (None: the paper's).
    """

    name: str
    kind: str
    lr_scale: float = 1.0
    kl_delta: float | None = None
    s_max: float | None = None
    control_of: str | None = None
    thresholds: tuple[float | None, float | None, float | None] | None = None

    @property
    def conservative(self) -> bool:
        """Whether the arm uses the conservative batch and lr."""
        return self.kind == "conservative"


ADDED_LATER = ("stop_at", "thresholds", "track_shifts")
"""Setup and arm fields added after the race's runs were saved (race 2's tuning)."""


def saved_fields(value: Any) -> dict[str, Any]:
    """``asdict(value)`` less the :data:`ADDED_LATER` fields left at None."""
    return {k: v for k, v in asdict(value).items() if not (k in ADDED_LATER and v is None)}


def arm_lr(setup: RaceSetup, arm: RaceArm) -> float:
    """The arm's peak learning rate."""
    base = setup.lr if arm.conservative else setup.lr * setup.lr_ratio
    return base * arm.lr_scale


def completions_per_step(setup: RaceSetup, arm: RaceArm) -> int:
    """Completions per optimizer step of the arm."""
    per = setup.prompts * setup.group_size
    return per if arm.conservative else per // setup.batch_ratio


def eval_steps(setup: RaceSetup, arm: RaceArm) -> list[int]:
    """The steps at which the arm is evaluated (0 first, the last step last)."""
    steps = setup.conservative_steps if arm.conservative else setup.aggressive_steps
    at = {0, *(round(steps * (i + 1) / setup.evals) for i in range(setup.evals))}
    if setup.stop_at is not None:
        at = {s for s in at if s <= setup.stop_at} | {min(setup.stop_at, steps)}
    return sorted(at)


def random_reject(
    valid: np.ndarray, adv: np.ndarray, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Keep mask rejecting round(rate · n_valid) tokens uniformly among valid tokens with A ≠ 0.

    CAPO never rejects an A = 0 token (its step is zero), so neither does its control.
    """
    return random_keep(valid, rate, rng, eligible=valid & (adv != 0))


def _overrides(setup: RaceSetup, arm: RaceArm, seed: int, out: Path) -> dict[str, Any]:
    steps = setup.conservative_steps if arm.conservative else setup.aggressive_steps
    values: dict[str, Any] = {
        "seed": seed,
        "max_steps": steps,
        "learning_rate": arm_lr(setup, arm),
        "per_device_train_batch_size": completions_per_step(setup, arm),
        "gradient_accumulation_steps": 1,
        "num_generations": setup.group_size,
        "max_completion_length": setup.max_completion_length,
        "temperature": setup.temperature,
        "capo_log_true_kl": True,
        "num_test_problems": 0,
        "num_train_problems": setup.num_train_problems,
        "output_dir": str(out),
        **QUIET_RUN,
    }
    if arm.kl_delta is not None:
        values.update(
            capo_kl_budget=arm.kl_delta, capo_kl_model="lookahead", capo_kl_backtrack=True
        )
    if (
        arm.control_of is not None or setup.track_shifts
    ):  # the seam runs where the curvature model does
        values["capo_track_shifts"] = True
    if arm.thresholds is not None:
        values.update(Thresholds(*arm.thresholds).as_dict())
    if arm.kind == "kl_target":
        values.update(capo_kl_mode="target", capo_kl_max_scale=arm.s_max)
    if setup.tiny_cache_dir is not None:
        values["tiny_cache_dir"] = setup.tiny_cache_dir
    return values


LOGGED = {
    "train_reward": "reward",
    "rejection": metrics.REJECTION_RATE,
    "true_kl": metrics.TRUE_KL,
    "kl_predicted": metrics.KL_PREDICTED,
    "kl_scale": metrics.KL_SCALE,
    "entropy": "entropy",
    "global_m_F": metrics.GLOBAL_M_F,
    "m_F_mean": f"{metrics.M_F}/mean",
    "true_kl_head": metrics.TRUE_KL_HEAD,
}
"""Per-step record key -> logged metric."""


def _trainer_class(rates: Sequence[float] | None, seed: int) -> type:
    """CAPOTrainer, or (``rates`` given) its random-mask control through the public mask seam."""
    from capo.trainer import CAPOTrainer

    if rates is None:
        return CAPOTrainer
    import torch

    rng = np.random.default_rng([seed, RANDOM_STREAM])
    step_rates = list(rates)

    class RandomMaskTrainer(CAPOTrainer):
        """Rejects CAPO's realised per-step rate of A ≠ 0 tokens, uniformly at random."""

        mask_calls = 0

        def token_mask(self, selection: Any, micro_batch: Any) -> torch.Tensor | None:
            valid = selection.valid.cpu().numpy().astype(bool)
            adv = micro_batch.token_advantages.float().cpu().numpy()
            step = min(int(self.state.global_step), len(step_rates) - 1)
            keep = random_reject(valid, np.broadcast_to(adv, valid.shape), step_rates[step], rng)
            self.mask_calls += 1
            return torch.from_numpy(keep).to(selection.valid.device)

    return RandomMaskTrainer


def run_race(
    setup: RaceSetup,
    arm: RaceArm,
    seed: int,
    out: Path,
    rates: Sequence[float] | None = None,
    trainer_class: type | None = None,
) -> dict[str, Any]:
    """Train one arm on one seed; returns its record (per-step logs and the evaluations).

    ``trainer_class``: a CAPOTrainer subclass to train with instead (race 2's diagnosed trainer; its
    per-step ``cells``, if any, go into the record).
    """
    from transformers import TrainerCallback, set_seed

    from capo_app.data import make_arithmetic_dataset
    from capo_app.data.synthetic import PRESETS
    from capo_app.evaluation.sampled import eval_seed, sampled_accuracy
    from capo_app.recipe import parse_recipe
    from capo_app.report import history_from_log_history
    from capo_app.rewards import reward_functions
    from capo_app.run import load_policy, load_train_set, train_prompt_format

    start = time.perf_counter()
    method = "capo" if arm.kind == "capo" else "grpo"
    script_args, config, _ = parse_recipe(
        ["--method", method], overrides=_overrides(setup, arm, seed, out)
    )
    set_seed(config.seed)
    model, tokenizer = load_policy(script_args, config)
    fmt = train_prompt_format(script_args)
    train_set = load_train_set(script_args, config, fmt)
    task = PRESETS[script_args.synthetic_task]
    test = make_arithmetic_dataset(setup.num_test_problems, "test", task, TEST_SEED, fmt)
    trainer = (trainer_class or _trainer_class(rates, seed))(
        model=model,
        reward_funcs=reward_functions(script_args.reward_funcs),
        args=config,
        train_dataset=train_set,
        processing_class=tokenizer,
    )
    per_step = completions_per_step(setup, arm)
    at = eval_steps(setup, arm)
    evals: list[dict[str, Any]] = []

    def measure(step: int) -> None:
        net = trainer.accelerator.unwrap_model(trainer.model)
        score = sampled_accuracy(
            net, tokenizer, list(test["prompt"]), [str(a) for a in test["answer"]],
            temperature=setup.temperature, k=setup.eval_k,
            max_new_tokens=setup.max_completion_length, seed=eval_seed(seed, len(evals)),
        )  # fmt: skip
        evals.append({"step": step, "completions": step * per_step, **score.to_json()})

    last = at[-1]

    class Evaluate(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step >= last:  # a tuning run's stop (the schedule stays the full run's)
                control.should_training_stop = True
            elif state.global_step in at:
                measure(state.global_step)

    trainer.add_callback(Evaluate())
    measure(0)
    trainer.train()
    measure(int(trainer.state.global_step))
    if rates is not None and not getattr(trainer, "mask_calls", 0):
        raise RuntimeError(f"{arm.name}: the token_mask seam was never called")
    history = history_from_log_history(trainer.state.log_history, per_step)
    record: dict[str, Any] = {"arm": arm.name, "kind": arm.kind, "seed": seed}
    record["lr"], record["completions_per_step"] = arm_lr(setup, arm), per_step
    for key, name in LOGGED.items():
        record[key] = [_num(h.get(name)) for h in history]
    record["evals"] = evals
    if hasattr(trainer, "cells"):
        record["cells"] = [trainer.cells.get(step) for step in range(len(history))]
    record["seconds"] = time.perf_counter() - start
    return record


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and np.isfinite(value) else None
