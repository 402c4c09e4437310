"""One ``capo train`` run: load the policy and the data, train with CAPOTrainer, measure, write the outputs.

Imported only when a run starts (it imports torch, transformers, TRL and datasets), so ``capo --help`` stays fast.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    set_seed,
)
from transformers.trainer_callback import ProgressCallback

from capo.config import CAPOConfig
from capo.trainer import CAPOTrainer
from capo.trl_options import unmodelled
from capo_app import report
from capo_app.callbacks import (
    AccuracyCallback,
    AccuracyTracker,
    CompactProgressCallback,
    LogEveryStep,
)
from capo_app.checks import UsageError, check_evaluation_sharding, check_one_job, check_training
from capo_app.data import (
    MATH_PROMPT,
    PRESETS,
    TINY_PROMPT,
    PromptFormat,
    load_math_dataset,
    load_prompt_format,
    make_arithmetic_dataset,
    save_prompt_format,
)
from capo_app.data.synthetic import HELD_OUT_SEED
from capo_app.evaluation.generation import render_prompts
from capo_app.recipe import (
    EMBEDDED_TINY,
    SYNTHETIC,
    ScriptArguments,
    default_tiny_cache,
    effective_method,
)
from capo_app.resume import ResumePoint, run_identity
from capo_app.rewards import reward_functions
from capo_app.run_folder import LOG_FILE, record_run_files
from capo_app.run_record import RunRecorder
from capo_app.tiny import (
    build_tiny_model,
    build_tiny_tokenizer,
    load_tiny_model,
    shipped_tiny_dir,
    tiny_setup,
)


def train_prompt_format(script_args: ScriptArguments) -> PromptFormat:
    """How the run turns questions into prompts: as the model was trained, else a default for it.

    A model trained by ``capo train`` (or a checkpoint of one) keeps the format its folder records. The
    embedded tiny model was warm-started on its plain ``Q: ...`` frame only, so it gets that frame whatever
    the dataset; any other model gets the boxed chat message.
    """
    if script_args.model_name_or_path == EMBEDDED_TINY:
        return TINY_PROMPT
    return load_prompt_format(script_args.model_name_or_path) or MATH_PROMPT


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _check_support_fits(config: CAPOConfig, vocabulary_size: int) -> None:
    if config.capo_curvature_model and config.capo_support_size > vocabulary_size:
        raise UsageError(
            f"capo_support_size {config.capo_support_size} exceeds the vocabulary size {vocabulary_size}"
        )


def load_policy(
    script_args: ScriptArguments, config: CAPOConfig
) -> tuple[PreTrainedModel | str, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)``: the cached warm-started tiny model, or a hub id / folder for TRL to load."""
    name = script_args.model_name_or_path
    if name == EMBEDDED_TINY:
        _check_support_fits(config, len(build_tiny_tokenizer()))
        setup = tiny_setup(script_args.synthetic_task, script_args.warm_start_steps)
        shipped = shipped_tiny_dir(setup)
        if shipped is not None:  # the default: the same bytes on every machine
            return load_tiny_model(shipped)
        folder = default_tiny_cache(script_args) / f"tiny-{setup.config_hash()}"
        return build_tiny_model(folder, setup, progress=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, trust_remote_code=bool(config.trust_remote_code)
        )
    except (OSError, ValueError) as error:  # missing files, or a name that is no hub id
        raise UsageError(f"cannot load model {name}: {_first_line(error)}") from error
    _check_support_fits(config, len(tokenizer))
    return name, tokenizer


def load_train_set(
    script_args: ScriptArguments, config: CAPOConfig, fmt: PromptFormat
) -> datasets.Dataset:
    """The training prompts: the synthetic task or a hub / local dataset."""
    if script_args.dataset_name == SYNTHETIC:
        task = PRESETS.get(script_args.synthetic_task)
        if task is None:
            raise UsageError(
                f"synthetic_task must be one of {', '.join(PRESETS)}, got {script_args.synthetic_task!r}"
            )
        count = script_args.num_train_problems or 2000
        return make_arithmetic_dataset(count, "train", task, config.seed, fmt)
    return load_math_dataset(
        script_args.dataset_name,
        script_args.dataset_train_split,
        config_name=script_args.dataset_config,
        limit=script_args.num_train_problems,
        prompt_format=fmt,
    )


