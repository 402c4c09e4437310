"""Random token batches, dense twins for ``reference/``, and matching sparse/dense Adam moments."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import capo
from reference import DenseAdamState

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
    seed: int, N: int, k: int, V: int, H: int, scale: float = 2.0, dtype=torch.float64, **_: Any
) -> capo.TokenBatch:
    """N tokens with unique random support ids per row, softmax probs, random actions and A."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.rand(N, V, generator=g).argsort(dim=1)[:, :k]
    probs = torch.softmax(scale * torch.randn(N, k, generator=g, dtype=torch.float64), dim=1)
    return capo.TokenBatch(
        hidden=torch.randn(N, H, generator=g, dtype=torch.float64).to(dtype),
        support_ids=ids,
        support_probs=probs.to(dtype),
        action_index=torch.randint(0, k, (N,), generator=g),
        advantages=torch.randn(N, generator=g, dtype=torch.float64).to(dtype),
    )


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


def adam_pair(
    seed: int, V: int, H: int, n_updates: int, dtype=torch.float64, betas=(0.9, 0.999), eps=1e-8
) -> tuple[capo.SparseAdamMoments, DenseAdamState]:
    """Sparse and dense Adam moments after the same random sparse updates (random rows each step)."""
    g = torch.Generator().manual_seed(1000 + seed)
    sparse = capo.SparseAdamMoments(V, H, betas=betas, eps=eps, dtype=dtype)
    dense = DenseAdamState(V, H, betas=betas, eps=eps)
    for _ in range(n_updates):
        r = int(torch.randint(1, V + 1, (1,), generator=g))
        rows = torch.randperm(V, generator=g)[:r]
        grads = torch.randn(r, H, generator=g, dtype=torch.float64)
        sparse.update(rows, grads.to(dtype))
        full = np.zeros((V, H))
        full[rows.numpy()] = grads.to(dtype).to(torch.float64).numpy()
        dense.update(full)
    return sparse, dense


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
