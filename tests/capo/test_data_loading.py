import json

import pandas as pd
import pytest

from capo_app.data import (
    PromptFormat,
    boxed_contents,
    last_boxed,
    load_dataset_arguments,
    load_math_dataset,
)

MATH_ROWS = [
    {"problem": "What is $1+1$?", "solution": "Add: $1+1=\\boxed{2}$.", "level": "Level 1"},
    {
        "problem": "Half of 1?",
        "solution": "It is \\boxed{\\frac{1}{2}}, not \\boxed{2}... so \\boxed{\\frac12}",
    },
]


def _write(rows, path):
    if path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


def test_last_boxed_handles_nesting_truncation_and_absence():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{3} then \\boxed{4") == "3"  # the unclosed box is ignored
    assert last_boxed("no box") is None
    assert boxed_contents("\\fbox{x} \\boxed {y}") == ["x", "y"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet"])
def test_local_file_gives_gold_from_the_last_box_of_the_solution(tmp_path, suffix):
    path = _write(
        [{k: v for k, v in r.items() if k != "level"} for r in MATH_ROWS], tmp_path / f"m{suffix}"
    )
    ds = load_math_dataset(path, split="train")
    assert set(ds.column_names) == {"prompt", "question", "answer", "solution"}
    assert ds["answer"] == ["2", "\\frac12"]
    assert ds["question"] == [r["problem"] for r in MATH_ROWS]
    assert ds[0]["prompt"][0]["role"] == "user" and "\\boxed{}" in ds[0]["prompt"][0]["content"]


def test_column_mapping_answer_formats_and_kept_columns(tmp_path):
    rows = [
        {"q": "Tom has 3 apples...", "a": "He has 3+4=7 apples.\n#### 1,007"},
        {"q": "Second", "a": "x\n#### -2"},
    ]
    path = _write(rows, tmp_path / "gsm.jsonl")
    plain = PromptFormat(conversational=False, template="Q: {question}\nA: ")
    ds = load_math_dataset(
        path,
        "test",
        question_column="q",
        answer_column="a",
        answer_format="gsm8k",
        prompt_format=plain,
    )
    assert ds["answer"] == ["1007", "-2"]
    assert ds[0]["prompt"] == "Q: Tom has 3 apples...\nA: "
    kept = load_math_dataset(_write(MATH_ROWS[:1], tmp_path / "k.json"), keep_columns=["level"])
    assert kept["level"] == ["Level 1"]


def test_answer_column_list_cells_use_the_first_element(tmp_path):
    path = _write([{"question": "q", "final_answer": ["$\\sqrt{2}$"]}], tmp_path / "o.parquet")
    assert load_math_dataset(path)["answer"] == ["\\sqrt{2}"]


def test_missing_columns_raise_clear_errors(tmp_path):
    path = _write(
        [{"text": "no question column", "solution": "\\boxed{1}"}], tmp_path / "bad.jsonl"
    )
    with pytest.raises(ValueError, match=r"no question column.*'text'"):
        load_math_dataset(path)
    with pytest.raises(ValueError, match="answer column 'gold' not found"):
        load_math_dataset(path, question_column="text", answer_column="gold")
    only_question = _write([{"question": "q"}], tmp_path / "q.jsonl")
    with pytest.raises(ValueError, match="no answer or solution column"):
        load_math_dataset(only_question)


def test_hub_names_and_local_files_differ_only_in_load_dataset_arguments(tmp_path):
    path = _write(MATH_ROWS, tmp_path / "m.jsonl")
    assert load_dataset_arguments("openai/gsm8k", "test", "main") == (
        ("openai/gsm8k", "main"),
        {"split": "test"},
    )
    assert load_dataset_arguments(path, "test") == (
        ("json",),
        {"data_files": {"test": str(path)}, "split": "test"},
    )
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_dataset_arguments(tmp_path / "m.txt", "train")
