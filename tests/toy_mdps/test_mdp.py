"""FiniteMDP validation and the seeded random constructors (toy_mdps/mdp.py)."""

from __future__ import annotations

import numpy as np
import pytest

from toy_mdps import FiniteMDP, contextual_bandit, random_mdp


def valid_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    P = np.full((2, 3, 2), 0.5)
    return P, np.zeros((2, 3)), np.array([0.25, 0.75])


def test_random_mdp_is_valid_and_reproducible_from_its_seed() -> None:
    a, b, c = random_mdp(4, 3, 5, seed=1), random_mdp(4, 3, 5, seed=1), random_mdp(4, 3, 5, seed=2)
    assert (a.n_states, a.n_actions, a.horizon) == (4, 3, 5)
    np.testing.assert_array_equal(a.transitions, b.transitions)
    assert not np.array_equal(a.rewards, c.rewards)


def test_contextual_bandit_has_horizon_one_and_uniform_contexts() -> None:
    mdp = contextual_bandit(3, 4, seed=0)
    assert (mdp.n_states, mdp.n_actions, mdp.horizon, mdp.gamma) == (3, 4, 1, 1.0)
    np.testing.assert_array_equal(mdp.rho0, np.full(3, 1 / 3))


def test_arrays_are_read_only_copies() -> None:
    P, R, rho0 = valid_arrays()
    mdp = FiniteMDP(P, R, rho0, horizon=2)
    R[0, 0] = 5.0
    assert mdp.rewards[0, 0] == 0.0
    with pytest.raises(ValueError):
        mdp.rewards[0, 0] = 1.0


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"transitions": np.full((2, 3, 3), 1 / 3)}, "transitions"),
        ({"transitions": np.full((2, 3, 2), 0.6)}, "transitions"),
        ({"rewards": np.zeros((3, 2))}, "rewards"),
        ({"rewards": np.full((2, 3), np.nan)}, "rewards"),
        ({"rho0": np.array([0.5, 0.6])}, "rho0"),
        ({"rho0": np.ones(3) / 3}, "rho0"),
        ({"horizon": 0}, "horizon"),
        ({"horizon": 2.5}, "horizon"),
        ({"gamma": 1.5}, "gamma"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(change: dict, name: str) -> None:
    P, R, rho0 = valid_arrays()
    kwargs = {"transitions": P, "rewards": R, "rho0": rho0, "horizon": 2, "gamma": 1.0} | change
    with pytest.raises(ValueError, match=name):
        FiniteMDP(**kwargs)


def test_bad_sizes_in_constructors_raise_value_error_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="n_states"):
        random_mdp(0, 2, 2)
    with pytest.raises(ValueError, match="n_arms"):
        contextual_bandit(2, 0)
