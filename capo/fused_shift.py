"""Fused token-level shifts: each token's k gathered rows read once, no [C, k, H] block (docs/design.md §2).

The plain path (:meth:`capo.AdamStep.token_directions`, the obviously-correct twin) gathers a chunk's moment
rows into [C, k, H] blocks and runs about ten element-wise passes over them. Here the same formula runs
inside one compiled kernel per call (torch.compile's inductor: C++/OpenMP on CPU, Triton on CUDA) that reads
each gathered row once and writes only the [N, k] result. For token i with support S_i, gradient
coefficients c_i = A_i u_i (eq 7: g_i = c_i ⊗ h_i) and moment rows m, v stored at slots s_ij, last written
Δt_ij steps ago:

    m'_ij = β1 β1^Δt m[s_ij] + (1 − β1) c_ij h_i,   v'_ij = β2 β2^Δt v[s_ij] + (1 − β2) c_ij² h_i²
    v_ij  = η √(1 − β2^{t+1}) / (1 − β1^{t+1}) · Σ_H  m'_ij / (√v'_ij + ε √(1 − β2^{t+1})) · h_i

(the paper's Adam step model, Section 4.1, on each token's own gradient; the bias corrections folded into
ε and one scale exactly as the plain path folds them). The subset level's gather-dot v_ij = Δ[r_ij] · h_i
(rows of the subsets' proposed steps) is fused the same way.

Each kernel is a torch custom op (``capo::adam_token_directions``, ``capo::gather_dot``), so an outer
dispatch mode (the projection's op counter) or an outer ``torch.compile`` sees one op. Shapes are dynamic:
one compilation per dtype combination serves every N, k, H and table size.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import torch

from capo.steps import AdamStep

__all__ = [
    "KERNELS",
    "SELF_CHECK_RTOL",
    "adam_token_directions",
    "check_kernel",
    "gather_dot",
    "row_dots",
    "token_directions",
    "unavailable",
    "use_fused",
]

KERNELS = ("auto", "fused", "plain")
"""``kernel`` choices: ``fused`` (compiled), ``plain`` (the eager twin), ``auto`` (fused on CUDA with Triton,
once it passed its self-check; plain elsewhere: on CPU a compilation costs 5-20 s, more than a small run
saves)."""

SELF_CHECK_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}
"""The first fused call per device and dtypes is compared with the plain path on its first tokens, relative
to the largest entry (float64 vs float32 compute); a larger difference disables the fused path."""

_SELF_CHECK_TOKENS = 16
_verified: dict[tuple, bool] = {}
_compiled: dict[str, Callable[..., torch.Tensor]] = {}
_warned: set[str] = set()


def _adam_token_formula(
    m_table: torch.Tensor,
    v_table: torch.Tensor,
    slots: torch.Tensor,
    decay1: torch.Tensor,
    decay2: torch.Tensor,
    coef1: torch.Tensor,
    coef2: torch.Tensor,
    hidden: torch.Tensor,
    eps: torch.Tensor,
) -> torch.Tensor:
    """[N, k] Σ_H m'/(√v' + ε)·h (module docstring); the coefficients already carry β, 1 − β and Δt.

    Computed in the dtype of ``coef1``; the tables and ``hidden`` are cast element by element.
    """
    h = hidden[:, None, :].to(coef1.dtype)
    m = m_table[slots].to(h.dtype) * decay1[:, :, None] + coef1[:, :, None] * h
    v = v_table[slots].to(h.dtype) * decay2[:, :, None] + coef2[:, :, None] * (h * h)
    return (m / (v.sqrt() + eps) * h).sum(dim=2)


def _gather_dot_formula(
    rows: torch.Tensor, index: torch.Tensor, hidden: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """[T, k] rows[index_ij] · hidden[tokens_i], in the dtype of ``rows`` (``hidden`` cast element-wise)."""
    return (rows[index] * hidden[tokens][:, None, :].to(rows.dtype)).sum(dim=2)


def _kernel(name: str, formula: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The compiled ``formula`` (built once per process).

    Without duck sizing: sizes that happen to be equal in the first call (N = k = 16, say) would otherwise
    share one symbol, and the next call with different sizes would compile the formula again.

    Always under no_grad (the shifts are never differentiated), so that the caller's grad mode is not one
    more guard; each dtype combination and each kind of input tensor (normal or inference-mode: another
    dispatch key set) is one compiled entry, up to :data:`_RECOMPILE_LIMIT` (dynamo's default 8 is reached
    by a process that mixes float64, float32 and bf16 moments with both kinds).

    On CPU without inductor's FX graph cache (:data:`_CPU_CACHE_GUARD`): torch 2.13 keys that cache without
    the vector ISA that ``ATEN_CPU_CAPABILITY`` selects, so a graph generated for AVX-512's 16 float lanes is
    reused in a process pinned to AVX2 and rebuilt against 8-lane vectors, giving wrong numbers. The C++
    code cache (keyed by source and flags) still serves, so a new process re-runs codegen only.
    """
    if name not in _compiled:
        compiled = torch.compile(formula, dynamic=True, fullgraph=True)

        def run(*args: torch.Tensor) -> torch.Tensor:
            guard = _CPU_CACHE_GUARD if args[0].device.type == "cpu" else {}
            with (
                torch.no_grad(),
                torch.fx.experimental._config.patch(use_duck_shape=False),  # type: ignore[attr-defined]
                torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT),
                torch._inductor.config.patch(guard),
            ):
                return compiled(*args)

        _compiled[name] = run
    return _compiled[name]


