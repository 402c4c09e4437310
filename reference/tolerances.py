"""Every numerical tolerance of the project's comparisons, in one place (docs/design.md §4).

The tests (``tests/tolerances.py``), the verification reports and ``python -m reference`` import these; a
comparison never writes a tolerance inline. The probability-sum tolerance of the input contract
(docs/design.md §3) is the library's own, :data:`capo.tokens.PROB_SUM_ATOL`, re-exported here.
"""

from __future__ import annotations

from capo.tokens import PROB_SUM_ATOL

__all__ = [
    "BF16_RTOL",
    "EXACT_ATOL",
    "EXACT_RTOL",
    "FLOAT32_ADAM_RTOL",
    "FLOAT32_ATOL",
    "FLOAT32_RTOL",
    "FUSED_FLOAT32_RTOL",
    "FUSED_RTOL",
    "GOLDEN_RTOL",
    "MC_TARGET_RTOL",
    "PROB_SUM_ATOL",
]

EXACT_RTOL = 1e-10
"""Relative tolerance for float64 quantities that are equal in exact arithmetic."""

EXACT_ATOL = 1e-12
"""Absolute floor for float64 comparisons of quantities that can be exactly zero."""

FLOAT32_RTOL = 1e-4
"""Relative tolerance for float32 computations against a float64 twin."""

FLOAT32_ATOL = 1e-6
"""Absolute floor for float32 comparisons."""

FLOAT32_ADAM_RTOL = 1e-3
"""Weights of float32 runs that differ only in summation order (1 process vs a ZeRO reduce-scatter), after a few
Adam steps, relative to the tensor's largest entry: Adam divides by sqrt(v), so on entries whose gradient is near
zero the rounding of the gradient changes the step by O(1) relative (measured up to 2.4e-4 after 3 steps)."""

FUSED_RTOL = 1e-12
"""float64 shifts of the fused kernels (capo.fused_shift) against the plain path and the dense reference, relative
to the largest entry: the same formula with the operations in another order."""

FUSED_FLOAT32_RTOL = 1e-6
"""The same comparison in float32 (fused against plain, both accumulating in float32; measured up to 5e-7 at
N = 8192, k = 50, H = 1024)."""

GOLDEN_RTOL = 1e-4
"""A float of the golden float64 trainings (tests/capo/_golden.py) on any CPU kind against the recording: AVX2,
AVX-512 and the scalar kernels round differently (the tiny model's float32 parts too), and 2-3 training steps
amplify that (on one AVX-512 machine: AVX-512 and AVX2 kernels equal within 1e-12 absolute; the scalar kernels
up to 1.0e-5 relative, the KL budget's scale); masks and counts are compared exactly."""

BF16_RTOL = 2e-2
"""Relative tolerance for bf16 inputs accumulated in float32."""

MC_TARGET_RTOL = 5e-2
"""Relative error a Monte Carlo estimate must reach (averaged until below) in expectation tests."""
