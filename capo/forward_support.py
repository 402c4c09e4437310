"""Each completion token's top-k support, taken from the policy forward's own logit tiles.

TRL 1.16 scores completions with a fused LM head (``trl.trainer.utils.add_fused_lm_head``):
``trl.kernels.chunked_logprob.ChunkedLogProbFunction.forward`` forms the logits of the scored rows one
tile at a time (at most ``TOKEN_CHUNK_SIZE`` rows by ``_CHUNKED_LOGPROB_CHUNK_SIZE`` vocabulary columns,
one GEMM into one buffer) and folds each tile into online log-sum-exp statistics (``_forward_tile`` in
torch, ``_forward_kernel[(n,)]`` in Triton). The logits CAPO's support needs (docs/design.md §2) so
exist already, a tile at a time; recomputing them from the hidden states
(:func:`capo.support.support_from_hidden`) is a second LM head, 2·N·V·H FLOPs per step.

:func:`capture_forward_support` wraps both folds for one forward. Each tile is first folded into a
running per-row top-k of z = logits / τ (ids = the tile's first column + column) and the sampled id's
z, then handed unchanged to TRL's fold. Rows follow TRL's loop order: a tile starting at column 0
begins the next block of rows. Which rows TRL scores follows its ``_use_triton(device)``, as does the
fold it calls: with the Triton kernel only the positions with a valid label ("compact": the completion
tokens of ``attention_mask``, row-major), with the torch fold all B·(L−1) shifted positions. Only the
rows of valid tokens are folded, and only the current row block's top-k ([rows, k]) lives beside the
[N, k] result. The sampled log-probability is the one TRL's forward returns (float32), except for
float64 tiles, whose log-sum-exp is folded here too (float64 in, float64 out: docs/design.md §3).

Checked, else no support (:attr:`TileSupport.failure` says why; :class:`ForwardSupport` warns once and
the caller recomputes the support with :func:`~capo.support.support_from_hidden`, exact but slower):
TRL's private names (:data:`TRL_INTERNALS`, :data:`FOLD_ARGS`), no logit scale or soft-cap, TRL's
1/τ, each row block's tiles contiguous over [0, V), the row count, and each needed row's label equal to
its completion id.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

from capo.support import Support
from capo.tokens import compute_dtype

__all__ = [
    "FOLD_ARGS", "TRL_INTERNALS", "ForwardSupport", "TileSupport", "capture_forward_support",
    "missing_trl_internals",
]  # fmt: skip

TRL_INTERNALS = {
    "trl.kernels.chunked_logprob": (
        "ChunkedLogProbFunction", "TOKEN_CHUNK_SIZE", "_forward_tile", "_forward_kernel", "_use_triton",
    ),
    "trl.trainer.utils": ("add_fused_lm_head", "_CHUNKED_LOGPROB_CHUNK_SIZE", "_use_triton"),
}  # fmt: skip
"""What the capture reads and wraps of TRL, by module (verified with TRL 1.16)."""

FOLD_ARGS = ("vocab_start", "n_cols", "logit_scale", "inv_t", "HAS_SOFTCAP")
"""The arguments of TRL's folds the capture reads by name (besides the tile, first, and targets, third)."""

_FOLDS = {"_forward_tile": False, "_forward_kernel": True}
"""TRL's folds, and whether the rows they see are compact (TRL calls the kernel iff it scores compactly)."""


def _arg_names(fn: Any) -> list[str] | None:
    """The parameter names of a fold: a Python function or a Triton ``JITFunction`` (``arg_names``)."""
    names = getattr(fn, "arg_names", None)
    if names is not None:
        return list(names)
    try:
        return list(inspect.signature(getattr(fn, "fn", fn)).parameters)
    except (TypeError, ValueError):
        return None


def missing_trl_internals() -> str | None:
    """Why the installed TRL cannot be captured (a missing name or fold argument), or None."""
    for module_name, names in TRL_INTERNALS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            return f"cannot import {module_name} ({err})"
        missing = [name for name in names if not hasattr(module, name)]
        if missing:
            return f"{module_name} has no {', '.join(missing)} (verified with TRL 1.16)"
    kernels = importlib.import_module("trl.kernels.chunked_logprob")
    for name in _FOLDS:
        fold = getattr(kernels, name)
        if isinstance(fold, _Fold):
            return "a forward-support capture is already active"
        params = _arg_names(fold)
        if params is None or len(params) < 3 or any(a not in params for a in FOLD_ARGS):
            return f"trl.kernels.chunked_logprob.{name} does not take {', '.join(FOLD_ARGS)}"
    return None


