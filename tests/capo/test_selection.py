import numpy as np
import pytest
import torch

import capo
from capo.shifts import Shifts
from reference import accept


def shifts_of(m_h, m_f):
    m_h = torch.tensor(m_h, dtype=torch.float64)
    m_f = torch.tensor(m_f, dtype=torch.float64)
    n = m_h.shape[0]
    return Shifts(m_h, m_f, torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.int64),
                  torch.ones(n, dtype=torch.bool))  # fmt: skip


def test_select_is_strict_at_the_bounds():
    """Eq 11 with strict inequalities: values equal to a bound are rejected."""
    th = capo.Thresholds(hessian_low=-1e-2, hessian_high=1e-2, fisher_max=1e-4)
    s = shifts_of([-1e-2, 1e-2, 0.0, 0.0, 0.0], [0.0, 0.0, 1e-4, 0.0, -1.0])
    assert capo.select(s, th).tolist() == [False, False, False, True, True]


@pytest.mark.parametrize(
    "bounds", [(None, None, None), (None, 0.5, None), (-0.5, None, 0.1)], ids=str
)
def test_select_matches_reference_accept_with_none_bounds(bounds):
    rng = np.random.default_rng(0)
    m_h, m_f = rng.normal(size=50), rng.exponential(0.1, size=50)
    got = capo.select(shifts_of(m_h.tolist(), m_f.tolist()), capo.Thresholds(*bounds))
    assert got.tolist() == accept(m_h, m_f, *bounds).tolist()


def test_select_rejects_nonfinite_even_without_bounds():
    s = shifts_of([float("nan"), float("inf"), 0.0], [0.0, 0.0, float("nan")])
    assert capo.select(s, capo.Thresholds()).tolist() == [False, False, False]


def test_select_empty():
    assert capo.select(shifts_of([], []), capo.PAPER_THRESHOLDS["capo"]).shape == (0,)


def test_thresholds_validation():
    with pytest.raises(ValueError, match="hessian_low"):
        capo.Thresholds(hessian_low=1e-2, hessian_high=-1e-2)
    with pytest.raises(ValueError, match="fisher_max"):
        capo.Thresholds(fisher_max=float("nan"))
