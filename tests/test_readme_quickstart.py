"""The README's quickstart summary is what ``capo train`` with no arguments prints (the shipped tiny model
makes it the same on every machine); only the wall-time row is the machine's own.

Regenerate the README block from the command's output with one command:
``CAPO_UPDATE_README=1 python -m pytest tests/test_readme_quickstart.py`` (or ``nox -s readme_table``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from capo_app.cli import main as capo_main

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```\n(capo train: summary\n.*?)```\n", re.DOTALL)
MACHINE_ROWS = ("wall time",)


def _table(text: str) -> str:
    lines = text.strip().splitlines()
    start = lines.index("capo train: summary")
    end = next(i for i in range(start + 2, len(lines)) if set(lines[i]) == {"-"})
    return "\n".join(lines[start : end + 1]) + "\n"


def _comparable(table: str) -> list[str]:
    return [line for line in table.splitlines() if not line.startswith(MACHINE_ROWS)]


@pytest.mark.slow
def test_the_readme_quickstart_table_is_what_capo_train_prints(tmp_path, capsys):
    assert (
        capo_main(["train", "--output-dir", str(tmp_path / "out"), "--disable_tqdm", "true"]) == 0
    )
    printed = _table(capsys.readouterr().out)
    text = README.read_text()
    match = BLOCK.search(text)
    assert match is not None, "README has no ```capo train: summary``` block"
    if os.environ.get("CAPO_UPDATE_README"):
        README.write_text(text[: match.start(1)] + printed + text[match.end(1) :])
        return
    assert _comparable(match.group(1)) == _comparable(printed)
