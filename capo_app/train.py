"""``capo train``: run a recipe with :class:`capo.CAPOTrainer`, then write the summary, plots and JSON log.

``capo train`` with no arguments trains the embedded default (CAPO on the warm-started tiny Qwen2 model and
the synthetic arithmetic task, CPU, a few minutes). ``capo train --config recipes/capo.yaml`` runs a paper
recipe (launch it with ``accelerate launch``, see ``recipes/README.md``); ``--dry-run`` validates a recipe on a
tiny stand-in model without downloading anything (:mod:`capo_app.dry_run`). Options: ``--method``, ``--max-steps``,
``--seed``, ``--output-dir``, and any ``ScriptArguments`` / ``CAPOConfig`` field as ``--field value``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from capo import metrics
from capo_app.recipe import (
    EMBEDDED_TINY,
    SYNTHETIC,
    ScriptArguments,
    effective_method,
    parse_recipe,
)

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

    from capo.config import CAPOConfig

_USAGE = """usage: capo train [--config RECIPE.yaml] [--method METHOD] [--max-steps N] [--seed N]
                  [--output-dir DIR] [--dry-run] [--FIELD VALUE ...]

Train with CAPOTrainer. Without arguments: CAPO on the embedded tiny Qwen2 model and the synthetic
arithmetic task, on CPU, in a few minutes; the summary is printed and log.json + PNG plots are written
to --output-dir (default outputs/capo-tiny).

  --config RECIPE.yaml  TrlParser-style YAML recipe (ScriptArguments + CAPOConfig fields), e.g.
                        recipes/capo.yaml; the command line overrides it.
  --method METHOD       grpo | capo | dr_grpo | dr_capo | reinforce | reincapo (variant, masking,
                        and the paper's thresholds).
  --max-steps N         optimizer steps.
  --seed N              random seed.
  --output-dir DIR      where log.json, the plots and the final model go.
  --dry-run             validate the recipe on a tiny stand-in model (no download) and report.
  --help-all            list every accepted field (ScriptArguments, CAPOConfig, GRPOConfig, ...).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``capo train`` on the ``capo`` sub-parsers and set its handler.

    The sub-parser takes the rest of the command line verbatim; :func:`capo_app.recipe.parse_recipe` (TrlParser over
    ``ScriptArguments`` and ``CAPOConfig``) parses it, so every config field is accepted as ``--field value``.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.

    Returns:
        The ``train`` sub-parser.
    """
    parser = subparsers.add_parser(
        "train",
        help="train with CAPOTrainer (no arguments: the tiny CPU demo)",
        add_help=False,
        prefix_chars="\x00",  # hand every option to TrlParser untouched
        usage=_USAGE,
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Handler of ``capo train``: parse the remaining arguments and run."""
    return main(list(args.train_args))


def _wants_dry_run(argv: Sequence[str]) -> bool:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(
        "--dry-run", "--dry_run", dest="dry_run", nargs="?", const="true", default=None
    )
    known, _ = pre.parse_known_args(list(argv))
    if known.dry_run is not None:
        return str(known.dry_run).lower() in ("true", "1", "yes", "y")
    from capo_app.recipe import layered_defaults

    return bool(layered_defaults(argv)[0].get("dry_run", False))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``capo train`` with the given arguments; returns the exit code."""
    argv = list(argv or [])
    # transformers 5 renames gradient_checkpointing; TRL 1.16 still sets it. Not the user's concern.
    warnings.filterwarnings(
        "ignore", message=r".*is deprecated and will be removed in v6", category=FutureWarning
    )
    if any(a in ("-h", "--help") for a in argv):
        print(_USAGE)
        return 0
    if "--help-all" in argv:
        from trl import TrlParser

        from capo.config import CAPOConfig

        TrlParser(cast(Any, (ScriptArguments, CAPOConfig)), prog="capo train").print_help()
        return 0
    try:
        if _wants_dry_run(argv):
            from capo_app.dry_run import dry_run

            return dry_run(argv)
        script_args, config, _ = parse_recipe(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"capo train: error: {error}", file=sys.stderr)
        return 2
    train(script_args, config)
    return 0


# --------------------------------------------------------------------------------------------------------------
# Building blocks (shared with capo_app.dry_run)


def reward_functions(names: Sequence[str]) -> list[Callable[..., Any]]:
    """Resolve reward names (``accuracy``, ``boxed_format``) to TRL reward functions."""
    from capo_app.rewards import accuracy_reward, boxed_format_reward

    table: dict[str, Callable[..., Any]] = {
        "accuracy": accuracy_reward,
        "boxed_format": boxed_format_reward,
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown reward functions {unknown}; choose from {sorted(table)}")
    return [table[n] for n in names]


def tiny_setup(script_args: ScriptArguments, config: CAPOConfig) -> Any:
    """The :class:`capo_app.tiny.TinySetup` for this run (task preset, warm-start steps, context length)."""
    from dataclasses import replace

    from capo_app.data import PRESETS
    from capo_app.tiny import TinySetup, WarmStartConfig

    if script_args.synthetic_task not in PRESETS:
        raise ValueError(
            f"synthetic_task must be one of {sorted(PRESETS)}, got {script_args.synthetic_task!r}"
        )
    setup = TinySetup(task=PRESETS[script_args.synthetic_task])
    if script_args.warm_start_steps is not None:
        warm = replace(setup.warm_start or WarmStartConfig(), steps=script_args.warm_start_steps)
        setup = replace(setup, warm_start=warm)
    return setup


def load_policy(
    script_args: ScriptArguments, config: CAPOConfig
) -> tuple[PreTrainedModel | str, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)``: the cached warm-started tiny model, or a hub id / folder for TRL to load."""
    if script_args.model_name_or_path == EMBEDDED_TINY:
        from capo_app.recipe import default_tiny_cache
        from capo_app.tiny import build_tiny_model

        setup = tiny_setup(script_args, config)
        folder = default_tiny_cache(script_args) / f"tiny-{setup.config_hash()}"
        model, tokenizer = build_tiny_model(folder, setup, progress=True)
        return model, tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        script_args.model_name_or_path, trust_remote_code=bool(config.trust_remote_code)
    )
    return script_args.model_name_or_path, tokenizer