def _row_maps(
    attention_mask: torch.Tensor, logits_to_keep: int, valid: torch.Tensor
) -> dict[bool, torch.Tensor]:
    """Output index (or −1) of each row TRL scores: {compact: [valid labels], not compact: [B·(L−1)]}.

    TRL's labels: ``input_ids`` where ``attention_mask``, −100 elsewhere and before the last T
    positions; shifted position p is labelled by position p + 1. Completion token (b, j), j < T, is row
    b·(L−1) + L−1−T+j; its output index is its rank among the ``valid`` [B, T] tokens (row-major).
    """
    b, length = attention_mask.shape
    t, dev = int(logits_to_keep), attention_mask.device
    valid = valid.to(dev, torch.bool)
    out = torch.full((b, length - 1), -1, dtype=torch.int64, device=dev)
    rank = torch.cumsum(valid.flatten(), 0).view(b, t) - 1
    out[:, length - 1 - t :] = torch.where(valid, rank, -1)
    labelled = torch.zeros((b, length - 1), dtype=torch.bool, device=dev)
    labelled[:, length - 1 - t :] = attention_mask[:, length - t :].bool()
    return {False: out.flatten(), True: out[labelled]}


class _Block:
    """The running top-k of one block of rows (one token chunk of TRL's loop): its valid rows only."""

    def __init__(self, rows: torch.Tensor | None, out: torch.Tensor, n: int) -> None:
        self.rows, self.out, self.n = rows, out, n  # rows: tile rows to fold (None: all); out: [M]
        self.cols = 0
        self.vals: torch.Tensor | None = None  # [M, ≤k] z, decreasing
        self.ids: torch.Tensor | None = None  # [M, ≤k] vocabulary ids
        self.target_z: torch.Tensor | None = None  # [M] z of the label
        self.targets: torch.Tensor | None = None  # [M] TRL's labels
        self.seen: torch.Tensor | None = None  # [M] bool: the label's column was folded
        # [M] logsumexp of z, float64 tiles only (TRL's is float32)
        self.lse: torch.Tensor | None = None

    def fold(
        self, tile: torch.Tensor, targets: torch.Tensor, start: int, k: int, tau: float
    ) -> None:
        """Fold one tile [n, C] (columns start..start+C) into the running top-k."""
        cols = tile.shape[1]
        self.cols += cols
        if self.out.numel() == 0:
            return
        x = tile if self.rows is None else tile.index_select(0, self.rows)
        t = targets if self.rows is None else targets.index_select(0, self.rows)
        cdt = compute_dtype(tile.dtype)
        vals, pos = torch.topk(x, min(k, cols), dim=1)  # z = x / τ is monotone in x
        vals, ids = vals.to(cdt), pos + start
        vals = vals / tau if tau != 1.0 else vals
        if self.vals is not None and self.ids is not None:
            vals, ids = torch.cat([self.vals, vals], 1), torch.cat([self.ids, ids], 1)
            vals, pos = torch.topk(vals, min(k, vals.shape[1]), dim=1)
            ids = ids.gather(1, pos)
        self.vals, self.ids = vals, ids
        local = t - start
        inside = (local >= 0) & (local < cols)
        z = x.gather(1, local.clamp(0, cols - 1)[:, None]).squeeze(1).to(cdt)
        z = z / tau if tau != 1.0 else z
        old = torch.zeros_like(z) if self.target_z is None else self.target_z
        self.target_z = torch.where(inside, z, old)
        self.seen = inside if self.seen is None else self.seen | inside
        self.targets = t
        if cdt == torch.float64:
            lse = torch.logsumexp(x / tau if tau != 1.0 else x, dim=1)
            self.lse = lse if self.lse is None else torch.logaddexp(self.lse, lse)


