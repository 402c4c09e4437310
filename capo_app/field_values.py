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
import types
import typing
from collections.abc import Iterable
from typing import Any

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
