"""One fixture per case list: ``toy_case`` runs a test on every case of ``toy_mdps.cases.CASES``."""

from __future__ import annotations

import pytest

from toy_mdps import CASES, ToyCase, build_case


@pytest.fixture(params=CASES, ids=[case["id"] for case in CASES])
def toy_case(request: pytest.FixtureRequest) -> ToyCase:
    return build_case(request.param)
