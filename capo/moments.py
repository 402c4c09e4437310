"""Sparse, lazily decayed Adam moments of the last-layer model W [V, H] (docs/design.md §2, "Moments").

Only rows that a gradient ever touched are stored, compactly: a slot map [V] int64 (−1 = never
touched) and growable tables m, v [R, H] with the step at which each row was last written. A row
absent from an update decays as in dense Adam; the decay β^Δt is applied when the row is read, so a
sequence of :meth:`SparseAdamMoments.update` calls equals a dense [V, H] Adam state up to rounding:

    m_t = β1 m_{t−1} + (1 − β1) g_t,    v_t = β2 v_{t−1} + (1 − β2) g_t²    (g_t = 0 off the rows).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SparseAdamMoments"]


UPDATE_BLOCK_BYTES = {"cpu": 4 * 2**20, "cuda": 64 * 2**20}
"""Size of the row blocks :meth:`SparseAdamMoments.update` works on, per device type: cache-sized on a CPU; on
a GPU larger, since each block costs a dozen kernel launches (at the paper's shape a 4 MiB block means 1,040
blocks and ~70 ms of launches per step, ``benchmarks/projection.py``). Other devices use the CPU's."""


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


class SparseAdamMoments:
    """The tracked Adam moments m, v and step count t of the last-layer model, stored sparsely.

    Memory grows with the number R of rows ever touched (R·H per moment), never with V·H.

    Args:
        vocab_size: V, rows of the output layer.
        hidden_size: H, columns of the output layer.
        betas: (β1, β2) of Adam.
        eps: ε of Adam (added outside the square root, as in ``torch.optim.Adam``).
        dtype: storage dtype of m and v. None (the default) stores float32 and promotes the tables
            (exactly) to float64 the first time a float64 gradient arrives (docs/design.md §3: float64
            inputs are computed in float64); an explicit dtype is kept as given. Storage narrower
            than float32 (bf16) is updated and decayed in float32 and written back with stochastic
            rounding (:meth:`_store`), identically on every rank (a fixed-seed generator).
        device: where the tables live (and the update's block size, :data:`UPDATE_BLOCK_BYTES`, kept in
            the ``block_bytes`` attribute).
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if int(vocab_size) < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if int(hidden_size) < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self._dtype_explicit = dtype is not None
        dtype = torch.float32 if dtype is None else dtype
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.betas = (b1, b2)
        self.eps = float(eps)
        self.dtype = dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self._rounding = (  # the stochastic rounding of bf16 storage: the same stream on every rank
            torch.Generator(device=self.device).manual_seed(self.vocab_size * 31 + self.hidden_size)
            if dtype == torch.bfloat16
            else None
        )
        self.t = 0
        self.block_bytes = UPDATE_BLOCK_BYTES.get(self.device.type, UPDATE_BLOCK_BYTES["cpu"])
        self._reset(capacity=0)

    def _reset(self, capacity: int) -> None:
        dev, h = self.device, self.hidden_size
        self._slot = torch.full((self.vocab_size,), -1, dtype=torch.int64, device=dev)
        self._ids = torch.empty(capacity, dtype=torch.int64, device=dev)
        self._last = torch.zeros(capacity, dtype=torch.int64, device=dev)
        self._m = torch.zeros(capacity, h, dtype=self.dtype, device=dev)
        self._v = torch.zeros(capacity, h, dtype=self.dtype, device=dev)
        self._count = 0

    @property
    def num_rows(self) -> int:
        """R, the number of rows ever touched (and stored)."""
        return self._count

    @property
    def row_ids(self) -> torch.Tensor:
        """[R] int64, the stored vocabulary ids in the order they were first touched."""
        return self._ids[: self._count]

    def _check_ids(self, name: str, row_ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(row_ids, torch.Tensor) or row_ids.dim() != 1:
            raise ValueError(f"{name} must be a 1-D int64 tensor, got {row_ids!r:.80}")
        if row_ids.dtype != torch.int64:
            raise ValueError(f"{name} must be int64, got {row_ids.dtype} {_shape(row_ids)}")
        if row_ids.numel() and bool(((row_ids < 0) | (row_ids >= self.vocab_size)).any()):
            raise ValueError(
                f"{name} {_shape(row_ids)} has ids outside [0, vocab_size = {self.vocab_size})"
            )
        return row_ids.to(self.device)

    def _decay(self, slots: torch.Tensor, at_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[R] factors β1^Δt, β2^Δt (float64) bringing stored rows ``slots`` to step ``at_step``."""
        dt = (at_step - self._last[slots]).to(torch.float64)
        b1 = torch.tensor(self.betas[0], dtype=torch.float64, device=self.device)
        b2 = torch.tensor(self.betas[1], dtype=torch.float64, device=self.device)
        return torch.pow(b1, dt), torch.pow(b2, dt)

    def lookup(
        self, row_ids: torch.Tensor, *, check: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where rows are stored and how far they have decayed: the parts of :meth:`read`.

        For fused readers (:meth:`capo.AdamStep.token_directions`) that scale rows while they use
        them instead of materialising decayed copies first.

        Args:
            row_ids: [R] int64 vocabulary ids (repeats allowed).
            check: validate ``row_ids`` (dtype, range); pass False only for ids already checked.

        Returns:
            (slots [R] int64, β1^Δt [R], β2^Δt [R] float64, Δt = t − step last written): the moments
            at step t are ``β^Δt · table[slot]``. Rows never touched get slot 0 and factor 0.
        """
        if check:
            row_ids = self._check_ids("row_ids", row_ids)
        else:
            row_ids = row_ids.to(self.device)
        slot = self._slot[row_ids]
        known = slot >= 0
        safe = slot.clamp_min(0)
        if self._count == 0:
            z = torch.zeros(row_ids.numel(), dtype=torch.float64, device=self.device)
            return safe, z, z.clone()
        d1, d2 = self._decay(safe, self.t)
        return safe, torch.where(known, d1, 0.0), torch.where(known, d2, 0.0)

    def gather(
        self, slots: torch.Tensor, *, scratch: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Undecayed stored rows (m, v) [R, H] at ``slots`` from :meth:`lookup`.

        Args:
            slots: [R] int64 slots from :meth:`lookup`.
            scratch: write into two scratch buffers kept by this object and reused by the next
                call with ``scratch=True`` (valid until then; for fused readers that consume them
                at once). Fresh tensors would be page-faulted in on every call on CPU, which costs
                more than the gather itself; the buffers hold at most the largest R·H asked for.

        Returns:
            (m, v), each [R, H] in the storage dtype.
        """
        r = slots.numel()
        if scratch:
            m, v = self._scratch_rows(r)
        else:
            shape = (r, self.hidden_size)
            m = torch.empty(shape, dtype=self.dtype, device=self.device)
            v = torch.empty(shape, dtype=self.dtype, device=self.device)
        if self._count == 0:
            return m.zero_(), v.zero_()
        torch.index_select(self._m, 0, slots, out=m)
        torch.index_select(self._v, 0, slots, out=v)
        return m, v

    def tables(self, min_rows: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored rows (m, v), each [R, H] in the storage dtype, undecayed: views, not copies.

        For fused readers (:func:`capo.fused_shift.adam_token_directions`) that gather at the slots of
        :meth:`lookup` themselves. Read only. With fewer than ``min_rows`` rows stored, zero rows are
        appended (a copy) so that every slot :meth:`lookup` returns is in range.
        """
        n = self._count
        if n >= min_rows:
            return self._m[:n], self._v[:n]
        pad = torch.zeros(min_rows - n, self.hidden_size, dtype=self.dtype, device=self.device)
        return torch.cat([self._m[:n], pad]), torch.cat([self._v[:n], pad])

    def _scratch_rows(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        buf = getattr(self, "_scratch", None)
        if buf is None or buf.shape[1] < rows * self.hidden_size or buf.dtype != self.dtype:
            buf = torch.empty(2, rows * self.hidden_size, dtype=self.dtype, device=self.device)
            self._scratch = buf
        n = rows * self.hidden_size
        return buf[0, :n].view(rows, -1), buf[1, :n].view(rows, -1)

    def read(self, row_ids: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The moments of the given rows at the current step t, decayed as dense Adam would.

        Args:
            row_ids: [R] int64 vocabulary ids (repeats allowed).
            check: validate ``row_ids``; False when they are known to lie in [0, V) on this device
                (the step models' ids, validated with their token batch).

        Returns:
            (m, v), each [R, H] in the storage dtype; rows never touched are zero. Fresh tensors.
        """
        if check:
            row_ids = self._check_ids("row_ids", row_ids)
        slots, d1, d2 = self.lookup(row_ids, check=False)
        m, v = self.gather(slots)
        if self._count:
            cdt = self._arith_dtype
            for table, decay in ((m, d1), (v, d2)):
                if cdt == self.dtype:
                    table.mul_(decay.to(cdt)[:, None])
                else:  # narrow storage: the decay in float32, one rounding
                    table.copy_(table.to(cdt).mul_(decay.to(cdt)[:, None]))
        return m, v

    @property
    def _arith_dtype(self) -> torch.dtype:
        """Arithmetic dtype: float32 for narrower storage (β2 = 0.999 is 1.0 in bf16), else storage."""
        return torch.float32 if torch.finfo(self.dtype).bits < 32 else self.dtype

    def _store(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (arithmetic dtype) in the storage dtype; narrow storage rounds stochastically.

        Round-to-nearest would stall: an Adam update moves v by (1 − β2) = 0.1 % per step, below half
        a bf16 ulp (0.2 %), so v would never move. Stochastic rounding is unbiased (E[stored] = x).
        """
        if x.dtype == self.dtype:
            return x
        if self.dtype != torch.bfloat16:
            return x.to(self.dtype)
        bits = x.float().view(torch.int32)
        noise = torch.randint_like(bits, 0, 1 << 16, generator=self._rounding)
        return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)

    def _grow(self, needed: int) -> None:
        cap = self._m.shape[0]
        if needed <= cap:
            return
        new_cap = min(max(needed, 2 * cap, 64), self.vocab_size)  # never more rows than V
        dev, h = self.device, self.hidden_size
        ids = torch.empty(new_cap, dtype=torch.int64, device=dev)
        last = torch.zeros(new_cap, dtype=torch.int64, device=dev)
        m = torch.zeros(new_cap, h, dtype=self.dtype, device=dev)
        v = torch.zeros(new_cap, h, dtype=self.dtype, device=dev)
        n = self._count
        ids[:n], last[:n], m[:n], v[:n] = self._ids[:n], self._last[:n], self._m[:n], self._v[:n]
        self._ids, self._last, self._m, self._v = ids, last, m, v

    def _promote_to_float64(self) -> None:
        """Store the tables in float64 from now on (exact), unless a dtype was given explicitly."""
        if self._dtype_explicit or self.dtype == torch.float64:
            return
        self.dtype = torch.float64
        self._m, self._v = self._m.double(), self._v.double()

    @torch.no_grad()
    def update(self, row_ids: torch.Tensor, row_grads: torch.Tensor) -> None:
        """One optimizer step t → t + 1 with the gradient given on rows ``row_ids`` (zero elsewhere).

        Args:
            row_ids: [R] int64 unique vocabulary ids.
            row_grads: [R, H] float, the gradient rows (cast to the storage dtype).

        Raises:
            ValueError: on shapes, repeated or out-of-range ids, or non-finite gradients.
        """
        row_ids = self._check_ids("row_ids", row_ids)
        r = row_ids.numel()
        if not isinstance(row_grads, torch.Tensor) or row_grads.shape != (r, self.hidden_size):
            got = _shape(row_grads) if isinstance(row_grads, torch.Tensor) else type(row_grads)
            raise ValueError(
                f"row_grads must be [R, H] = [{r}, {self.hidden_size}] (row_ids {_shape(row_ids)}), "
                f"got {got}"
            )
        if r > 1 and bool((torch.sort(row_ids).values.diff() == 0).any()):
            raise ValueError(f"row_ids {_shape(row_ids)} must be unique")
        block = max(1, self.block_bytes // (8 * self.hidden_size))  # rows per block of temporaries
        finite = [torch.isfinite(gb).all() for gb in row_grads.split(block)]
        if finite and not bool(torch.stack(finite).all()):  # one host sync, not one per block
            raise ValueError(f"row_grads {_shape(row_grads)} has non-finite entries")
        if row_grads.dtype == torch.float64:
            self._promote_to_float64()
        cdt = self._arith_dtype
        g = row_grads.to(device=self.device, dtype=cdt)
        new_step = self.t + 1
        slot = self._slot[row_ids]
        fresh = slot < 0
        n_fresh = int(fresh.sum())
        if n_fresh:
            self._grow(self._count + n_fresh)
            new_slots = torch.arange(
                self._count, self._count + n_fresh, dtype=torch.int64, device=self.device
            )
            fresh_ids = row_ids[fresh]
            self._slot[fresh_ids] = new_slots
            self._ids[new_slots] = fresh_ids
            self._last[new_slots] = self.t  # zero rows; Δt = 1 below
            self._count += n_fresh
            slot = self._slot[row_ids]
        b1, b2 = self.betas
        d1, d2 = self._decay(slot, new_step)
        d1, d2 = d1.to(cdt)[:, None], d2.to(cdt)[:, None]
        for r0 in range(0, r, block):  # bounded temporaries: no fresh [R, H] pages to fault in
            sl, gb = slot[r0 : r0 + block], g[r0 : r0 + block]
            m = torch.index_select(self._m, 0, sl).to(cdt).mul_(d1[r0 : r0 + block])
            v = torch.index_select(self._v, 0, sl).to(cdt).mul_(d2[r0 : r0 + block])
            self._m.index_copy_(0, sl, self._store(m.add_(gb, alpha=1.0 - b1)))
            self._v.index_copy_(0, sl, self._store(v.addcmul_(gb, gb, value=1.0 - b2)))
        self._last[slot] = new_step
        self.t = new_step

    def to_dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, v) as dense [V, H] tensors at the current step (for tests and small V only)."""
        m = torch.zeros(self.vocab_size, self.hidden_size, dtype=self.dtype, device=self.device)
        v = torch.zeros_like(m)
        if self._count:
            rm, rv = self.read(self.row_ids)
            m[self.row_ids], v[self.row_ids] = rm, rv
        return m, v

    def state_dict(self) -> dict[str, Any]:
        """A compact, exact snapshot: config, t, and the touched rows with their last-written step."""
        n = self._count
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "betas": self.betas,
            "eps": self.eps,
            "t": self.t,
            "row_ids": self._ids[:n].clone(),
            "last_step": self._last[:n].clone(),
            "exp_avg": self._m[:n].clone(),
            "exp_avg_sq": self._v[:n].clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` snapshot exactly (tables are copied to this device/dtype).

        Raises:
            ValueError: if the snapshot's vocab/hidden sizes differ from this object's or it is
                malformed.
        """
        if int(state["vocab_size"]) != self.vocab_size:
            raise ValueError(f"state vocab_size {state['vocab_size']} != {self.vocab_size}")
        if int(state["hidden_size"]) != self.hidden_size:
            raise ValueError(f"state hidden_size {state['hidden_size']} != {self.hidden_size}")
        ids = torch.as_tensor(state["row_ids"], dtype=torch.int64)
        r = ids.numel()
        ids = self._check_ids("row_ids", ids.reshape(-1))
        m, v = state["exp_avg"], state["exp_avg_sq"]
        last = torch.as_tensor(state["last_step"], dtype=torch.int64)
        if m.shape != (r, self.hidden_size) or v.shape != m.shape or last.shape != (r,):
            raise ValueError(
                f"state tables must be exp_avg/exp_avg_sq [{r}, {self.hidden_size}] and "
                f"last_step [{r}], got {_shape(m)}, {_shape(v)}, {_shape(last)}"
            )
        if m.dtype == torch.float64:
            self._promote_to_float64()
        b1, b2 = (float(b) for b in state["betas"])
        self.betas, self.eps, self.t = (b1, b2), float(state["eps"]), int(state["t"])
        self._reset(capacity=r)
        self._ids[:] = ids
        self._last[:] = last.to(self.device)
        self._m[:] = m.to(device=self.device, dtype=self.dtype)
        self._v[:] = v.to(device=self.device, dtype=self.dtype)
        self._slot[ids] = torch.arange(r, dtype=torch.int64, device=self.device)
        self._count = r

    def __repr__(self) -> str:
        return (
            f"SparseAdamMoments(vocab_size={self.vocab_size}, hidden_size={self.hidden_size}, "
            f"betas={self.betas}, eps={self.eps}, dtype={self.dtype}, t={self.t}, "
            f"rows={self._count})"
        )
