"""Bad input to `capo train` / `capo eval` ends in one `capo: error:` line and exit 2, never a traceback."""

import importlib.util
import json
import shutil

import pytest

from capo_app.cli import main as capo_main
from capo_app.run_folder import claim_output_dir, record_run_files
from tests.capo._tiny_model import warm_tiny_dir

FAST_TINY = ["--warm_start_steps", "0", "--disable_tqdm", "true"]


def refused(capsys, argv, *needles):
    assert capo_main(argv) == 2
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1]  # above it, at most progress bars of a model that did load
    assert line.startswith("capo: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in line, err
    return line


def train_refused(capsys, tmp_path, args, *needles):
    argv = [
        "train",
        "--output-dir",
        str(tmp_path / "out"),
        "--tiny_cache_dir",
        str(tmp_path / "cache"),
    ]
    return refused(capsys, [*argv, *args], *needles)


def jsonl(path, rows, bad_line=None):
    lines = [json.dumps(r) for r in rows]
    if bad_line is not None:
        lines.insert(bad_line - 1, '{"question": "1+1", "answer": ')
    path.write_text("\n".join(lines) + "\n")
    return path


ROWS = [{"question": f"{i}+1", "answer": str(i + 1)} for i in range(4)]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--learning-rate", "-1"], "learning_rate must be > 0"),
        (["--learning_rate", "0"], "learning_rate must be > 0"),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be >= 1"),
        (["--hessian_low", "0.1", "--hessian_high", "0.01"], "must be < hessian_high"),
        (["--max-steps", "0"], "max_steps must be >= 1"),
        (["--capo_support_size", "1"], "CAPO masks nothing"),
        (["--optim", "sgd"], "--capo_step_model sgd"),
        (["--method", "ppo"], "unknown method 'ppo'"),
        (["--no_such_field", "1"], "no_such_field"),
        (["--model_name_or_path", "/nonexistent/model"], "/nonexistent/model: no such folder"),
        (["--config", "missing.yaml"], "recipe missing.yaml: no such file"),
        (
            ["--synthetic_task", "extreme"],
            "synthetic_task must be one of easy, medium, hard, got 'extreme'",
        ),
        (["--num_train_problems", "0"], "num_train_problems must be >= 1"),
        (["--learning_rate", "inf"], "learning_rate must be finite and > 0, got inf"),
        (["--num_generations", "0"], "num_generations must be >= 2, got 0"),
        (
            ["--capo_kl_budget", "-1e-3"],
            "capo_kl_budget must be > 0, got -0.001",
        ),  # not "expected one argument"
        (["--output-dir", ""], "output_dir is empty"),
        (
            ["--tiny_cache_dir", "/proc/capo-cache"],
            "tiny_cache_dir /proc/capo-cache: cannot be written",
        ),
        (["--top_entropy_quantile", "0.5"], "top_entropy_quantile=0.5 with CAPO"),
    ],
)
def test_bad_training_settings_are_one_line_before_any_model_loads(tmp_path, capsys, args, needle):
    train_refused(capsys, tmp_path, args, needle)
    assert not (tmp_path / "cache").exists()  # refused before the tiny model was built


def test_unknown_reward_function_and_oversized_support_are_refused_before_the_model_loads(
    tmp_path, capsys
):
    train_refused(capsys, tmp_path, ["--reward_funcs", "nope"], "unknown reward functions ['nope']")
    train_refused(
        capsys, tmp_path, ["--capo_support_size", "500"], "exceeds the vocabulary size 259"
    )
    assert not (tmp_path / "cache").exists()


def test_a_folder_without_config_json_is_not_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    train_refused(
        capsys, tmp_path, ["--model_name_or_path", str(tmp_path / "empty")], "no config.json"
    )


def test_malformed_dataset_line_names_the_file_and_the_line(tmp_path, capsys):
    data = jsonl(tmp_path / "train.jsonl", ROWS, bad_line=3)
    train_refused(
        capsys,
        tmp_path,
        [*FAST_TINY, "--dataset_name", str(data)],
        f"{data}:3: malformed JSON line",
    )


