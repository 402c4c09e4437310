"""Load a benchmark (registered name or local file) with the standard columns."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import datasets

from capo_app.data.loading import load_raw, standardize_math_dataset
from capo_app.data.prompts import BOXED_INSTRUCTION, MATH_PROMPT, PromptFormat
from capo_app.evaluation.registry import Benchmark

_LETTERS = "ABCD"
CHOICE_INSTRUCTION = (
    "Please reason step by step, and put the letter of your final choice within \\boxed{}."
)


def _as_multiple_choice(raw: datasets.Dataset, benchmark: Benchmark, seed: int) -> datasets.Dataset:
    assert benchmark.choice_columns is not None
    question_col = benchmark.question_column or "Question"
    correct, *wrong = benchmark.choice_columns

    def convert(example: dict[str, Any], index: int) -> dict[str, str]:
        options = [str(example[correct]).strip()] + [str(example[c]).strip() for c in wrong]
        order = list(range(len(options)))
        random.Random(f"{seed}:{index}").shuffle(order)
        lines = [f"{_LETTERS[i]}) {options[j]}" for i, j in enumerate(order)]
        return {
            "mc_question": str(example[question_col]).strip() + "\n\n" + "\n".join(lines),
            "mc_answer": _LETTERS[order.index(0)],
        }

    return raw.map(convert, with_indices=True, remove_columns=raw.column_names)


def load_benchmark(
    benchmark: Benchmark,
    prompt_format: PromptFormat = MATH_PROMPT,
    limit: int | None = None,
    seed: int = 0,
) -> datasets.Dataset:
    """Load a benchmark with columns ``prompt``, ``question``, ``answer`` and ``solution``.

    Args:
        benchmark: What to load (see :func:`resolve_benchmark`).
        prompt_format: How questions become prompts. For multiple-choice benchmarks using the default
            instruction, the instruction asks for the letter of the choice.
        limit: Keep only the first ``limit`` problems.
        seed: Seed for shuffling multiple-choice options.

    Returns:
        The standardised dataset.
    """
    raw = load_raw(benchmark.path, benchmark.split, benchmark.config_name)
    if limit is not None:
        raw = raw.select(range(min(limit, len(raw))))
    if benchmark.choice_columns is not None:
        raw = _as_multiple_choice(raw, benchmark, seed)
        if BOXED_INSTRUCTION in prompt_format.template:
            prompt_format = replace(
                prompt_format,
                template=prompt_format.template.replace(BOXED_INSTRUCTION, CHOICE_INSTRUCTION),
            )
        return standardize_math_dataset(
            raw,
            question_column="mc_question",
            answer_column="mc_answer",
            answer_format="plain",
            prompt_format=prompt_format,
            source=benchmark.path,
        )
    return standardize_math_dataset(
        raw,
        question_column=benchmark.question_column,
        answer_column=benchmark.answer_column,
        answer_format=benchmark.answer_format,
        prompt_format=prompt_format,
        source=benchmark.path,
    )