_CPU_CACHE_GUARD = {"fx_graph_cache": False}
_RECOMPILE_LIMIT = 32
"""Inductor settings of every CPU compilation of the fused kernels (see :func:`_kernel`)."""


def _fused_op(
    name: str,
    formula: Callable[..., torch.Tensor],
    schema: str,
    sizes: Callable[..., tuple[int, ...]],
    result: Callable[..., torch.Tensor],
) -> None:
    """Register ``formula`` as the custom op ``capo::name``: compiled, or eager where a size is below 2.

    Sizes 0 and 1 are specialised by the compiler; calls with such a size run the (tiny) formula eagerly.
    ``result(*args)`` is an empty tensor of the op's result shape and dtype (for tracing).
    """

    def run(*args: torch.Tensor) -> torch.Tensor:
        if min(sizes(*args)) < 2:
            return formula(*args)
        return _kernel(name, formula)(*args)

    op = torch.library.custom_op(f"capo::{name}", run, mutates_args=(), schema=schema)
    op.register_fake(result)


_fused_op(
    "adam_token_directions",
    _adam_token_formula,
    "(Tensor m_table, Tensor v_table, Tensor slots, Tensor decay1, Tensor decay2, Tensor coef1, "
    "Tensor coef2, Tensor hidden, Tensor eps) -> Tensor",
    sizes=lambda m, v, slots, d1, d2, c1, c2, h, eps: (*slots.shape, h.shape[1], m.shape[0]),
    result=lambda m, v, slots, d1, d2, c1, c2, h, eps: c1.new_empty(slots.shape),
)
_fused_op(
    "gather_dot",
    _gather_dot_formula,
    "(Tensor rows, Tensor index, Tensor hidden, Tensor tokens) -> Tensor",
    sizes=lambda rows, index, hidden, tokens: (*index.shape, *hidden.shape, rows.shape[0]),
    result=lambda rows, index, hidden, tokens: rows.new_empty(index.shape),
)


def adam_token_directions(
    step: AdamStep, ids: torch.Tensor, coef: torch.Tensor, hidden: torch.Tensor
) -> torch.Tensor:
    """v_i = Δ_i[S_i] h_i of each token's own Adam step, [N, k], in one fused pass (module docstring).

    The fused twin of :meth:`capo.AdamStep.token_directions` (same arguments, equal up to rounding).

    Args:
        step: the :class:`capo.AdamStep` (its moments are only read; they must be on ``hidden``'s device).
        ids: [N, k] support ids, already checked to lie in [0, V).
        coef: [N, k] gradient coefficients A_i u_i.
        hidden: [N, H] hidden states (any float dtype; the result has ``coef``'s dtype).
    """
    mom = step.moments
    b1, b2 = mom.betas
    t1 = mom.t + 1
    sq_bc2 = math.sqrt(1.0 - b2**t1)
    dt = coef.dtype
    n, k = ids.shape
    slots, d1, d2 = mom.lookup(ids.reshape(-1), check=False)
    m_table, v_table = mom.tables(
        min_rows=2
    )  # ≥ 2 rows: the compiled kernel serves the first steps too
    out = torch.ops.capo.adam_token_directions(
        m_table,
        v_table,
        slots.view(n, k),
        (d1 * b1).to(dt).view(n, k),
        (d2 * b2).to(dt).view(n, k),
        coef * (1.0 - b1),
        coef.square() * (1.0 - b2),
        hidden,
        coef.new_full((), mom.eps * sq_bc2),  # a tensor: a new ε per step compiles nothing new
    )
    return out.mul_(step.lr * sq_bc2 / (1.0 - b1**t1))


