"""Datasets for CAPO: the synthetic arithmetic task, MATH-style loading, prompt formats, boxed answers."""

from __future__ import annotations

from capo_app.data.boxed import boxed_contents, last_boxed
from capo_app.data.loading import (
    DEFAULT_MATH_DATASET,
    gold_from_answer,
    load_dataset_arguments,
    load_math_dataset,
    standardize_math_dataset,
)
from capo_app.data.prompts import (
    BOXED_INSTRUCTION,
    MATH_PROMPT,
    TINY_CHAT_PROMPT,
    TINY_PROMPT,
    PromptFormat,
    completion_text,
    load_prompt_format,
    save_prompt_format,
)
from capo_app.data.synthetic import (
    EASY,
    HARD,
    MEDIUM,
    PRESETS,
    ArithmeticTask,
    Problem,
    generate_problems,
    is_test_question,
    make_arithmetic_dataset,
    solve,
)

__all__ = [
    "BOXED_INSTRUCTION",
    "DEFAULT_MATH_DATASET",
    "EASY",
    "HARD",
    "MATH_PROMPT",
    "MEDIUM",
    "PRESETS",
    "TINY_CHAT_PROMPT",
    "TINY_PROMPT",
    "ArithmeticTask",
    "Problem",
    "PromptFormat",
    "boxed_contents",
    "completion_text",
    "generate_problems",
    "gold_from_answer",
    "is_test_question",
    "last_boxed",
    "load_dataset_arguments",
    "load_math_dataset",
    "load_prompt_format",
    "make_arithmetic_dataset",
    "save_prompt_format",
    "solve",
    "standardize_math_dataset",
]
