"""The paper's eight evaluation benchmarks by name (a light module: no datasets/transformers import).

NOTE: the hub ids, configs, splits and column names below are the ones we believe canonical; they are NOT
exercised here (no hub access on the build machine). Local files take the same code path
(:func:`capo_app.data.loading.load_dataset_arguments`), and are tested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from capo_app.checks import UsageError, looks_local

if TYPE_CHECKING:
    from capo_app.data.loading import AnswerFormat

_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives and how to read it.

    Attributes:
        name: Display name.
        path: Hub dataset id, or a local file / folder.
        split: Split to evaluate.
        config_name: Hub configuration, if any.
        question_column: Column with the problem text (None: auto-detect).
        answer_column: Column with the gold answer (None: auto-detect, else the last box of the solution).
        answer_format: How to read the answer column (see :func:`capo_app.data.loading.gold_from_answer`).
        choice_columns: For multiple choice (GPQA): the correct choice column first, then the distractors.
            Choices are shuffled with a seed per row and the gold becomes a letter.
    """

    name: str
    path: str
    split: str = "test"
    config_name: str | None = None
    question_column: str | None = None
    answer_column: str | None = None
    answer_format: AnswerFormat = "auto"
    choice_columns: tuple[str, ...] | None = None


# Hub locations believed canonical; not exercised in this repository's tests (no network).
BENCHMARKS: dict[str, Benchmark] = {
    "gsm8k": Benchmark("GSM8K", "openai/gsm8k", "test", "main", "question", "answer", "gsm8k"),
    "math500": Benchmark(
        "MATH500", "HuggingFaceH4/MATH-500", "test", None, "problem", "answer", "plain"
    ),
    "olympiadbench": Benchmark(
        "OlympiadBench",
        "Hothan/OlympiadBench",
        "train",
        "OE_TO_maths_en_COMP",
        "question",
        "final_answer",
    ),
    "minervamath": Benchmark(
        "MinervaMath", "math-ai/minervamath", "test", None, "question", "answer"
    ),
    "gpqadiamond": Benchmark(
        "GPQA:Diamond",
        "Idavidrein/gpqa",
        "train",
        "gpqa_diamond",
        "Question",
        choice_columns=(
            "Correct Answer",
            "Incorrect Answer 1",
            "Incorrect Answer 2",
            "Incorrect Answer 3",
        ),
    ),
    "amc23": Benchmark("AMC23", "math-ai/amc23", "test", None, "question", "answer"),
    "aime24": Benchmark(
        "AIME24", "HuggingFaceH4/aime_2024", "train", None, "problem", "answer", "plain"
    ),
    "aime25": Benchmark("AIME25", "math-ai/aime25", "test", None, "problem", "answer", "plain"),
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def resolve_benchmark(name_or_path: str) -> Benchmark:
    """Return the registered benchmark for a name (case and punctuation ignored), or a local file's entry.

    Args:
        name_or_path: ``"GSM8K"``, ``"gpqa:diamond"``, ... or a path to a local JSON/JSONL/Parquet/CSV file
            or dataset folder (evaluated on its only split; columns auto-detected).

    Returns:
        The benchmark description.

    Raises:
        UsageError: If it is neither a known name nor an existing path (a missing file is named as such).
    """
    path = Path(name_or_path)
    if path.exists():
        return Benchmark(name=path.stem, path=str(path), split="test")
    key = _key(name_or_path)
    if key in BENCHMARKS:
        return BENCHMARKS[key]
    if path.suffix.lower() in _FILE_SUFFIXES or looks_local(name_or_path):
        raise UsageError(f"benchmark file {name_or_path}: no such file")
    names = ", ".join(b.name for b in BENCHMARKS.values())
    raise UsageError(f"unknown benchmark {name_or_path!r}: use one of {names}, or a local file")


def unique_names(benchmarks: list[Benchmark]) -> list[str]:
    """A distinct result key per benchmark: its name, or its path where two share a name.

    Raises:
        UsageError: When the same benchmark is listed twice.
    """
    paths = [(b.path, b.split, b.config_name) for b in benchmarks]
    twice = sorted({b.name for b, p in zip(benchmarks, paths, strict=True) if paths.count(p) > 1})
    if twice:
        raise UsageError(f"benchmark {', '.join(twice)} is listed twice")
    names = [b.name for b in benchmarks]
    return [b.name if names.count(b.name) == 1 else b.path for b in benchmarks]
