"""``capo train --dry-run``: validate a recipe end to end on a tiny stand-in model, download nothing.

Steps: resolve the recipe (YAML + command line) and build ``CAPOConfig`` twice, as written and with CPU-safe
overrides (no bf16, no vLLM, no reporting, a temporary output folder); check the batch arithmetic against the
recipe's declared ``completions_per_step`` on ``expected_num_processes`` GPUs; build a stand-in model of the same
architecture family (from the model's config if it is on disk, else guessed from its name) with the offline tiny
tokenizer, a few synthetic prompts, the reward functions, and construct ``CAPOTrainer``. Prints one paragraph on
what the real run would do and returns 0; the problems found (the real run's own checks, :func:`preflight`,
on the recipe's real values) are one ``capo: error:`` line, exit 2.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM

from capo.trainer import CAPOTrainer
from capo_app.checks import UsageError
from capo_app.data import load_math_dataset, make_arithmetic_dataset
from capo_app.kl_budget_plan import budget_refusal, extra_memory_mib, model_shape
from capo_app.preflight import preflight
from capo_app.recipe import (
    EMBEDDED_TINY,
    SYNTHETIC,
    ScriptArguments,
    build_dataclasses,
    effective_method,
    resolve_values,
)
from capo_app.rewards import reward_functions
from capo_app.run import train_prompt_format
from capo_app.tiny import TinyModelConfig, build_tiny_tokenizer, init_tiny_model, tiny_setup

#: Settings swapped in for the stand-in trainer (CPU, no optional backends); the report uses the real ones.
CPU_OVERRIDES: dict[str, Any] = {
    "bf16": False,
    "fp16": False,
    "use_vllm": False,
    "report_to": "none",
    "push_to_hub": False,
    "model_init_kwargs": None,
    "torch_compile": False,
    "deepspeed": None,
    "dry_run": True,
}

_FAMILIES = (
    ("qwen3", "qwen3"),
    ("qwen", "qwen2"),
    ("llama", "llama"),
    ("mistral", "mistral"),
    ("gemma", "gemma2"),
)


def real_model_config(name_or_path: str) -> Any | None:
    """The model's ``PretrainedConfig`` if it is available offline (a local folder or the HF cache), else None."""
    try:
        return AutoConfig.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError, KeyError):
        return None


def model_family(name_or_path: str, config: Any | None) -> tuple[str, str]:
    """Return ``(model_type, how it was found)`` for the stand-in: the config's, else guessed from the name."""
    if config is not None and getattr(config, "model_type", None):
        return str(config.model_type), "from its config on disk"
    lowered = name_or_path.lower()
    for needle, family in _FAMILIES:
        if needle in lowered:
            return family, "guessed from the name"
    return "qwen2", "assumed (unknown name)"


