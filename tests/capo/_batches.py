"""Test cases on top of the shared builders of :mod:`verification.batches`; dense twins for ``reference/``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import capo
from verification.batches import AdamHistory, random_token_batch

BATCH_CASES: list[dict[str, Any]] = [
    {"id": "N8-k3-V10-H4", "seed": 0, "N": 8, "k": 3, "V": 10, "H": 4},
    {"id": "full-support-k=V=5", "seed": 1, "N": 6, "k": 5, "V": 5, "H": 3},
    {"id": "k=1", "seed": 2, "N": 7, "k": 1, "V": 6, "H": 3},
    {"id": "repeated-ids-V4-k3", "seed": 3, "N": 20, "k": 3, "V": 4, "H": 2},
    {"id": "N1", "seed": 4, "N": 1, "k": 2, "V": 3, "H": 5},
    {"id": "N24-k4-V12-H6-peaked", "seed": 5, "N": 24, "k": 4, "V": 12, "H": 6, "scale": 6.0},
]
"""Random batch shapes for the agreement tests (k = V, k = 1, repeated ids, a single token)."""


def random_batch(
    seed: int, N: int, k: int, V: int, H: int, scale: float = 2.0, dtype=torch.float64, **_
):
    """The shared builder (:func:`verification.batches.random_token_batch`) with the cases' keywords."""
    return random_token_batch(seed, N, k, H, V, scale, dtype)


def dense_inputs(batch: capo.TokenBatch, V: int) -> tuple[np.ndarray, ...]:
    """(h [N, H], probs [N, V] zeros off-support, actions [N] vocabulary ids, advantages [N]) in f64."""
    p = torch.zeros(batch.num_tokens, V, dtype=torch.float64)
    p.scatter_(1, batch.support_ids, batch.support_probs.to(torch.float64))
    return (
        batch.hidden.to(torch.float64).numpy(),
        p.numpy(),
        batch.sampled_ids.numpy(),
        batch.advantages.to(torch.float64).numpy(),
    )


def adam_pair(seed: int, V: int, H: int, n_updates: int, dtype=torch.float64, betas=(0.9, 0.999)):
    """Sparse and dense Adam moments after the same random sparse updates (:class:`AdamHistory`)."""
    hist = AdamHistory.random(seed, V, H, n_updates, scale=1.0, betas=betas)
    return hist.sparse(dtype), hist.dense_numpy(dtype)


def partitions(N: int, seed: int) -> dict[str, torch.Tensor]:
    """Subset ids [N] for every granularity; each uses all ids 0..S-1."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.div(torch.arange(N), 3, rounding_mode="floor")  # "completions" of 3 tokens
    groups = torch.div(blocks, 2, rounding_mode="floor")  # "groups" of 2 completions
    return {
        "one-token": torch.randperm(N, generator=g),
        "completion": blocks,
        "group": groups,
        "batch": torch.zeros(N, dtype=torch.int64),
    }
