"""The ``head`` and ``full`` regimes: GRPO on the embedded tiny Qwen2 model with :class:`capo.CAPOTrainer`.

``head``: the backbone is frozen and only ``lm_head`` is trained, so the paper's last-layer model is the
whole update (old hidden states, new head). ``full``: every parameter is trained. Both use the synthetic
arithmetic task (:mod:`capo_app.data`) and its held-out test problems (greedy accuracy, the score).

Every arm trains through :class:`StudyTrainer`, a CAPOTrainer that overrides the public mask seam
:meth:`capo.CAPOTrainer.token_mask` only: ``random`` and ``group`` arms return their rule's mask (so the
moments, ``capo/global_m_F`` and the rejection metrics follow the mask applied), the others return None
(CAPO's own rule, or no mask). There every arm records its rejection by sign(A) × π_a bucket (π_a from
the support the step already computed), and a sample of token m_F / m_H for the percentile thresholds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capo import metrics
from capo_app.experiments.arms import (
    PAPER,
    QUIET_RUN,
    Arm,
    group_keep,
    random_keep,
    rejection_by_group,
)

__all__ = ["LLMSetup", "run_llm"]

KL_PREDICTED = getattr(metrics, "KL_PREDICTED", None)
"""The trainer's predicted KL of the step taken (issue 13); None until it lands ("not measured")."""
TRUE_KL_HEAD = getattr(metrics, "TRUE_KL_HEAD", None)
"""The head-only part of the measured KL (issue 13); None until it lands ("not measured")."""


@dataclass(frozen=True)
class LLMSetup:
    """A tiny-LLM regime's constants (lr and batch come from the arm).

    Attributes:
        head_only: Freeze the backbone, train ``lm_head`` only.
        steps: Optimizer steps per run.
        group_size: G.
        prompts_per_step: Prompts per step of the aggressive batch.
        eval_every: Held-out accuracy every this many steps (and at 0 and the end).
        num_test_problems: Held-out problems.
        num_train_problems: Training problems.
        max_completion_length: Completion tokens.
        support_size: k of the curvature model.
        warm_start_steps: Supervised warm-start steps of the tiny model (None: the default).
        tiny_cache_dir: Cache folder of the warm-started model (None: the default).
        shift_samples: Token shifts kept per step (percentile thresholds).
    """

    head_only: bool = False
    steps: int = 30
    group_size: int = 8
    prompts_per_step: int = 2
    eval_every: int = 10
    num_test_problems: int = 100
    num_train_problems: int = 2000
    max_completion_length: int = 40
    support_size: int = 16
    warm_start_steps: int | None = None
    tiny_cache_dir: str | None = None
    shift_samples: int = 200


def _overrides(setup: LLMSetup, arm: Arm, lr: float, seed: int, out: Path) -> dict[str, Any]:
    values: dict[str, Any] = {
        "seed": seed,
        "max_steps": setup.steps,
        "learning_rate": lr,
        "per_device_train_batch_size": setup.prompts_per_step * arm.batch_ratio * setup.group_size,
        "gradient_accumulation_steps": 1,
        "num_generations": setup.group_size,
        "max_completion_length": setup.max_completion_length,
        "capo_support_size": setup.support_size,
        "capo_track_shifts": True,
        "capo_log_true_kl": True,
        "capo_kl_model": "last_layer",  # kl_predicted = ½ vᵀFv of the step taken, all valid tokens
        "capo_step_model": arm.optimizer,
        "optim": "sgd" if arm.optimizer == "sgd" else "adamw_torch",
        "num_test_problems": setup.num_test_problems,
        "num_train_problems": setup.num_train_problems,
        "output_dir": str(out),
        **QUIET_RUN,
    }
    if arm.masking == "capo":
        assert arm.thresholds is not None, "percentile thresholds are resolved before the run"
        values.update(arm.thresholds.as_dict())
    if (
        arm.kl_budget is not None
    ):  # exact lookahead KL: the last-layer prediction misses the backbone
        values.update(
            capo_kl_budget=arm.kl_budget, capo_kl_model="lookahead", capo_kl_backtrack=True
        )
    if setup.warm_start_steps is not None:
        values["warm_start_steps"] = setup.warm_start_steps
    if setup.tiny_cache_dir is not None:
        values["tiny_cache_dir"] = setup.tiny_cache_dir
    return values


Rule = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def _rule(arm: Arm, rates: list[float] | None, seed: int) -> Rule | None:
    """The arm's token rule (valid, adv, pi_a, step) -> keep, None when the trainer's own mask applies."""
    rng = np.random.default_rng([seed, 4])
    if arm.masking == "random":
        assert rates is not None, "a random arm needs its CAPO arm's per-step rates"
        return lambda valid, adv, pi_a, step: random_keep(
            valid, rates[min(step, len(rates) - 1)], rng
        )
    if arm.masking == "group":
        group = arm.group
        assert group is not None
        return lambda valid, adv, pi_a, step: group_keep(valid, adv, pi_a, group)
    return None


