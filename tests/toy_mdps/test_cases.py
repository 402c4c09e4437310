"""The case list (toy_mdps/cases.py): readable unique ids, tiny sizes, and the required coverage."""

from __future__ import annotations

import numpy as np
import pytest

from toy_mdps import CASES, ToyCase, build_case, case_by_id


def test_case_ids_are_unique() -> None:
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids))


def test_every_case_is_tiny_and_consistent(toy_case: ToyCase) -> None:
    """K·d ≤ 40 so that dense (K·d)×(K·d) Hessians are instant; shapes agree."""
    S, K = toy_case.mdp.n_states, toy_case.mdp.n_actions
    assert toy_case.W.shape[0] == K and toy_case.features.shape == (S, toy_case.W.shape[1])
    assert K * toy_case.W.shape[1] <= 40
    assert np.isfinite(toy_case.evaluate().J)


def test_cases_cover_every_kind_setting_feature_type_and_top_k() -> None:
    built = [build_case(case) for case in CASES]
    assert {case["kind"] for case in CASES} == {"bandit", "token", "random"}
    assert {c.setting for c in built} == {"finite", "discounted"}
    assert {case["features"] for case in CASES} == {"tabular", "random"}
    assert any(c.top_k is not None for c in built)
    assert any(c.temperature != 1.0 for c in built)


def test_building_a_case_is_deterministic() -> None:
    a, b = build_case(CASES[2]), build_case(CASES[2])
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.features, b.features)


def test_bad_case_raises_value_error_naming_the_key() -> None:
    with pytest.raises(ValueError, match="kind"):
        build_case(
            {"id": "x", "kind": "grid", "features": "tabular", "setting": "finite", "seed": 0}
        )
    with pytest.raises(ValueError, match="seed"):
        build_case({"id": "x", "kind": "bandit", "features": "tabular", "setting": "finite"})
    with pytest.raises(ValueError, match="case_id"):
        case_by_id("nope")
