"""The per-token inputs of the last-layer curvature model: hidden states and the top-k support.

A :class:`TokenBatch` holds, for N flattened completion tokens, the hidden state h_i [H] that fed the
output layer, the support S_i (k vocabulary ids), the policy restricted to it π_i [k] (renormalised),
the position a_i of the sampled token inside S_i, and the advantage A_i (docs/design.md §2). Everything is
validated on construction; a bad argument raises :class:`ValueError` naming it and its shape.

Non-finite hidden states, advantages or probabilities are *not* an error: such tokens are flagged by
:meth:`TokenBatch.finite_tokens` and rejected downstream (see :func:`capo.directional_shifts`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PROB_SUM_ATOL", "TokenBatch", "compute_dtype", "prob_sum_tolerance"]

PROB_SUM_ATOL = 1e-6
"""Smallest tolerance on |Σ_j π_ij − 1| (float64 probabilities); lower precisions get more room."""


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The accumulation dtype for inputs of the given dtypes: float64 if any is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def prob_sum_tolerance(dtype: torch.dtype, k: int) -> float:
    """How far a support row of ``k`` probabilities stored in ``dtype`` may sum away from one.

    A renormalised softmax stored in ``dtype`` sums to one up to the rounding of its k entries and of
    its normaliser: about (k + 2)·eps. The result is clamped to [PROB_SUM_ATOL, 1e-2].
    """
    eps = torch.finfo(dtype).eps
    return max(PROB_SUM_ATOL, min(1e-2, (k + 2) * eps))


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


@dataclass(frozen=True, eq=False)
class TokenBatch:
    """N completion tokens with their top-k support, ready for :func:`capo.directional_shifts`.

    Args:
        hidden: [N, H] float, the input h_i of the output layer that produced token i's logits.
        support_ids: [N, k] int64, the vocabulary ids S_i (unique within a row).
        support_probs: [N, k] float, π_i restricted to S_i and renormalised (rows sum to one).
        action_index: [N] int64 in [0, k), the position of the sampled token a_i in its row.
        advantages: [N] float, the coefficient A_i the variant's loss gives the token.
        vocab_size: optional V; when given, ``support_ids`` must lie in [0, V).

    Raises:
        ValueError: on mismatched shapes or dtypes, ids out of range or repeated within a row, an
            ``action_index`` outside [0, k), negative probabilities, or finite probability rows that
            do not sum to one within :func:`prob_sum_tolerance`.
    """

    hidden: torch.Tensor
    support_ids: torch.Tensor
    support_probs: torch.Tensor
    action_index: torch.Tensor
    advantages: torch.Tensor
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        h = _require_tensor("hidden", self.hidden)
        ids = _require_tensor("support_ids", self.support_ids)
        p = _require_tensor("support_probs", self.support_probs)
        a = _require_tensor("action_index", self.action_index)
        adv = _require_tensor("advantages", self.advantages)
        if h.dim() != 2 or not h.is_floating_point():
            raise ValueError(f"hidden must be a float [N, H] tensor, got {h.dtype} {_shape(h)}")
        n = h.shape[0]
        if ids.dim() != 2 or ids.shape[0] != n or ids.dtype != torch.int64:
            raise ValueError(
                f"support_ids must be an int64 [N, k] tensor with N = {n} (hidden {_shape(h)}), "
                f"got {ids.dtype} {_shape(ids)}"
            )
        k = ids.shape[1]
        if k < 1:
            raise ValueError(f"support_ids must have k >= 1 columns, got {_shape(ids)}")
        if p.shape != ids.shape or not p.is_floating_point():
            raise ValueError(
                f"support_probs must be a float tensor shaped like support_ids {_shape(ids)}, "
                f"got {p.dtype} {_shape(p)}"
            )
        if a.shape != (n,) or a.dtype != torch.int64:
            raise ValueError(
                f"action_index must be an int64 [N] tensor with N = {n}, got {a.dtype} {_shape(a)}"
            )
        if adv.shape != (n,) or not adv.is_floating_point():
            raise ValueError(
                f"advantages must be a float [N] tensor with N = {n}, got {adv.dtype} {_shape(adv)}"
            )
        for name, t in (("support_ids", ids), ("support_probs", p), ("action_index", a)):
            if t.device != h.device:
                raise ValueError(f"{name} is on {t.device} but hidden is on {h.device}")
        if adv.device != h.device:
            raise ValueError(f"advantages is on {adv.device} but hidden is on {h.device}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {self.vocab_size}")
        if n == 0:
            return
        if bool((ids < 0).any()):
            raise ValueError(f"support_ids {_shape(ids)} contains negative ids")
        if self.vocab_size is not None:
            self.check_vocab(self.vocab_size)
        if k > 1:
            srt = torch.sort(ids, dim=1).values
            if bool((srt[:, 1:] == srt[:, :-1]).any()):
                raise ValueError(f"support_ids {_shape(ids)} repeats an id within a row")
        if bool(((a < 0) | (a >= k)).any()):
            raise ValueError(f"action_index {_shape(a)} has entries outside [0, k = {k})")
        finite_p = torch.isfinite(p).all(dim=1)
        if bool((p[finite_p] < 0).any()):
            raise ValueError(f"support_probs {_shape(p)} has negative entries")
        sums = p[finite_p].sum(dim=1, dtype=torch.float64)
        tol = prob_sum_tolerance(p.dtype, k)
        if sums.numel() and bool(((sums - 1.0).abs() > tol).any()):
            worst = float((sums - 1.0).abs().max())
            raise ValueError(
                f"support_probs {_shape(p)} rows must sum to 1 within {tol:.1e}; worst row is "
                f"off by {worst:.3e}"
            )

    @property
    def num_tokens(self) -> int:
        """N, the number of tokens."""
        return int(self.hidden.shape[0])

    @property
    def hidden_size(self) -> int:
        """H, the hidden size."""
        return int(self.hidden.shape[1])

    @property
    def support_size(self) -> int:
        """k, the support size."""
        return int(self.support_ids.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """The accumulation dtype: float64 if any float input is float64, else float32."""
        return compute_dtype(self.hidden.dtype, self.support_probs.dtype, self.advantages.dtype)

    @property
    def sampled_ids(self) -> torch.Tensor:
        """[N] int64, the vocabulary id of each sampled token: ``support_ids[i, action_index[i]]``."""
        return self.support_ids.gather(1, self.action_index[:, None]).squeeze(1)

    def check_vocab(self, vocab_size: int) -> None:
        """Raise ValueError if a support id is outside [0, vocab_size)."""
        if self.num_tokens and int(self.support_ids.max()) >= vocab_size:
            raise ValueError(
                f"support_ids {_shape(self.support_ids)} has ids >= vocab_size = {vocab_size} "
                f"(max {int(self.support_ids.max())})"
            )

    def finite_tokens(self) -> torch.Tensor:
        """[N] bool, True where the hidden state, the advantage and the support probs are finite."""
        h = self.hidden
        ok = torch.isfinite(self.advantages) & torch.isfinite(self.support_probs).all(dim=1)
        # Bounded [rows, H] temporaries, in blocks large enough for few kernel launches on a GPU.
        rows = max(1, 2**24 // max(1, self.hidden_size))
        for r0 in range(0, self.num_tokens, rows):
            ok[r0 : r0 + rows] &= torch.isfinite(h[r0 : r0 + rows]).all(dim=1)
        return ok

    def select_tokens(self, index: torch.Tensor) -> TokenBatch:
        """The sub-batch of the tokens at ``index`` ([M] int64 or [N] bool), without re-validation."""
        sub = object.__new__(TokenBatch)
        for name in ("hidden", "support_ids", "support_probs", "action_index", "advantages"):
            object.__setattr__(sub, name, getattr(self, name)[index])
        object.__setattr__(sub, "vocab_size", self.vocab_size)
        return sub
