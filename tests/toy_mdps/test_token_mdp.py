"""Token MDPs: prefixes as states, s_{t+1} = s_t ∘ a_t, terminal verifiable reward (toy_mdps/token_mdp.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.tolerances import EXACT_ATOL, EXACT_RTOL
from toy_mdps import LinearSoftmaxPolicy, evaluate_finite_horizon, random_features, token_mdp


def test_states_are_all_prefixes_and_the_index_round_trips() -> None:
    tok = token_mdp(3, 3, n_prompts=2)
    assert tok.mdp.n_states == 2 * (1 + 3 + 9 + 27)
    for s, (p, tokens) in enumerate(tok.prefixes):
        assert tok.state_index(p, tokens) == s
        assert tok.prefix(s) == (p, tokens)
    with pytest.raises(ValueError, match="tokens"):
        tok.state_index(0, (0, 0, 0, 0))


def test_transitions_concatenate_the_action_deterministically() -> None:
    tok = token_mdp(2, 3)
    for s, (p, tokens) in enumerate(tok.prefixes):
        for a in range(2):
            child = s if len(tokens) == 3 else tok.state_index(p, (*tokens, a))
            assert tok.mdp.transitions[s, a, child] == 1.0


@pytest.mark.parametrize("reward", ["sum", "match", "random"])
def test_reward_is_terminal_and_verifiable(reward: str) -> None:
    """R(s, a) = r(s ∘ a) on length-(T−1) prefixes, 0 elsewhere; r follows the named rule."""
    K, T = 3, 2
    tok = token_mdp(K, T, reward=reward, seed=4)
    lengths = tok.lengths()
    assert np.all(tok.mdp.rewards[lengths != T - 1] == 0.0)
    for seq in itertools.product(range(K), repeat=T):
        s = tok.state_index(0, seq[:-1])
        r = tok.mdp.rewards[s, seq[-1]]
        if reward == "sum":
            assert r == float(sum(seq) % K == tok.targets[0])
        elif reward == "match":
            assert r == float(seq == tuple(tok.targets[0]))
        else:
            assert 0.0 <= r < 1.0


def test_exact_J_equals_the_sum_over_all_token_sequences() -> None:
    """J = Σ_{sequences} Π_t π(a_t | prefix_t) · r(sequence), with ρ0 uniform over prompts."""
    tok = token_mdp(3, 3, reward="random", n_prompts=2, seed=1)
    h = random_features(tok.mdp.n_states, 4, seed=2)
    probs = LinearSoftmaxPolicy(h, np.random.default_rng(3).standard_normal((3, 4))).probs()
    J = 0.0
    for p in range(2):
        for seq in itertools.product(range(3), repeat=3):
            states = [tok.state_index(p, seq[:t]) for t in range(3)]
            prob = np.prod([probs[s, a] for s, a in zip(states, seq, strict=True)])
            J += 0.5 * prob * tok.terminal_rewards[tok.state_index(p, seq)]
    ev = evaluate_finite_horizon(tok.mdp, probs)
    np.testing.assert_allclose(ev.J, J, rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_time_t_marginal_lives_on_length_t_prefixes() -> None:
    tok = token_mdp(2, 4, reward="match")
    ev = evaluate_finite_horizon(tok.mdp, np.full((tok.mdp.n_states, 2), 0.5))
    lengths = tok.lengths()
    for t in range(4):
        assert np.all(ev.d[t][lengths != t] == 0.0)
        np.testing.assert_allclose(ev.d[t][lengths == t], 0.5**t, rtol=EXACT_RTOL)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"horizon": 0}, "horizon"),
        ({"reward": "length"}, "reward"),
        ({"n_prompts": 0}, "n_prompts"),
        ({"vocab_size": 10, "horizon": 5}, "vocab_size"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        token_mdp(**({"vocab_size": 2, "horizon": 2} | kwargs))
