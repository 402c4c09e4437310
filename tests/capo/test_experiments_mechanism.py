"""The mechanism study: token rules, toy training, thresholds, crash test, verdicts, the quick run end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import capo
from capo_app.experiments.arms import GROUPS, Arm, group_index, random_keep, rejection_by_group
from capo_app.experiments.protocol import crashed, final, percentile_thresholds
from capo_app.experiments.study import QUICK, main
from capo_app.experiments.toy_regime import ToySetup, cosine_lr, grpo_advantages, run_toy

_QUICK_TOY = QUICK["toy"].setup
assert isinstance(_QUICK_TOY, ToySetup)
TOY = replace(_QUICK_TOY, steps=5)


def test_random_keep_rejects_the_requested_share_of_valid_tokens_only():
    valid = np.ones((8, 25), dtype=bool)
    valid[:, 20:] = False
    keep = random_keep(valid, 0.25, np.random.default_rng(0))
    assert (~keep[valid]).sum() == 40 and not keep[~valid].any()


def test_group_index_follows_sign_of_advantage_and_probability_bucket():
    adv = np.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 0.0])
    pi_a = np.array([0.05, 0.3, 0.9, 0.05, 0.3, 0.9, 0.5])
    np.testing.assert_array_equal(group_index(adv, pi_a), [0, 1, 2, 3, 4, 5, -1])
    keep = np.array([False, True, True, True, True, False, True])
    rej, tot = rejection_by_group(np.ones(7, dtype=bool), keep, adv, pi_a)
    assert rej == [1, 0, 0, 0, 0, 1] and tot == [1] * len(GROUPS)


def test_grpo_advantages_and_schedule_match_trl():
    from transformers import get_cosine_schedule_with_warmup

    r = np.array([1.0, 0.0, 0.0, 0.0])
    centred = r - 0.25
    np.testing.assert_allclose(grpo_advantages(r, 4), centred / (centred.std(ddof=1) + 1e-4))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = get_cosine_schedule_with_warmup(opt, 3, 25)
    for step in range(25):
        assert cosine_lr(2.0, step, 25, 0.1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


def test_rejecting_every_token_freezes_the_toy_policy():
    arm = Arm("adam/capo_none", masking="capo", thresholds=capo.Thresholds(fisher_max=-1.0))
    rec = run_toy(TOY, arm, 10.0, 0)
    assert rec["rejection"] == [1.0] * 5 and rec["score"] == [rec["score"][0]] * 6
    assert rec["true_kl"] == [0.0] * 5 and rec["kl_predicted"] == [0.0] * 5


def test_a_random_arm_copies_the_given_rates_and_the_unmasked_arm_rejects_nothing():
    rates = [0.0, 0.2, 0.1, 0.05, 0.1]
    rec = run_toy(TOY, Arm("adam/random", masking="random", control_of="x"), 10.0, 0, rates)
    np.testing.assert_allclose(rec["rejection"][:2], rates[:2], atol=1.0 / 32)
    assert all(r <= q + 1.0 / 32 for r, q in zip(rec["rejection"], rates, strict=True))
    assert run_toy(TOY, Arm("adam/grpo_a"), 10.0, 0)["rejection"] == [0.0] * 5


def test_predicted_kl_is_the_exact_kl_to_second_order_for_a_small_step():
    """½ δᵀFδ (eq 57) over the sampled states approximates the exact KL of a tiny SGD step."""
    rec = run_toy(replace(TOY, steps=3, prompts_per_step=64), Arm("sgd/x", "sgd"), 1e-3, 0)
    for pred, true in zip(rec["kl_predicted"][1:], rec["true_kl"][1:], strict=True):
        assert pred == pytest.approx(true, rel=0.5)


def test_percentile_thresholds_ignore_zero_shifts():
    runs = [{"token_m_F": [[0.0, 0.0, 1.0, 2.0, 3.0]], "token_m_H": [[0.0, -4.0, 4.0, 1.0, 1.0]]}]
    assert percentile_thresholds(runs, 50, False) == capo.Thresholds(fisher_max=2.0)
    assert percentile_thresholds(runs, 50, True) == capo.Thresholds(-2.5, 2.5, 2.0)


def _record(scores, reward=0.5, seed=0):
    return {"score": scores, "train_reward": [reward] * 5, "seed": seed}


def test_crash_means_far_below_base_or_no_reward():
    assert final(_record([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])) == 0.0
    assert crashed(_record([0.5, 0.5, 0.3])) and not crashed(_record([0.5, 0.5, 0.45]))
    assert crashed(_record([0.5, 0.6, 0.6], reward=0.0))


def test_quick_study_writes_the_report_and_the_results_schema(tmp_path):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["verdict"]) == {"toy"}
    assert data["verdict"]["toy"] in ("confirms", "refutes", "inconclusive")
    arms = data["regimes"]["toy"]["arms"]
    assert {a["masking"] for a in arms} == {"none", "capo", "random"}
    assert {a["optimizer"] for a in arms} == {"adam", "sgd"}
    keys = {"name", "optimizer", "masking", "lr", "seeds", "final", "min", "base", "crashed",
            "rejection_mean", "true_kl_max"}  # fmt: skip
    for arm in arms:
        assert keys <= set(arm) and len(arm["final"]) == len(arm["seeds"]) == 2
    report = (tmp_path / "report.md").read_text()
    assert "QUICK SMOKE RUN" in report
    assert report.index("## Criteria") < report.index("## Regime `toy`")
    for name in data["figures"].values():
        assert (tmp_path / name).stat().st_size > 0


def _run(seed, scores, rejection=0.0):
    n = len(scores) - 1
    return {"seed": seed, "score": scores, "train_reward": [0.5] * n, "rejection": [rejection] * n,
            "true_kl": [0.1] * n, "true_kl_head": [0.1] * n, "kl_predicted": [0.1] * n,
            "seconds": 1.0, "completions": [0, 10, 20, 30]}  # fmt: skip


def _regime(capo_scores, random_scores):
    from capo_app.experiments.protocol import RegimeResult

    arms = {"adam/grpo_a": ([0.5, 0.3, 0.1, 0.0], None),
            "adam/grpo_a_lr0.25": ([0.5, 0.55, 0.6, 0.7], None),
            "adam/capo_p95": (capo_scores, None),
            "adam/random_p95": (random_scores, "adam/capo_p95")}  # fmt: skip
    res = RegimeResult(config={}, lr={"adam": 1.0})
    for name, (scores, control) in arms.items():
        masking = "capo" if "capo" in name else "random" if control else "none"
        scale = 0.25 if "lr0.25" in name else 1.0
        res.arms.append(
            {
                "name": name,
                "label": name,
                "optimizer": "adam",
                "masking": masking,
                "lr_scale": scale,
                "batch_ratio": 1,
                "thresholds": {},
                "control_of": control,
            }
        )
        noise = np.linspace(-0.01, 0.01, 5)
        res.runs[name] = [
            _run(s, [scores[0], *(np.add(scores[1:], noise[s]))], 0.05) for s in range(5)
        ]
    return res


def test_verdict_follows_the_written_criteria():
    """Refutes when CAPO does no better than random at its rate; confirms when it keeps the score, beats
    random by >= 2 SE and reaches the lower-lr arm's final score sooner."""
    from capo_app.experiments.mechanism_report import summarize
    from capo_app.experiments.verdict import judge

    no_better = _regime([0.5, 0.3, 0.1, 0.0], [0.5, 0.3, 0.1, 0.0])
    assert judge(no_better, summarize(no_better))["verdict"] == "refutes"
    works = _regime([0.5, 0.7, 0.72, 0.75], [0.5, 0.3, 0.1, 0.0])
    verdict = judge(works, summarize(works))
    assert verdict["V1"] and verdict["V2"] and verdict["verdict"] == "confirms"


def test_a_kl_budget_arm_keeps_each_toy_step_near_its_budget():
    """The trust region scales the step by sqrt(δ / KL): the exact KL is δ to second order (<= 1.5 δ here)."""
    budget = 1e-3
    rec = run_toy(TOY, Arm("adam/grpo_a_kl", kl_budget=budget), 10.0, 0)
    plain = run_toy(TOY, Arm("adam/grpo_a"), 10.0, 0)
    assert max(rec["true_kl"]) <= 1.5 * budget < max(plain["true_kl"])
