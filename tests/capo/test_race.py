"""The race (capo_app.experiments.race): the sampled score, the random control's rule, the criteria, --quick."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from capo_app.evaluation.sampled import eval_seed, sampled_score
from capo_app.experiments.race_run import random_reject
from capo_app.experiments.race_verdict import completions_to, crashed, final_score, judge


def test_sampled_score_is_the_mean_over_samples_with_its_monte_carlo_se():
    correct = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    s = sampled_score(correct, temperature=0.9, greedy=0.5)
    assert s.sampled == pytest.approx(0.5) and s.pass_at_k == pytest.approx(2 / 3)
    # p = (0.5, 1, 0): sqrt(Σ p(1 − p) / (k − 1)) / n
    assert s.sampled_se == pytest.approx(math.sqrt(0.25 / 3) / 3)
    assert (s.k, s.n_problems, s.greedy) == (4, 3, 0.5)


def test_evaluation_streams_differ_by_seed_and_by_evaluation():
    seeds = {eval_seed(s, i) for s in range(5) for i in range(7)}
    assert len(seeds) == 35


def test_random_control_rejects_only_tokens_capo_could_reject():
    valid = np.ones((4, 10), dtype=bool)
    valid[:, 8:] = False
    adv = np.repeat([[1.0], [0.0], [-1.0], [0.0]], 10, axis=1)  # rows 1 and 3: A = 0
    keep = random_reject(valid, adv, 0.25, np.random.default_rng(0))
    rejected = valid & ~keep
    assert rejected.sum() == 8  # round(0.25 · 32 valid tokens)
    assert not rejected[adv == 0].any() and not (keep & ~valid).any()
    everything = random_reject(valid, adv, 1.0, np.random.default_rng(0))
    assert (valid & ~everything).sum() == 16  # capped at the A ≠ 0 tokens


def _record(seed: int, curve: list[float], reward: float, per_step: int) -> dict:
    evals = [{"sampled": v, "completions": 10 * i * per_step} for i, v in enumerate(curve)]
    return {"seed": seed, "evals": evals, "train_reward": [reward] * 50}


def test_crash_and_final_score_follow_the_written_rule():
    assert final_score(_record(0, [0.4, 0.5, 0.6, 0.7], 0.5, 1)) == pytest.approx(0.65)
    assert crashed(_record(0, [0.4, 0.3, 0.2, 0.2], 0.5, 1))  # 0.2 < 0.4 − 0.10
    assert crashed(_record(0, [0.4, 0.4, 0.4, 0.4], 0.0, 1))  # reward ~0
    assert not crashed(_record(0, [0.4, 0.35, 0.32, 0.32], 0.5, 1))
    assert completions_to(np.array([0.4, 0.45, 0.6]), np.array([0, 10, 20]), 0.5) == 20
    assert (
        completions_to(np.array([0.6, 0.4]), np.array([0, 10]), 0.5) is None
    )  # step 0 does not count


def _race(fast: list[float], n: int = 5) -> dict:
    rng = np.random.default_rng(0)

    def noisy(curve: list[float]) -> list[float]:
        return [v + 0.003 * rng.standard_normal() for v in curve]

    cons = [_record(s, noisy([0.4, 0.42, 0.45, 0.48, 0.5, 0.52]), 0.5, 96) for s in range(n)]
    crash = [_record(s, noisy([0.4, 0.1, 0.0, 0.0, 0.0, 0.0]), 0.0, 8) for s in range(n)]
    arm = [_record(s, noisy(fast), 0.5, 8) for s in range(n)]
    runs = {"conservative": cons, "grpo_a": crash, "kl_target": arm}
    return judge(runs, {name: name for name in runs})


def test_an_arm_that_reaches_the_target_early_without_crashing_is_sample_efficient():
    v = _race([0.4, 0.55, 0.56, 0.57, 0.57, 0.57])
    assert v["R1"] and v["R2"] and v["verdict"] == "sample-efficient"
    arm = v["arms"]["kl_target"]
    assert arm["S"] and arm["hoped"] and arm["ratio"] == pytest.approx(4800 / 80)
    assert arm["ratio_ci"][0] > 1


def test_an_arm_that_never_reaches_the_target_is_no_gain_and_a_flat_regime_is_invalid():
    assert _race([0.4, 0.41, 0.42, 0.42, 0.42, 0.42])["verdict"] == "no gain"
    v = _race([0.4] * 6)
    assert v["arms"]["kl_target"]["completions_to_target"] is None


@pytest.mark.slow
def test_quick_race_writes_the_report_results_and_raw_records(tmp_path):
    from capo_app.experiments.race import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert {"base_score", "target", "verdict", "arms"} <= res.keys()
    kinds = {a["kind"] for a in res["arms"]}
    assert {"conservative", "grpo_a", "capo", "random", "kl_cap", "kl_target", "lower_lr"} <= kinds
    for arm in res["arms"]:
        for seed in arm["seeds"]:
            assert {"seed", "final_score", "crashed", "completions_to_target"} <= seed.keys()
    random = next(a for a in res["arms"] if a["kind"] == "random")
    assert all(
        s["rejection_mean"] is not None for s in random["seeds"]
    )  # the seam applied its mask
    assert (tmp_path / "race_accuracy.png").exists() and (tmp_path / "raw").is_dir()
    report = (tmp_path / "report.md").read_text()
    assert "QUICK SMOKE RUN" in report and "Criteria" in report
    assert (
        main(["--quick", "--report-only", "--out", str(tmp_path)]) == 0
    )  # from the raw records alone
