"""One rank's CAPO optimizer step run for real under :class:`allocations.OpCounter` (see projection.py).

The step calls the library functions the trainer calls, in its order (``CAPOTrainer._capo_micro_batch``
for each micro-batch, ``CAPOStep.finish`` at the step end), with a one-process all-reduce (the
identity). Hidden states and the output layer exist before the step (the model's), as do the moments'
stored rows; everything CAPO allocates is counted.

The support comes as in training (``support="forward"``): TRL's fused LM head
(``ChunkedLogProbFunction``, the policy forward's own work, neither counted nor timed as CAPO's) runs on
the micro-batch with :func:`capo.forward_support.capture_forward_support`, whose fold of each logit
tile is counted (phase ``support``); ``support="hidden"`` recomputes it from the hidden states
(:func:`capo.support.support_from_hidden`, a second LM head, counted in ``select``: the code before).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache

import torch
from allocations import OpCounter, OpRecord, PhaseTotals
from torch.utils._python_dispatch import _disable_current_modes

from capo.forward_support import TileSupport, capture_forward_support
from capo.gradients import last_layer_gradient
from capo.masking import accept_micro_batch
from capo.moments import UPDATE_BLOCK_BYTES, SparseAdamMoments
from capo.moments_sync import allreduce_sparse_rows, global_shifts, merge_rows
from capo.selection import Thresholds
from capo.steps import AdamStep
from capo.support import Support
from capo.tokens import TokenBatch
from capo.true_kl import full_vocab_kl

__all__ = [
    "MICRO_PHASES",
    "STEP_END_PHASES",
    "Hardware",
    "measure_moments_update",
    "measure_step",
    "measure_true_kl",
    "rows_key",
    "run_step",
    "synthetic_inputs",
    "trl_lm_head",
]

LR = 1.5e-5
TEMPERATURE = 0.9
POOL_SCALE = 8.0
"""Pool rows of the output layer are scaled by this power of two (exact in bf16): top-k stays in the pool."""
MICRO_PHASES = ("support", "select", "gradient", "accumulate", "accepted")
STEP_END_PHASES = ("merge", "allreduce", "global_shifts", "moments_update")


def rows_key(quantity: str) -> str:
    """The row count a quantity scales with: a micro-batch's own rows, or the step's union.

    The running gradient sum grows to the step's union over the micro-batches, so its growth per
    micro-batch (``mem.accumulate.retained``) scales with U.
    """
    phase = quantity.split(".")[1]
    if quantity == "mem.accumulate.retained":
        return "U"
    return "U_micro" if phase in MICRO_PHASES or phase == "peak_forward" else "U"


@dataclass(frozen=True)
class Hardware:
    """H100 SXM5 figures (dense, no sparsity): peak FLOP/s by dtype, HBM3 bandwidth, fixed costs."""

    bf16_flops: float = 989e12
    fp32_flops: float = 67e12
    fp64_flops: float = 67e12
    bandwidth: float = 3.35e12
    launch_s: float = 5e-6
    sync_s: float = 20e-6

    def op_seconds(self, op: OpRecord) -> float:
        """Roofline time of one op: max(FLOPs / peak of its dtype, bytes / bandwidth)."""
        peak = {torch.bfloat16: self.bf16_flops, torch.float16: self.bf16_flops}.get(
            op.dtype, self.fp64_flops if op.dtype == torch.float64 else self.fp32_flops
        )
        return max(op.flops / peak, op.bytes / self.bandwidth)


@lru_cache(maxsize=1)
def _weight(vocab: int, hidden: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    w = torch.empty(vocab, hidden, dtype=dtype)
    for r0 in range(0, vocab, 8192):  # float32 temporaries of 8192 rows at a time
        w[r0 : r0 + 8192] = torch.randn(min(8192, vocab - r0), hidden, generator=g) / math.sqrt(
            hidden
        )
    return w


def _phase_quantities(phases: dict[str, list[PhaseTotals]], hw: Hardware) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in MICRO_PHASES + STEP_END_PHASES:
        occ = phases[name] or [
            PhaseTotals()
        ]  # "support" is empty when it is recomputed in "select"
        out[f"mem.{name}.retained"] = sum(p.retained for p in occ) / len(occ)
        out[f"mem.{name}.scratch"] = max(p.scratch for p in occ)
        out[f"mem.{name}.peak"] = max(p.peak for p in occ)  # all CAPO buffers alive then
        ops = [op for p in occ for op in p.ops]
        out[f"work.{name}.flops"] = float(sum(op.flops for op in ops))
        out[f"work.{name}.bytes"] = float(sum(op.bytes for op in ops))
        out[f"work.{name}.roofline_s"] = sum(hw.op_seconds(op) for op in ops)
        out[f"work.{name}.kernels"] = float(sum(not op.sync for op in ops))
        out[f"work.{name}.syncs"] = float(sum(op.sync for op in ops))
    out["mem.peak_forward"] = max((p.peak for n in MICRO_PHASES for p in phases[n]), default=0)
    out["mem.peak_step_end"] = max((p.peak for n in STEP_END_PHASES for p in phases[n]), default=0)
    return out


Phase = Callable[[str], AbstractContextManager[object]]
"""``phase(name)``: a context manager around each part of the step (:meth:`OpCounter.phase`, or none)."""


def no_phase(name: str) -> AbstractContextManager[object]:
    """A :data:`Phase` that records nothing."""
    del name
    return nullcontext()


@contextmanager
def _counted_folds(counter: OpCounter | None, phase: Phase) -> Iterator[None]:
    """While TRL's LM head runs uncounted, count CAPO's fold of each tile (phase ``support``)."""
    if counter is None:
        yield
        return
    observe = TileSupport.observe

    def counted(self: TileSupport, *args: object, **kwargs: object) -> None:
        with counter, phase("support"):  # re-enters the counter TRL's head runs outside of
            observe(self, *args, **kwargs)  # type: ignore[arg-type]

    TileSupport.observe = counted  # type: ignore[method-assign]
    try:
        with _disable_current_modes():
            yield
    finally:
        TileSupport.observe = observe  # type: ignore[method-assign]


@torch.no_grad()
def trl_lm_head(weight: torch.Tensor, inputs: tuple) -> torch.Tensor:
    """[n] log-probs of one micro-batch's tokens from TRL's fused LM head (the policy forward's own work)."""
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    hidden, ids, _, _ = inputs
    return ChunkedLogProbFunction.apply(
        hidden[0], weight, None, ids[0].to(hidden.device), TEMPERATURE, _CHUNKED_LOGPROB_CHUNK_SIZE
    )[0]


def forward_support(
    phase: Phase, counter: OpCounter | None, weight: torch.Tensor, inputs: tuple, k: int
) -> Support | None:
    """The micro-batch's support as in training: TRL's fused LM head, CAPO's fold of its tiles."""
    _, ids, valid, _ = inputs
    seq = torch.cat([torch.zeros_like(ids[:, :1]), ids], dim=1)  # one prompt token, the completion
    tiles = TileSupport(
        seq, torch.ones_like(seq), ids.shape[1], valid, k, TEMPERATURE, weight.shape[0]
    )
    with capture_forward_support(tiles), _counted_folds(counter, phase):
        logps = trl_lm_head(weight, inputs)
    with phase("support"):
        return tiles.support(logps[None])


def _micro_batch(
    phase: Phase,
    weight: torch.Tensor,
    k: int,
    inputs: tuple,
    moments: SparseAdamMoments,
    options: dict,
    parts: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], TokenBatch, int]:
    """``CAPOTrainer._capo_micro_batch``, every token accepted: (running gradient, tokens, rows)."""
    hidden, ids, valid, adv = inputs
    chunk = options["chunk_size"]
    support = None
    if options["support"] == "forward":
        support = forward_support(phase, options["counter"], weight, inputs, k)
        assert support is not None, "the projection's forward did not yield a support"
    with phase("select"):
        sel = accept_micro_batch(
            hidden, ids, valid, adv, weight=weight, bias=None, support_size=k,
            temperature=TEMPERATURE, step=AdamStep(LR, moments),
            thresholds=Thresholds(None, None, None), granularity="token", chunk_size=chunk,
            support=support, kernel=options["kernel"],
        )  # fmt: skip
    applied = sel.keep_flat
    with phase("gradient"):
        part = last_layer_gradient(sel.batch, applied, reduction="sum", chunk_size=chunk)
        rows = part[0].numel()
    with phase("accumulate"):  # its own phase: a peak is fitted only where one moment dominates it
        h, dev = moments.hidden_size, weight.device
        merged = merge_rows([*parts, part], h, torch.float32, dev)
        parts.clear()  # as CAPOStep.add's rebinding of grad_part: the old sum is freed here
        parts.append(merged)
        del part, merged
    with phase("accepted"):
        accepted = sel.batch.select_tokens(applied)
    return parts, accepted, rows