class TileSupport:
    """The support of one forward's valid tokens, folded from its logit tiles (module docstring).

    Args:
        input_ids: [B, L] the forward's prompt and completion ids.
        attention_mask: [B, L] its attention mask.
        logits_to_keep: T, the completion length.
        valid: [B, T] bool, the tokens whose support is needed (N of them).
        support_size: k, at most V.
        temperature: τ > 0, the policy's sampling temperature.
        vocab_size: V.
        dtype: dtype of an empty result (no tile folded).
    """

    def __init__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
        valid: torch.Tensor,
        support_size: int,
        temperature: float,
        vocab_size: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        t = int(logits_to_keep)
        valid = valid.to(input_ids.device, torch.bool)
        self.valid, self.sampled = valid, input_ids[:, -t:][valid]
        self.k, self.tau = min(support_size, vocab_size), temperature
        self.vocab, self.dtype = vocab_size, dtype
        self.maps = _row_maps(attention_mask, t, valid)
        self.failure: str | None = None
        self.compact: bool | None = None
        self.rows_seen = 0
        self.block: _Block | None = None
        self.result: tuple[torch.Tensor, ...] | None = None  # [N, k] ids, π; [N] index, log π(a)
        self.bad: torch.Tensor | None = None  # device count of wrong labels or unseen label columns

    def observe(
        self, names: list[str], args: tuple[Any, ...], kwargs: dict[str, Any], compact: bool
    ) -> None:
        """One call of TRL's fold (its parameter ``names``, positional ``args`` and ``kwargs``)."""
        if self.failure is not None:
            return
        try:
            bound = {**dict(zip(names, args, strict=False)), **kwargs}
            self._tile(args[0], args[2], bound, compact)
        except Exception as err:  # never break TRL's forward: this forward falls back, saying why
            self.failure = f"the capture failed ({type(err).__name__}: {err})"

    def _tile(
        self, tile: torch.Tensor, targets: torch.Tensor, a: dict[str, Any], compact: bool
    ) -> None:
        if float(a["logit_scale"]) != 1.0 or bool(a["HAS_SOFTCAP"]):
            self.failure = "the logits are scaled or soft-capped"
        elif float(a["inv_t"]) != 1.0 / self.tau:
            self.failure = f"TRL's forward runs at 1/τ = {float(a['inv_t'])}, not 1/{self.tau}"
        elif self.compact is not None and compact != self.compact:
            self.failure = "TRL's forward mixed compact and full rows"
        if self.failure is not None:
            return
        self.compact, start, n = compact, int(a["vocab_start"]), int(tile.shape[0])
        if start == 0:
            self._finish_block()
            self._begin_block(n)
        elif self.block is None or start != self.block.cols or n != self.block.n:
            self.failure = f"a tile at column {start} of {n} rows is out of TRL's loop order"
        if self.failure is None and self.block is not None:
            self.block.fold(tile, targets, start, self.k, self.tau)

    def _begin_block(self, n: int) -> None:
        row_map = self.maps[bool(self.compact)]
        if self.rows_seen + n > row_map.numel():
            self.failure = f"TRL's forward scored more than the {row_map.numel()} rows expected"
            return
        index = row_map[self.rows_seen : self.rows_seen + n]
        self.rows_seen += n
        keep = index >= 0
        rows = keep.nonzero().squeeze(1)
        self.block = _Block(None if rows.numel() == n else rows, index[keep], n)

    def _finish_block(self) -> None:
        """Close the current block: the sampled id joins its support, π over it, filed by output index."""
        block, self.block = self.block, None
        if block is None or self.failure is not None:
            return
        if block.cols != self.vocab:
            self.failure = (
                f"a block of rows saw {block.cols} vocabulary columns, not V = {self.vocab}"
            )
            return
        if block.out.numel() == 0:
            return
        assert block.vals is not None and block.ids is not None and block.target_z is not None
        assert block.targets is not None and block.seen is not None
        sampled = self.sampled[block.out]
        bad = (block.targets != sampled).sum() + (~block.seen).sum()
        self.bad = bad if self.bad is None else self.bad + bad
        vals, ids = block.vals, block.ids
        absent = ~(ids == sampled[:, None]).any(dim=1)
        ids[:, -1] = torch.where(absent, sampled, ids[:, -1])
        vals[:, -1] = torch.where(absent, block.target_z, vals[:, -1])
        index = torch.argmax((ids == sampled[:, None]).to(torch.int8), dim=1)
        if self.result is None:
            n, dev = self.sampled.numel(), vals.device
            self.result = (
                torch.zeros(n, self.k, dtype=torch.int64, device=dev),
                torch.full((n, self.k), torch.nan, dtype=vals.dtype, device=dev),
                torch.zeros(n, dtype=torch.int64, device=dev),
                torch.full((n,), torch.nan, dtype=vals.dtype, device=dev),
            )
        out_ids, out_probs, out_index, out_lp = self.result
        out_ids[block.out], out_probs[block.out] = ids, torch.softmax(vals, dim=1)
        out_index[block.out] = index
        if block.lse is not None:
            out_lp[block.out] = block.target_z - block.lse

    def support(self, logps: torch.Tensor) -> Support | None:
        """The N valid tokens' :class:`~capo.support.Support`, or None (:attr:`failure` says why).

        Args:
            logps: [B, T] the log-probabilities the forward returned (TRL's, at the temperature).
        """
        self._finish_block()
        if self.failure is None and self.compact is not None:
            expected = self.maps[self.compact].numel()
            if self.rows_seen != expected:
                self.failure = (
                    f"TRL's forward scored {self.rows_seen} rows, not the {expected} expected"
                )
        n = self.sampled.numel()
        if self.failure is None and n and (self.result is None or self.bad is None):
            self.failure = "TRL's forward folded no tile of the valid tokens"
        if self.failure is None and self.bad is not None and int(self.bad):  # the one host sync
            self.failure = "the rows of TRL's forward do not map onto the completion tokens"
        if self.failure is not None:
            return None
        if self.result is None:
            ids = torch.zeros(0, self.k, dtype=torch.int64, device=self.sampled.device)
            self.result = (ids, ids.to(self.dtype), ids[:, 0], ids[:, 0].to(self.dtype))
        ids, probs, index, lp = self.result
        if probs.dtype != torch.float64:  # TRL's log-prob (float32): as exact as a float32 head's
            lp = logps.detach()[self.valid.to(logps.device)].to(probs.device, probs.dtype)
        return Support(support_ids=ids, support_probs=probs, action_index=index, sampled_logprob=lp)


