"""Type and choice checks of a recipe's values, derived from the dataclass fields themselves.

A YAML recipe reaches the dataclasses without argparse's conversion (``max_steps: [1, 2]``, ``capo_enabled:
"maybe"``), so each resolved value is checked against its field's annotation (``int``, ``float | None``,
``list[str]``, an ``Enum`` or ``Literal``, ...) and its ``choices`` metadata, and converted where YAML wrote a
number or a switch as text (``learning_rate: 1e-4`` is a string to YAML). A new field is covered without new
code. A value that fits no part of its annotation is one ``ValueError`` line naming the field and the value.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import math
import types
import typing
from collections.abc import Iterable
from typing import Any

from capo_app.boundary import UsageError

_NO = object()
_TRUE = ("true", "yes", "y", "1", "on")
_FALSE = ("false", "no", "n", "0", "off")


def _convert(hint: Any, value: Any) -> Any:
    """``value`` as an instance of ``hint`` (converted from text where that is unambiguous), else ``_NO``."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return value
    if hint is type(None):
        return None if value is None else _NO
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        for member in members:  # an exact fit first: "1" stays a str for ``int | str``
            if member is not type(None) and _exact(member, value):
                return value
        for member in members:
            converted = _convert(member, value)
            if converted is not _NO:
                return converted
        return _NO
    if origin is typing.Literal:
        return value if value in typing.get_args(hint) else _NO
    if origin in (list, tuple, set, Iterable):
        if not isinstance(value, list | tuple):
            return _NO
        (item,) = typing.get_args(hint)[:1] or (Any,)
        items = [_convert(item, v) for v in value]
        return _NO if any(v is _NO for v in items) else items
    if origin is dict or hint is dict:
        return value if isinstance(value, dict) else _NO
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, str | int) else None
        return True if text in _TRUE else False if text in _FALSE else _NO
    if hint is int or hint is float:
        return _number(hint, value)
    if hint is str:
        return value if isinstance(value, str) else _NO
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        return value if isinstance(value, str | int) and value in [m.value for m in hint] else _NO
    if isinstance(hint, type):
        return value if isinstance(value, hint) else _NO
    return value  # an annotation this module does not model: left to the dataclass


def _number(kind: type, value: Any) -> Any:
    """``value`` as an int or a float (``kind``), or ``_NO``: a bool is no number, an int takes integral values only."""
    if isinstance(value, bool):
        return _NO
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            return _NO
    if isinstance(value, int) or (kind is float and isinstance(value, float)):
        return kind(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return _NO


def _exact(hint: Any, value: Any) -> bool:
    if hint is bool or hint is str:
        return type(value) is hint
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, float)
    return False


def describe(hint: Any) -> str:
    """The annotation in words for the error line: ``int``, ``float or None``, ``list of str``, ..."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(m) for m in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple, set):
        args = typing.get_args(hint)
        return f"a list of {describe(args[0])}" if args else "a list"
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    return getattr(hint, "__name__", str(hint))


def field_hints(classes: Iterable[type]) -> dict[str, tuple[Any, dataclasses.Field[Any]]]:
    """``{name: (annotation, field)}`` over the ``init`` fields of the dataclasses (later classes win)."""
    out: dict[str, tuple[Any, dataclasses.Field[Any]]] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                out[f.name] = (hints.get(f.name, Any), f)
    return out


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO


def _same(value: Any, default: Any) -> bool:
    return value is default or (type(value) is type(default) and value == default)


def checked_values(
    values: dict[str, Any], classes: Iterable[type], untouched: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``values`` with each field's value checked (and converted) against its annotation and choices.

    Args:
        values: ``{field: value}`` as resolved from the defaults, the recipe and the command line.
        classes: The dataclasses the values are for.
        untouched: The parser's own default of each field (a value nobody set is not checked).

    Returns:
        The values, converted where text stood for a number or a switch.

    Raises:
        ValueError: One line naming the first field whose value fits neither its annotation nor its choices.
    """
    out = dict(values)
    for name, (hint, f) in field_hints(classes).items():
        if name not in values:
            continue
        value = values[name]
        if _same(value, _default(f)) or (
            untouched is not None and _same(value, untouched.get(name, _NO))
        ):
            continue  # nobody set it
        converted = _convert(hint, value)
        if converted is _NO:
            raise ValueError(f"{name}: expected {describe(hint)}, got {value!r}")
        choices = f.metadata.get("choices")
        if choices is not None and converted is not None and converted not in list(choices):
            raise ValueError(
                f"{name}: expected one of {', '.join(map(str, choices))}, got {value!r}"
            )
        out[name] = converted
    return out


