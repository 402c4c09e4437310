"""Predicted objective and policy shifts m_H, m_F of a proposed last-layer step (paper eqs 10, 57-63).

For a subset b of n_b tokens with per-token gradients g_i = A_i u_i ⊗ h_i (eq 7; u_i = e_{a_i} − π_i on
the support S_i), the subset proposes g_b = (1/n_b) Σ_{i∈b} g_i (rows of equal vocabulary id add up)
and the step Δ_b = step(g_b). With v_i = Δ_b[S_i] h_i ∈ R^k and F_i = diag(π_i) − π_i π_iᵀ:

    m_H(b) = ⟨g_b, Δ_b⟩ + ½ (1/n_b) Σ_{i∈b} A_i [(u_iᵀ v_i)² − v_iᵀ F_i v_i]      (eqs 10, 62, 63)
    m_F(b) = ½ (1/n_b) Σ_{i∈b} (u_iᵀ v_i)²                                          (eqs 10, 57, 58)

F_i is never built: v_iᵀ F_i v_i = Σ_j π_ij (v_ij − π_i·v_i)² + (π_i·v_i)² (1 − Σ_j π_ij), which is
Σ π v² − (π·v)² without its cancellation. At token level ⟨g_i, Δ_i⟩ = A_i u_iᵀ v_i, and for SGD
v_i = η A_i ‖h_i‖² u_i in closed form (O(N·(k + H))). Otherwise tokens are processed in chunks of C,
so the extra memory is O(C·k·H) (plus the R_b·H rows of the subset gradients of one chunk of subsets),
never [N, k, H].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import capo.fused_shift as fused
from capo.steps import AdamStep, SGDStep, StepModel
from capo.tokens import TokenBatch

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEVICE_CHUNK_BYTES",
    "Shifts",
    "default_chunk_size",
    "directional_shifts",
    "fisher_quadratic",
    "policy_error",
    "token_terms",
]

DEFAULT_CHUNK_BYTES = 16 * 2**20
"""Memory budget on the CPU for the [C, k, H] temporaries of one token chunk (and the rows of one subset chunk).