def stand_in_model(model_type: str, tokenizer: Any, max_positions: int) -> tuple[Any, str]:
    """A 2-layer, 64-wide model of ``model_type`` on the tiny tokenizer's vocabulary (Qwen2 if that fails)."""
    try:
        config = AutoConfig.for_model(
            model_type,
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=max_positions,
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )
        model = AutoModelForCausalLM.from_config(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        return model, model_type
    except (ValueError, KeyError, TypeError, ImportError):
        size = TinyModelConfig(
            hidden_size=64, intermediate_size=128, max_position_embeddings=max_positions
        )
        return init_tiny_model(tokenizer, size), "qwen2"


def batch_arithmetic(values: dict[str, Any]) -> tuple[dict[str, int], list[str], list[str]]:
    """Completions per optimizer step on the recipe's ``expected_num_processes``, and the problems found.

    Args:
        values: The resolved recipe fields.

    Returns:
        ``(numbers, errors, notes)`` with numbers ``processes``, ``completions_per_step``, ``prompts_per_step``,
        ``generation_batch_size``, ``steps_per_generation``.
    """
    n = int(values.get("expected_num_processes") or 1)
    per_device = int(values["per_device_train_batch_size"])
    accumulation = int(values["gradient_accumulation_steps"])
    group = int(values.get("num_generations") or 8)
    per_step = per_device * n * accumulation
    errors: list[str] = []
    notes: list[str] = []
    global_micro = per_device * n
    generation = values.get("generation_batch_size")
    steps_per_generation = values.get("steps_per_generation")
    if generation is None:
        steps_per_generation = int(steps_per_generation or accumulation)
        generation = global_micro * steps_per_generation
    else:
        generation = int(generation)
        if generation % global_micro:
            errors.append(
                f"generation_batch_size {generation} is not a multiple of {per_device} x {n} processes"
            )
        steps_per_generation = max(1, generation // global_micro)
    if generation % group:
        errors.append(
            f"generation_batch_size {generation} is not a multiple of num_generations {group}"
        )
    if per_step % group:
        errors.append(
            f"{per_step} completions per step is not a multiple of num_generations {group}"
        )
    declared = values.get("completions_per_step")
    if declared is not None and int(declared) != per_step:
        errors.append(
            f"the recipe declares {declared} completions per step but per_device_train_batch_size {per_device} x "
            f"{n} processes x gradient_accumulation_steps {accumulation} = {per_step}"
        )
    if steps_per_generation != accumulation:
        notes.append(
            f"one generation round of {generation} completions spans {steps_per_generation / accumulation:g} "
            "optimizer steps (generation_batch_size differs from the completions per step)"
        )
    numbers = {
        "processes": n,
        "completions_per_step": per_step,
        "prompts_per_step": per_step // group if group else 0,
        "generation_batch_size": generation,
        "steps_per_generation": steps_per_generation,
    }
    return numbers, errors, notes


def _generation_backend(values: dict[str, Any]) -> str:
    if not values.get("use_vllm"):
        return "HF generate inside each training process"
    if values.get("vllm_mode") == "server":
        return (
            f"a vLLM server at {values.get('vllm_server_base_url') or values.get('vllm_server_host')}:"
            f"{values.get('vllm_server_port')} (start it with `trl vllm-serve --model {values['model_name_or_path']}`)"
        )
    return f"vLLM colocated on the training GPUs (gpu_memory_utilization {values.get('vllm_gpu_memory_utilization')})"


def _thresholds(values: dict[str, Any]) -> str:
    if not values.get("capo_enabled"):
        return "no curvature-aware masking (baseline)"
    return (
        f"{values.get('capo_granularity')}-level masking keeping m_H in ({values.get('hessian_low')}, "
        f"{values.get('hessian_high')}) and m_F < {values.get('fisher_max')}, {values.get('capo_step_model')} step "
        f"model, top-{values.get('capo_support_size')} support"
    )


@dataclass
class StandIn:
    """What the dry run built: the trainer class, the model family and how it was found, the data."""

    trainer: str
    family: str
    found: str
    dataset_note: str
    warmup: int


def _dataset_note(script_args: ScriptArguments) -> str:
    name = script_args.dataset_name
    if name == SYNTHETIC:
        return "the synthetic arithmetic task"
    if Path(name).exists():
        sample = load_math_dataset(name, script_args.dataset_train_split, limit=4)
        return f"local file {name} (columns check out on {len(sample)} rows)"
    return f"{name} [{script_args.dataset_train_split}] from the Hugging Face Hub"


def _stand_in(
    values: dict[str, Any], script_args: ScriptArguments, config: Any, errors: list[str]
) -> StandIn:
    """Build ``CAPOTrainer`` on a stand-in model of the recipe's family; append the problems found to ``errors``."""
    rewards = reward_functions(script_args.reward_funcs)
    model_name = script_args.model_name_or_path
    if model_name == EMBEDDED_TINY:
        tiny_setup(script_args.synthetic_task)  # validates the synthetic task preset
    real_config = None if model_name == EMBEDDED_TINY else real_model_config(model_name)
    looks_local = model_name.startswith((".", "/", "~")) or Path(model_name).exists()
    if looks_local and real_config is None:
        errors.append(f"model folder {model_name} has no readable config.json")
    family, found = (
        ("qwen2", "embedded")
        if model_name == EMBEDDED_TINY
        else model_family(model_name, real_config)
    )
    max_prompt, max_completion = _lengths(values)
    real_positions = getattr(real_config, "max_position_embeddings", None)
    if real_positions is not None and max_prompt + max_completion > int(real_positions):
        errors.append(
            f"prompt {max_prompt} + completion {max_completion} exceeds the model's {real_positions}"
        )
    tokenizer = build_tiny_tokenizer(model_max_length=max_prompt + max_completion)
    model, family = stand_in_model(family, tokenizer, max_prompt + max_completion)
    samples = make_arithmetic_dataset(
        16, "train", seed=0, prompt_format=train_prompt_format(script_args)
    )
    with (
        tempfile.TemporaryDirectory() as folder
    ):  # β > 0: TRL loads its reference model by this path
        model.save_pretrained(folder)
        model.config._name_or_path = folder
        trainer = CAPOTrainer(
            model=model,
            reward_funcs=rewards,
            args=config,
            train_dataset=samples,
            processing_class=tokenizer,
        )
    steps = int(values.get("max_steps") or -1)
    warmup = config.get_warmup_steps(steps) if steps > 0 else 0
    return StandIn(type(trainer).__name__, family, found, _dataset_note(script_args), warmup)


def _lengths(values: dict[str, Any]) -> tuple[int, int]:
    """``(max prompt, max completion)`` tokens of the recipe."""
    return int(values.get("max_prompt_length") or 512), int(
        values.get("max_completion_length") or 256
    )


def _processes(values: dict[str, Any], numbers: dict[str, int]) -> str:
    n = numbers["processes"]
    cpu = values.get("use_cpu") or values.get("model_name_or_path") == EMBEDDED_TINY
    return f"{n} {'CPU' if cpu else 'GPU'} process{'es' if n > 1 else ''}"


def _prompt_filter(values: dict[str, Any]) -> str:
    limit = values.get("max_prompt_length")
    return (
        "prompts of any length"
        if limit is None
        else f"prompts up to {limit} tokens (longer ones dropped)"
    )


def _paragraph(values: dict[str, Any], numbers: dict[str, int], built: StandIn, method: str) -> str:
    """The one paragraph on what the real run would do."""
    steps = int(values.get("max_steps") or -1)
    steps_text = f"{steps} optimizer steps" if steps > 0 else "one epoch"
    total = (
        f" ({steps * numbers['completions_per_step']:,} completions in all)" if steps > 0 else ""
    )
    max_completion = _lengths(values)[1]
    return (
        f"Dry run OK: {built.trainer} was built on a 2-layer {built.family} stand-in model with the offline tiny "
        f"tokenizer and 16 synthetic prompts; nothing was downloaded. The real run trains {method} "
        f"({values.get('capo_variant')} objective; {_thresholds(values)}) on {values['model_name_or_path']} "
        f"({built.family}, {built.found}) with {built.dataset_note}, on {_processes(values, numbers)}: "
        f"{values['per_device_train_batch_size']} per device x {numbers['processes']} x "
        f"{values['gradient_accumulation_steps']} accumulation = {numbers['completions_per_step']} completions "
        f"({numbers['prompts_per_step']} prompts x G {values.get('num_generations')}) per optimizer step, "
        f"{steps_text}{total}; lr {values['learning_rate']:g} with a {values.get('lr_scheduler_type')} schedule "
        f"and {built.warmup} warm-up step(s), beta {values.get('beta')}, temperature {values.get('temperature')}, "
        f"{_prompt_filter(values)} and completions up to {max_completion} tokens, "
        f"{precision(values)}; generation by {_generation_backend(values)}; "
        f"output in {values.get('output_dir')}."
    )


def _launch_line(argv: Sequence[str], processes: int) -> str:
    rest = " ".join(a for a in argv if a not in ("--dry-run", "--dry_run"))
    if processes > 1:
        return (
            "Launch: accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes "
            f"{processes} -m capo_app train {rest}"
        )
    return f"Launch: capo train {rest}"


def dry_run(argv: Sequence[str]) -> int:
    """Validate the recipe given by ``argv`` (the arguments after ``capo train``); see the module docstring.

    Args:
        argv: Command-line arguments (``--config``, overrides, ``--dry-run``).

    Returns:
        0 if the recipe is valid.

    Raises:
        UsageError: Listing the recipe's problems in one line (the configuration itself invalid included).
    """
    values = resolve_values(argv)
    numbers, errors, notes = batch_arithmetic(values)
    with tempfile.TemporaryDirectory(prefix="capo-dry-run-") as tmp:
        try:
            script_args, config = build_dataclasses({**values, **CPU_OVERRIDES, "output_dir": tmp})
        except ValueError as error:
            raise UsageError(f"invalid configuration: {error}") from error
        try:
            preflight(script_args, real_settings(config, values))  # the real run's own checks
        except UsageError as error:
            errors.append(str(error))
        kl_refusal = budget_refusal(values, numbers["processes"])
        if kl_refusal is not None:
            errors.append(kl_refusal)
        built = None if errors else _stand_in(values, script_args, config, errors)
    for note in notes:
        print(f"note: {note}")
    if errors or built is None:
        raise UsageError(
            f"the dry run found {len(errors)} problem(s), the recipe would not run as written: "
            + "; ".join(errors)
        )
    print(_paragraph(values, numbers, built, effective_method(config).label))
    if values.get("capo_kl_budget") is not None:
        print(_budget_memory_line(values, script_args.model_name_or_path))
    print(_launch_line(argv, numbers["processes"]))
    return 0


def _budget_memory_line(values: dict[str, Any], model_name: str) -> str:
    """The KL budget's projected extra memory per GPU (:mod:`capo_app.kl_budget_plan`)."""
    real = None if model_name == EMBEDDED_TINY else real_model_config(model_name)
    tiny = (TinyModelConfig().hidden_size, len(build_tiny_tokenizer()))
    shape = tiny if model_name == EMBEDDED_TINY else model_shape(model_name, real)
    if shape is None:
        return "KL budget: extra memory not projected (the model's config.json is not on disk)."
    dtype = str((values.get("model_init_kwargs") or {}).get("dtype", "float32"))
    per_rank = int(values["per_device_train_batch_size"]) * int(
        values.get("gradient_accumulation_steps") or 1
    )
    parts = extra_memory_mib(*shape, per_rank * _lengths(values)[1], 2 if "16" in dtype else 4)
    listed = ", ".join(f"{k} {v:,.0f} MiB" for k, v in parts.items())
    return (
        f"KL budget: projected extra memory per GPU {sum(parts.values()) / 1024:.1f} GiB ({listed}); "
        "no copy of the parameters."
    )


#: The settings the stand-in swaps out (:data:`CPU_OVERRIDES`) that the real run's checks must still see.
_CHECKED_AS_WRITTEN = ("output_dir", "report_to", "deepspeed", "use_vllm", "fp16", "bf16")


def real_settings(config: Any, values: dict[str, Any]) -> Any:
    """The stand-in's config with the recipe's own output folder, reporting, DeepSpeed, vLLM and precision."""
    real = copy.copy(config)
    for name in _CHECKED_AS_WRITTEN:
        if name in values:
            object.__setattr__(real, name, values[name])
    return real


def precision(values: dict[str, Any]) -> str:
    """The precision the real run trains in: TRL's ``bf16`` defaults to ``not fp16`` when unset."""
    if values.get("fp16"):
        return "fp16"
    if values.get("bf16") is None:
        return "bf16 (TRL's default when bf16 is not set; bf16: false trains in fp32)"
    return "bf16" if values.get("bf16") else "fp32"
