"""Evaluation: pass@1 with math-verify on the paper's benchmarks or local files (``capo eval``).

Attributes are imported lazily so that ``capo --help`` does not import ``datasets`` or ``transformers``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from capo_app.evaluation.benchmarks import load_benchmark
    from capo_app.evaluation.generation import (
        generate_hf,
        generate_vllm,
        render_prompts,
        vllm_available,
    )
    from capo_app.evaluation.pass_at_1 import (
        BenchmarkResult,
        evaluate_benchmarks,
        format_table,
        results_to_json,
        score_completions,
        write_results,
    )
    from capo_app.evaluation.registry import BENCHMARKS, Benchmark, resolve_benchmark

_HOMES = {
    "BENCHMARKS": "registry",
    "Benchmark": "registry",
    "resolve_benchmark": "registry",
    "load_benchmark": "benchmarks",
    "generate_hf": "generation",
    "generate_vllm": "generation",
    "render_prompts": "generation",
    "vllm_available": "generation",
    "BenchmarkResult": "pass_at_1",
    "evaluate_benchmarks": "pass_at_1",
    "format_table": "pass_at_1",
    "results_to_json": "pass_at_1",
    "score_completions": "pass_at_1",
    "write_results": "pass_at_1",
}

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkResult",
    "evaluate_benchmarks",
    "format_table",
    "generate_hf",
    "generate_vllm",
    "load_benchmark",
    "render_prompts",
    "resolve_benchmark",
    "results_to_json",
    "score_completions",
    "vllm_available",
    "write_results",
]


def __getattr__(name: str) -> Any:
    """Import a public attribute from its submodule on first access."""
    if name not in _HOMES:
        raise AttributeError(f"module 'capo_app.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"capo_app.evaluation.{_HOMES[name]}"), name)
