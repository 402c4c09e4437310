"""Smoke test of the tiny-LLM stability experiment on a micro configuration (a few seconds per run)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

pytest.importorskip("trl")

from capo_app.experiments.stability import MICRO, run_experiment
from capo_app.experiments.stability_report import write_report


@pytest.mark.slow
def test_micro_llm_experiment_writes_report(tmp_path):
    cfg = replace(MICRO, tiny_cache_dir=str(tmp_path / "cache"))
    res = run_experiment(cfg, tmp_path, progress=False)
    path = write_report(res, tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert path.read_text().startswith("# Tiny-LLM stability experiment")
    assert set(summary["methods"]) == {"grpo_conservative", "capo_a"}
    assert summary["lr_aggressive"] == MICRO.lr_fixed
    assert summary["lr_conservative"] == pytest.approx(MICRO.lr_fixed / 5)
    conservative, capo_a = summary["methods"]["grpo_conservative"], summary["methods"]["capo_a"]
    group = MICRO.group_size * MICRO.prompts_aggressive
    assert capo_a["completions_total"] == MICRO.steps * group
    assert conservative["completions_total"] == MICRO.steps * group * MICRO.batch_ratio
    for m in summary["methods"].values():
        assert 0.0 <= m["test_base"] <= 1.0 and 0.0 <= m["test_final_mean"] <= 1.0
        assert 0.0 <= m["rejection_peak"] <= 1.0
        assert m["true_kl_max_mean"] >= 0.0
    assert len(summary["curves"]["capo_a"]["test"]["mean"]) == MICRO.steps // MICRO.eval_every + 1
    for fig in summary["figures"].values():
        assert (tmp_path / fig).stat().st_size > 0
    # a second call resumes from the saved records instead of training again
    again = run_experiment(cfg, tmp_path, progress=False)
    assert again.runs["eval"]["capo_a"][0]["seconds"] == res.runs["eval"]["capo_a"][0]["seconds"]