def usable_prompts(
    train: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    script_args: ScriptArguments,
    config: CAPOConfig,
    model: Any,
) -> datasets.Dataset:
    """The training prompts within ``max_prompt_length`` tokens (default: what the model's context leaves).

    Without ``max_prompt_length`` a prompt may take the model's context (``max_position_embeddings``) less
    ``max_completion_length``: a longer one could not be trained on (and once grew memory until the process was
    killed).

    Raises:
        UsageError: When the completion cap leaves no room for a prompt, or no prompt is left to train on.
    """
    total, limit = len(train), script_args.max_prompt_length
    context = _context_length(model, tokenizer)
    if limit is None and context is not None:
        limit = context - int(config.max_completion_length or 0)
        if limit < 1:
            raise UsageError(
                f"max_completion_length {config.max_completion_length} leaves no room for a prompt in the "
                f"model's context of {context} tokens"
            )
    if limit is not None:
        train = filter_long_prompts(train, tokenizer, limit)
    if len(train) == 0:
        why = (
            f"all {total} prompts are longer than {limit} tokens"
            + (
                ""
                if script_args.max_prompt_length
                else " (the model's context less the completion cap)"
            )
            if total
            else f"{script_args.dataset_name} [{script_args.dataset_train_split}] has no rows"
        )
        raise UsageError(f"no training prompt left: {why}")
    return train


