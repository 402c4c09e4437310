"""Run folders are claimed, never trampled: a folder holding anything a run writes is refused, a foreign one is
never overwritten, and ``capo eval`` results accumulate by benchmark key."""

from __future__ import annotations

import argparse
import json

import pytest

from capo_app.checks import UsageError
from capo_app.data.prompts import (
    TINY_PROMPT,
    load_prompt_format,
    prompt_format_file,
    save_prompt_format,
)
from capo_app.evaluation.cli import output_dir
from capo_app.evaluation.pass_at_1 import BenchmarkResult, read_results, write_results
from capo_app.run_folder import claim_output_dir, holds_run


@pytest.mark.parametrize(
    "names",
    [
        ("pytorch_model.bin", "config.json"),
        ("adapter_model.safetensors",),
        ("config.json", "notes.md"),
    ],
)
def test_a_foreign_model_folder_is_refused_even_with_overwrite(tmp_path, names):
    for name in names:
        (tmp_path / name).write_text("x")
    assert holds_run(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="did not write"):
            claim_output_dir(tmp_path, overwrite=overwrite, resume=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)  # nothing removed


def test_a_folder_with_only_notes_is_free(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    claim_output_dir(tmp_path, overwrite=False, resume=False)
    assert (tmp_path / "notes.md").exists()


def _result(name, score):
    record = {
        "index": 0,
        "sample": 0,
        "question": "q",
        "gold": "1",
        "completion": "1",
        "reward": score,
    }
    return BenchmarkResult(name, score, 1, 1, 1, [record])


def _eval_args(tmp_path, *benchmarks, overwrite=False):
    for name in benchmarks:
        (tmp_path / f"{name}.jsonl").write_text('{"question": "1", "answer": "1"}\n')
    return argparse.Namespace(
        model=str(tmp_path / "model"),
        output=str(tmp_path / "eval"),
        benchmarks=[str(tmp_path / f"{n}.jsonl") for n in benchmarks],
        overwrite=overwrite,
    )


def test_eval_results_of_two_benchmarks_accumulate_and_overwrite_replaces_only_its_keys(tmp_path):
    folder = tmp_path / "eval"
    write_results([_result("a", 1.0)], folder, {"run": 1})
    assert output_dir(_eval_args(tmp_path, "b")) == folder  # another benchmark: allowed
    write_results([_result("b", 0.0)], folder, {"run": 2})
    with pytest.raises(UsageError, match="earlier evaluation of a;"):
        output_dir(_eval_args(tmp_path, "a"))
    output_dir(_eval_args(tmp_path, "a", overwrite=True))
    write_results([_result("a", 0.5)], folder, {"run": 3})
    saved = read_results(folder)
    assert {k: v["pass_at_1"] for k, v in saved["benchmarks"].items()} == {"a": 0.5, "b": 0.0}
    assert saved["benchmark_settings"] == {"a": {"run": 3}, "b": {"run": 2}}
    assert sorted((r["benchmark"], r["reward"]) for r in saved["records"]) == [
        ("a", 0.5),
        ("b", 0.0),
    ]


def test_a_results_file_of_another_kind_is_refused_not_overwritten(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval_results.json").write_text(json.dumps([1, 2]))
    with pytest.raises(UsageError, match="not a capo eval results file"):
        write_results([_result("a", 1.0)], tmp_path / "eval", {})


def test_a_checkpoint_folder_has_its_runs_prompt_format(tmp_path):
    save_prompt_format(TINY_PROMPT, tmp_path)
    (tmp_path / "checkpoint-4").mkdir()
    assert load_prompt_format(tmp_path / "checkpoint-4") == TINY_PROMPT
    assert (
        prompt_format_file(tmp_path / "checkpoint-4") == tmp_path / "capo_prompt.json"
    )  # as reported


@pytest.mark.parametrize("text", ["{bad", '{"template": 5}', '{"template": "no field"}', "[1]"])
def test_a_corrupt_prompt_file_is_one_usage_error(tmp_path, text):
    (tmp_path / "capo_prompt.json").write_text(text)
    with pytest.raises(UsageError, match=r"capo_prompt\.json"):
        load_prompt_format(tmp_path)


def test_a_new_template_keeps_a_plain_prompted_models_prompts_plain(tmp_path):
    """--prompt-template replaces the template only: a model trained on plain prompts stays plain (it switched to
    the chat template); --plain and --system-prompt still choose."""
    from capo_app.data.prompts import PromptFormat
    from capo_app.evaluation.cli import prompt_format

    save_prompt_format(PromptFormat(conversational=False, template="Q: {question}\nA:"), tmp_path)
    args = argparse.Namespace(
        model=str(tmp_path), prompt_template="{question} =", plain=False, system_prompt=None
    )
    fmt, _ = prompt_format(args)
    assert (fmt.conversational, fmt.template) == (False, "{question} =")
    fmt, _ = prompt_format(argparse.Namespace(**{**vars(args), "system_prompt": "Be brief."}))
    assert (fmt.conversational, fmt.system_prompt) == (True, "Be brief.")
