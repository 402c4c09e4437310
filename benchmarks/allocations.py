"""Counting what torch really does: live and peak tensor bytes, FLOPs, bytes moved, kernels, host syncs.

:class:`OpCounter` is a ``TorchDispatchMode``: every aten op that runs inside it is executed for real
(same code, same shapes, same dtypes as in training) and recorded.

- Memory: each op output whose storage is new (not one of the op's inputs) is an allocation of
  ``storage.nbytes()``; it is freed when its storage dies (a ``weakref.finalize`` on the storage,
  which torch keeps alive exactly as long as any tensor or view of it). ``live`` is the sum over
  storages allocated inside the counter and still alive; ``peak`` its maximum. Tensors that existed
  before the counter (inputs, model weights, state) are not counted, nor is the caching allocator's
  rounding or fragmentation.
- Work, per non-view op: FLOPs from ``torch.utils.flop_counter.flop_registry`` (matmul-like ops; the
  element-wise rest is counted as memory traffic only), bytes moved = the sizes of all tensor inputs
  plus all tensor outputs (each op reads its operands once and writes its results once: no fusion,
  no cache reuse), except for indexed reads (``index_select``, ``gather``, ``index``: the selected
  rows, read once and written once, plus the indices) and indexed writes (``index_add_``,
  ``index_copy_``, ``index_put_``, ``scatter*``: the touched rows read and written, the source and
  indices read, i.e. 3x the other operands), CAPO's fused gathers (``capo.adam_token_directions``,
  ``capo.gather_dot``: each gathered table row read once per (token, support entry), the other operands
  read and the result written once), one kernel launch per op, and
  ``aten._local_scalar_dense`` counted as a host sync (``bool(t)``, ``int(t)``, ``t.item()``: the
  CPU waits for the device).

Records are grouped by phase occurrence (:meth:`OpCounter.phase`; ops outside any phase go to "other").
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

__all__ = ["OpCounter", "OpRecord", "PhaseTotals", "bytes_moved"]

_SYNC = torch.ops.aten._local_scalar_dense.default


@dataclass(frozen=True)
class OpRecord:
    """One executed op: its FLOPs (matmul-like ops only), bytes moved and compute dtype."""

    name: str
    flops: int
    bytes: int
    dtype: torch.dtype
    sync: bool


@dataclass
class PhaseTotals:
    """Memory of one phase: live bytes when it started and ended, and its peak."""

    live_start: int = 0
    live_end: int = 0
    peak: int = 0
    ops: list[OpRecord] = field(default_factory=list)

    @property
    def retained(self) -> int:
        """Bytes the phase allocated and left alive."""
        return self.live_end - self.live_start

    @property
    def scratch(self) -> int:
        """Peak bytes above what the phase started with and what it left: its temporaries."""
        return self.peak - max(self.live_start, self.live_end)


_INDEXED_READS = {"aten.index_select", "aten.gather", "aten.index", "aten.embedding", "aten.take"}
_INDEXED_WRITES = {
    "aten.index_add_", "aten.index_add", "aten.index_copy_", "aten.index_copy", "aten.index_put_",
    "aten.index_put", "aten._index_put_impl_", "aten.scatter_", "aten.scatter", "aten.scatter_add_",
    "aten.scatter_add", "aten.scatter_reduce_", "aten.scatter_reduce", "aten.index_fill_",
}  # fmt: skip


_FUSED_GATHERS = {"capo.adam_token_directions": 2, "capo.gather_dot": 1}
"""CAPO's fused ops: how many leading operands are tables gathered by the next one (the [T, k] index)."""


def _fused_gather_bytes(tables: int, ins: list[torch.Tensor], outs: list[torch.Tensor]) -> int:
    index = ins[tables]
    gathered = sum(index.numel() * t[0].numel() * t.element_size() for t in ins[:tables])
    return gathered + sum(_nbytes(t) for t in ins[tables:]) + sum(_nbytes(t) for t in outs)


def bytes_moved(name: str, ins: list[torch.Tensor], outs: list[torch.Tensor]) -> int:
    """Bytes an op reads and writes (module docstring); ``ins[0]`` is the indexed tensor if any."""
    if name in _FUSED_GATHERS:
        return _fused_gather_bytes(_FUSED_GATHERS[name], ins, outs)
    out_ptrs = {t.untyped_storage().data_ptr() for t in outs}
    if name in _INDEXED_READS:
        index = sum(_nbytes(t) for t in ins[1:] if t.untyped_storage().data_ptr() not in out_ptrs)
        return 2 * sum(_nbytes(t) for t in outs) + index
    if name in _INDEXED_WRITES:
        return 3 * sum(
            _nbytes(t) for t in ins[1:] if t.untyped_storage().data_ptr() not in out_ptrs
        )
    return sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs)


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class OpCounter(TorchDispatchMode):
    """Runs every op for real and records its allocations and work (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}
        self.phases: dict[str, list[PhaseTotals]] = defaultdict(list)
        self._current = PhaseTotals()
        self.phases["other"].append(self._current)

    @contextmanager
    def phase(self, name: str) -> Iterator[PhaseTotals]:
        """Attribute the ops and allocations inside the block to a new occurrence of phase ``name``."""
        outer, outer_peak = self._current, self.peak
        totals = PhaseTotals(live_start=self.live)
        self.phases[name].append(totals)
        self._current, self.peak = totals, self.live
        try:
            yield totals
        finally:
            totals.peak, totals.live_end = self.peak, self.live
            self._current, self.peak = outer, max(outer_peak, self.peak)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in inputs or key in self._sizes or storage.nbytes() == 0:
            return
        self._sizes[key] = storage.nbytes()
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Run ``func`` and record it (module docstring)."""
        kwargs = kwargs or {}
        ins = _tensors((args, kwargs))
        out = func(*args, **kwargs)
        outs = _tensors(out)
        in_storages = {t.untyped_storage().data_ptr() for t in ins}
        for t in outs:
            self._track(t, in_storages)
        if not func.is_view:
            packet = func._overloadpacket
            flops = (
                int(flop_registry[packet](*args, **kwargs, out_val=out))
                if packet in flop_registry
                else 0
            )
            dtype = ins[0].dtype if ins else (outs[0].dtype if outs else torch.float32)
            moved = bytes_moved(str(packet), ins, outs)
            self._current.ops.append(OpRecord(str(packet), flops, moved, dtype, func is _SYNC))
        return out
