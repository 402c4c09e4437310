"""What `capo train` / `capo eval` report is the run's own: held-out data, labels, result keys, run folders."""

import argparse
import json

import pytest
import torch

from capo_app.checks import UsageError, check_evaluation_sharding, check_one_job, check_step_model
from capo_app.cli import main as capo_main
from capo_app.data import MATH_PROMPT, TINY_PROMPT, load_prompt_format, save_prompt_format
from capo_app.evaluation.cli import prompt_format
from capo_app.recipe import ScriptArguments, parse_recipe
from capo_app.run import load_test_set, run_description
from capo_app.run_folder import claim_output_dir, record_run_files
from tests.capo._tiny_model import warm_tiny_dir


def jsonl(path, n=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"question": f"{i}+1", "answer": str(i + 1)}) + "\n" for i in range(n))
    )
    return path


def test_a_single_local_file_has_no_held_out_split_unless_one_is_given(tmp_path, capsys):
    _, config, _ = parse_recipe([])
    train = jsonl(tmp_path / "train.jsonl")
    args = ScriptArguments(dataset_name=str(train), dataset_test_split="no_such_split")
    assert load_test_set(args, config, MATH_PROMPT) is None
    assert "held-out accuracy is not measured" in capsys.readouterr().out
    args.dataset_test_split = str(jsonl(tmp_path / "test.jsonl", n=2))
    assert load_test_set(args, config, MATH_PROMPT)["question"] == ["0+1", "1+1"]


@pytest.mark.parametrize(
    ("argv", "label", "masking"),
    [
        (["--capo_enabled", "false"], "GRPO", False),
        (["--method", "grpo", "--capo_enabled", "true"], "CAPO", True),
        (["--method", "reinforce", "--capo_enabled", "true"], "ReinCAPO", True),
    ],
)
def test_labels_come_from_the_effective_configuration_not_from_method(argv, label, masking):
    script_args, config, _ = parse_recipe(argv)
    run = run_description(script_args, config)
    assert run["label"] == label and run["title"].startswith(f"{label} ·")
    assert (run["fisher_max"] is not None) == masking


def test_the_adam_step_model_needs_an_adam_optimizer_and_the_sgd_model_fits_any():
    def config(optim, step_model, enabled=True):
        return argparse.Namespace(optim=optim, capo_step_model=step_model, capo_enabled=enabled)

    with pytest.raises(UsageError, match="--capo_step_model sgd"):
        check_step_model(config("sgd", "adam"))
    with pytest.raises(UsageError, match="not an Adam optimizer"):
        check_step_model(config("adafactor", "adam"))
    for ok in (config("sgd", "sgd"), config("adamw_torch", "sgd"), config("adamw_torch_fused", "adam"),
               config("sgd", "adam", enabled=False)):  # fmt: skip
        check_step_model(ok)


def test_a_launch_whose_processes_would_each_train_alone_is_refused():
    with pytest.raises(UsageError, match=r"launched as 2 processes .* runs as 1"):
        check_one_job(1, {"WORLD_SIZE": "2"})
    check_one_job(2, {"WORLD_SIZE": "2"})
    check_one_job(1, {})


