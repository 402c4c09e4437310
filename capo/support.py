"""Top-k support extraction: from logits, or from hidden states and the output weight, in token chunks.

For each token, at the policy temperature τ: z = logits / τ; the support S is the k ids with the
largest z, and the sampled id a always belongs to it (if it is not in the top k it replaces the k-th);
π = softmax(z restricted to S) (renormalised over the support). The full-vocabulary log-probability
log softmax(z)[a] comes for free from the chunk's logsumexp and is returned too. Never more than one
chunk of [C, V] logits exists at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from capo.tokens import TokenBatch, compute_dtype

__all__ = ["DEFAULT_LOGIT_CHUNK_BYTES", "Support", "support_from_hidden", "support_from_logits"]

_Part = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

DEFAULT_LOGIT_CHUNK_BYTES = 64 * 2**20
"""Memory budget for one chunk of [C, V] logits (float32) in :func:`support_from_hidden`."""


@dataclass(frozen=True, eq=False)
class Support:
    """The top-k support of N tokens.

    Attributes:
        support_ids: [N, k] int64 vocabulary ids, by decreasing logit (the sampled id may be last).
        support_probs: [N, k] π restricted to the support and renormalised (float32, or float64
            for float64 inputs).
        action_index: [N] int64, position of the sampled id in its row.
        sampled_logprob: [N] log π(a) over the full vocabulary at the temperature.
    """

    support_ids: torch.Tensor
    support_probs: torch.Tensor
    action_index: torch.Tensor
    sampled_logprob: torch.Tensor

    def token_batch(self, hidden: torch.Tensor, advantages: torch.Tensor) -> TokenBatch:
        """A validated :class:`~capo.TokenBatch` of these supports with hidden [N, H], advantages [N]."""
        return TokenBatch(
            hidden=hidden,
            support_ids=self.support_ids,
            support_probs=self.support_probs,
            action_index=self.action_index,
            advantages=advantages,
        )


def _chunk_support(
    logits: torch.Tensor, sampled: torch.Tensor, k: int, temperature: float, cdt: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Support of one chunk: logits [C, V], sampled [C] -> ids [C, k], probs [C, k], index [C], lp [C]."""
    z = logits.to(cdt)
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=1)
    z_a = z.gather(1, sampled[:, None]).squeeze(1)
    vals, ids = torch.topk(z, k, dim=1)
    hit = ids == sampled[:, None]
    absent = ~hit.any(dim=1)
    ids[:, -1] = torch.where(absent, sampled, ids[:, -1])
    vals[:, -1] = torch.where(absent, z_a, vals[:, -1])
    index = torch.argmax((ids == sampled[:, None]).to(torch.int8), dim=1)
    return ids, torch.softmax(vals, dim=1), index, z_a - lse


