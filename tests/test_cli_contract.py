"""The command-line contract, table-driven from the fields themselves: bad input is one line, exit 2.

For every field of ``ScriptArguments`` and ``CAPOConfig`` the table holds a value of the wrong shape (a list
where a scalar goes, written in a YAML recipe), a wrong type for each number and switch, and a value outside
each :data:`capo_app.checks.RANGES` interval; for every typed option of ``capo eval``, ``python -m
verification`` and ``python -m reference``, a value argparse cannot convert or choose. Each must end in exactly
one ``<prog>: error:`` line on stderr naming the field, exit 2, no traceback, and no model loaded (the run is
replaced by one that fails the test).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import types
import typing

import pytest
import yaml

import capo_app.train
from capo.config import CAPOConfig
from capo_app.checks import RANGES
from capo_app.cli import build_parser
from capo_app.cli import main as capo_main
from capo_app.recipe import ScriptArguments
from reference.__main__ import main as reference_main
from verification.__main__ import main as verification_main

SCALARS = (bool, int, float, str, type(None))
SKIP = {"method", "dry_run", "output_dir"}  # resolved before the table's layer; tested on their own


def _members(hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(hint) for m in _members(a)]
    return [hint]


def _scalar_only(hint) -> bool:
    return all(
        m in SCALARS
        or typing.get_origin(m) is typing.Literal
        or (isinstance(m, type) and issubclass(m, enum.Enum))
        for m in _members(hint)
    )


def _bad_values():
    """``(id, field, value)``: one bad value per field and kind of badness, generated from the annotations."""
    cases = []
    for cls in (ScriptArguments, CAPOConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if not f.init or f.name in SKIP or not _scalar_only(hint):
                continue
            members = _members(hint)
            cases.append((f"{f.name}-shape", f.name, [1, 2]))
            if str not in members and any(m in (int, float) for m in members):
                cases.append((f"{f.name}-type", f.name, "abc"))
            if members == [bool] or set(members) == {bool, type(None)}:
                cases.append((f"{f.name}-switch", f.name, "maybe"))
    for name, (low, low_in, high, _high_in) in RANGES.items():
        if low is not None:
            cases.append((f"{name}-range-low", name, low if not low_in else low - 1))
        if high is not None:
            cases.append((f"{name}-range-high", name, high * 2 if high else 1))
    return cases


BAD = _bad_values()


@pytest.fixture
def no_run(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("validation let a bad value through to the run")

    monkeypatch.setattr(capo_app.train, "train", refuse)


def one_error_line(capsys, code, prog="capo"):
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err, captured.err
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"{prog}: error: "), line
    return line


def test_the_table_covers_every_kind_of_field():
    assert len(BAD) > 250
    kinds = {case_id.rsplit("-", 1)[-1] for case_id, _, _ in BAD}
    assert {"shape", "type", "switch", "low", "high"} <= kinds


@pytest.mark.parametrize(("field", "value"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_recipe_value_is_one_line_naming_the_field(tmp_path, capsys, no_run, field, value):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump({"bf16": False, field: value, "output_dir": str(tmp_path / "out")})
    )
    line = one_error_line(capsys, capo_main(["train", "--config", str(recipe)]))
    assert field in line


def _typed_options(parser: argparse.ArgumentParser):
    """``(option, bad value)`` for each option of the parser with a type or choices."""
    out = []
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        if action.choices is not None:
            out.append((action.option_strings[0], "no-such-choice"))
        elif action.type in (int, float):
            out.append((action.option_strings[0], "abc"))
    return out


def _subparser(name: str) -> argparse.ArgumentParser:
    subparsers = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    return subparsers.choices[name]


EVAL_OPTIONS = _typed_options(_subparser("eval"))


@pytest.mark.parametrize(("option", "value"), EVAL_OPTIONS, ids=[o for o, _ in EVAL_OPTIONS])
def test_a_bad_eval_option_is_one_line(tmp_path, capsys, option, value):
    argv = ["eval", "--model", str(tmp_path), "--benchmarks", "math500", option, value]
    assert option in one_error_line(capsys, capo_main(argv))


@pytest.mark.parametrize(
    "argv", [["--n-samples", "0"], ["--top-p", "0"], ["--temperature", "-1"], ["--limit", "0"]]
)
def test_an_eval_option_out_of_range_is_one_line(tmp_path, capsys, argv):
    args = ["eval", "--model", str(tmp_path), "--benchmarks", "math500", *argv]
    assert argv[0] in one_error_line(capsys, capo_main(args))


@pytest.mark.parametrize(
    "argv",
    [
        ["bogus", "--out", "x"],
        ["agreement"],
        ["agreement", "--out", __file__],
        ["theorems", "--bogus"],
    ],
)
def test_verification_bad_input_is_one_line(capsys, argv):
    one_error_line(capsys, verification_main(argv), "python -m verification")


def test_reference_bad_input_is_one_line(capsys):
    one_error_line(capsys, reference_main(["--bogus"]), "python -m reference")


def test_an_unexpected_exception_is_a_bug_with_its_traceback(capsys, monkeypatch):
    def broken(_args):
        raise KeyError("boom")

    parser = build_parser()
    monkeypatch.setattr("capo_app.cli.build_parser", lambda: parser)
    parser.set_defaults(handler=broken)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.choices["eval"].set_defaults(handler=broken)
    assert capo_main(["eval", "--model", "m", "--benchmarks", "math500"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'boom'" in err
    assert err.strip().splitlines()[-1].startswith("capo: internal error: this is a bug")
