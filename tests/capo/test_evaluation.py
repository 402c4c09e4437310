import json

import pandas as pd
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from capo_app.cli import main
from capo_app.data import TINY_CHAT_PROMPT, make_arithmetic_dataset
from capo_app.evaluation import (
    Benchmark,
    generate_hf,
    generate_vllm,
    load_benchmark,
    resolve_benchmark,
    score_completions,
    vllm_available,
)
from tests.capo._tiny_model import warm_tiny_dir


def test_pass_at_1_is_the_mean_over_problems_of_the_fraction_of_correct_samples():
    ds = make_arithmetic_dataset(3, "test")
    right = [f"\\boxed{{{a}}}" for a in ds["answer"]]
    result = score_completions(ds, [[right[0], right[0]], [right[1], "\\boxed{x}"], ["no", "no"]])
    assert result.pass_at_1 == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert (result.num_problems, result.num_scored, result.n_samples, len(result.records)) == (
        3,
        3,
        2,
        6,
    )
    assert score_completions(ds, [[s] for s in ds["solution"]]).pass_at_1 == 1.0


def test_problems_with_unparseable_gold_are_recorded_but_left_out_of_pass_at_1(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text(
        json.dumps({"question": "a", "answer": "3"})
        + "\n"
        + json.dumps({"question": "b", "answer": "\\frac{"})
        + "\n"
    )
    ds = load_benchmark(resolve_benchmark(str(path)), prompt_format=TINY_CHAT_PROMPT)
    result = score_completions(ds, [["\\boxed{3}"], ["\\boxed{3}"]])
    assert (result.pass_at_1, result.num_scored) == (1.0, 1)
    assert [r["reward"] for r in result.records] == [1.0, None]


def test_registry_resolves_the_papers_eight_benchmarks_by_loose_name():
    names = [
        "GSM8K",
        "MATH500",
        "OlympiadBench",
        "MinervaMath",
        "GPQA:Diamond",
        "AMC23",
        "AIME24",
        "AIME25",
    ]
    assert [resolve_benchmark(n).name for n in names] == names
    assert resolve_benchmark("gpqa-diamond").choice_columns is not None
    with pytest.raises(ValueError, match="unknown benchmark"):
        resolve_benchmark("not-a-benchmark")


def test_multiple_choice_gold_letter_points_at_the_correct_option(tmp_path):
    rows = [
        {
            "Question": f"Q{i}?",
            "Correct Answer": f"right{i}",
            "Incorrect Answer 1": "w1",
            "Incorrect Answer 2": "w2",
            "Incorrect Answer 3": "w3",
        }
        for i in range(8)
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "gpqa.parquet")
    bench = Benchmark(
        "GPQA-local",
        str(tmp_path / "gpqa.parquet"),
        "test",
        choice_columns=tuple(list(rows[0])[1:]),
    )
    ds = load_benchmark(bench)
    for i, (question, letter) in enumerate(zip(ds["question"], ds["answer"], strict=True)):
        assert f"{letter}) right{i}" in question
    assert len(set(ds["answer"])) > 1  # options are shuffled
    assert "letter of your final choice" in ds[0]["prompt"][0]["content"]


@pytest.mark.skipif(vllm_available(), reason="vllm is installed")
def test_vllm_backend_without_vllm_raises_a_clear_error():
    with pytest.raises(ImportError, match="pip install 'capo-rl\\[vllm\\]'"):
        generate_vllm("model", None, ["x"])


def test_left_padded_batches_generate_the_same_greedy_completions_as_one_by_one():
    folder = warm_tiny_dir()
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    prompts = make_arithmetic_dataset(6, "test")["prompt"]  # lengths differ: 2 and 3 operands
    batched = generate_hf(model, tok, prompts, max_new_tokens=24, batch_size=6, progress=False)
    single = generate_hf(model, tok, prompts, max_new_tokens=24, batch_size=1, progress=False)
    assert len({len(p) for p in prompts}) > 1
    assert batched == single


def test_eval_cli_on_local_files_writes_per_benchmark_pass_at_1_and_records(tmp_path, capsys):
    ds = make_arithmetic_dataset(12, "test", seed=7)
    ds.select_columns(["question", "answer"]).to_json(tmp_path / "arith.jsonl")
    ds.select_columns(["question", "solution"]).to_parquet(tmp_path / "worked.parquet")
    out = tmp_path / "out"
    argv = ["eval", "--model", str(warm_tiny_dir()), "--benchmarks", str(tmp_path / "arith.jsonl"),
            str(tmp_path / "worked.parquet"), "--max-new-tokens", "24", "--output", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "eval_results.json").read_text())
    assert set(report) == {"settings", "benchmark_settings", "benchmarks", "records"}
    assert set(report["benchmarks"]) == {"arith", "worked"}
    for name, summary in report["benchmarks"].items():
        assert set(summary) == {"pass_at_1", "num_problems", "num_scored", "n_samples"}
        rewards = [r["reward"] for r in report["records"] if r["benchmark"] == name]
        assert len(rewards) == 12 and summary["pass_at_1"] == pytest.approx(sum(rewards) / 12)
    arith, worked = (report["benchmarks"][n]["pass_at_1"] for n in ("arith", "worked"))
    assert arith == worked  # same problems, gold from the answer column or from the solution's box
    assert set(report["records"][0]) == {
        "benchmark",
        "index",
        "sample",
        "question",
        "gold",
        "completion",
        "reward",
    }
    assert (
        report["settings"]["prompt_format"]["template"] == "{question}"
    )  # tiny-model frame auto-detected
    assert "pass@1" in capsys.readouterr().out


def test_sampling_leaves_the_callers_rng_untouched_and_is_reproducible_per_seed():
    """Evaluating mid-training must not reseed training's RNG; one evaluation seed, one sample stream."""
    import torch

    from capo_app.evaluation.sampled import sampled_accuracy

    folder = warm_tiny_dir()
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    test = make_arithmetic_dataset(6, "test")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    runs = [
        sampled_accuracy(model, tok, test["prompt"], test["answer"], temperature=1.0, k=4,
                         max_new_tokens=16, seed=seed, score=lambda text, gold: float(len(text) % 2))
        for seed in (1, 2, 1)
    ]  # fmt: skip
    assert torch.equal(torch.rand(3), expected)
    assert runs[0] == runs[2] and runs[0].k == 4 and runs[0].greedy is not None