def _step_end(
    phase: Phase,
    parts: list[tuple[torch.Tensor, torch.Tensor]],
    accepted: list[TokenBatch],
    moments: SparseAdamMoments,
    options: dict,
) -> int:
    """``CAPOStep.finish`` on one process; returns U, the rows of the accepted gradient."""
    n_acc = sum(b.num_tokens for b in accepted)
    dev, chunk = parts[0][1].device, options["chunk_size"]
    with phase("merge"):
        ids, rows = merge_rows(parts, moments.hidden_size, torch.float32, dev)
        parts.clear()
    with phase("allreduce"):
        union, grad_sum = allreduce_sparse_rows(ids, rows, moments.vocab_size, lambda t: t)
        del ids, rows
    with phase("global_shifts"):
        grad = grad_sum.div_(max(n_acc, 1))
        global_shifts(
            AdamStep(LR, moments), union, grad, accepted, n_acc, lambda t: t, chunk or 256,
            options["kernel"],
        )  # fmt: skip
    with phase("moments_update"):
        moments.update(union, grad)
    return int(union.numel())


def run_step(
    weight: torch.Tensor,
    inputs: list[tuple],
    moments: SparseAdamMoments,
    k: int,
    phase: Phase = no_phase,
    chunk_size: int | None = None,
    kernel: str = "fused",
    support: str = "forward",
    counter: OpCounter | None = None,
) -> tuple[int, float]:
    """One CAPO optimizer step of one rank: the micro-batches ``inputs``, then the step end.

    Args:
        weight: [V, H] output layer.
        inputs: per micro-batch (hidden [1, n, H], sampled ids [1, n], valid [1, n], advantages [1, n]).
        moments: the tracked moments (updated: t += 1).
        k: support size.
        phase: wraps each part of the step.
        chunk_size: ``CAPOConfig.capo_chunk_size`` (None: the library's memory-budget defaults).
        kernel: ``CAPOConfig.capo_shift_kernel`` (default: fused, as ``auto`` on a GPU).
        support: ``forward`` (from TRL's LM head, as in training) or ``hidden`` (recomputed).
        counter: the counter ``phase`` belongs to (TRL's LM head runs outside it).

    Returns:
        (U, the union rows of the step's gradient; the mean rows of one micro-batch's gradient).
    """
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    accepted: list[TokenBatch] = []
    rows_per_micro = 0
    options = {"chunk_size": chunk_size, "kernel": kernel, "support": support, "counter": counter}
    for x in inputs:  # the lists hold the only references: _step_end frees the parts once merged
        parts, tokens, rows = _micro_batch(phase, weight, k, x, moments, options, parts)
        accepted.append(tokens)
        rows_per_micro += rows
        del tokens
    return _step_end(phase, parts, accepted, moments, options), rows_per_micro / len(inputs)


