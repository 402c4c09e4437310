"""The command line's input checks, in one place: each bad input becomes one :class:`UsageError` line.

The top-level handler (:func:`capo_app.cli.main`) prints ``capo: error: <line>`` and exits 2, so a user sees what
to change instead of a traceback. Nothing here imports a heavy library at module level.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from capo_app.boundary import UsageError
from capo_app.field_values import (
    OPTIONAL_PACKAGES,
    RANGES,
    check_packages,
    check_ranges,
    require_package,
)
from capo_app.recipe import EMBEDDED_TINY, default_tiny_cache

__all__ = [
    "OPTIONAL_PACKAGES",
    "RANGES",
    "UsageError",
    "check_packages",
    "check_ranges",
]  # re-exported: the checks raise and use them


#: Local data files ``capo train`` and ``capo eval`` read, by suffix, with the ``datasets`` builder for each.
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def check_writable_dir(folder: str | os.PathLike[str], option: str) -> None:
    """Refuse an output folder that cannot be created or written (a file in the way, a read-only parent)."""
    if not str(folder).strip():
        raise UsageError(f"{option} is empty: name a folder")
    path = Path(folder).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {folder}: exists and is not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {folder}: cannot be created ({existing} is not a folder)")
    try:  # a probe file tells what os.access cannot (root, read-only mounts, /proc)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UsageError(
            f"{option} {folder}: cannot be written ({existing}: {error.strerror})"
        ) from error


def check_data_file(name_or_path: str, option: str) -> None:
    """Refuse a local data file that is missing, of an unsupported type, unreadable or empty.

    A name that is no local path (a hub id) passes; a folder is read by ``datasets`` as a dataset folder.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return
    if not path.exists():
        if path.suffix.lower() in DATA_FILE_BUILDERS or looks_local(name_or_path):
            raise UsageError(f"{option} {name_or_path}: no such file")
        return  # a hub id
    if path.suffix.lower() not in DATA_FILE_BUILDERS:
        raise UsageError(
            f"{option} {name_or_path}: unsupported file type {path.suffix or '(none)'!r}; use one of "
            f"{', '.join(DATA_FILE_BUILDERS)}"
        )
    if path.stat().st_size == 0:
        raise UsageError(f"{option} {name_or_path}: the file is empty")
    if path.suffix.lower() in (".json", ".jsonl") and check_json_records(path) == 0:
        raise UsageError(f"{option} {name_or_path}: the file holds no record")


def check_positive(name: str, value: Any) -> None:
    """Refuse a value that is not a number > 0 (learning rate, batch size, token counts, ...)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UsageError(f"{name} must be > 0, got {value}")


def check_prompt_template(template: str) -> None:
    """Refuse a prompt template without the ``{question}`` field it is filled through."""
    if "{question}" not in template:
        raise UsageError(f"the prompt template must contain {{question}}, got {template!r}")


def looks_local(name_or_path: str) -> bool:
    """True when the string can only be a local path: a hub id is ``name`` or ``org/name``."""
    return (
        name_or_path.startswith(("/", ".", "~"))
        or name_or_path.count("/") > 1
        or "\\" in name_or_path
    )


def check_model_path(name_or_path: str, option: str) -> None:
    """Refuse a local model folder that does not exist or holds no ``config.json`` (a hub id passes).

    Args:
        name_or_path: A local folder or a hub id.
        option: The option that gave it, for the message.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"{option} {name_or_path}: not a saved model (no config.json in it)")
    elif looks_local(name_or_path):
        raise UsageError(f"{option} {name_or_path}: no such folder")


