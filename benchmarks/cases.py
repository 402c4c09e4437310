"""Benchmark cases: random CAPO inputs at a shape, and the naive / fast implementations of each op.

Each op maps implementation names ("naive", "fast", or "yardstick") to zero-argument callables on the
same inputs; :func:`max_rel_err` compares their outputs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import naive

import capo
from capo.gradients import last_layer_gradient

LR = 1e-3
SLOW_S = 2.0
"""Calls slower than this are not repeated for warm-up (their first call is a timed repetition)."""
THRESH = capo.Thresholds(hessian_low=-1e-2, hessian_high=1e-2, fisher_max=1e-4)

# ----------------------------------------------------------------------------- cases


def make_case(
    N: int, k: int, H: int, V: int, seed: int = 0, warm_updates: int = 2, weight: bool = True
) -> dict:
    """Random float32 tokens, an output weight (None without ``weight``), and Adam moments after
    ``warm_updates`` steps of V / 2 rows."""
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randperm(V, generator=g)[:k]
    base = torch.randint(0, V, (N, 1), generator=g)
    ids = (base + offsets[None, :]) % V  # unique within a row, rows spread over the vocabulary
    probs = torch.softmax(2.0 * torch.randn(N, k, generator=g), dim=1)
    batch = capo.TokenBatch(
        hidden=torch.randn(N, H, generator=g),
        support_ids=ids,
        support_probs=probs,
        action_index=torch.randint(0, k, (N,), generator=g),
        advantages=torch.randn(N, generator=g),
    )
    mom = capo.SparseAdamMoments(V, H)
    for _ in range(warm_updates):
        rows = torch.randperm(V, generator=g)[: max(1, V // 2)]
        mom.update(rows.sort().values, 1e-2 * torch.randn(rows.numel(), H, generator=g))
    w = torch.randn(V, H, generator=g) / math.sqrt(H) if weight else None
    sampled = torch.randint(0, V, (N,), generator=g)
    return {
        "batch": batch,
        "mom": mom,
        "weight": w,
        "sampled": sampled,
        "shape": {"N": N, "k": k, "H": H, "V": V},
    }


def _clone_mom(mom: capo.SparseAdamMoments) -> capo.SparseAdamMoments:
    out = capo.SparseAdamMoments(mom.vocab_size, mom.hidden_size, mom.betas, mom.eps)
    out.load_state_dict(mom.state_dict())
    return out


def ops_for(case: dict, which: list[str]) -> dict[str, dict[str, Callable[[], object]]]:
    """Operation name -> {implementation name -> zero-argument callable}."""
    b, mom, w, smp = case["batch"], case["mom"], case["weight"], case["sampled"]
    k = b.support_size
    # the naive [V, H] tables are state (built before timing / memory), only when an op needs them
    needs_dense = any(op.startswith("shifts_adam") for op in which)
    dense_tables = naive.DenseAdam.from_sparse(mom) if needs_dense else None

    def dense_mom() -> naive.DenseAdam:
        assert dense_tables is not None
        return dense_tables

    adam, sgd = capo.AdamStep(LR, mom), capo.SGDStep(LR)
    zeros = torch.zeros(b.num_tokens, dtype=torch.int64)
    pre = capo.directional_shifts(b, adam) if "select" in which else None
    upd_sparse = {"obj": _clone_mom(mom)} if "grad_moments" in which else {}
    upd_dense = {"obj": None}

    def grad_moments_fast() -> object:
        rows, g = last_layer_gradient(b)
        upd_sparse["obj"].update(rows, g)
        return rows, g

    def grad_moments_naive() -> object:
        if upd_dense["obj"] is None:
            upd_dense["obj"] = naive.DenseAdam.from_sparse(mom)
        rows, g = naive.batch_gradient(b)
        upd_dense["obj"].update_loop(rows, g)
        return rows, g

    def yardstick() -> object:
        wp = w.clone().requires_grad_(True)
        hp = b.hidden.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(hp @ wp.T, smp)
        loss.backward()
        return loss.detach()

    table: dict[str, dict[str, Callable[[], object]]] = {
        "support": {
            "naive": lambda: naive.support(b.hidden, w, smp, k),
            "fast": lambda: capo.support_from_hidden(b.hidden, w, smp, k),
        },
        "shifts_adam_token": {
            "naive": lambda: naive.shifts_token(b, LR, dense_mom()),
            "fast": lambda: capo.directional_shifts(b, adam),
        },
        "shifts_sgd_token": {
            "naive": lambda: naive.shifts_token(b, LR, None),
            "fast": lambda: capo.directional_shifts(b, sgd),
        },
        "shifts_adam_batch": {
            "naive": lambda: naive.shifts_subsets(b, LR, dense_mom(), zeros),
            "fast": lambda: capo.directional_shifts(b, adam, zeros),
        },
        "shifts_sgd_batch": {
            "naive": lambda: naive.shifts_subsets(b, LR, None, zeros),
            "fast": lambda: capo.directional_shifts(b, sgd, zeros),
        },
        "select": {
            "naive": lambda: naive.select(pre.m_H, pre.m_F, THRESH),
            "fast": lambda: capo.select(pre, THRESH),
        },
        "grad_moments": {"naive": grad_moments_naive, "fast": grad_moments_fast},
        "yardstick_fwd_bwd": {"fast": yardstick},
    }
    return {name: table[name] for name in which}


# ----------------------------------------------------------------------------- agreement


def _as_arrays(op: str, out: object) -> list[torch.Tensor]:
    if isinstance(out, capo.Shifts):
        return [out.m_H, out.m_F]
    if isinstance(out, capo.Support):
        return [out.support_ids, out.support_probs, out.action_index]
    if isinstance(out, tuple):
        return list(out)
    if isinstance(out, torch.Tensor):
        return [out]
    raise TypeError(f"{op}: cannot compare {type(out)}")


def max_rel_err(a: object, b: object, op: str) -> float:
    """max over outputs of max |a − b| / max |a| (float), or the mismatch fraction (int / bool)."""
    worst = 0.0
    for x, y in zip(_as_arrays(op, a), _as_arrays(op, b), strict=True):
        if x.shape != y.shape:
            return float("inf")
        if not x.is_floating_point():
            worst = max(worst, float((x != y).double().mean()))
            continue
        x64, y64 = x.double(), y.double()
        scale = float(x64.abs().max()) if x64.numel() else 0.0
        worst = max(
            worst, float((x64 - y64).abs().max()) / max(scale, 1e-300) if x64.numel() else 0.0
        )
    return worst


def moments_agreement(case: dict) -> float:
    """Fast (sparse) vs naive (dense loop) moments after one batch-gradient update from one state."""
    b, mom = case["batch"], case["mom"]
    sp, dn = _clone_mom(mom), naive.DenseAdam.from_sparse(mom)
    rows, g = last_layer_gradient(b)
    sp.update(rows, g)
    nrows, ng = naive.batch_gradient(b)
    dn.update_loop(nrows, ng)
    m, v = sp.to_dense()
    return max(max_rel_err(dn.m, m, "m"), max_rel_err(dn.v, v, "v"))
