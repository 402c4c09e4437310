"""Recipes for ``capo train``: script arguments, the six method shortcuts, and layered parsing.

A recipe is a TrlParser-style YAML mapping whose keys are fields of :class:`ScriptArguments` (what to train on)
and of ``CAPOConfig`` (how: every ``GRPOConfig`` / ``TrainingArguments`` field plus the CAPO fields). Values are
resolved in layers, later layers winning::

    CAPOConfig defaults  <  embedded tiny default (only without --config)  <  method preset  <  YAML  <  CLI

where a ``--method`` given on the command line moves its preset above the YAML (``--config recipes/capo.yaml
--method grpo`` trains GRPO), while a ``method:`` key inside the YAML sits below the YAML's other keys (a recipe
may name a method and still override a threshold). No code is executed from a recipe.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NoReturn, cast

import yaml

from capo.methods import PRESETS, Method, method_of, normalize_method
from capo_app.field_values import check_packages, check_ranges, checked_values

if TYPE_CHECKING:
    from capo.config import CAPOConfig

EMBEDDED_TINY = "embedded-tiny"
SYNTHETIC = "synthetic"


#: ``capo train`` with no arguments: CAPO on the embedded tiny Qwen2 model and the synthetic arithmetic task, an
#: aggressive-style regime (large lr, small batch, cosine, 10% warm-up, β = 0) scaled to the tiny model so that
#: it finishes in a few minutes on two CPU cores. ``recipes/tiny_capo.yaml`` is the same recipe as a file.
TINY_DEFAULTS: dict[str, Any] = {
    "method": "capo",
    "model_name_or_path": EMBEDDED_TINY,
    "dataset_name": SYNTHETIC,
    "output_dir": "outputs/capo-tiny",
    "max_steps": 50,
    "learning_rate": 1e-4,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,
    "per_device_train_batch_size": 64,
    "gradient_accumulation_steps": 1,
    "num_generations": 8,
    "max_completion_length": 40,
    "temperature": 0.9,
    "beta": 0.0,
    "capo_support_size": 16,
    "capo_log_true_kl": True,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
    "bf16": False,
    "gradient_checkpointing": False,
    "dataloader_pin_memory": False,
    "seed": 0,
    "eval_every": 10,
    "cpu_threads": 1,
}


@dataclass
class ScriptArguments:
    """What ``capo train`` trains on; the rest of a recipe is ``CAPOConfig``.

    Attributes:
        method: Shortcut for the variant, masking switch and the paper's thresholds.
        model_name_or_path: Hub id, local folder, or ``embedded-tiny``.
        tiny_cache_dir: Cache of the warm-started tiny model.
        warm_start_steps: Supervised warm-start steps of the tiny model.
        dataset_name: ``synthetic``, a hub dataset id, or a local JSON/JSONL/Parquet/CSV file or folder.
        dataset_config: Hub configuration name.
        dataset_train_split: Training split.
        dataset_test_split: Held-out split (or local file) for the accuracy before/after.
        synthetic_task: Difficulty preset of the synthetic task.
        num_train_problems: Synthetic training problems, or a limit on a real training split.
        num_test_problems: Held-out problems for the accuracy evaluation.
        max_prompt_length: Drop training prompts longer than this many tokens.
        reward_funcs: Reward functions by name.
        eval_accuracy: Measure held-out accuracy before and after training.
        eval_every: Also measure it every this many optimizer steps (0: never).
        eval_max_new_tokens: Completion length of the evaluation.
        eval_samples: k, samples per held-out problem of the sampled accuracy (0: greedy only).
        expected_num_processes: Processes (GPUs) the recipe is written for.
        completions_per_step: The completions per optimizer step the recipe declares.
        plots: Write PNG plots.
        cpu_threads: torch intra-op threads on CPU.
        overwrite_output_dir: Replace the run an existing output folder holds.
        resume_without_capo_state: Resume from a named checkpoint that lacks the CAPO state.
        dry_run: Validate the recipe on a tiny stand-in model, then exit.
    """

    method: str | None = field(
        default=None,
        metadata={
            "help": "Shortcut: grpo, capo, dr_grpo, dr_capo, reinforce or reincapo (sets capo_variant, "
            "capo_enabled and the paper's thresholds)."
        },
    )
    model_name_or_path: str = field(
        default=EMBEDDED_TINY,
        metadata={
            "help": "Hub id or local folder of the policy; 'embedded-tiny' builds the offline tiny Qwen2."
        },
    )
    tiny_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the warm-started tiny model is cached (default: $CAPO_CACHE or ~/.cache/capo)."
        },
    )
    warm_start_steps: int | None = field(
        default=None,
        metadata={
            "help": "Supervised warm-start steps of the tiny model (default: capo_app.tiny's)."
        },
    )
    dataset_name: str = field(
        default=SYNTHETIC,
        metadata={
            "help": "'synthetic', a hub dataset id (e.g. MATH), or a local JSON/JSONL/Parquet/CSV file."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Hub dataset configuration name."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Training split."})
    dataset_test_split: str = field(
        default="test",
        metadata={
            "help": "Held-out split for the accuracy, or a local file; a single local training file has "
            "no other split, so without a file here no held-out accuracy is measured."
        },
    )
    synthetic_task: str = field(
        default="easy", metadata={"help": "Synthetic task difficulty: easy, medium or hard."}
    )
    num_train_problems: int | None = field(
        default=2000,
        metadata={
            "help": "Synthetic training problems, or the first N rows of a real split (None: all)."
        },
    )
    num_test_problems: int = field(
        default=200, metadata={"help": "Held-out problems for the accuracy."}
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Drop training prompts longer than this many tokens (TRL 1.16 has no such option)."
        },
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["accuracy"],
        metadata={"help": "Reward functions by name: accuracy (math-verify), boxed_format."},
    )
    eval_accuracy: bool = field(
        default=True,
        metadata={
            "help": "Measure held-out accuracy before and after training: sampled at the training "
            "temperature (eval_samples per problem, the primary score) and greedy pass@1 beside it."
        },
    )
    eval_every: int = field(
        default=0,
        metadata={"help": "Also measure it every N optimizer steps (0: only before/after)."},
    )
    eval_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Evaluation completion length (default: max_completion_length)."},
    )
    eval_samples: int = field(
        default=8,
        metadata={
            "help": "k: the held-out sampled accuracy (the primary score) is the mean over k samples per "
            "problem at the training temperature, with its Monte Carlo SE; greedy is measured beside it "
            "(0: greedy only)."
        },
    )
    expected_num_processes: int = field(
        default=1,
        metadata={"help": "Processes (GPUs) the recipe is written for; checked by --dry-run."},
    )
    completions_per_step: int | None = field(
        default=None,
        metadata={
            "help": "Completions per optimizer step the recipe intends; --dry-run checks the arithmetic."
        },
    )
    plots: bool = field(default=True, metadata={"help": "Write PNG plots to the output folder."})
    cpu_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch intra-op threads on CPU (None: torch's default). 1 suits tiny models."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace the run an existing output_dir holds (its model, log, plots, checkpoints and "
            "evaluations are removed first); without it such a folder is refused."
        },
    )
    resume_without_capo_state: bool = field(
        default=False,
        metadata={
            "help": "Resume from a --resume_from_checkpoint that lacks the CAPO state (a run killed while "
            "saving it): the CAPO moments restart from zero. Without it such a checkpoint is refused."
        },
    )
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "Parse the recipe, build the trainer on a tiny stand-in model, report, and exit."
        },
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is written twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    if not Path(path).is_file():
        raise ValueError(f"recipe {path}: no such file")
    with open(path) as handle:
        try:
            loaded = yaml.load(handle, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as error:
            raise ValueError(f"recipe {path}: {' '.join(str(error).split())}") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping, got {type(loaded).__name__}")
    env = loaded.pop("env", {})
    if not isinstance(env, dict):
        raise ValueError(f"'env' in {path} must be a mapping")
    for key, value in env.items():
        os.environ[str(key)] = str(value)
    return loaded


def check_method(method: str | None) -> str | None:
    """Return the registry key of ``method`` (see :func:`capo.methods.normalize_method`); None stays None."""
    return None if method is None else normalize_method(method)


def layered_defaults(argv: Sequence[str]) -> tuple[dict[str, Any], list[str], str | None]:
    """Resolve the default layers of a ``capo train`` command line (see the module docstring).

    Args:
        argv: The arguments after ``capo train``.

    Returns:
        ``(defaults, rest, config_path)``: the merged defaults for the parser, the arguments without
        ``--config PATH``, and the recipe path (None without one).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--method", default=None)
    known, _ = pre.parse_known_args(list(argv))
    rest = list(argv)
    if known.config is not None:
        index = rest.index("--config") if "--config" in rest else None
        if index is not None:
            del rest[index : index + 2]
        else:  # --config=PATH
            rest = [a for a in rest if not a.startswith("--config=")]
    base = {} if known.config is not None else dict(TINY_DEFAULTS)
    recipe = _read_yaml(known.config) if known.config is not None else {}
    if known.method is not None:
        method = check_method(known.method)
        assert method is not None
        defaults = {**base, **recipe, **PRESETS[method], "method": method}
    else:
        method = check_method(recipe.get("method", base.get("method")))
        preset = PRESETS[method] if method is not None else {}
        defaults = {**base, **preset, **recipe}
        if method is not None:
            defaults["method"] = method
    return defaults, rest, known.config


