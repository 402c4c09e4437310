import pytest
import torch
from torch._dynamo.utils import counters

import capo
from capo import fused_shift
from reference import DenseAdamStep, DenseSGDStep, subset_shifts
from tests.capo._batches import BATCH_CASES, adam_pair, dense_inputs, partitions, random_batch
from tests.tolerances import FUSED_FLOAT32_RTOL, FUSED_RTOL

GRANULARITIES = [None, "completion", "group", "batch"]


def _close(got: torch.Tensor, want, rtol: float) -> None:
    """max |got − want| ≤ rtol · max |want| (the issue's relative-to-the-largest-entry criterion)."""
    want = torch.as_tensor(want, dtype=torch.float64)
    err = float((got.double() - want).abs().max())
    assert err <= rtol * max(float(want.abs().max()), 1e-300), (err, float(want.abs().max()))


def _steps(case, n_updates, dtype=torch.float64):
    sparse, dense = adam_pair(case["seed"], case["V"], case["H"], n_updates, dtype)
    return [
        (capo.SGDStep(lr=0.3), DenseSGDStep(lr=0.3)),
        (capo.AdamStep(lr=0.05, moments=sparse), DenseAdamStep(lr=0.05, state=dense)),
    ]


@pytest.mark.usefixtures("fused_kernels")
@pytest.mark.parametrize("granularity", GRANULARITIES, ids=str)
@pytest.mark.parametrize("n_updates", [0, 3], ids=lambda n: f"t={n}")
def test_fused_equals_plain_and_dense_reference_in_float64(granularity, n_updates):
    """Fused = plain = dense reference to 1e-12 of the largest entry, SGD and Adam, every granularity."""
    for case in BATCH_CASES:
        batch = random_batch(**case)
        subsets = None if granularity is None else partitions(case["N"], case["seed"])[granularity]
        for step, dense_step in _steps(case, n_updates):
            fused = capo.directional_shifts(batch, step, subsets, kernel="fused")
            plain = capo.directional_shifts(batch, step, subsets, kernel="plain")
            ref = subset_shifts(
                *dense_inputs(batch, case["V"]),
                dense_step,
                None if subsets is None else subsets.numpy(),
            )
            for got, same, want in zip(
                (fused.m_H, fused.m_F), (plain.m_H, plain.m_F), ref, strict=True
            ):
                _close(got, same, FUSED_RTOL)
                _close(got, want, FUSED_RTOL)


def _float32_case(seed=0, N=96, k=8, H=48, V=64):
    batch = random_batch(seed, N, k, V, H, dtype=torch.float32)
    moments, _ = adam_pair(seed, V, H, 3, torch.float32)
    return batch, capo.AdamStep(lr=1e-3, moments=moments)


@pytest.mark.usefixtures("fused_kernels")
@pytest.mark.parametrize("granularity", [None, "batch"], ids=str)
def test_fused_equals_plain_in_float32_and_is_chunk_size_invariant(granularity):
    """float32: fused within 1e-6 of plain; the fused result does not depend on the chunk size."""
    batch, step = _float32_case()
    subsets = None if granularity is None else partitions(batch.num_tokens, 0)[granularity]
    plain = capo.directional_shifts(batch, step, subsets, kernel="plain")
    runs = [
        capo.directional_shifts(batch, step, subsets, kernel="fused", chunk_size=c)
        for c in (1, 7, None)
    ]
    for fused in runs:
        _close(fused.m_H, plain.m_H, FUSED_FLOAT32_RTOL)
        _close(fused.m_F, plain.m_F, FUSED_FLOAT32_RTOL)
        _close(fused.m_H, runs[0].m_H, FUSED_FLOAT32_RTOL)


@pytest.mark.usefixtures("fused_kernels")
def test_fused_reads_bfloat16_moments_like_the_plain_path():
    """bf16-stored moments (capo_moments_dtype) are widened inside the kernel, as the plain path widens them."""
    batch, step = _float32_case(seed=1)
    narrow = capo.SparseAdamMoments(
        step.moments.vocab_size, batch.hidden_size, dtype=torch.bfloat16
    )
    narrow.load_state_dict(step.moments.state_dict())
    step = capo.AdamStep(lr=1e-3, moments=narrow)
    fused = capo.directional_shifts(batch, step, kernel="fused")
    plain = capo.directional_shifts(batch, step, kernel="plain")
    _close(fused.m_F, plain.m_F, FUSED_FLOAT32_RTOL)


