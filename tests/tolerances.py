"""The tests' tolerances: the project's one tolerance module, :mod:`reference.tolerances`."""

from reference.tolerances import (
    BF16_RTOL,
    EXACT_ATOL,
    EXACT_RTOL,
    FLOAT32_ADAM_RTOL,
    FLOAT32_ATOL,
    FLOAT32_RTOL,
    FUSED_FLOAT32_RTOL,
    FUSED_RTOL,
    GOLDEN_RTOL,
    MC_TARGET_RTOL,
    PROB_SUM_ATOL,
)

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