def synthetic_inputs(
    weight: torch.Tensor, micro_batches: int, n: int, pool: int, seed: int
) -> tuple[list[tuple], torch.Tensor]:
    """Micro-batches of n random tokens sampled from ``pool`` rows, and those rows.

    Scale ``weight[rows]`` by :data:`POOL_SCALE` for the run (and back) to keep the top-k supports in
    the pool, so that the step's gradient touches about ``pool`` rows.
    """
    g = torch.Generator().manual_seed(seed)
    vocab, hidden = weight.shape
    rows = torch.randperm(vocab, generator=g)[:pool].to(weight.device)
    dev = weight.device
    inputs = [
        (
            torch.randn(1, n, hidden, generator=g).to(device=dev, dtype=weight.dtype),
            rows[torch.randint(0, pool, (1, n), generator=g).to(dev)],
            torch.ones(1, n, dtype=torch.bool, device=dev),
            torch.randn(1, n, generator=g).to(dev),
        )
        for _ in range(micro_batches)
    ]
    return inputs, rows


def measure_step(
    hidden: int,
    vocab: int,
    k: int,
    micro_batches: int,
    n: int,
    pool: int,
    dtype: torch.dtype,
    chunk_size: int | None = None,
    kernel: str = "fused",
    support: str = "forward",
) -> dict[str, float]:
    """Counted memory and work of one step: M micro-batches of n tokens drawn from ``pool`` rows."""
    weight = _weight(vocab, hidden, dtype)
    inputs, rows = synthetic_inputs(weight, micro_batches, n, pool, seed=n * 7919 + pool)
    moments = SparseAdamMoments(vocab, hidden)
    moments.block_bytes = UPDATE_BLOCK_BYTES["cuda"]  # the update's blocks as on the GPU it models
    weight[rows] *= POOL_SCALE
    try:
        two = [tuple(t[:, :2] for t in inputs[0])]  # two tokens of the first micro-batch
        run_step(weight, two, SparseAdamMoments(vocab, hidden), k,
                 chunk_size=chunk_size, kernel=kernel, support=support)  # fmt: skip
        # ^ uncounted: the fused kernels' one-time check against the plain path happens here
        with OpCounter() as counter:
            u, u_micro = run_step(
                weight, inputs, moments, k, counter.phase, chunk_size, kernel, support, counter
            )
    finally:
        weight[rows] /= POOL_SCALE
    sizes = {"n": float(n), "U": float(u), "U_micro": u_micro}
    return sizes | _phase_quantities(counter.phases, Hardware())