def load_datasets(
    script_args: ScriptArguments, config: CAPOConfig, tokenizer: PreTrainedTokenizerBase | None
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Return ``(train, test)``: the synthetic task, or a hub / local dataset (test None if it has no such split)."""
    from capo_app.data import (
        MATH_PROMPT,
        PRESETS,
        TINY_PROMPT,
        load_math_dataset,
        make_arithmetic_dataset,
    )

    if script_args.dataset_name == SYNTHETIC:
        fmt = TINY_PROMPT if script_args.model_name_or_path == EMBEDDED_TINY else MATH_PROMPT
        task = PRESETS[script_args.synthetic_task]
        train = make_arithmetic_dataset(
            script_args.num_train_problems or 2000, "train", task, config.seed, fmt
        )
        test = make_arithmetic_dataset(
            script_args.num_test_problems, "test", task, config.seed, fmt
        )
    else:
        train = load_math_dataset(
            script_args.dataset_name,
            script_args.dataset_train_split,
            config_name=script_args.dataset_config,
            limit=script_args.num_train_problems,
        )
        test = None
        if script_args.eval_accuracy and script_args.num_test_problems > 0:
            try:
                test = load_math_dataset(
                    script_args.dataset_name,
                    script_args.dataset_test_split,
                    config_name=script_args.dataset_config,
                    limit=script_args.num_test_problems,
                )
            except (ValueError, KeyError, FileNotFoundError) as error:
                print(
                    f"capo train: no held-out split {script_args.dataset_test_split!r} ({error}); skipping accuracy"
                )
    if script_args.max_prompt_length is not None and tokenizer is not None:
        train = filter_long_prompts(train, tokenizer, script_args.max_prompt_length)
    return train, test


def filter_long_prompts(
    dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_tokens: int
) -> datasets.Dataset:
    """Drop rows whose rendered prompt is longer than ``max_tokens`` tokens (TRL 1.16 has no max_prompt_length)."""
    from capo_app.evaluation import render_prompts

    def short(row: dict[str, Any]) -> bool:
        text = render_prompts(tokenizer, [row["prompt"]])[0]
        return (
            len(tokenizer(text, add_special_tokens=isinstance(row["prompt"], str))["input_ids"])
            <= max_tokens
        )

    kept = dataset.filter(short, desc=f"prompts <= {max_tokens} tokens")
    if len(kept) < len(dataset):
        print(
            f"capo train: dropped {len(dataset) - len(kept)} of {len(dataset)} prompts longer than {max_tokens} tokens"
        )
    return kept


# --------------------------------------------------------------------------------------------------------------
# Callbacks


def _progress_callback_class() -> type[TrainerCallback]:
    from transformers.trainer_callback import ProgressCallback

    class CompactProgressCallback(ProgressCallback):
        """TRL's tqdm bar, with the headline metrics in the bar instead of one printed dict per step."""

        def on_log(
            self,
            args: Any,
            state: Any,
            control: Any,
            logs: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            if not state.is_world_process_zero or self.training_bar is None or not logs:
                return
            shown = {"reward": "reward", metrics.REJECTION_RATE: "rej", "loss": "loss"}
            postfix = {}
            for key, label in shown.items():
                value = logs.get(key)
                if isinstance(value, int | float) and math.isfinite(value):
                    postfix[label] = f"{value:.3g}"
            self.training_bar.set_postfix(postfix, refresh=False)

    return CompactProgressCallback


class _AccuracyTracker:
    """Greedy held-out accuracy at given steps, on the main process only; records ``{step, completions, accuracy}``."""

    def __init__(
        self,
        test: datasets.Dataset | None,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int,
        completions_per_step: int,
    ) -> None:
        self.test = test
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.completions_per_step = completions_per_step
        self.points: list[dict[str, Any]] = []

    def measure(self, model: Any, step: int, completions: int | None = None) -> float | None:
        if self.test is None or len(self.test) == 0:
            return None
        from capo_app.tiny import accuracy

        value = accuracy(
            model, self.tokenizer, self.test, max_new_tokens=self.max_new_tokens, temperature=0.0
        )
        if self.points and self.points[-1]["step"] == step:
            self.points.pop()
        done = completions if completions is not None else step * self.completions_per_step
        self.points.append({"step": step, "completions": done, "accuracy": value})
        return value


def _accuracy_callback(tracker: _AccuracyTracker, every: int, trainer: Any) -> TrainerCallback:
    from transformers import TrainerCallback

    class AccuracyCallback(TrainerCallback):
        """Measure held-out accuracy every ``every`` optimizer steps (main process)."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if every > 0 and state.global_step % every == 0 and state.global_step < state.max_steps:
                if state.is_world_process_zero:
                    model = trainer.accelerator.unwrap_model(trainer.model)
                    tracker.measure(model, state.global_step)

    return AccuracyCallback()


# --------------------------------------------------------------------------------------------------------------
# The run


def completions_per_step(config: CAPOConfig, num_processes: int) -> int:
    """Completions that enter one optimizer step: per-device batch × processes × accumulation steps."""
    return (
        int(config.per_device_train_batch_size)
        * num_processes
        * int(config.gradient_accumulation_steps)
    )


def run_description(script_args: ScriptArguments, config: CAPOConfig) -> dict[str, Any]:
    """The ``run`` section of the log: method, model, dataset, thresholds, and the resolved configuration."""
    method = effective_method(config)
    return {
        "method": method.key,
        "label": method.label,
        "title": f"{method.label} · {Path(script_args.model_name_or_path).name} · "
        f"{Path(script_args.dataset_name).name}",
        "model": script_args.model_name_or_path,
        "dataset": script_args.dataset_name,
        "capo_enabled": bool(config.capo_enabled),
        "capo_variant": config.capo_variant,
        "hessian_low": config.hessian_low if config.capo_enabled else None,
        "hessian_high": config.hessian_high if config.capo_enabled else None,
        "fisher_max": config.fisher_max if config.capo_enabled else None,
        "script_args": vars(script_args),
        "config": config.to_dict(),
    }


def train(script_args: ScriptArguments, config: CAPOConfig) -> dict[str, Any]:
    """Train, evaluate before/after, and write ``log.json``, the plots and the final model to ``output_dir``.

    Args:
        script_args: What to train on.
        config: How (``CAPOConfig``).

    Returns:
        The log object that was written (see :mod:`capo_app.report`).
    """
    from transformers import set_seed
    from transformers.trainer_callback import ProgressCallback

    from capo.trainer import CAPOTrainer
    from capo_app import report

    start = time.perf_counter()
    if script_args.cpu_threads is not None:
        import torch

        torch.set_num_threads(script_args.cpu_threads)
    set_seed(config.seed)
    model, tokenizer = load_policy(script_args, config)
    train_set, test_set = load_datasets(script_args, config, tokenizer)
    trainer = CAPOTrainer(
        model=model,
        reward_funcs=reward_functions(script_args.reward_funcs),
        args=config,
        train_dataset=train_set,
        processing_class=tokenizer,
    )
    if not config.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_progress_callback_class())
    per_step = completions_per_step(config, trainer.accelerator.num_processes)
    max_new = script_args.eval_max_new_tokens or int(config.max_completion_length or 256)
    tracker = _AccuracyTracker(
        test_set if script_args.eval_accuracy else None, tokenizer, max_new, per_step
    )
    if script_args.eval_every > 0:
        trainer.add_callback(_accuracy_callback(tracker, script_args.eval_every, trainer))
    main_process = trainer.accelerator.is_main_process
    if main_process:
        tracker.measure(trainer.accelerator.unwrap_model(trainer.model), 0, 0)
    trainer.train()
    history = report.history_from_log_history(trainer.state.log_history, per_step)
    if main_process:
        done = history[-1].get("completions") if history else None
        tracker.measure(
            trainer.accelerator.unwrap_model(trainer.model), trainer.state.global_step, done
        )
    trainer.save_model(config.output_dir)
    run = run_description(script_args, config)
    run["num_processes"] = trainer.accelerator.num_processes
    run["completions_per_step"] = per_step
    log: dict[str, Any] = {
        "summary": {},
        "run": run,
        "history": history,
        "test_accuracy": tracker.points,
    }
    log["summary"] = report.summarize(
        history, tracker.points, method=run["label"],
        wall_time_s=time.perf_counter() - start,
    )  # fmt: skip
    if main_process:
        out = Path(str(config.output_dir))
        report.write_log(out / "log.json", log)
        plots = report.plot_log(log, out) if script_args.plots else []
        print()
        print(report.format_summary_table(log["summary"]))
        print(f"log: {out / 'log.json'}")
        for path in plots:
            print(f"plot: {path}")
        print(f"model: {out} (capo eval --model {out} --benchmarks ...)")
    return log
