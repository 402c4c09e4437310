"""pass@1 with math-verify: score sampled completions of a model on benchmarks, write JSON, print a table."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from capo_app.checks import UsageError
from capo_app.data.prompts import PromptFormat
from capo_app.evaluation.benchmarks import load_benchmark
from capo_app.evaluation.generation import Prompt, generate_hf, generate_vllm
from capo_app.evaluation.registry import resolve_benchmark, unique_names
from capo_app.rewards import score_answer
from capo_app.run_folder import EVAL_RESULTS_FILE

Backend = Literal["hf", "vllm"]
Generator = Callable[[Sequence[Prompt]], list[list[str]]]


@dataclass
class BenchmarkResult:
    """The score of one benchmark.

    Attributes:
        name: Benchmark name.
        pass_at_1: Mean over scorable problems of the fraction of correct samples (NaN if none is scorable).
        num_problems: Problems evaluated.
        num_scored: Problems whose gold could be parsed.
        n_samples: Samples per problem.
        records: One dict per sample: ``index``, ``sample``, ``question``, ``gold``, ``completion``, ``reward``.
    """

    name: str
    pass_at_1: float
    num_problems: int
    num_scored: int
    n_samples: int
    records: list[dict[str, Any]] = field(default_factory=list)


def score_completions(
    dataset: datasets.Dataset, completions: Sequence[Sequence[str]], name: str = "benchmark"
) -> BenchmarkResult:
    """Score completions (``n`` per problem) against the dataset's ``answer`` column with math-verify.

    pass@1 is estimated as the mean, over problems with a parseable gold, of the fraction of correct samples.
    Problems with an unparseable gold are kept in the records with reward None and left out of the mean.

    Args:
        dataset: Standardised dataset (``question``, ``answer`` columns).
        completions: For each problem, its sampled completion texts.
        name: Benchmark name.

    Returns:
        The result with per-sample records.
    """
    if len(completions) != len(dataset):
        raise ValueError(
            f"got completions for {len(completions)} problems, the dataset has {len(dataset)}"
        )
    records, per_problem = [], []
    for index, (row, samples) in enumerate(zip(dataset, completions, strict=True)):
        rewards = [score_answer(text, str(row["answer"])) for text in samples]
        for sample, (text, reward) in enumerate(zip(samples, rewards, strict=True)):
            records.append(
                {
                    "index": index,
                    "sample": sample,
                    "question": row["question"],
                    "gold": row["answer"],
                    "completion": text,
                    "reward": reward,
                }
            )
        scored = [r for r in rewards if r is not None]
        if scored:
            per_problem.append(sum(scored) / len(scored))
    n_samples = len(completions[0]) if completions else 0
    pass_at_1 = sum(per_problem) / len(per_problem) if per_problem else math.nan
    return BenchmarkResult(name, pass_at_1, len(dataset), len(per_problem), n_samples, records)


def _generator(
    model: PreTrainedModel | str,
    tokenizer: PreTrainedTokenizerBase,
    backend: Backend,
    sampling: dict[str, Any],
    batch_size: int,
    progress: bool,
) -> Generator:
    """The function that samples completions for a list of prompts with the chosen backend."""
    if backend == "vllm":
        if not isinstance(model, str):
            raise ValueError("the vllm backend needs a model path, not a loaded model")
        model_path = model
        return lambda prompts: generate_vllm(model_path, tokenizer, prompts, **sampling)
    if backend != "hf":
        raise ValueError(f"backend must be 'hf' or 'vllm', got {backend!r}")
    hf_model = AutoModelForCausalLM.from_pretrained(model) if isinstance(model, str) else model
    return lambda prompts: generate_hf(
        hf_model, tokenizer, prompts, batch_size=batch_size, progress=progress, **sampling
    )


def evaluate_benchmarks(
    model: PreTrainedModel | str,
    tokenizer: PreTrainedTokenizerBase,
    benchmarks: Sequence[str],
    *,
    prompt_format: PromptFormat,
    backend: Backend = "hf",
    max_new_tokens: int = 512,
    n_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[BenchmarkResult]:
    """Compute pass@1 of a model on benchmarks given by name or local file.

    Args:
        model: A loaded model (hf backend) or a model path (either backend; hf loads it itself).
        tokenizer: The model's tokenizer.
        benchmarks: Names (see :data:`capo_app.evaluation.registry.BENCHMARKS`) or local files.
        prompt_format: How questions become prompts.
        backend: ``"hf"`` (``model.generate``) or ``"vllm"``.
        max_new_tokens: Completion length limit.
        n_samples: Samples per problem.
        temperature: 0 for greedy decoding.
        top_p: Nucleus sampling mass.
        batch_size: Prompts per generate call (hf backend).
        limit: Evaluate only the first ``limit`` problems of each benchmark.
        seed: Sampling seed.
        progress: Show progress bars.

    Returns:
        One result per benchmark, in order, each named uniquely (:func:`capo_app.evaluation.registry.unique_names`).
    """
    resolved = [resolve_benchmark(name) for name in benchmarks]
    names = unique_names(resolved)
    sampling = {"max_new_tokens": max_new_tokens, "n_samples": n_samples, "temperature": temperature,
                "top_p": top_p, "seed": seed}  # fmt: skip
    generate = _generator(model, tokenizer, backend, sampling, batch_size, progress)
    results = []
    for benchmark, name in zip(resolved, names, strict=True):
        dataset = load_benchmark(benchmark, prompt_format=prompt_format, limit=limit, seed=seed)
        completions = generate(list(dataset["prompt"]))
        results.append(score_completions(dataset, completions, name))
    return results


def results_to_json(results: Sequence[BenchmarkResult], settings: dict[str, Any]) -> dict[str, Any]:
    """Return the JSON document: ``settings``, ``benchmarks`` (name -> summary) and ``records``."""
    summary = {
        r.name: {k: v for k, v in asdict(r).items() if k not in ("records", "name")}
        for r in results
    }
    records = [{"benchmark": r.name, **rec} for r in results for rec in r.records]
    return {"settings": settings, "benchmarks": summary, "records": records}


def read_results(output_dir: str | Path) -> dict[str, Any]:
    """The results file of ``output_dir`` (empty when there is none).

    Raises:
        UsageError: When the file is there but is not a results file (it is never overwritten then).
    """
    path = Path(output_dir) / EVAL_RESULTS_FILE
    if not path.is_file():
        return {"settings": {}, "benchmarks": {}, "records": []}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not a readable results file ({error}); move it away") from error
    if not isinstance(saved, dict) or not isinstance(saved.get("benchmarks"), dict):
        raise UsageError(f"{path}: not a capo eval results file; move it away")
    saved.setdefault("records", [])
    return saved


def write_results(
    results: Sequence[BenchmarkResult], output_dir: str | Path, settings: dict[str, Any]
) -> Path:
    """Merge ``results`` into :data:`capo_app.run_folder.EVAL_RESULTS_FILE` under ``output_dir``; return its path.

    The file accumulates by benchmark key: the keys evaluated now replace their earlier entries (summary and
    records), the others stay. ``settings`` are the latest run's; ``benchmark_settings`` holds each key's own.
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / EVAL_RESULTS_FILE
    merged = read_results(folder)
    new = results_to_json(results, settings)
    keys = set(new["benchmarks"])
    merged["settings"] = settings
    merged["benchmark_settings"] = {
        **{k: v for k, v in merged.get("benchmark_settings", {}).items() if k not in keys},
        **dict.fromkeys(keys, settings),
    }
    merged["benchmarks"] = {
        **{k: v for k, v in merged["benchmarks"].items() if k not in keys},
        **new["benchmarks"],
    }
    kept = [r for r in merged["records"] if r.get("benchmark") not in keys]
    merged["records"] = kept + new["records"]
    path.write_text(json.dumps(merged, indent=2, allow_nan=True) + "\n")
    return path


def format_table(results: Sequence[BenchmarkResult]) -> str:
    """Return a plain-text table: benchmark, pass@1 (%), problems, scored, samples."""
    width = max([16, *(len(r.name) for r in results)])
    header = f"{'benchmark':<{width}} {'pass@1':>8} {'problems':>9} {'scored':>7} {'samples':>8}"
    lines = [header, "-" * len(header)]
    for r in results:
        score = "n/a" if math.isnan(r.pass_at_1) else f"{100 * r.pass_at_1:.1f}%"
        lines.append(
            f"{r.name:<{width}} {score:>8} {r.num_problems:>9} {r.num_scored:>7} {r.n_samples:>8}"
        )
    return "\n".join(lines)