Small on purpose: the chunk's blocks then stay in the CPU's last-level cache, and the element-wise
passes run 1.5-3x faster than on blocks streamed from DRAM (``benchmarks/run.py`` chunk sweep)."""

DEVICE_CHUNK_BYTES = {"cuda": 512 * 2**20}
"""Budgets of other devices. On a GPU a cache-sized chunk buys nothing and every chunk costs a dozen kernel
launches (5 µs each): at the paper's shape the CPU budget means 5-token chunks and ~0.8 s of launches per step
(``benchmarks/projection.py``), this one 187-token chunks."""

_LIVE_BLOCKS = 4
"""How many [C, k, H] blocks are alive at once (gradient block, m', v' / step block, slack)."""


def default_chunk_size(
    k: int, hidden_size: int, dtype: torch.dtype, device: torch.device | str | None = None
) -> int:
    """Tokens per chunk C so that the [C, k, H] temporaries stay within the device's budget.

    :data:`DEVICE_CHUNK_BYTES` for its device type, else :data:`DEFAULT_CHUNK_BYTES` (the CPU's).
    """
    kind = torch.device(device).type if device is not None else "cpu"
    budget = DEVICE_CHUNK_BYTES.get(kind, DEFAULT_CHUNK_BYTES)
    per_token = _LIVE_BLOCKS * max(k, 1) * max(hidden_size, 1) * torch.finfo(dtype).bits // 8
    return max(1, budget // per_token)


@dataclass(frozen=True, eq=False)
class Shifts:
    """Predicted shifts per subset, in subset-id order 0..S−1.

    Attributes:
        m_H: [S] predicted objective shift (eq 10); NaN where the subset has no finite token.
        m_F: [S] predicted policy shift ½ Δᵀ F Δ ≈ mean KL (eq 10); NaN likewise.
        grad_dot: [S] the first-order part ⟨g_b, Δ_b⟩ of m_H.
        n_tokens: [S] int64, finite tokens the subset's mean was taken over.
        token_finite: [N] bool, False for tokens excluded for non-finite inputs.
    """

    m_H: torch.Tensor
    m_F: torch.Tensor
    grad_dot: torch.Tensor
    n_tokens: torch.Tensor
    token_finite: torch.Tensor

    @property
    def num_subsets(self) -> int:
        """S, the number of subsets."""
        return int(self.m_H.shape[0])

    @property
    def valid(self) -> torch.Tensor:
        """[S] bool: the subset has finite tokens and finite shifts."""
        return (self.n_tokens > 0) & torch.isfinite(self.m_H) & torch.isfinite(self.m_F)

    @property
    def n_nonfinite(self) -> int:
        """Tokens excluded (and so rejected) because a hidden state, advantage or prob was not finite."""
        return int((~self.token_finite).sum())


def policy_error(p: torch.Tensor, action_index: torch.Tensor) -> torch.Tensor:
    """The policy error u = e_a − π on the support, [C, k]."""
    u = -p
    return u.scatter_add_(1, action_index[:, None], torch.ones_like(p[:, :1]))


def fisher_quadratic(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[C] vᵀFv with F = diag(π) − ππᵀ on the support (eq 9 in expectation over the action), never built.

    Computed as Σ_j π_j (v_j − π·v)² + (π·v)² (1 − Σ_j π_j): Σ π v² − (π·v)² without its cancellation.
    """
    pv = (p * v).sum(dim=1)
    return (p * (v - pv[:, None]).square()).sum(dim=1) + pv.square() * (1.0 - p.sum(dim=1))


def token_terms(
    u: torch.Tensor, p: torch.Tensor, v: torch.Tensor, adv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per token: uᵀv, A[(uᵀv)² − vᵀFv] and (uᵀv)², each [C] (eqs 58, 63 summands)."""
    uv = (u * v).sum(dim=1)
    vfv = fisher_quadratic(p, v)
    uv2 = uv.square()
    return uv, adv * (uv2 - vfv), uv2


def _token_directions(
    step: StepModel, ids: torch.Tensor, au: torch.Tensor, h: torch.Tensor, chunk: int, kernel: str
) -> torch.Tensor:
    """[N, k] v_i of each token's own step: fused (Adam, :mod:`capo.fused_shift`) or chunk by chunk.

    ``h`` [N, H] may be narrower than the compute dtype of ``au``; it is cast per chunk (in the kernel).
    """
    if isinstance(step, AdamStep):
        v = fused.token_directions(step, ids, au, h, kernel)
        if v is not None:
            return v
    else:
        chunk *= ids.shape[1]  # SGD's closed form: only [C, H] temporaries
    n = ids.shape[0]
    v = torch.empty(n, ids.shape[1], dtype=au.dtype, device=h.device)
    for c0 in range(0, n, chunk):
        sl = slice(c0, min(c0 + chunk, n))
        v[sl] = step.token_directions(ids[sl], au[sl], h[sl].to(au.dtype))
    return v


def _token_level(
    batch: TokenBatch, step: StepModel, chunk: int, cdt: torch.dtype, kernel: str
) -> tuple:
    """(m_H, m_F, grad_dot) [N] with every token its own subset."""
    p = batch.support_probs.to(cdt)
    adv = batch.advantages.to(cdt)
    u = policy_error(p, batch.action_index)
    au = adv[:, None] * u  # g_i = A_i u_i ⊗ h_i
    v = _token_directions(step, batch.support_ids, au, batch.hidden, chunk, kernel)
    uv, q_h, q_f = token_terms(u, p, v, adv)
    grad_dot = adv * uv
    return grad_dot + 0.5 * q_h, 0.5 * q_f, grad_dot


def _subset_level(
    batch: TokenBatch,
    step: StepModel,
    subsets: torch.Tensor,
    num_subsets: int,
    chunk: int,
    cdt: torch.dtype,
    kernel: str,
) -> tuple:
    """(m_H, m_F, grad_dot, n_tokens) [S] for the partition ``subsets`` [N] of the tokens."""
    h, ids, a = batch.hidden, batch.support_ids, batch.action_index
    k, hs, dev = batch.support_size, batch.hidden_size, h.device
    vocab = step.vocab_size
    if vocab is None:
        vocab = int(ids.max()) + 1 if batch.num_tokens else 1
    S = num_subsets
    p = batch.support_probs.to(cdt)
    adv = batch.advantages.to(cdt)
    u = policy_error(p, a)
    n_b = torch.bincount(subsets, minlength=S)
    # Unique (subset, id) pairs: the rows of all subset gradients, sorted by subset then id.
    uniq, inv = torch.unique(subsets[:, None] * vocab + ids, sorted=True, return_inverse=True)
    row_subset, row_id = uniq // vocab, uniq % vocab
    rows_b = torch.bincount(row_subset, minlength=S)
    coef = (adv / n_b[subsets].to(cdt))[:, None] * u  # A_i / n_b · u_i, [N, k]
    order = torch.argsort(subsets, stable=True)
    tok_end, row_end = torch.cumsum(n_b, 0), torch.cumsum(rows_b, 0)
    tok_start, row_start = tok_end - n_b, row_end - rows_b
    # Chunks of consecutive subsets holding about chunk·k gradient rows each.
    group = torch.div(row_start, chunk * k, rounding_mode="floor")
    bounds = torch.cumsum(torch.unique_consecutive(group, return_counts=True)[1], 0).tolist()
    t_lo, t_hi = tok_start.tolist(), tok_end.tolist()
    r_lo, r_hi = row_start.tolist(), row_end.tolist()

    grad_dot = torch.zeros(S, dtype=cdt, device=dev)
    q_h, q_f = torch.zeros_like(grad_dot), torch.zeros_like(grad_dot)
    s0 = 0
    for s1 in bounds:
        r0, r1, t0, t1 = r_lo[s0], r_hi[s1 - 1], t_lo[s0], t_hi[s1 - 1]
        s0 = s1
        toks = order[t0:t1]
        grad = torch.zeros(r1 - r0, hs, dtype=cdt, device=dev)
        for c0 in range(0, t1 - t0, chunk):
            tc = toks[c0 : c0 + chunk]
            blk = coef[tc][:, :, None] * h[tc].to(cdt)[:, None, :]
            grad.index_add_(0, (inv[tc] - r0).reshape(-1), blk.reshape(-1, hs))
            del blk
        delta = step.propose(row_id[r0:r1], grad)
        grad_dot.index_add_(0, row_subset[r0:r1], torch.linalg.vecdot(grad, delta))
        del grad
        v = fused.row_dots(delta, inv[toks] - r0, h, toks, kernel, chunk)
        _, qh, qf = token_terms(u[toks], p[toks], v, adv[toks])
        q_h.index_add_(0, subsets[toks], qh)
        q_f.index_add_(0, subsets[toks], qf)
        del delta
    nb = n_b.to(cdt)
    return grad_dot + 0.5 * q_h / nb, 0.5 * q_f / nb, grad_dot, n_b


def _check_subsets(
    subsets: object, n: int, device: torch.device, num_subsets: int | None
) -> tuple[torch.Tensor, int]:
    if not isinstance(subsets, torch.Tensor) or subsets.shape != (n,):
        got = list(subsets.shape) if isinstance(subsets, torch.Tensor) else type(subsets).__name__
        raise ValueError(f"subsets must be an int64 [N] tensor with N = {n}, got {got}")
    if subsets.dtype != torch.int64:
        raise ValueError(f"subsets must be int64, got {subsets.dtype} [{n}]")
    if subsets.device != device:
        raise ValueError(f"subsets is on {subsets.device} but hidden is on {device}")
    if n and int(subsets.min()) < 0:
        raise ValueError(f"subsets [{n}] has negative ids")
    needed = int(subsets.max()) + 1 if n else 0
    if num_subsets is None:
        return subsets, needed
    if num_subsets < needed:
        raise ValueError(
            f"num_subsets = {num_subsets} but subsets [{n}] has ids up to {needed - 1}"
        )
    return subsets, int(num_subsets)


@torch.no_grad()
def _check_inputs(batch: TokenBatch, step: StepModel) -> None:
    """ValueError naming the argument for a wrong batch or step type, or moments that do not fit."""
    if not isinstance(batch, TokenBatch):
        raise ValueError(f"batch must be a TokenBatch, got {type(batch).__name__}")
    if not isinstance(step, (SGDStep, AdamStep)):
        raise ValueError(f"step must be SGDStep or AdamStep, got {type(step).__name__}")
    if isinstance(step, AdamStep):
        if step.moments.hidden_size != batch.hidden_size:
            raise ValueError(
                f"hidden [{batch.num_tokens}, {batch.hidden_size}] does not match the moments' "
                f"hidden_size {step.moments.hidden_size}"
            )
        batch.check_vocab(step.moments.vocab_size)


def directional_shifts(
    batch: TokenBatch,
    step: StepModel,
    subsets: torch.Tensor | None = None,
    *,
    num_subsets: int | None = None,
    chunk_size: int | None = None,
    kernel: str = "auto",
) -> Shifts:
    """Predicted shifts m_H, m_F (eq 10) of the step each subset of tokens would propose.

    Args:
        batch: the tokens, with hidden states and top-k support.
        step: :class:`~capo.SGDStep` or :class:`~capo.AdamStep` (whose moments are only read).
        subsets: None (each token is its own subset, S = N) or [N] int64 subset ids (one completion,
            one group, the whole batch, ...); S = max id + 1 unless ``num_subsets`` is given.
        num_subsets: optional S (subsets without tokens get NaN shifts and are rejected).
        chunk_size: tokens per chunk C; default from the device's budget (:func:`default_chunk_size`).
        kernel: ``"auto"``, ``"fused"`` or ``"plain"`` (:data:`capo.fused_shift.KERNELS`): the per-token
            gathers of the Adam token level and of the subset level run as one compiled kernel
            (:mod:`capo.fused_shift`) or chunk by chunk. ``auto`` is fused on CUDA with Triton and plain
            elsewhere; the results agree to rounding.

    Returns:
        :class:`Shifts` with [S] tensors in the accumulation dtype (float64 for float64 inputs, else
        float32). Tokens with non-finite inputs are left out of every mean, counted, and their
        token-level shifts are NaN (so :func:`capo.select` rejects them).

    Raises:
        ValueError: for an unknown step model, a hidden size or vocabulary that does not match the
            moments, bad ``subsets``, a non-positive ``chunk_size``, an unknown ``kernel`` or
            ``kernel="fused"`` where it cannot compile.
    """
    _check_inputs(batch, step)
    fused.check_kernel(kernel, batch.hidden.device)
    n, k, hs = batch.num_tokens, batch.support_size, batch.hidden_size
    dev = batch.hidden.device
    cdt = batch.dtype
    if chunk_size is None:
        chunk_size = default_chunk_size(k, hs, cdt, dev)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk = int(chunk_size)
    ok = batch.finite_tokens()
    all_ok = bool(ok.all())
    sub = batch if all_ok else batch.select_tokens(ok)
    if subsets is None:
        if num_subsets is not None and num_subsets != n:
            raise ValueError(
                f"num_subsets = {num_subsets} needs subsets (token level has S = N = {n})"
            )
        m_h, m_f, gd = _token_level(sub, step, chunk, cdt, kernel)
        n_tok = ok.to(torch.int64)
        if not all_ok:
            full = torch.full((n,), float("nan"), dtype=cdt, device=dev)
            m_h, m_f, gd = (full.clone().masked_scatter_(ok, x) for x in (m_h, m_f, gd))
        return Shifts(m_H=m_h, m_F=m_f, grad_dot=gd, n_tokens=n_tok, token_finite=ok)
    subsets, S = _check_subsets(subsets, n, dev, num_subsets)
    sub_ids = subsets if all_ok else subsets[ok]
    m_h, m_f, gd, n_tok = _subset_level(sub, step, sub_ids, S, chunk, cdt, kernel)
    return Shifts(m_H=m_h, m_F=m_f, grad_dot=gd, n_tokens=n_tok, token_finite=ok)