def recipe_parser() -> Any:
    """TRL's ``TrlParser`` over ``ScriptArguments`` and ``CAPOConfig`` (``capo train --help-all`` prints it)."""
    from trl import TrlParser  # TRL only when a recipe is parsed: `capo --help` stays fast

    from capo.config import CAPOConfig

    parser = TrlParser(cast(Any, (ScriptArguments, CAPOConfig)), prog="capo train")
    for (
        action
    ) in parser._actions:  # a literal % in a field's help would break argparse's formatting
        if action.help:
            action.help = re.sub(r"%(?!\()", "%%", action.help)
    parser.error = _parse_error  # type: ignore[method-assign]
    return parser


def _parse_error(message: str) -> NoReturn:
    """A command-line value argparse cannot convert: one line naming the option and the value."""
    raise ValueError(message)


def resolve_values(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Resolve every field of a ``capo train`` command line without building the dataclasses.

    Args:
        argv: The arguments after ``capo train``.

    Returns:
        ``{field: value}`` over ``ScriptArguments`` and ``CAPOConfig`` (no ``__post_init__`` has run, so no
        validation yet and the values are exactly as written).

    Raises:
        ValueError: On an unknown key in the recipe or an unknown method.
    """
    defaults, rest, config_path = layered_defaults(list(argv or []))
    parser = recipe_parser()
    untouched = {action.dest: action.default for action in parser._actions}
    unknown = parser.set_defaults_with_config(**defaults)
    if unknown:
        keys = sorted(k[2:] for k in unknown[::2])
        where = config_path or "the embedded default"
        raise ValueError(
            f"unknown keys in {where}: {keys} (not fields of ScriptArguments or CAPOConfig)"
        )
    from capo.config import CAPOConfig

    try:
        namespace, extra = parser.parse_known_args(args=_negative_values_joined(rest))
        values = checked_values(vars(namespace), (ScriptArguments, CAPOConfig), untouched)
    except ValueError as error:
        if config_path is None:
            raise
        raise ValueError(f"{error} (in {config_path} or on the command line)") from error
    if extra:
        raise ValueError(f"unknown arguments: {extra}")
    values["method"] = check_method(values.get("method"))
    return values


_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


def _negative_values_joined(argv: Sequence[str]) -> list[str]:
    """``--option -1e-3`` as ``--option=-1e-3``.

    Argparse takes a negative number in scientific notation for an option and says "expected one argument".
    """
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NUMBER.match(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def build_dataclasses(values: dict[str, Any]) -> tuple[ScriptArguments, CAPOConfig]:
    """Build ``(ScriptArguments, CAPOConfig)`` from resolved values (runs the configs' validation)."""
    from capo.config import CAPOConfig

    check_ranges(SimpleNamespace(**values))  # before the configs' own validation divides by a count
    check_packages(values)  # before TrainingArguments imports what a value names
    script_fields = {f.name for f in fields(ScriptArguments) if f.init}
    config_fields = {f.name for f in fields(CAPOConfig) if f.init}
    script_args = ScriptArguments(**{k: v for k, v in values.items() if k in script_fields})
    config = CAPOConfig(**{k: v for k, v in values.items() if k in config_fields})
    return script_args, config


def parse_recipe(
    argv: Sequence[str] | None = None, overrides: dict[str, Any] | None = None
) -> tuple[ScriptArguments, CAPOConfig, dict[str, Any]]:
    """Parse a ``capo train`` command line (and its ``--config`` recipe) into the two dataclasses.

    Args:
        argv: The arguments after ``capo train`` (``None``: none, i.e. the embedded tiny default).
        overrides: Values applied above every layer (``--dry-run`` swaps in CPU-safe settings this way).

    Returns:
        ``(script_args, config, values)``; ``values`` are the resolved fields before ``overrides``.

    Raises:
        ValueError: On an unknown key, an unknown method, or an invalid configuration.
    """
    values = resolve_values(argv)
    script_args, config = build_dataclasses({**values, **(overrides or {})})
    return script_args, config, values


def effective_method(config: Any) -> Method:
    """The method a configuration trains, from its variant and masking switch (not from ``--method``)."""
    return method_of(
        str(getattr(config, "capo_variant", "grpo")), bool(getattr(config, "capo_enabled", False))
    )


def default_tiny_cache(script_args: ScriptArguments) -> Path:
    """Return the tiny model's cache folder: ``tiny_cache_dir``, else ``$CAPO_CACHE/tiny``, else ``~/.cache/capo``."""
    if script_args.tiny_cache_dir:
        return Path(script_args.tiny_cache_dir)
    root = os.environ.get("CAPO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "capo")
    return Path(root) / "tiny"
