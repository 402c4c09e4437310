import importlib.util
from pathlib import Path

import pytest
import yaml

from capo.methods import PAPER_THRESHOLDS
from capo.methods import PRESETS as METHODS
from capo_app.cli import main as capo_main
from capo_app.recipe import TINY_DEFAULTS


def main(argv):
    return capo_main(["train", *argv])


RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ALL_RECIPES = sorted(RECIPES.glob("*.yaml"))
PAPER_RECIPES = [p for p in ALL_RECIPES if p.stem != "tiny_capo"]
AGGRESSIVE = [p for p in PAPER_RECIPES if p.stem != "grpo_conservative"]
THRESHOLD_KEY = {"capo": "capo", "dr_capo": "dr_capo", "reincapo": "reincapo"}


@pytest.fixture(autouse=True)
def _scratch_cwd(tmp_path, monkeypatch):
    """Each dry run resolves the recipes' relative output folders (outputs/...) in a scratch folder: a run the
    user already made in the checkout (``nox -s demo`` writes outputs/capo-tiny) must not change the verdict."""
    monkeypatch.chdir(tmp_path)


def load(path):
    return yaml.safe_load(path.read_text())


def test_the_recipe_folder_ships_every_method_and_both_regimes():
    stems = {p.stem for p in ALL_RECIPES}
    expected = {
        "grpo_conservative",
        "grpo_aggressive",
        "capo",
        "dr_grpo",
        "dr_capo",
        "reinforce",
        "reincapo",
    }
    assert expected <= stems
    assert {"capo_vllm_colocate", "capo_vllm_server", "tiny_capo"} <= stems


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: p.name)
def test_every_recipe_passes_the_dry_run(path, capsys):
    """Every recipe is valid; one that needs vLLM is refused as the real run refuses it where vLLM is missing."""
    code = main(["--config", str(path), "--dry-run"])
    captured = capsys.readouterr()
    if "vllm" in path.name and importlib.util.find_spec("vllm") is None:
        assert code == 2 and "pip install 'capo-rl[vllm]'" in captured.err
        return
    assert code == 0, captured.err
    assert "Dry run OK" in captured.out and "CAPOTrainer" in captured.out


@pytest.mark.parametrize("path", PAPER_RECIPES, ids=lambda p: p.name)
def test_paper_recipes_follow_appendix_j(path):
    r = load(path)
    assert r["model_name_or_path"] == "Qwen/Qwen2.5-Math-7B"
    assert (r["max_prompt_length"], r["max_completion_length"]) == (512, 1024)
    assert (r["num_generations"], r["temperature"], r["beta"]) == (8, 0.9, 0.0)
    assert (r["max_steps"], r["lr_scheduler_type"], r["warmup_steps"]) == (100, "cosine", 0.1)
    # The batch arithmetic: completions per optimizer step on the GPUs the recipe is written for.
    per_step = (
        r["per_device_train_batch_size"]
        * r["expected_num_processes"]
        * r["gradient_accumulation_steps"]
    )
    assert per_step == r["completions_per_step"] == r["generation_batch_size"]
    regime = (3e-6, 1152) if path.stem == "grpo_conservative" else (1.5e-5, 96)
    assert (r["learning_rate"], per_step) == regime


@pytest.mark.parametrize("path", AGGRESSIVE, ids=lambda p: p.name)
def test_method_fields_in_recipes_agree_with_the_shortcut_and_the_paper_thresholds(path):
    r = load(path)
    preset = METHODS[r["method"]]
    for key, value in preset.items():
        assert r[key] == value, key
    if r["capo_enabled"]:
        t = PAPER_THRESHOLDS[THRESHOLD_KEY[r["method"]]]
        assert (r["hessian_low"], r["hessian_high"], r["fisher_max"]) == (
            t.hessian_low,
            t.hessian_high,
            t.fisher_max,
        )


def test_vllm_variants_set_the_trl_flags():
    colocate, server = (
        load(RECIPES / "capo_vllm_colocate.yaml"),
        load(RECIPES / "capo_vllm_server.yaml"),
    )
    assert (
        colocate["use_vllm"]
        and colocate["vllm_mode"] == "colocate"
        and colocate["expected_num_processes"] == 4
    )
    assert (
        server["use_vllm"]
        and server["vllm_mode"] == "server"
        and server["expected_num_processes"] == 3
    )


def test_tiny_recipe_file_is_the_embedded_default():
    assert load(RECIPES / "tiny_capo.yaml") == TINY_DEFAULTS


def test_accelerate_configs_target_four_gpus():
    zero2 = load(RECIPES / "accelerate" / "zero2.yaml")
    zero3 = load(RECIPES / "accelerate" / "zero3.yaml")
    ddp = load(RECIPES / "accelerate" / "ddp.yaml")
    assert zero2["distributed_type"] == "DEEPSPEED" and zero2["deepspeed_config"]["zero_stage"] == 2
    assert zero3["distributed_type"] == "DEEPSPEED" and zero3["deepspeed_config"]["zero_stage"] == 3
    assert ddp["distributed_type"] == "MULTI_GPU"
    for config in (zero2, zero3, ddp):
        assert (
            config["num_processes"] == 4
            and config["mixed_precision"] == "bf16"
            and not config["use_cpu"]
        )


def test_readme_documents_every_recipe_and_launch_mode():
    text = (RECIPES / "README.md").read_text()
    for path in ALL_RECIPES:
        assert path.name in text
    for needle in ("accelerate launch", "trl vllm-serve", "zero2.yaml", "ddp.yaml", "--dry-run"):
        assert needle in text


def test_dry_run_rejects_a_recipe_whose_batch_arithmetic_is_wrong(tmp_path, capsys):
    recipe = load(RECIPES / "capo.yaml")
    recipe["completions_per_step"] = 128
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["--config", str(path), "--dry-run", "--output_dir", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert (
        line.startswith("capo: error: the dry run found")
        and "declares 128 completions per step" in line
    )
    assert "Dry run OK" not in captured.out


def test_unknown_recipe_keys_are_one_error_line(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("learning_rat: 1.0e-5\n")
    for argv in (["--config", str(path), "--dry-run"], ["--config", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("capo: error: unknown keys") and "learning_rat" in err
        assert len(err.strip().splitlines()) == 1


def test_the_kl_budget_recipe_launches_on_zero2_and_projects_its_memory(capsys):
    """The paper's aggressive regime with a KL budget runs on the ZeRO-2 launch; the dry run says what it costs."""
    assert main(["--config", str(RECIPES / "grpo_kl_budget.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "--config_file recipes/accelerate/zero2.yaml --num_processes 4" in out
    assert "KL budget: projected extra memory per GPU 4.3 GiB" in out
    assert "no copy of the parameters" in out
    one_gpu = ["--expected_num_processes", "1", "--gradient_accumulation_steps", "12"]
    assert main(["--config", str(RECIPES / "grpo_kl_budget.yaml"), *one_gpu, "--dry-run"]) == 2
    assert "bfloat16/float16 parameters would round the move away" in capsys.readouterr().err
