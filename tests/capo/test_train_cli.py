import json
import subprocess
import sys

import pytest
import yaml

from capo.config import CAPO_VARIANTS
from capo.methods import PAPER_THRESHOLDS
from capo.methods import PRESETS as METHODS
from capo_app.cli import main as capo_main
from capo_app.data import make_arithmetic_dataset
from capo_app.recipe import TINY_DEFAULTS, check_method, parse_recipe

# method -> (variant, masking on, key of the paper's thresholds)
EXPECTED = {
    "grpo": ("grpo", False, None),
    "capo": ("grpo", True, "capo"),
    "dr_grpo": ("dr_grpo", False, None),
    "dr_capo": ("dr_grpo", True, "dr_capo"),
    "reinforce": ("reinforce", False, None),
    "reincapo": ("reinforce", True, "reincapo"),
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_method_shortcut_sets_variant_masking_thresholds_and_trl_loss(method):
    script_args, config, _ = parse_recipe(["--method", method])
    variant, enabled, key = EXPECTED[method]
    assert script_args.method == method
    assert (config.capo_variant, config.capo_enabled) == (variant, enabled)
    assert (config.loss_type, config.scale_rewards) == CAPO_VARIANTS[variant]
    if key is not None:
        t = PAPER_THRESHOLDS[key]
        assert (config.hessian_low, config.hessian_high, config.fisher_max) == (
            t.hessian_low,
            t.hessian_high,
            t.fisher_max,
        )


def test_method_names_are_normalised_and_unknown_ones_rejected():
    assert check_method("Dr-CAPO") == "dr_capo" and check_method("rein_capo") == "reincapo"
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        check_method("ppo")
    assert set(METHODS) == set(EXPECTED)


def test_no_arguments_gives_the_embedded_tiny_default():
    script_args, config, values = parse_recipe([])
    assert (script_args.model_name_or_path, script_args.dataset_name) == (
        "embedded-tiny",
        "synthetic",
    )
    assert (config.output_dir, config.capo_enabled, config.learning_rate) == (
        "outputs/capo-tiny",
        True,
        TINY_DEFAULTS["learning_rate"],
    )
    for key, value in TINY_DEFAULTS.items():
        assert values[key] == value, key


def test_short_options_override_the_default():
    _, config, _ = parse_recipe(["--max-steps", "3", "--seed", "7", "--output-dir", "/tmp/x"])
    assert (config.max_steps, config.seed, config.output_dir) == (3, 7, "/tmp/x")
    _, config, _ = parse_recipe(["--learning_rate", "1e-3", "--num-generations", "4"])
    assert (config.learning_rate, config.num_generations) == (1e-3, 4)


def test_cli_method_beats_the_recipe_and_recipe_keys_beat_its_own_method(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {"method": "capo", "fisher_max": 3e-4, "per_device_train_batch_size": 16, "bf16": False}
        )
    )
    _, config, _ = parse_recipe(["--config", str(path)])
    assert config.capo_enabled and config.fisher_max == 3e-4 and config.hessian_high == 1e-2
    _, config, _ = parse_recipe(["--config", str(path), "--method", "dr_grpo"])
    assert (config.capo_variant, config.capo_enabled, config.per_device_train_batch_size) == (
        "dr_grpo",
        False,
        16,
    )
    # A recipe replaces the embedded default: fields it leaves out keep CAPOConfig's defaults.
    assert config.output_dir != TINY_DEFAULTS["output_dir"]


def test_capo_help_lists_train_and_train_help_exits_cleanly(capsys):
    assert capo_main(["train", "--help"]) == 0
    assert "--dry-run" in capsys.readouterr().out
    out = subprocess.run(
        [sys.executable, "-m", "capo_app", "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in out.stdout and "eval" in out.stdout


@pytest.mark.slow
def test_short_run_records_every_step_and_capo_eval_prompts_the_model_as_trained(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "--max-steps", "3", "--logging_steps", "2", "--output-dir", str(out), "--seed", "1",
        "--per_device_train_batch_size", "8", "--num_generations", "4", "--max_completion_length", "16",
        "--num_train_problems", "32", "--num_test_problems", "8", "--eval_every", "1",
        "--warm_start_steps", "0", "--tiny_cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true",
    ]  # fmt: skip
    assert capo_main(["train", *args]) == 0
    printed = capsys.readouterr().out
    assert "capo train: summary" in printed and "test accuracy, greedy before" in printed
    log = json.loads((out / "log.json").read_text())
    assert set(log) >= {"summary", "run", "history", "test_accuracy"}
    # logging_steps 2 does not merge steps: one record per optimizer step, counts per step.
    assert [r["step"] for r in log["history"]] == [1, 2, 3]
    assert [r["completions"] for r in log["history"]] == [8, 16, 24]
    assert [r["capo/completions_seen"] for r in log["history"]] == [8, 16, 24]
    for key in ("reward", "loss", "learning_rate", "capo/rejection_rate", "capo/rejection_rate_hessian",
                "capo/rejection_rate_fisher", "capo/global_m_H", "capo/global_m_F", "capo/true_kl"):  # fmt: skip
        assert all(key in r for r in log["history"]), key
    assert [p["step"] for p in log["test_accuracy"]] == [0, 1, 2, 3]
    summary = log["summary"]
    assert (summary["method"], summary["steps"], summary["completions"]) == ("CAPO", 3, 24)
    assert summary["train_reward_first"] == log["history"][0]["reward"]
    rejection = [r["capo/rejection_rate"] for r in log["history"]]
    assert summary["rejection_rate_peak"] == max(rejection)
    assert log["run"]["config"]["max_steps"] == 3 and log["run"]["fisher_max"] == 1e-4
    for name in ("accuracy_reward.png", "rejection_rate.png", "curvature.png"):
        assert (out / name).stat().st_size > 10_000, name
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    assert json.loads((out / "capo_prompt.json").read_text())["template"] == "Q: {question}\nA: "
    # capo eval on the output folder: prompted as trained, results inside the folder.
    bench = tmp_path / "bench.jsonl"
    make_arithmetic_dataset(4, "test").select_columns(["question", "answer"]).to_json(bench)
    assert capo_main(["eval", "--model", str(out), "--benchmarks", str(bench), "--max-new-tokens", "8",
                      "--no-progress"]) == 0  # fmt: skip
    settings = json.loads((out / "capo_eval" / "eval_results.json").read_text())["settings"]
    fmt = settings["prompt_format"]
    assert (fmt["conversational"], fmt["template"]) == (False, "Q: {question}\nA: ")
    assert fmt["source"].startswith("as trained")
    # A second run into the same folder is refused before anything loads.
    capsys.readouterr()
    assert capo_main(["train", *args]) == 2
    assert "holds another run" in capsys.readouterr().err