def test_a_prompt_length_that_drops_every_prompt_is_refused(tmp_path, capsys):
    args = [*FAST_TINY, "--max_prompt_length", "3", "--num_train_problems", "16"]
    train_refused(capsys, tmp_path, args, "no training prompt left: all 16 prompts are longer than")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--limit", "0"], "--limit must be > 0"),
        (["--batch-size", "0"], "--batch-size must be > 0"),
        (["--n-samples", "0", "--temperature", "0.9"], "--n-samples must be > 0"),
        (["--n-samples", "4"], "greedy decoding"),
        (["--prompt-template", "Solve it."], "must contain {question}"),
        (["--plain", "--system-prompt", "be brief"], "--system-prompt needs chat prompts"),
    ],
)
def test_bad_eval_options_are_one_line(tmp_path, capsys, args, needle):
    refused(capsys, ["eval", "--model", str(tmp_path), "--benchmarks", "gsm8k", *args], needle)


def test_eval_of_a_missing_model_folder_is_one_line(capsys):
    refused(
        capsys,
        ["eval", "--model", "/nonexistent", "--benchmarks", "gsm8k"],
        "/nonexistent: no such folder",
    )


def test_eval_of_a_missing_benchmark_file_says_so(tmp_path, capsys):
    argv = [
        "eval",
        "--model",
        str(warm_tiny_dir()),
        "--benchmarks",
        "nope/test.jsonl",
        "--output",
        str(tmp_path),
    ]
    refused(capsys, argv, "--benchmarks nope/test.jsonl: no such file")


def test_malformed_benchmark_line_names_the_file_and_the_line(tmp_path, capsys):
    bench = jsonl(tmp_path / "bench.jsonl", ROWS, bad_line=2)
    argv = [
        "eval",
        "--model",
        str(warm_tiny_dir()),
        "--benchmarks",
        str(bench),
        "--output",
        str(tmp_path / "o"),
    ]
    refused(capsys, argv, f"{bench}:2: malformed JSON line")


def test_missing_question_column_names_the_file_and_no_unavailable_option(
    tmp_path, capsys, monkeypatch
):
    """... before any weights load."""
    import transformers

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the benchmark's columns were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    bench = jsonl(tmp_path / "bench.jsonl", [{"text": "1+1", "answer": "2"}])
    argv = [
        "eval",
        "--model",
        str(warm_tiny_dir()),
        "--benchmarks",
        str(bench),
        "--output",
        str(tmp_path / "o"),
    ]
    err = refused(capsys, argv, f"{bench}: no question column", "rename")
    assert "question_column=" not in err


def test_a_folder_holding_another_run_is_refused_before_anything_loads(tmp_path, capsys):
    out = tmp_path / "out"
    claim_output_dir(
        out, overwrite=False, resume=False
    )  # a run of ours: claimed, written, recorded
    shutil.copytree(warm_tiny_dir(), out, dirs_exist_ok=True)
    (out / "log.json").write_text("{}")
    record_run_files(out)
    train_refused(capsys, tmp_path, [], f"{out} holds another run", "--overwrite_output_dir true")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("learning_rate: 1e-4\nlearning_rate: 2e-4\n", "key 'learning_rate' is written twice"),
        ("learning_rate: abc\n", "invalid float value: 'abc' (in "),
    ],
)
def test_a_recipe_error_names_the_recipe_file(tmp_path, capsys, text, needle):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    train_refused(capsys, tmp_path, ["--config", str(recipe)], needle, str(recipe))


@pytest.mark.parametrize(
    ("args", "package"),
    [(["--use_liger_kernel", "true"], "liger_kernel"), (["--report_to", "trackio"], "trackio")],
)
def test_a_missing_optional_package_is_one_line_naming_what_to_install(
    tmp_path, capsys, args, package
):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    train_refused(
        capsys, tmp_path, args, f"needs the {package} package, which is not installed: pip install"
    )
