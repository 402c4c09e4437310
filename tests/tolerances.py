"""Every numerical tolerance used by the tests, in one place.

Exact float64 comparisons (analytic formula vs dense reference vs torch.func autodiff) use EXACT_RTOL.
"""

EXACT_RTOL = 1e-10
"""Relative tolerance for float64 quantities that are equal in exact arithmetic."""

EXACT_ATOL = 1e-12
"""Absolute floor for float64 comparisons of quantities that can be exactly zero."""

FLOAT32_RTOL = 1e-4
"""Relative tolerance for float32 computations against a float64 twin."""

FLOAT32_ATOL = 1e-6
"""Absolute floor for float32 comparisons."""

BF16_RTOL = 2e-2
"""Relative tolerance for bf16 inputs accumulated in float32."""

PROB_SUM_ATOL = 1e-6
"""How far a probability row may be from summing to one before it is rejected."""

MC_TARGET_RTOL = 5e-2
"""Relative error a Monte Carlo estimate must reach (averaged until below) in expectation tests."""