def test_overwriting_a_run_folder_removes_that_runs_artefacts_and_nothing_else(tmp_path):
    """Exactly the files the run recorded go; a user's notes beside it stay; a user's file inside the run's
    folders is refused in one line, never removed."""
    (tmp_path / "notes.txt").write_text("x")
    claim_output_dir(tmp_path, overwrite=False, resume=False)  # the run claims the folder
    for name in ("log.json", "curvature.png", "model.safetensors", "config.json", "capo_prompt.json",
                 "README.md", "checkpoint-2/model.safetensors", "capo_eval/eval_results.json"):  # fmt: skip
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    record_run_files(tmp_path)  # the run ends
    with pytest.raises(UsageError, match="holds another run"):
        claim_output_dir(tmp_path, overwrite=False, resume=False)
    claim_output_dir(tmp_path, overwrite=False, resume=True)
    assert (
        len(list(tmp_path.rglob("*"))) == 12
    )  # resuming keeps all: 8 files, 2 folders, notes, record
    mine = tmp_path / "checkpoint-2" / "mine.txt"
    mine.write_text("a user's file in the run's folder: TRL's checkpoint rotation would delete it")
    with pytest.raises(UsageError, match=r"did not write \(checkpoint-2/mine.txt"):
        claim_output_dir(tmp_path, overwrite=True, resume=False)
    mine.unlink()
    claim_output_dir(tmp_path, overwrite=True, resume=False)
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert left == ["capo_run_files.json", "notes.txt"]  # the new run's claim, and the user's notes


@pytest.mark.parametrize("name", ["README.md", "log.json", "capo_prompt.json"])
def test_a_users_file_with_a_run_files_name_is_never_taken_for_a_run(tmp_path, name):
    """A README.md, log.json or capo_prompt.json no run of ours wrote is refused, overwrite or not."""
    (tmp_path / name).write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="did not write"):
            claim_output_dir(tmp_path, overwrite=overwrite, resume=False)
    assert (tmp_path / name).read_text() == "mine"


def test_eval_prompts_a_trained_model_as_its_folder_says(tmp_path):
    save_prompt_format(TINY_PROMPT, tmp_path)
    assert load_prompt_format(tmp_path) == TINY_PROMPT
    args = argparse.Namespace(
        model=str(tmp_path), prompt_template=None, plain=False, system_prompt=None
    )
    fmt, source = prompt_format(args)
    assert fmt == TINY_PROMPT and source.startswith("as trained")
    args.prompt_template = "{question} ="
    assert prompt_format(args)[0].template == "{question} ="  # an explicit template wins


def test_eval_keys_results_uniquely_and_never_overwrites_them(tmp_path, capsys):
    a, b = jsonl(tmp_path / "a" / "test.jsonl"), jsonl(tmp_path / "b" / "test.jsonl")
    out = tmp_path / "out"
    argv = ["eval", "--model", str(warm_tiny_dir()), "--benchmarks", str(a), str(b), "--limit", "2",
            "--max-new-tokens", "8", "--output", str(out), "--no-progress"]  # fmt: skip
    assert capo_main(argv) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results["benchmarks"]) == {str(a), str(b)}
    assert {r["benchmark"] for r in results["records"]} == {str(a), str(b)}
    capsys.readouterr()
    assert capo_main(argv) == 2
    assert "holds an earlier evaluation" in capsys.readouterr().err
    assert capo_main([*argv, "--overwrite"]) == 0
    assert capo_main([*argv[:4], str(a), str(a), *argv[6:], "--overwrite"]) == 2
    assert "listed twice" in capsys.readouterr().err


def test_eval_writes_into_the_model_folder_by_default(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for item in warm_tiny_dir().iterdir():
        (model / item.name).write_bytes(item.read_bytes())
    argv = ["eval", "--model", str(model), "--benchmarks", str(jsonl(tmp_path / "t.jsonl")), "--limit", "1",
            "--max-new-tokens", "4", "--no-progress"]  # fmt: skip
    assert capo_main(argv) == 0
    assert (model / "capo_eval" / "eval_results.json").is_file()


def test_held_out_evaluation_of_a_zero3_sharded_model_is_refused_in_one_line():
    """Generation on the main process needs the whole model; a ZeRO-3 parameter (ds_id) is only a shard."""
    model = torch.nn.Linear(2, 2)
    check_evaluation_sharding(True, model)  # whole: fine
    model.weight.ds_id = 0
    check_evaluation_sharding(False, model)  # no evaluation: fine
    with pytest.raises(UsageError, match="--eval_accuracy false under ZeRO-3"):
        check_evaluation_sharding(True, model)