class _Fold:
    """One of TRL's folds, wrapped: each tile goes to the capture first, then unchanged to the fold."""

    def __init__(self, original: Any, tiles: TileSupport, compact: bool) -> None:
        self.original, self.tiles, self.compact = original, tiles, compact
        self.names = _arg_names(original) or []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The torch fold (or an un-jitted kernel): observe, then fold."""
        self.tiles.observe(self.names, args, kwargs, self.compact)
        return self.original(*args, **kwargs)

    def __getitem__(self, grid: Any) -> Any:
        """The Triton kernel's launch ``kernel[grid](...)``: observe, then launch."""
        launch = self.original[grid]

        def run(*args: Any, **kwargs: Any) -> Any:
            self.tiles.observe(self.names, args, kwargs, self.compact)
            return launch(*args, **kwargs)

        return run


@contextmanager
def capture_forward_support(tiles: TileSupport) -> Iterator[TileSupport]:
    """Fold the tiles of the forwards run in the block into ``tiles`` (TRL's folds wrapped, then restored)."""
    reason = missing_trl_internals()
    if reason is not None:
        tiles.failure = reason
        yield tiles
        return
    kernels = importlib.import_module("trl.kernels.chunked_logprob")
    originals = {name: getattr(kernels, name) for name in _FOLDS}
    try:
        for name, compact in _FOLDS.items():
            setattr(kernels, name, _Fold(originals[name], tiles, compact))
        yield tiles
    finally:
        for name, fold in originals.items():
            setattr(kernels, name, fold)


class ForwardSupport:
    """The trainer's source of supports: one capture per training forward, one warning if it falls back.

    Args:
        vocab_size: V.
        support_size: k.
        temperature: τ.
        dtype: the support's dtype when no tile is folded (float64 for a float64 head, else float32).
        enabled: whether supports are needed at all (else :meth:`capture` wraps nothing).
    """

    def __init__(
        self, vocab_size: int, support_size: int, temperature: float, dtype: torch.dtype,
        enabled: bool = True,
    ) -> None:  # fmt: skip
        self.vocab_size, self.support_size, self.temperature = vocab_size, support_size, temperature
        self.dtype, self.enabled, self.warned = dtype, enabled, False

    def capture(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
        valid: torch.Tensor,
    ) -> AbstractContextManager[TileSupport | None]:  # fmt: skip
        """:func:`capture_forward_support` of one forward: [B, L] ids and mask, T, [B, T] valid tokens.

        Yields None (and captures nothing) when not :attr:`enabled`.
        """
        if not self.enabled:
            return nullcontext()
        tiles = TileSupport(
            input_ids, attention_mask, logits_to_keep, valid, self.support_size, self.temperature,
            self.vocab_size, self.dtype,
        )  # fmt: skip
        return capture_forward_support(tiles)

    def result(self, tiles: TileSupport | None, logps: torch.Tensor) -> Support | None:
        """The captured forward's support ([B, T] ``logps``: its log-probs); None after one warning.

        None without a capture (``tiles`` None).
        """
        support = None if tiles is None else tiles.support(logps)
        if tiles is not None and support is None and not self.warned:
            self.warned = True
            warnings.warn(
                "CAPO recomputes the top-k support from the hidden states (a second LM head: exact, "
                f"slower) because it cannot take it from TRL's forward: {tiles.failure}",
                stacklevel=2,
            )
        return support