def _context_length(model: Any, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The policy's context in tokens, or None when nothing says.

    Its config's ``max_position_embeddings`` (a hub id's config is read), else the tokenizer's
    ``model_max_length`` when that is a real bound.
    """
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if positions is None and isinstance(model, str):
        try:
            positions = getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None)
        except (OSError, ValueError):
            positions = None
    if positions is None and 0 < int(tokenizer.model_max_length) < 10**7:
        positions = tokenizer.model_max_length
    return None if positions is None else int(positions)


def load_test_set(
    script_args: ScriptArguments, config: CAPOConfig, fmt: PromptFormat
) -> datasets.Dataset | None:
    """The held-out problems for the accuracy, or None (with a printed reason) when there is no held-out split.

    ``dataset_test_split`` names a split of the dataset or a local file. A single local training file has no
    other split, and the training split is not held out: neither is measured.
    """
    if not script_args.eval_accuracy or script_args.num_test_problems == 0:
        return None
    count, source = script_args.num_test_problems, script_args.dataset_test_split
    if script_args.dataset_name == SYNTHETIC:
        task = PRESETS[script_args.synthetic_task]
        return make_arithmetic_dataset(count, "test", task, HELD_OUT_SEED, fmt)
    if Path(source).is_file():
        return load_math_dataset(source, "test", limit=count, prompt_format=fmt)
    reason = None
    if Path(script_args.dataset_name).is_file():
        reason = f"{script_args.dataset_name} is a single file with no split {source!r}"
    elif source == script_args.dataset_train_split:
        reason = f"split {source!r} is the training split"
    else:
        try:
            name, config_name = script_args.dataset_name, script_args.dataset_config
            return load_math_dataset(
                name, source, config_name=config_name, limit=count, prompt_format=fmt
            )
        except (ValueError, KeyError, FileNotFoundError) as error:
            reason = f"no held-out split {source!r} ({_first_line(error)})"
    print(
        f"capo train: {reason}; held-out accuracy is not measured (--dataset_test_split FILE measures it)"
    )
    return None


def filter_long_prompts(
    dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_tokens: int
) -> datasets.Dataset:
    """Drop rows whose rendered prompt is longer than ``max_tokens`` tokens (TRL 1.16 has no max_prompt_length)."""

    def short(row: dict[str, Any]) -> bool:
        text = render_prompts(tokenizer, [row["prompt"]])[0]
        plain = isinstance(row["prompt"], str)
        return len(tokenizer(text, add_special_tokens=plain)["input_ids"]) <= max_tokens

    kept = dataset.filter(short, desc=f"prompts <= {max_tokens} tokens")
    if 0 < len(kept) < len(dataset):
        print(
            f"capo train: dropped {len(dataset) - len(kept)} of {len(dataset)} prompts longer than {max_tokens} tokens"
        )
    return kept


def completions_per_step(config: CAPOConfig, num_processes: int) -> int:
    """Completions that enter one optimizer step: per-device batch × processes × accumulation steps."""
    return (
        int(config.per_device_train_batch_size)
        * num_processes
        * int(config.gradient_accumulation_steps)
    )


def completions_generated(config: CAPOConfig, num_processes: int, steps: int) -> int:
    """Completions TRL generated for ``steps`` optimizer steps (what the paper's sample efficiency counts).

    One generation of ``per_device_train_batch_size × steps_per_generation × processes`` completions serves
    ``steps_per_generation × num_iterations / gradient_accumulation_steps`` optimizer steps, so with several
    iterations per generation, or a generation spanning several steps, it differs from the completions
    trained on (:func:`completions_per_step` × steps).
    """
    ga, per_gen = int(config.gradient_accumulation_steps), int(config.steps_per_generation or 1)
    steps_per_generation = per_gen * int(config.num_iterations) / ga
    generations = math.ceil(steps / steps_per_generation - 1e-9) if steps > 0 else 0
    return generations * int(config.per_device_train_batch_size) * per_gen * num_processes


def method_label(config: CAPOConfig) -> str:
    """The method as trained: its registry label, plus the KL budget when one scales the steps (not CAPO)."""
    label = effective_method(config).label
    budget = config.capo_kl_budget
    return label if budget is None else f"{label} + KL budget δ = {budget:g}"


def run_description(script_args: ScriptArguments, config: CAPOConfig) -> dict[str, Any]:
    """The ``run`` section of the log: method, model, dataset, thresholds, and the resolved configuration."""
    method = effective_method(config)
    curvature = config.capo_enabled
    label = method_label(config)
    return {
        "method": method.key,
        "label": label,
        "granularity": str(getattr(config, "capo_granularity", "token")),
        "masking": bool(config.capo_enabled),
        "kl_budget": config.capo_kl_budget,
        "unmodelled": unmodelled(config),
        "title": f"{label} · {Path(script_args.model_name_or_path).name} · "
        f"{Path(script_args.dataset_name).name}",
        "model": script_args.model_name_or_path,
        "dataset": script_args.dataset_name,
        "capo_enabled": bool(config.capo_enabled),
        "capo_variant": config.capo_variant,
        "hessian_low": config.hessian_low if curvature else None,
        "hessian_high": config.hessian_high if curvature else None,
        "fisher_max": config.fisher_max if curvature else None,
        "script_args": vars(script_args),
        "config": config.to_dict(),
    }


def _build_trainer(
    config: CAPOConfig,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    rewards: list[Any],
    train_set: Any,
) -> CAPOTrainer:
    try:
        trainer = CAPOTrainer(
            model=model,
            reward_funcs=rewards,
            args=config,
            train_dataset=train_set,
            processing_class=tokenizer,
        )
    except (
        ValueError,
        OSError,
    ) as error:  # the model cannot be loaded, or CAPO refuses the setting
        raise UsageError(_first_line(error)) from error
    check_one_job(trainer.accelerator.num_processes)
    trainer.add_callback(LogEveryStep())
    if not config.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(CompactProgressCallback())
    if config.logging_steps != 1 and trainer.accelerator.is_main_process:
        print(f"capo train: logging every optimizer step (the summary and plots are per step), "
              f"not every {config.logging_steps:g}")  # fmt: skip
    return trainer


def train(
    script_args: ScriptArguments, config: CAPOConfig, resume: ResumePoint | None = None
) -> dict[str, Any]:
    """Train, measure held-out accuracy before/after, and write ``log.json``, the plots and the model.

    Args:
        script_args: What to train on.
        config: How (``CAPOConfig``).
        resume: The checkpoint to resume from (:func:`capo_app.resume.resume_point`), or None.

    Returns:
        The log object that was written (see :mod:`capo_app.report`).

    Raises:
        UsageError: On settings that cannot train what was asked (see :mod:`capo_app.checks`).
    """
    start = time.perf_counter()
    check_training(script_args, config)
    rewards = reward_functions(script_args.reward_funcs)
    if script_args.cpu_threads is not None:
        torch.set_num_threads(script_args.cpu_threads)
    set_seed(config.seed)
    fmt = train_prompt_format(script_args)
    train_set = load_train_set(script_args, config, fmt)
    test_set = load_test_set(script_args, config, fmt)
    model, tokenizer = load_policy(script_args, config)
    train_set = usable_prompts(train_set, tokenizer, script_args, config, model)
    trainer = _build_trainer(config, model, tokenizer, rewards, train_set)
    check_evaluation_sharding(test_set is not None, model)
    per_step = completions_per_step(config, trainer.accelerator.num_processes)
    max_new = script_args.eval_max_new_tokens or int(config.max_completion_length or 256)
    tracker = AccuracyTracker(
        test_set, tokenizer, max_new, per_step, script_args.eval_samples,
        float(config.temperature), config.seed,
    )  # fmt: skip
    if script_args.eval_every > 0:
        trainer.add_callback(AccuracyCallback(tracker, script_args.eval_every, trainer))
    identity = run_identity(script_args, config)
    recorder = RunRecorder(resume, start, per_step, lambda: tracker.points, identity)
    trainer.add_callback(recorder)
    tracker.points = recorder.earlier_accuracy()  # a resumed run's step-0 accuracy is in its record
    main_process = trainer.accelerator.is_main_process
    if main_process and resume is None:
        tracker.measure(trainer.accelerator.unwrap_model(trainer.model), 0, 0)
    trainer.train(resume_from_checkpoint=resume.checkpoint if resume else None)
    history = recorder.whole_history(
        report.history_from_log_history(trainer.state.log_history, per_step)
    )
    if main_process:
        done = history[-1].get("completions") if history else None
        tracker.measure(
            trainer.accelerator.unwrap_model(trainer.model), trainer.state.global_step, done
        )
    trainer.save_model(config.output_dir)
    run = {**run_description(script_args, config), "num_processes": trainer.accelerator.num_processes,
           "completions_per_step": per_step}  # fmt: skip
    log = _log(run, history, tracker.points, time.perf_counter() - start)
    steps = int(log["summary"]["steps"] or 0)
    log["summary"]["completions_generated"] = completions_generated(
        config, trainer.accelerator.num_processes, steps
    )
    recorder.annotate(log)
    if main_process:
        _write_outputs(log, Path(str(config.output_dir)), fmt, script_args.plots)
    return log


def _log(
    run: dict[str, Any], history: list[dict[str, Any]], points: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    """The log object (:mod:`capo_app.report`): summary, run, per-step history, accuracy points."""
    summary = report.summarize(
        history, points, method=run["label"], wall_time_s=seconds,
        granularity=run["granularity"], masking=run["masking"], unmodelled=run["unmodelled"],
    )  # fmt: skip
    return {"summary": summary, "run": run, "history": history, "test_accuracy": points}


def _write_outputs(log: dict[str, Any], out: Path, fmt: PromptFormat, plots: bool) -> None:
    """Write the log, the prompt format and the plots; print the summary and where everything is."""
    report.write_log(out / LOG_FILE, log)
    save_prompt_format(fmt, out)
    written = []
    if plots:
        from capo_app.plots import plot_log  # matplotlib only when plots are asked for

        written = plot_log(log, out)
    print()
    print(report.format_summary_table(log["summary"]))
    print(f"log: {out / LOG_FILE}")
    for path in written:
        print(f"plot: {path}")
    print(f"model: {out} (capo eval --model {out} --benchmarks ... prompts it as it was trained)")
    record_run_files(out)