#: The range of each number a run or an evaluation takes: ``(low, low included, high, high included)``
#: (None: unbounded). ``None`` values are not checked (they mean "the default").
RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "learning_rate": (0, False, None, False),
    "temperature": (0, False, None, False),
    "top_p": (0, False, 1, True),
    "top_k": (0, True, None, False),
    "min_p": (0, True, 1, True),
    "repetition_penalty": (0, False, None, False),
    "beta": (0, True, None, False),
    "epsilon": (0, True, None, False),
    "epsilon_high": (0, True, None, False),
    "num_iterations": (1, True, None, False),
    "num_generations": (2, True, None, False),
    "steps_per_generation": (1, True, None, False),
    "generation_batch_size": (1, True, None, False),
    "delta": (0, False, None, False),
    "top_entropy_quantile": (0, True, 1, True),
    "entropy_coef": (0, True, None, False),
    "off_policy_mask_threshold": (0, False, None, False),
    "num_train_epochs": (0, False, None, False),
    "capo_support_size": (1, True, None, False),
    "capo_chunk_size": (1, True, None, False),
    "hessian_low": (None, False, None, False),
    "hessian_high": (None, False, None, False),
    "fisher_max": (0, False, None, False),
    "capo_kl_max_scale": (1, True, None, False),
    "per_device_train_batch_size": (1, True, None, False),
    "gradient_accumulation_steps": (1, True, None, False),
    "max_completion_length": (1, True, None, False),
    "warmup_steps": (0, True, None, False),
    "warmup_ratio": (0, True, 1, True),
    "weight_decay": (0, True, None, False),
    "max_grad_norm": (0, True, None, False),
    "logging_steps": (0, False, None, False),
    "seed": (0, True, 2**32 - 1, True),
    "capo_kl_budget": (0, False, None, False),
    "num_train_problems": (1, True, None, False),
    "num_test_problems": (0, True, None, False),
    "max_prompt_length": (1, True, None, False),
    "eval_every": (0, True, None, False),
    "eval_max_new_tokens": (1, True, None, False),
    "cpu_threads": (1, True, None, False),
    "warm_start_steps": (0, True, None, False),
    "expected_num_processes": (1, True, None, False),
    "completions_per_step": (1, True, None, False),
}


def _interval(low: float | None, low_in: bool, high: float | None, high_in: bool) -> str:
    if low is None and high is None:
        return "a finite number"
    if high is None:
        return f"{'>=' if low_in else '>'} {low}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def check_ranges(values: Any, names: Any = None, prefix: str = "") -> None:
    """Refuse a number outside its :data:`RANGES` interval (NaN and ±inf included), naming the field and value.

    Args:
        values: An object with the fields as attributes (a config, parsed arguments).
        names: The fields to check (default: every one of :data:`RANGES` the object has).
        prefix: Written before the name in the message (``--`` for ``capo eval``'s options).
    """
    for name in names if names is not None else RANGES:
        value = getattr(values, name, None)
        if value is None or name not in RANGES:
            continue
        low, low_in, high, high_in = RANGES[name]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (low is None or value > low or (low_in and value == low))
        ok = ok and (high is None or value < high or (high_in and value == high))
        if not ok:
            option = prefix + (name.replace("_", "-") if prefix else name)
            interval = _interval(low, low_in, high, high_in)
            if isinstance(value, float) and math.isinf(value) and low is not None:
                interval = f"finite and {interval}"
            raise UsageError(f"{option} must be {interval}, got {value}")


#: What needs an optional package: ``(import name, how to install it)``; ``report_to NAME`` for the trackers.
OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "deepspeed": ("deepspeed", "pip install 'capo-rl[deepspeed]'"),
    "use_vllm": ("vllm", "pip install 'capo-rl[vllm]'"),
    "--backend vllm": ("vllm", "pip install 'capo-rl[vllm]'"),
    "use_liger_kernel": ("liger_kernel", "pip install liger-kernel"),
    "report_to tensorboard": ("tensorboard", "pip install 'capo-rl[tensorboard]'"),
    "report_to wandb": ("wandb", "pip install 'capo-rl[wandb]'"),
    "report_to trackio": ("trackio", "pip install trackio"),
    "report_to mlflow": ("mlflow", "pip install mlflow"),
    "report_to comet_ml": ("comet_ml", "pip install comet_ml"),
    "report_to clearml": ("clearml", "pip install clearml"),
    "report_to swanlab": ("swanlab", "pip install swanlab"),
    "report_to dvclive": ("dvclive", "pip install dvclive"),
    "report_to neptune": ("neptune", "pip install neptune"),
    "report_to codecarbon": ("codecarbon", "pip install codecarbon"),
}


def check_packages(values: dict[str, Any]) -> None:
    """Refuse, in one line naming what to install, a value whose optional package is missing."""
    report_to = values.get("report_to")
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    keys = [k for k in ("deepspeed", "use_vllm", "use_liger_kernel") if values.get(k)]
    keys += [f"report_to {n}" for n in names if f"report_to {n}" in OPTIONAL_PACKAGES]
    for key in keys:
        require_package(key)


def require_package(key: str) -> None:
    """Refuse ``key`` (:data:`OPTIONAL_PACKAGES`) when its package is not installed."""
    package, install = OPTIONAL_PACKAGES[key]
    if importlib.util.find_spec(package) is None:
        raise UsageError(f"{key} needs the {package} package, which is not installed: {install}")