@pytest.mark.usefixtures("fused_kernels")
def test_one_compilation_serves_every_shape():
    """Shapes are dynamic: new N, k, H and table sizes reuse the compiled kernel, even after a first
    call whose N equals its k (the self-check's 16 tokens with k = 16; no duck sizing)."""
    fused_shift._compiled.clear()
    torch._dynamo.reset()
    capo.directional_shifts(*_float32_case(0, 16, 16, 24, 50), kernel="fused")  # compiled here
    before = counters["stats"]["unique_graphs"]
    for seed, (n, k, h, v) in enumerate([(40, 5, 24, 50), (130, 11, 40, 300), (17, 3, 64, 20)]):
        capo.directional_shifts(*_float32_case(seed, n, k, h, v), kernel="fused")
    assert counters["stats"]["unique_graphs"] == before


def test_auto_is_the_plain_path_on_cpu_bit_for_bit():
    """On CPU the default (auto) runs the plain path: compiling costs more than a CPU run saves."""
    batch, step = _float32_case()
    auto = capo.directional_shifts(batch, step)
    plain = capo.directional_shifts(batch, step, kernel="plain")
    assert torch.equal(auto.m_H, plain.m_H) and torch.equal(auto.m_F, plain.m_F)


def test_unknown_kernel_is_a_value_error_naming_it():
    batch, step = _float32_case()
    with pytest.raises(ValueError, match=r"kernel\) must be one of"):
        capo.directional_shifts(batch, step, kernel="triton")


@pytest.mark.parametrize("kernel", ["auto", "fused"])
def test_a_fused_kernel_that_disagrees_is_refused(kernel):
    """The first fused call is checked against the plain path: auto warns and falls back, fused raises."""
    ones = torch.ones(4, 3, dtype=torch.float64)
    wrong, right = (lambda sl: 2 * ones[sl]), (lambda sl: ones[sl])
    key = ("test-op", "cpu", kernel)
    fused_shift._verified.pop(key, None)
    if kernel == "fused":
        with pytest.raises(RuntimeError, match="differs from the plain path"):
            fused_shift._checked(kernel, key, 4, wrong, right)
    else:
        with pytest.warns(UserWarning, match="using the plain path"):
            assert fused_shift._checked(kernel, key, 4, wrong, right) is None
        assert fused_shift._checked(kernel, key, 4, wrong, right) is None  # decided once
    fused_shift._verified.pop(key, None)


def test_a_kernel_that_cannot_be_built_is_unavailable_in_one_line(monkeypatch):
    """A build failure (inductor's CppCompileError on some CPUs) makes the device one without the fused
    path: the probe names the op and the error; under auto the first call warns and the plain path serves."""

    def broken(name, formula):
        def run(*args):
            raise RuntimeError("C++ compile error\nline two")

        return run

    monkeypatch.setattr(fused_shift, "_kernel", broken)
    reason = fused_shift._probe(torch.device("cpu"))
    assert reason == (
        "torch.compile could not build adam_token_directions (RuntimeError: C++ compile error)"
    )
    key = ("test-broken", "cpu", "auto")
    fused_shift._verified.pop(key, None)
    ones = torch.ones(4, 3)
    with pytest.warns(UserWarning, match="could not be built"):
        assert (
            fused_shift._checked("auto", key, 4, lambda sl: broken("", None)(), lambda sl: ones[sl])
            is None
        )
    fused_shift._verified.pop(key, None)


def _train(tmp_path, kernel):
    from tests.capo import _trainer_helpers as H

    trainer = H.trainer(
        str(tmp_path / kernel), capo_shift_kernel=kernel, capo_global_shift=True, max_steps=3,
        hessian_low=-0.05, hessian_high=0.05, fisher_max=1.3e-3,
    )  # fmt: skip
    trainer.capo_record = []
    trainer.train()
    logs = [e for e in trainer.state.log_history if e.get("capo/global_m_H")]
    return [r["keep"] for r in trainer.capo_record], logs


@pytest.mark.usefixtures("fused_kernels")
def test_training_with_the_fused_kernel_applies_the_same_masks(tmp_path):
    """capo_shift_kernel='fused' (float64 tiny model): the masks of 'plain', the shifts to 1e-12."""
    fused_keep, fused_logs = _train(tmp_path, "fused")
    plain_keep, plain_logs = _train(tmp_path, "plain")
    assert all(torch.equal(a, b) for a, b in zip(fused_keep, plain_keep, strict=True))
    assert len(plain_logs) >= 2  # steps with an accepted gradient: the global shift is nonzero
    for a, b in zip(fused_logs, plain_logs, strict=True):
        for key in ("capo/global_m_H", "capo/global_m_F", "capo/m_H/mean", "capo/m_F/max"):
            assert a[key] == pytest.approx(b[key], rel=FUSED_RTOL, abs=1e-300), key