def _study_trainer_class() -> type:
    """CAPOTrainer plus the study's mask rule (imported lazily: trl is loaded only for LLM regimes)."""
    import torch
    from transformers import TrainerCallback

    from capo.trainer import CAPOTrainer

    class StudyTrainer(CAPOTrainer):
        """Applies ``study_rule`` through the public mask seam; records rejection by group and token shifts.

        Per optimizer step ``study_log`` gets one dict: rejected / total valid tokens per token group
        (``rej``, ``tot``), ``n_valid``, ``n_rejected``, and a sample of token ``m_F`` / ``m_H``.
        """

        study_rule: Rule | None = None
        study_samples: int = 200

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.study_log: list[dict[str, Any]] = []
            self.study_step = _study_step()
            trainer = self

            class CloseStep(TrainerCallback):
                def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                    trainer.study_log.append(trainer.study_step)
                    trainer.study_step = _study_step()

            self.add_callback(CloseStep())

        def token_mask(self, selection: Any, micro_batch: Any) -> Any:
            """The arm's rule on (valid, A, π_a, step); None (CAPO's own rule) for rule-less arms."""
            v = selection.valid.cpu().numpy()
            adv = micro_batch.token_advantages.float().cpu().numpy()
            p = selection.sampled_prob().float().cpu().numpy()  # π_a from the step's own support
            keep = None
            if self.study_rule is not None:
                keep = self.study_rule(v, adv, p, int(self.state.global_step)) & v
                applied = keep
            else:
                applied = selection.keep.cpu().numpy() if self.args.capo_enabled else v
            rec = self.study_step
            rej, tot = rejection_by_group(v, applied, adv, p)
            rec["rej"] += rej
            rec["tot"] += tot
            rec["n_valid"] += int(v.sum())
            rec["n_rejected"] += int((v & ~applied).sum())
            ok = selection.shifts.valid
            take = slice(0, self.study_samples)
            rec["m_F"].extend(selection.shifts.m_F[ok].float()[take].tolist())
            rec["m_H"].extend(selection.shifts.m_H[ok].float()[take].tolist())
            return None if keep is None else torch.from_numpy(keep).to(selection.valid.device)

    return StudyTrainer


def _study_step() -> dict[str, Any]:
    """An empty per-step record of :class:`StudyTrainer`."""
    return {
        "rej": np.zeros(6),
        "tot": np.zeros(6),
        "n_valid": 0,
        "n_rejected": 0,
        "m_F": [],
        "m_H": [],
    }


def _freeze_backbone(model: Any) -> None:
    """Train the output layer only: every other parameter stops requiring grad."""
    for param in model.parameters():
        param.requires_grad_(False)
    for param in model.get_output_embeddings().parameters():
        param.requires_grad_(True)


def _eval_callback(trainer: Any, every: int, measure: Callable[[int], None]) -> Any:
    from transformers import TrainerCallback

    class Evaluate(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if every > 0 and state.global_step % every == 0 and state.global_step < state.max_steps:
                measure(state.global_step)

    return Evaluate()


def _step_logs(trainer: Any, per_step: int) -> dict[str, list[Any]]:
    """Per-step logs from TRL's history and the study hook ("not measured" metrics: None)."""
    from capo_app.report import history_from_log_history

    history = history_from_log_history(trainer.state.log_history, per_step)
    study = trainer.study_log
    names = {
        "train_reward": "reward",
        "entropy": "entropy",
        "true_kl": metrics.TRUE_KL,
        "true_kl_head": TRUE_KL_HEAD,
        "kl_predicted": KL_PREDICTED,
        "global_m_F": metrics.GLOBAL_M_F,
    }
    log: dict[str, list[Any]] = {
        key: [None if name is None else h.get(name) for h in history] for key, name in names.items()
    }
    log["rejection"] = [s.get("n_rejected", 0) / max(s.get("n_valid", 0), 1) for s in study]
    log["rejected_by_group"] = [np.asarray(s.get("rej", np.zeros(6))).tolist() for s in study]
    log["tokens_by_group"] = [np.asarray(s.get("tot", np.zeros(6))).tolist() for s in study]
    log["token_m_F"] = [s.get("m_F", []) for s in study]
    log["token_m_H"] = [s.get("m_H", []) for s in study]
    return log


def run_llm(
    setup: LLMSetup, arm: Arm, lr: float, seed: int, out: Path, rates: list[float] | None = None
) -> dict[str, Any]:
    """Train one arm on one seed; returns the run record (per-step logs, ``score`` = test accuracy)."""
    from transformers import set_seed

    from capo_app.recipe import parse_recipe
    from capo_app.rewards import reward_functions
    from capo_app.run import load_policy, load_test_set, load_train_set, train_prompt_format
    from capo_app.tiny import accuracy

    start = time.perf_counter()
    method = PAPER.key if arm.masking == "capo" else "grpo"
    script_args, config, _ = parse_recipe(
        ["--method", method], overrides=_overrides(setup, arm, lr, seed, out)
    )
    set_seed(config.seed)
    model, tokenizer = load_policy(script_args, config)
    if setup.head_only:
        _freeze_backbone(model)
    fmt = train_prompt_format(script_args)
    train_set = load_train_set(script_args, config, fmt)
    test_set = load_test_set(script_args, config, fmt)
    trainer = _study_trainer_class()(
        model=model,
        reward_funcs=reward_functions(script_args.reward_funcs),
        args=config,
        train_dataset=train_set,
        processing_class=tokenizer,
    )
    trainer.study_rule = _rule(arm, rates, seed)
    trainer.study_samples = setup.shift_samples
    per_step = setup.prompts_per_step * arm.batch_ratio * setup.group_size
    evals: dict[str, list[Any]] = {"eval_step": [], "score": [], "completions": []}

    def measure(step: int) -> None:
        net = trainer.accelerator.unwrap_model(trainer.model)
        value = accuracy(net, tokenizer, test_set, max_new_tokens=setup.max_completion_length)
        evals["eval_step"].append(step)
        evals["score"].append(value)
        evals["completions"].append(step * per_step)

    trainer.add_callback(_eval_callback(trainer, setup.eval_every, measure))
    measure(0)
    trainer.train()
    measure(setup.steps)
    log = _step_logs(trainer, per_step)
    return {
        "arm": arm.name,
        "seed": seed,
        "lr": lr,
        **log,
        **evals,
        "seconds": time.perf_counter() - start,
    }