def check_json_records(path: str | os.PathLike[str]) -> int:
    """Refuse a JSON / JSON Lines file that does not parse, naming the file and the line; return its records.

    A ``.json`` file whose text starts with ``[`` is read as one JSON array; any other JSON file as JSON Lines
    (one object per non-blank line), as ``datasets`` reads them.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{file}: not UTF-8 text ({error.reason})") from error
    if file.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise UsageError(f"{file}:{error.lineno}: malformed JSON ({error.msg})") from error
        return len(records)
    count = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{file}:{number}: malformed JSON line ({error.msg})") from error
        if not isinstance(record, dict):
            raise UsageError(
                f"{file}:{number}: expected a JSON object, got {type(record).__name__}"
            )
        count += 1
    return count


def check_step_model(config: Any) -> None:
    """Refuse the Adam step model for an optimizer that is not Adam (``--optim sgd`` keeps ``"adam"``).

    ``capo_step_model "adam"`` predicts the step from Adam's moments, so it needs an Adam-family optimizer.
    ``"sgd"`` (Δ = lr · g) is exact for SGD and is the paper's first-order ablation (App. I) for any other
    optimizer, so it is always accepted. Checked only when the curvature model runs.
    """
    if not (config.capo_enabled or getattr(config, "capo_track_shifts", False)):
        return
    optim = str(getattr(config.optim, "value", config.optim))
    if config.capo_step_model == "adam" and "adam" not in optim.lower():
        raise UsageError(
            f"optim {optim!r} is not an Adam optimizer, so capo_step_model 'adam' would model a step it "
            "never takes: add --capo_step_model sgd (or use an Adam optimizer)"
        )


def check_training(script_args: Any, config: Any) -> None:
    """Refuse settings of ``capo train`` that would fail later or train something other than asked.

    Args:
        script_args: The run's ``ScriptArguments``.
        config: The run's ``CAPOConfig``.
    """
    if script_args.model_name_or_path != EMBEDDED_TINY:
        check_model_path(script_args.model_name_or_path, "model_name_or_path")
    check_ranges(config)
    check_ranges(script_args)
    if script_args.dataset_name != "synthetic":
        check_data_file(script_args.dataset_name, "dataset_name")
        source = script_args.dataset_test_split
        if Path(source).suffix.lower() in DATA_FILE_BUILDERS or looks_local(source):
            check_data_file(source, "dataset_test_split")
    check_packages(vars(config))
    check_writable_dir(str(config.output_dir), "output_dir")
    if script_args.tiny_cache_dir or os.environ.get(
        "CAPO_CACHE"
    ):  # a cache the user named must be usable
        option = "tiny_cache_dir" if script_args.tiny_cache_dir else "CAPO_CACHE"
        check_writable_dir(default_tiny_cache(script_args), option)
    if config.max_steps == 0 or config.max_steps < -1:
        raise UsageError(
            f"max_steps must be >= 1 (or -1 to train num_train_epochs), got {config.max_steps}"
        )
    if config.max_steps == -1:
        check_positive("num_train_epochs", config.num_train_epochs)
    if config.num_generations is not None and config.num_generations < 2:
        raise UsageError(
            f"num_generations must be >= 2 (advantages compare completions of one prompt), got "
            f"{config.num_generations}"
        )
    if config.capo_curvature_model and config.capo_support_size < 2:
        raise UsageError(
            f"capo_support_size {config.capo_support_size} keeps only the sampled token, so every m_H and "
            "m_F is 0 and CAPO masks nothing; use >= 2"
        )
    check_step_model(config)
    if not script_args.reward_funcs:
        raise UsageError("reward_funcs is empty; name at least one reward function")


def check_one_job(num_processes: int, environ: dict[str, str] | None = None) -> None:
    """Refuse a launch whose processes would each train alone (``torchrun`` on CPU without ``--use_cpu``).

    Args:
        num_processes: Processes the trainer's accelerator runs as.
        environ: The environment (default ``os.environ``); ``WORLD_SIZE`` is what the launcher started.
    """
    launched = int((environ if environ is not None else os.environ).get("WORLD_SIZE", "1"))
    if launched != num_processes:
        raise UsageError(
            f"launched as {launched} processes (WORLD_SIZE) but the trainer runs as {num_processes}, so "
            "each would train alone into the same folder; on CPU add --use_cpu true"
        )


def check_evaluation_sharding(evaluates: bool, model: Any) -> None:
    """Refuse held-out evaluation of a model DeepSpeed ZeRO-3 has sharded (its parameters carry ``ds_id``).

    The evaluation generates on the main process alone, from the whole model; under ZeRO-3 each rank holds a
    shard of every parameter.
    """
    if evaluates and any(hasattr(p, "ds_id") for p in model.parameters()):
        raise UsageError(
            "capo train's held-out evaluation generates on the main process from the whole model, which "
            "DeepSpeed ZeRO-3 shards across the ranks: pass --eval_accuracy false under ZeRO-3"
        )


def check_evaluation(args: Any) -> None:
    """Refuse ``capo eval`` options that would crash or score nothing (``--limit 0``, ``--n-samples 0``, ...)."""
    check_positive("--max-new-tokens", args.max_new_tokens)
    check_positive("--n-samples", args.n_samples)
    check_positive("--batch-size", args.batch_size)
    if args.limit is not None:
        check_positive("--limit", args.limit)
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if args.temperature == 0 and args.n_samples != 1:
        raise UsageError(
            "greedy decoding (--temperature 0) gives identical samples; use --n-samples 1 or a temperature > 0"
        )
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.prompt_template is not None:
        check_prompt_template(args.prompt_template)
    if args.plain and args.system_prompt is not None:
        raise UsageError("--system-prompt needs chat prompts; drop --plain")
    check_model_path(args.model, "--model")
    if args.backend == "vllm":
        require_package("--backend vllm")
    for benchmark in args.benchmarks:
        if Path(benchmark).exists() or Path(benchmark).suffix:
            check_data_file(benchmark, "--benchmarks")
