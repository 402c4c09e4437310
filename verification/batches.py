"""Random token batches and Adam histories: the one builder of test and verification inputs.

Every agreement test, verification report and benchmark that needs a random :class:`capo.TokenBatch` builds it
here: :func:`random_batch` (float64 source tensors, :class:`RawBatch`), cast to any dtype by :func:`token_batch`;
:class:`AdamHistory` replays one seeded sequence of sparse gradient updates into capo's sparse moments and the
reference's dense Adam, so both twins start from the same optimizer state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import capo
import reference

__all__ = [
    "AdamHistory",
    "RawBatch",
    "partitions",
    "random_batch",
    "random_token_batch",
    "rounded",
    "token_batch",
]


@dataclass
class RawBatch:
    """A token batch as float64 tensors (the source of every dtype variant).

    Attributes:
        hidden: [N, H]. ids: [N, k] unique per row. probs: [N, k] rows sum to 1.
        action: [N] positions in [0, k). adv: [N]. vocab: V.
    """

    hidden: torch.Tensor
    ids: torch.Tensor
    probs: torch.Tensor
    action: torch.Tensor
    adv: torch.Tensor
    vocab: int

    @property
    def n(self) -> int:
        """N, the number of tokens."""
        return int(self.hidden.shape[0])


def random_batch(seed: int, N: int, k: int, H: int, V: int, scale: float = 3.0) -> RawBatch:
    """N tokens with random hidden states, random unique support ids, peaked softmax probabilities.

    Args:
        seed: Generator seed.
        N: Tokens.
        k: Support size.
        H: Hidden size.
        V: Vocabulary size.
        scale: Logit scale (larger = more peaked π).

    Returns:
        The batch.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.rand(N, V, generator=g).argsort(dim=1)[:, :k]
    logits = scale * torch.randn(N, k, generator=g, dtype=torch.float64)
    probs = torch.softmax(logits, dim=1)
    action = (
        torch.multinomial(probs, 1, generator=g).squeeze(1)
        if N
        else torch.zeros(0, dtype=torch.int64)
    )
    return RawBatch(
        hidden=torch.randn(N, H, generator=g, dtype=torch.float64),
        ids=ids,
        probs=probs,
        action=action,
        adv=torch.randn(N, generator=g, dtype=torch.float64),
        vocab=V,
    )


def token_batch(
    raw: RawBatch, dtype: torch.dtype = torch.float64, validate: bool = True
) -> capo.TokenBatch:
    """The capo :class:`~capo.TokenBatch` of ``raw`` with float inputs cast to ``dtype``.

    ``validate=False`` skips the constructor's checks (as ``TokenBatch.select_tokens`` does): needed
    to feed bf16-rounded probabilities, upcast to float64, whose rows sum to one only within ~1e-3
    while float64 validation asks for 1e-6.
    """
    fields: dict[str, Any] = {
        "hidden": raw.hidden.to(dtype),
        "support_ids": raw.ids,
        "support_probs": raw.probs.to(dtype),
        "action_index": raw.action,
        "advantages": raw.adv.to(dtype),
        "vocab_size": raw.vocab,
    }
    if validate:
        return capo.TokenBatch(**fields)
    batch = object.__new__(capo.TokenBatch)
    for name, value in fields.items():
        object.__setattr__(batch, name, value)
    return batch


def rounded(raw: RawBatch, dtype: torch.dtype) -> RawBatch:
    """``raw`` with its float inputs rounded to ``dtype`` and stored back as float64."""
    return RawBatch(
        hidden=raw.hidden.to(dtype).double(),
        ids=raw.ids,
        probs=raw.probs.to(dtype).double(),
        action=raw.action,
        adv=raw.adv.to(dtype).double(),
        vocab=raw.vocab,
    )


def partitions(
    N: int, completion_len: int = 4, group_size: int = 2
) -> dict[str, torch.Tensor | None]:
    """Subset ids [N] per granularity: token (None), completion, group, batch."""
    blocks = torch.div(torch.arange(N), completion_len, rounding_mode="floor")
    return {
        "token": None,
        "completion": blocks,
        "group": torch.div(blocks, group_size, rounding_mode="floor"),
        "batch": torch.zeros(N, dtype=torch.int64),
    }


@dataclass
class AdamHistory:
    """A seeded sequence of sparse gradient updates replayed into every twin's moments.

    Attributes:
        updates: (row_ids [R] unique, rows [R, H] float64) per past optimizer step.
        V: Vocabulary. H: Hidden size. betas, eps: Adam hyper-parameters.
    """

    updates: list[tuple[torch.Tensor, torch.Tensor]]
    V: int
    H: int
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    @classmethod
    def random(
        cls,
        seed: int,
        V: int,
        H: int,
        steps: int,
        scale: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> AdamHistory:
        """``steps`` updates, each on a random subset of rows (rows absent from a step decay)."""
        g = torch.Generator().manual_seed(10_000 + seed)
        ups = []
        for _ in range(steps):
            r = int(torch.randint(1, V + 1, (1,), generator=g))
            rows = torch.randperm(V, generator=g)[:r]
            ups.append((rows, scale * torch.randn(r, H, generator=g, dtype=torch.float64)))
        return cls(ups, V, H, betas, eps)

    def sparse(self, dtype: torch.dtype = torch.float64) -> capo.SparseAdamMoments:
        """Capo's sparse moments after the history (gradients rounded to ``dtype``)."""
        mom = capo.SparseAdamMoments(self.V, self.H, betas=self.betas, eps=self.eps, dtype=dtype)
        for rows, grads in self.updates:
            mom.update(rows, grads.to(dtype))
        return mom

    def dense_numpy(self, dtype: torch.dtype = torch.float64) -> reference.DenseAdamState:
        """The reference's dense moments after the history (gradients rounded to ``dtype``)."""
        st = reference.DenseAdamState(self.V, self.H, betas=self.betas, eps=self.eps)
        for rows, grads in self.updates:
            full = np.zeros((self.V, self.H))
            full[rows.numpy()] = grads.to(dtype).double().numpy()
            st.update(full)
        return st


def random_token_batch(
    seed: int,
    N: int,
    k: int,
    H: int,
    V: int,
    scale: float = 3.0,
    dtype: torch.dtype = torch.float64,
) -> capo.TokenBatch:
    """``token_batch(random_batch(seed, N, k, H, V, scale), dtype)``: a validated capo batch in ``dtype``."""
    return token_batch(random_batch(seed, N, k, H, V, scale), dtype)