def _check_common(
    sampled_ids: torch.Tensor, n: int, vocab: int, k: int, temperature: float
) -> None:
    if not isinstance(sampled_ids, torch.Tensor) or sampled_ids.dtype != torch.int64:
        raise ValueError(f"sampled_ids must be an int64 [N] tensor, got {sampled_ids!r:.60}")
    if sampled_ids.shape != (n,):
        raise ValueError(f"sampled_ids must be [N] = [{n}], got {list(sampled_ids.shape)}")
    if n and bool(((sampled_ids < 0) | (sampled_ids >= vocab)).any()):
        raise ValueError(f"sampled_ids [{n}] has ids outside [0, V = {vocab})")
    if not 1 <= k <= vocab:
        raise ValueError(f"k must lie in [1, V = {vocab}], got {k}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _assemble(parts: list[_Part], k: int, cdt: torch.dtype, dev: torch.device) -> Support:
    if not parts:
        return Support(
            support_ids=torch.empty(0, k, dtype=torch.int64, device=dev),
            support_probs=torch.empty(0, k, dtype=cdt, device=dev),
            action_index=torch.empty(0, dtype=torch.int64, device=dev),
            sampled_logprob=torch.empty(0, dtype=cdt, device=dev),
        )
    ids, probs, index, lp = (torch.cat(x) for x in zip(*parts, strict=True))
    return Support(support_ids=ids, support_probs=probs, action_index=index, sampled_logprob=lp)


@torch.no_grad()
def support_from_logits(
    logits: torch.Tensor | Iterable[torch.Tensor],
    sampled_ids: torch.Tensor,
    k: int,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> Support:
    """The top-k support from logits, given whole ([N, V]) or as an iterable of [C, V] chunks.

    Args:
        logits: [N, V] logits (processed ``chunk_size`` rows at a time), or chunks [C_j, V] in token
            order whose rows add up to N.
        sampled_ids: [N] int64 sampled vocabulary ids.
        k: support size, 1 <= k <= V.
        temperature: the policy's sampling temperature τ > 0 (the support is top-k of logits / τ).
        chunk_size: rows per chunk when ``logits`` is one tensor.

    Returns:
        :class:`Support`, computed in float32 (float64 for float64 logits).

    Raises:
        ValueError: on bad shapes, ids out of range, k outside [1, V] or τ <= 0.
    """
    chunks: Iterable[torch.Tensor]
    if isinstance(logits, torch.Tensor):
        if logits.dim() != 2:
            raise ValueError(f"logits must be [N, V], got {list(logits.shape)}")
        chunks = logits.split(max(1, int(chunk_size)))
        n, vocab = logits.shape
        _check_common(sampled_ids, n, vocab, k, temperature)
    else:
        chunks = logits
    parts: list[_Part] = []
    cdt, dev, start = torch.float32, sampled_ids.device, 0
    for chunk in chunks:
        if chunk.dim() != 2:
            raise ValueError(f"each logits chunk must be [C, V], got {list(chunk.shape)}")
        cdt, dev = compute_dtype(chunk.dtype), chunk.device
        vocab = chunk.shape[1]
        if not 1 <= k <= vocab:
            raise ValueError(f"k must lie in [1, V = {vocab}], got {k}")
        stop = start + chunk.shape[0]
        if stop > sampled_ids.shape[0]:
            raise ValueError(
                f"logits chunks have more rows than sampled_ids [{sampled_ids.shape[0]}]"
            )
        sampled = sampled_ids[start:stop]
        if sampled.numel() and bool(((sampled < 0) | (sampled >= vocab)).any()):
            raise ValueError(f"sampled_ids has ids outside [0, V = {vocab})")
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        parts.append(_chunk_support(chunk, sampled.to(chunk.device), k, temperature, cdt))
        start = stop
    if start != sampled_ids.shape[0]:
        raise ValueError(
            f"logits chunks have {start} rows but sampled_ids has {sampled_ids.shape[0]}"
        )
    return _assemble(parts, k, cdt, dev)


@torch.no_grad()
def support_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    sampled_ids: torch.Tensor,
    k: int,
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> Support:
    """The top-k support from hidden states and the output layer, logits = h Wᵀ (+ b), in token chunks.

    Args:
        hidden: [N, H] hidden states feeding the output layer.
        weight: [V, H] output-layer weight (the LM head).
        sampled_ids: [N] int64 sampled vocabulary ids.
        k: support size, 1 <= k <= V.
        temperature: the sampling temperature τ > 0.
        bias: optional [V] output-layer bias.
        chunk_size: tokens per chunk; default keeps [C, V] float32 within
            :data:`DEFAULT_LOGIT_CHUNK_BYTES`.

    Returns:
        :class:`Support`. Each chunk's logits are formed as the LM head forms them (in the weight's
        dtype, so bf16 heads round like the model does), then processed in float32 (float64 for
        float64 inputs); the weight is never copied.

    Raises:
        ValueError: on bad shapes, ids out of range, k outside [1, V] or τ <= 0.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(
            f"hidden [N, H] and weight [V, H] must share H, got hidden {list(hidden.shape)} and "
            f"weight {list(weight.shape)}"
        )
    n, vocab = hidden.shape[0], weight.shape[0]
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"bias must be [V] = [{vocab}], got {list(bias.shape)}")
    _check_common(sampled_ids, n, vocab, k, temperature)
    cdt = compute_dtype(hidden.dtype, weight.dtype)
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_LOGIT_CHUNK_BYTES // (vocab * torch.finfo(cdt).bits // 8))
    b = None if bias is None else bias.to(weight.dtype)
    parts: list[_Part] = []
    for c0 in range(0, n, int(chunk_size)):
        hc = hidden[c0 : c0 + int(chunk_size)].to(weight.dtype)
        logits = hc @ weight.T if b is None else torch.addmm(b, hc, weight.T)
        parts.append(
            _chunk_support(logits, sampled_ids[c0 : c0 + hc.shape[0]], k, temperature, cdt)
        )
        del logits
    return _assemble(parts, k, cdt, hidden.device)