def gather_dot(
    rows: torch.Tensor, index: torch.Tensor, hidden: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """[T, k] v_ij = rows[index_ij] · hidden[tokens_i] in one fused pass, without the [T, k, H] block.

    Args:
        rows: [R, H] rows (a proposed step Δ on the rows of a subset or of the step's union).
        index: [T, k] int64 row of each (token, support entry), in [0, R).
        hidden: [N, H] hidden states (cast to ``rows``' dtype element by element).
        tokens: [T] int64 rows of ``hidden`` the T tokens are.
    """
    return torch.ops.capo.gather_dot(rows, index, hidden, tokens)


def _plain_row_dots(
    rows: torch.Tensor, index: torch.Tensor, hidden: torch.Tensor, tokens: torch.Tensor, chunk: int
) -> torch.Tensor:
    """:func:`gather_dot` through one gathered [C, k, H] block per chunk of C tokens (the plain twin)."""
    t, k = index.shape
    out = torch.empty(t, k, dtype=rows.dtype, device=rows.device)
    for c0 in range(0, t, chunk):
        sl = slice(c0, c0 + chunk)
        block = torch.index_select(rows, 0, index[sl].reshape(-1)).view(-1, k, rows.shape[1])
        out[sl] = block.mul_(hidden[tokens[sl]].to(rows.dtype)[:, None, :]).sum(dim=2)
    return out


def unavailable(device: torch.device) -> str | None:
    """Why the fused kernels cannot run on ``device`` (one line), or None where they built and agreed.

    Looked up once per device type: a compiler must exist (Triton on CUDA, a C++ compiler on CPU), and both
    kernels must build and agree with their eager formulas on a small float64 and float32 probe. Inductor can
    fail to build on some CPU configurations (torch 2.13 with ``ATEN_CPU_CAPABILITY=default`` emits
    ``at::vec`` code it compiles without the vector headers: ``CppCompileError``); such a device is simply
    one without the fused path.
    """
    return _unavailable_on(device.type)


@functools.cache
def _unavailable_on(device_type: str) -> str | None:
    """:func:`unavailable` for a device type."""
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton is not installed"
    elif device_type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as err:  # any failure means: no compiler
            return f"no C++ compiler for torch.compile ({type(err).__name__})"
    else:
        return f"torch.compile's inductor does not target {device_type}"
    return _probe(torch.device(device_type))


def _probe(device: torch.device) -> str | None:
    """Both kernels built and compared with their eager formulas on small random inputs (None: agree)."""
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        n, k, h, v = 5, 3, 7, 11

        def rand(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
            return torch.rand(*shape, generator=gen, dtype=dt).to(device)

        slots = torch.randint(0, v, (n, k), generator=gen).to(device)
        cases: dict[str, tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]] = {
            "adam_token_directions": (
                _adam_token_formula,
                (rand(v, h), rand(v, h), slots, rand(n, k), rand(n, k), rand(n, k) - 0.5,
                 rand(n, k), rand(n, h) - 0.5, torch.tensor(1e-3, dtype=dtype, device=device)),
            ),
            "gather_dot": (
                _gather_dot_formula,
                (rand(v, h) - 0.5, slots, rand(n, h) - 0.5, torch.arange(n, device=device)),
            ),
        }  # fmt: skip
        for name, (formula, args) in cases.items():
            try:
                got = _kernel(name, formula)(*args)
            except Exception as err:  # a failed build means: no fused path here
                first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
                return f"torch.compile could not build {name} ({type(err).__name__}: {first})"
            gap = _disagreement(got, formula(*args))
            if gap is not None:
                return f"the compiled {name} differs from its formula in {dtype} {gap}"
    return None


def _disagreement(got: torch.Tensor, want: torch.Tensor) -> str | None:
    """``"by ERR (largest entry SCALE)"`` where ``got`` misses ``want`` by more than :data:`SELF_CHECK_RTOL`."""
    scale = float(want.abs().max())
    err = float((got.double() - want.double()).abs().max())
    rtol = SELF_CHECK_RTOL[torch.float64 if want.dtype == torch.float64 else torch.float32]
    return None if err <= rtol * max(scale, 1e-300) else f"by {err:.1e} (largest entry {scale:.1e})"


def check_kernel(kernel: str, device: torch.device | None = None) -> str:
    """``kernel`` validated (ValueError naming it); with ``device``, a ``fused`` request it cannot honour."""
    if kernel not in KERNELS:
        raise ValueError(
            f"capo_shift_kernel (kernel) must be one of {list(KERNELS)}, got {kernel!r}"
        )
    if kernel == "fused" and device is not None:
        reason = unavailable(device)
        if reason is not None:
            raise ValueError(f"kernel='fused' is unavailable on {device.type}: {reason}")
    return kernel


def use_fused(kernel: str, device: torch.device) -> bool:
    """Whether ``kernel`` (:data:`KERNELS`) runs fused on ``device``; ``auto`` says once why it cannot."""
    check_kernel(kernel, device)
    if kernel == "plain" or (kernel == "auto" and device.type != "cuda"):
        return False
    reason = unavailable(device)
    if reason is not None:
        _warn_once(
            f"CAPO shifts: the fused kernel is unavailable on {device.type} ({reason}); plain path"
        )
        return False
    return True


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def _self_check(kernel: str, key: tuple, got: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether a first fused result matches the plain path's (:data:`SELF_CHECK_RTOL`)."""
    gap = _disagreement(got, want)
    if gap is None:
        return True
    message = (
        f"CAPO fused kernel {key[0]} on {key[1]} ({want.dtype}) differs from the plain path {gap}"
    )
    if kernel == "fused":
        raise RuntimeError(message)
    _warn_once(message + "; using the plain path")
    return False


def _checked(
    kernel: str,
    key: tuple,
    n: int,
    fused: Callable[[slice], torch.Tensor],
    plain: Callable[[slice], torch.Tensor],
) -> torch.Tensor | None:
    """``fused`` on all n tokens, or None where its first call per ``key`` disagreed with ``plain``.

    The first call per key (op, device, dtypes) with at least 2 tokens also runs both on its first tokens
    and compares (:data:`SELF_CHECK_RTOL`): a mismatch under ``auto`` warns and keeps the plain path for
    the process; under ``fused`` it raises RuntimeError.
    """
    if key not in _verified and n >= 2:
        first = slice(0, _SELF_CHECK_TOKENS)
        try:
            got = fused(first)
        except Exception as err:  # a build that fails for these dtypes: the plain path serves them
            message = (
                f"CAPO fused kernel {key[0]} on {key[1]} could not be built ({type(err).__name__})"
            )
            if kernel == "fused":
                raise RuntimeError(message) from err
            _warn_once(message + "; using the plain path")
            _verified[key] = False
            return None
        _verified[key] = _self_check(kernel, key, got, plain(first))
    if not _verified.get(key, True):
        return None
    return fused(slice(None))


def token_directions(
    step: AdamStep, ids: torch.Tensor, coef: torch.Tensor, hidden: torch.Tensor, kernel: str
) -> torch.Tensor | None:
    """[N, k] fused v_i of an Adam step if ``kernel`` selects the fused path here (and it checked), else None.

    Raises:
        ValueError: ``kernel='fused'`` with the moments on another device than the hidden states.
    """
    mom = step.moments
    if not use_fused(kernel, hidden.device):
        return None
    if mom.device != hidden.device:
        if kernel == "fused":
            raise ValueError(
                f"kernel='fused' needs the moments on {hidden.device}, they are on {mom.device}"
            )
        return None
    return _checked(
        kernel,
        ("adam_token_directions", hidden.device.type, coef.dtype, mom.dtype),
        ids.shape[0],
        lambda sl: adam_token_directions(step, ids[sl], coef[sl], hidden[sl]),
        lambda sl: step.token_directions(ids[sl], coef[sl], hidden[sl].to(coef.dtype)),
    )


def row_dots(
    rows: torch.Tensor,
    index: torch.Tensor,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    kernel: str,
    chunk: int,
) -> torch.Tensor:
    """[T, k] v_ij = rows[index_ij] · hidden[tokens_i]: fused if ``kernel`` selects it here, else in chunks.

    The subset level's and the global shift's v_i = Δ[S_i] h_i, with Δ given on R rows (arguments as
    :func:`gather_dot`; ``chunk`` tokens per gathered block on the plain path).
    """
    plain = functools.partial(_plain_row_dots, chunk=max(1, chunk))
    if use_fused(kernel, hidden.device):
        fused = _checked(
            kernel,
            ("gather_dot", hidden.device.type, rows.dtype, hidden.dtype),
            index.shape[0],
            lambda sl: gather_dot(rows, index[sl], hidden, tokens[sl]),
            lambda sl: plain(rows, index[sl], hidden, tokens[sl]),
        )
        if fused is not None:
            return fused
    return plain(rows, index, hidden, tokens)
