"""Shared pytest configuration: deterministic torch, the toy-case fixture, the ``slow`` lane.

``toy_case`` runs a test on every case of ``toy_mdps.cases.CASES`` (one fixture per case list);
``fused_kernels`` skips a test where the compiled shift kernels are unavailable on this CPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from toy_mdps import CASES, ToyCase, build_case

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    torch.manual_seed(0)


@pytest.fixture
def fused_kernels() -> None:
    """Skip, naming why, where the fused shift kernels cannot build or disagree on this machine."""
    from capo import fused_shift

    reason = fused_shift.unavailable(torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"fused kernels unavailable here: {reason}")


@pytest.fixture(params=CASES, ids=[case["id"] for case in CASES])
def toy_case(request: pytest.FixtureRequest) -> ToyCase:
    return build_case(request.param)
