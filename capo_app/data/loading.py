r"""Load a math dataset (hub name or local JSON/JSONL/Parquet/CSV file) into the synthetic task's columns.

The result always has ``prompt``, ``question``, ``answer`` (gold, str) and ``solution`` (str, empty when the
source has none). The gold answer comes from an answer column when there is one, otherwise from the last
``\boxed{}`` of the solution column (as in MATH). Hub names and local files take the same path; the only
difference is the arguments given to ``datasets.load_dataset`` (see :func:`load_dataset_arguments`).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import datasets
from datasets.exceptions import DatasetGenerationError

from capo_app.checks import DATA_FILE_BUILDERS, UsageError, check_json_records, looks_local
from capo_app.data.boxed import last_boxed
from capo_app.data.prompts import MATH_PROMPT, PromptFormat

#: The paper trains on the MATH training set (7,500 problems). This mirror has ``problem`` and ``solution``
#: columns (gold = last ``\boxed{}`` of the solution) in a single ``default`` config. Not downloaded here.
DEFAULT_MATH_DATASET = "DigitalLearningGmbH/MATH-lighteval"

QUESTION_COLUMNS = ("problem", "question", "Question", "query", "input")
ANSWER_COLUMNS = ("answer", "final_answer", "Answer", "gold", "target")
SOLUTION_COLUMNS = ("solution", "Solution", "reasoning")

AnswerFormat = Literal["auto", "plain", "boxed", "gsm8k"]

_FILE_BUILDERS = DATA_FILE_BUILDERS
_GSM8K_MARK = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def load_dataset_arguments(
    name_or_path: str | Path, split: str, config_name: str | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Return ``(args, kwargs)`` for ``datasets.load_dataset``: a local file or folder, else a hub name.

    Args:
        name_or_path: A local ``.json``/``.jsonl``/``.parquet``/``.csv`` file, a local dataset folder, or a hub
            dataset id.
        split: The split to load; a single local file is exposed under this split name.
        config_name: Hub configuration name (ignored for local files).

    Returns:
        The positional and keyword arguments.

    Raises:
        ValueError: If a local file has an unsupported suffix.
    """
    path = Path(name_or_path)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"unsupported file type {path.suffix!r} for {path}; use one of {sorted(_FILE_BUILDERS)}"
            )
        return (builder,), {"data_files": {split: str(path)}, "split": split}
    if path.is_dir():
        return (str(path),), {"split": split}
    args: tuple[Any, ...] = (
        (str(name_or_path),) if config_name is None else (str(name_or_path), config_name)
    )
    return args, {"split": split}


def load_raw(
    name_or_path: str | Path, split: str, config_name: str | None = None
) -> datasets.Dataset:
    """``datasets.load_dataset`` of a local file / folder or a hub name, as one split.

    Raises:
        UsageError: In one line, naming the file (and the line of a malformed JSON record), when the data
            cannot be read.
    """
    path = Path(name_or_path)
    if not path.exists() and (path.suffix.lower() in _FILE_BUILDERS or looks_local(str(path))):
        raise UsageError(f"{path}: no such file")
    if path.is_file() and path.suffix.lower() in (".json", ".jsonl"):
        check_json_records(path)
    args, kwargs = load_dataset_arguments(name_or_path, split, config_name)
    try:
        raw = datasets.load_dataset(*args, **kwargs)
    except (OSError, ValueError, DatasetGenerationError) as error:
        cause = error.__cause__ or error
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise UsageError(f"cannot read {name_or_path} [{split}]: {reason}") from error
    if not isinstance(raw, datasets.Dataset):
        raise UsageError(f"{name_or_path} [{split}] is not one split but a {type(raw).__name__}")
    return raw


def _pick(
    columns: Sequence[str], requested: str | None, candidates: Sequence[str], role: str
) -> str | None:
    if requested is not None:
        if requested not in columns:
            raise ValueError(
                f"{role} column {requested!r} not found; the dataset has columns {list(columns)}"
            )
        return requested
    return next((c for c in candidates if c in columns), None)


def gold_from_answer(value: Any, answer_format: AnswerFormat = "auto") -> str:
    r"""Normalise one gold answer cell to a string.

    Args:
        value: The cell: a string, a number, or a list (its first element is used, as in OlympiadBench).
        answer_format: ``"plain"`` keeps the text; ``"boxed"`` takes the last ``\boxed{}``; ``"gsm8k"`` takes
            the text after ``####``; ``"auto"`` does ``"boxed"`` when the text has a box, ``"gsm8k"`` when it
            has ``####``, else ``"plain"``.

    Returns:
        The gold answer text; empty when nothing can be extracted (the reward then skips the sample).
    """
    if isinstance(value, list | tuple):
        value = value[0] if value else ""
    text = "" if value is None else str(value).strip()
    if answer_format in ("boxed", "auto"):
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed
        if answer_format == "boxed":
            return ""
    if answer_format in ("gsm8k", "auto"):
        match = _GSM8K_MARK.search(text)
        if match is not None:
            return match.group(1).replace(",", "").strip()
        if answer_format == "gsm8k":
            return ""
    if text.startswith("$") and text.endswith("$") and len(text) > 1:
        text = text.strip("$").strip()
    return text


def check_local_columns(source: str) -> None:
    """Refuse a local benchmark or training file without a question or a gold column, reading only its head.

    ``capo eval`` calls it before any weights load; the same check runs again on the loaded dataset.
    """
    path = Path(source)
    suffix = path.suffix.lower()
    if not path.is_file() or suffix not in DATA_FILE_BUILDERS:
        return
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            columns = next(csv.reader(handle), [])
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        columns = list(pq.read_schema(path).names)
    else:
        columns = _first_json_keys(path)
    if columns:
        _source_columns(columns, None, None, None, source)


