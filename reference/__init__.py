"""Dense NumPy float64 reference of the CAPO last-layer model: obviously correct, slow.

Every quantity here is the twin of a fast function in :mod:`capo`. Full (K·d)×(K·d) matrices are built
with the paper's Kronecker convention: ψ = vec(W) in row-major order, so index ``a * d + j`` is W[a, j].
"""

from reference.bounds import discounted_constant, finite_horizon_constant, hessian_threshold
from reference.curvature import (
    directional,
    directional_fisher_trace,
    directional_hessian_trace,
    m_F,
    m_H,
)
from reference.last_layer import (
    expected_fisher,
    expected_gradient,
    expected_hessian,
    sample_fisher,
    sample_gradient,
    sample_hessian,
    score,
    state_fisher,
)
from reference.shifts import accept, subset_ids, subset_shifts
from reference.steps import DenseAdamState, DenseAdamStep, DenseSGDStep, StepModel

__all__ = [
    "DenseAdamState",
    "DenseAdamStep",
    "DenseSGDStep",
    "StepModel",
    "accept",
    "directional",
    "directional_fisher_trace",
    "directional_hessian_trace",
    "discounted_constant",
    "expected_fisher",
    "expected_gradient",
    "expected_hessian",
    "finite_horizon_constant",
    "hessian_threshold",
    "m_F",
    "m_H",
    "sample_fisher",
    "sample_gradient",
    "sample_hessian",
    "score",
    "state_fisher",
    "subset_ids",
    "subset_shifts",
]