def measure_true_kl(hidden: int, vocab: int, n: int, dtype: torch.dtype) -> dict[str, float]:
    """Counted memory of the true-KL diagnostic: the output-layer copy and one logits chunk's scratch."""
    weight = _weight(vocab, hidden, dtype)
    h = torch.randn(n, hidden, generator=torch.Generator().manual_seed(1)).to(dtype)
    with OpCounter() as counter:
        with counter.phase("head_copy") as copy:
            before = weight.clone()
        with counter.phase("kl") as kl:
            full_vocab_kl(h, before, None, h, weight, None, TEMPERATURE)
    return {"tokens": float(n), "head_copy": float(copy.retained), "scratch": float(kl.scratch)}


def measure_moments_update(
    vocab: int, hidden: int, rows: int, block_bytes: int
) -> dict[str, float]:
    """The moments update measured at U = ``rows`` itself (the first step: the tables grow from 0 to U).

    A GPU's update blocks (``block_bytes``) hold more rows than the grid's U, so a fit over the grid
    would extrapolate one block's temporaries and kernels linearly in U. The gradient and its rows
    exist before (uncounted); the returned peak is above the phase's start.
    """
    g = torch.Generator().manual_seed(2)
    ids = torch.randperm(vocab, generator=g)[:rows].sort().values
    grad = torch.randn(rows, hidden, generator=g).mul_(1e-3)
    moments = SparseAdamMoments(vocab, hidden)
    moments.block_bytes = block_bytes
    with OpCounter() as counter:
        with counter.phase("moments_update"):
            moments.update(ids, grad)
    quantities = _phase_quantities(counter.phases, Hardware())
    return {k: v for k, v in quantities.items() if ".moments_update." in k}