def _first_json_keys(path: Path) -> list[str]:
    """The keys of a JSON / JSON Lines file's first record (the file already parsed by check_json_records)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        records = json.loads(text)
        return list(records[0]) if records and isinstance(records[0], dict) else []
    first = next((line for line in text.splitlines() if line.strip()), None)
    record = json.loads(first) if first is not None else {}
    return list(record) if isinstance(record, dict) else []


def _source_columns(
    columns: list[str],
    question_column: str | None,
    answer_column: str | None,
    solution_column: str | None,
    source: str,
) -> tuple[str, str | None, str | None]:
    """The ``(question, answer, solution)`` columns of a dataset: the requested ones, else the first known names."""
    question_col = _pick(columns, question_column, QUESTION_COLUMNS, "question")
    answer_col = _pick(columns, answer_column, ANSWER_COLUMNS, "answer")
    solution_col = _pick(columns, solution_column, SOLUTION_COLUMNS, "solution")
    if question_col is None:
        raise UsageError(
            f"{source}: no question column: looked for {list(QUESTION_COLUMNS)} among the columns {columns}; rename the "
            "column that holds the problems to one of them"
        )
    if answer_col is None and solution_col is None:
        raise UsageError(
            f"{source}: no answer or solution column: looked for {list(ANSWER_COLUMNS)} and {list(SOLUTION_COLUMNS)} among "
            f"the columns {columns}; rename the gold-answer column to one of them"
        )
    return question_col, answer_col, solution_col


def standardize_math_dataset(
    dataset: datasets.Dataset,
    *,
    question_column: str | None = None,
    answer_column: str | None = None,
    solution_column: str | None = None,
    answer_format: AnswerFormat = "auto",
    prompt_format: PromptFormat = MATH_PROMPT,
    keep_columns: Sequence[str] = (),
    source: str = "the dataset",
) -> datasets.Dataset:
    r"""Map any question/answer dataset to the columns ``prompt``, ``question``, ``answer``, ``solution``.

    Args:
        dataset: The raw dataset.
        question_column: Column holding the problem text (default: the first of :data:`QUESTION_COLUMNS`).
        answer_column: Column holding the gold answer (default: the first of :data:`ANSWER_COLUMNS`, if any).
        solution_column: Column holding a worked solution (default: the first of :data:`SOLUTION_COLUMNS`).
            Without an answer column the gold is the last ``\boxed{}`` of this column.
        answer_format: How to read the answer column (see :func:`gold_from_answer`).
        prompt_format: How questions become prompts.
        keep_columns: Extra source columns to keep (e.g. ``"level"``, ``"type"``).
        source: Where the data came from, for the error messages.

    Returns:
        The standardised dataset.

    Raises:
        UsageError: If the question column, or both the answer and the solution column, are missing.
    """
    columns = list(dataset.column_names)
    question_col, answer_col, solution_col = _source_columns(
        columns, question_column, answer_column, solution_column, source
    )
    missing = [c for c in keep_columns if c not in columns]
    if missing:
        raise ValueError(f"keep_columns {missing} not found; the dataset has columns {columns}")

    def convert(example: dict[str, Any]) -> dict[str, Any]:
        question = str(example[question_col]).strip()
        solution = "" if solution_col is None else str(example[solution_col] or "")
        if answer_col is not None:
            answer = gold_from_answer(example[answer_col], answer_format)
        else:
            answer = last_boxed(solution) or ""
        return {
            "prompt": prompt_format.render(question),
            "question": question,
            "answer": answer,
            "solution": solution,
        }

    reserved = {"prompt", "question", "answer", "solution"}
    drop = [c for c in columns if c not in keep_columns or c in reserved]
    return dataset.map(convert, remove_columns=drop, desc="standardising math dataset")


def load_math_dataset(
    name_or_path: str | Path = DEFAULT_MATH_DATASET,
    split: str = "train",
    *,
    config_name: str | None = None,
    question_column: str | None = None,
    answer_column: str | None = None,
    solution_column: str | None = None,
    answer_format: AnswerFormat = "auto",
    prompt_format: PromptFormat = MATH_PROMPT,
    keep_columns: Sequence[str] = (),
    limit: int | None = None,
) -> datasets.Dataset:
    r"""Load a math dataset by hub name or from a local file, with the synthetic task's columns.

    The default is the MATH training set (:data:`DEFAULT_MATH_DATASET`), as in the paper; the gold answer is the
    last ``\boxed{}`` of its ``solution``. Local ``.json``, ``.jsonl``, ``.parquet`` and ``.csv`` files work the
    same way (see :func:`load_dataset_arguments`).

    Args:
        name_or_path: Hub dataset id, local file, or local dataset folder.
        split: Split to load.
        config_name: Hub configuration (e.g. ``"main"`` for GSM8K).
        question_column: See :func:`standardize_math_dataset`.
        answer_column: See :func:`standardize_math_dataset`.
        solution_column: See :func:`standardize_math_dataset`.
        answer_format: See :func:`gold_from_answer`.
        prompt_format: How questions become prompts (default: a user message with the boxed instruction).
        keep_columns: Extra source columns to keep.
        limit: Keep only the first ``limit`` rows.

    Returns:
        A dataset with columns ``prompt``, ``question``, ``answer``, ``solution`` (plus ``keep_columns``).
    """
    raw = load_raw(name_or_path, split, config_name)
    if limit is not None:
        raw = raw.select(range(min(limit, len(raw))))
    return standardize_math_dataset(
        raw,
        question_column=question_column,
        answer_column=answer_column,
        solution_column=solution_column,
        answer_format=answer_format,
        prompt_format=prompt_format,
        keep_columns=keep_columns,
        source=str(name_or_path),
    )
