"""The dry run's projection of the KL budget's memory (capo_app.kl_budget_plan) uses counted constants."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from capo_app.kl_budget_plan import KL_SCRATCH_PER_LOGIT, extra_memory_mib

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from projection_step import measure_true_kl


def test_the_kl_scratch_constant_is_what_the_counter_counts():
    """full_vocab_kl's peak scratch per logit of its chunk, counted op by op, is KL_SCRATCH_PER_LOGIT bytes."""
    counted = measure_true_kl(hidden=32, vocab=1000, n=64, dtype=torch.bfloat16)
    assert abs(counted["scratch"] / (64 * 1000) - KL_SCRATCH_PER_LOGIT) < 0.01


def test_projection_at_the_papers_shapes():
    """Qwen2.5-Math-7B, 24 x 1024 completion tokens per GPU, bf16: 4.3 GiB, no term in the parameter count."""
    parts = extra_memory_mib(3584, 152_064, 24 * 1024, 2)
    assert round(parts["output layer before the step"]) == 1040
    assert round(parts["KL logits scratch"]) == 2970
    assert round(sum(parts.values()) / 1024, 1) == 4.3
