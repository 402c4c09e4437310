"""CAPOTrainer through ``train()``: GA invariance, resume, baselines, REINFORCE advantages, true KL.

Tiny float64 Qwen2 models and the deterministic generation stub of ``_trainer_helpers``; every run is
one to three optimizer steps. Runs that are compared use plain SGD for the policy optimizer, so the
float32 round-off of TRL's fused log-prob kernel is not amplified by Adam's normalisation.
"""

from __future__ import annotations

import os

import pytest
import torch
from trl import GRPOConfig

from capo.checkpoint import MOMENTS_FILE
from tests.capo import _trainer_helpers as H
from tests.tolerances import FLOAT32_ATOL, FLOAT32_RTOL

MIXED = {"hessian_low": -0.05, "hessian_high": 0.05, "fisher_max": 1.3e-3}


def masks_by_completion(record, step_of_entry):
    """{(step, completion index): keep row} from a capo_record."""
    out = {}
    for entry, step in zip(record, step_of_entry, strict=True):
        for i, idx in enumerate(entry["completion_index"].tolist()):
            out[(step, idx)] = entry["keep"][i][entry["valid"][i]]
    return out


def capo_logs(trainer):
    return [
        {k: v for k, v in h.items() if k.startswith("capo/")}
        for h in trainer.state.log_history
        if "capo/rejection_rate" in h
    ]


def assert_params_close(a, b):
    for name in a:
        err = float((a[name] - b[name]).abs().max())
        assert err <= FLOAT32_RTOL * float(a[name].abs().max()) + FLOAT32_ATOL, name


def test_gradient_accumulation_split_gives_the_same_step(tmp_path):
    runs = {}
    for ga in (1, 2):
        tr = H.trainer(
            str(tmp_path / f"ga{ga}"),
            per_device_train_batch_size=8 // ga,
            gradient_accumulation_steps=ga,
            optim="sgd",
            max_steps=2,
            **MIXED,
        )
        tr.capo_record = []
        tr.train()
        steps = [i // ga for i in range(len(tr.capo_record))]
        runs[ga] = (tr, masks_by_completion(tr.capo_record, steps))
    (t1, m1), (t2, m2) = runs[1], runs[2]
    assert m1.keys() == m2.keys()
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    logs1, logs2 = capo_logs(t1), capo_logs(t2)
    assert 0.0 < logs1[0]["capo/rejection_rate"] < 1.0
    for a, b in zip(logs1, logs2, strict=True):
        for key in ("capo/rejection_rate", "capo/accepted_tokens", "capo/completions_seen"):
            assert a[key] == b[key], key
        assert abs(a["capo/global_m_F"] - b["capo/global_m_F"]) <= 1e-8 * abs(a["capo/global_m_F"])
    assert_params_close(H.params(t1.model), H.params(t2.model))
    d1, d2 = t1.capo_moments.to_dense(), t2.capo_moments.to_dense()
    assert t1.capo_moments.t == t2.capo_moments.t == 2
    for x, y in zip(d1, d2, strict=True):
        assert float((x - y).abs().max()) <= 1e-6 * float(x.abs().max())


@pytest.mark.slow
def test_resume_reproduces_masks_and_losses(tmp_path):
    common = dict(optim="sgd", max_steps=3, save_strategy="steps", save_steps=2)
    full = H.trainer(str(tmp_path / "full"), **common, **MIXED)
    full.capo_record = []
    full.train()
    ckpt = tmp_path / "full" / "checkpoint-2"
    assert (ckpt / MOMENTS_FILE).exists()
    last_step = full.capo_record[-1]

    resumed = H.trainer(str(tmp_path / "resumed"), **common, **MIXED)
    resumed.capo_record = []
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert len(resumed.capo_record) == 1
    assert torch.equal(resumed.capo_record[0]["keep"], last_step["keep"])
    assert torch.equal(resumed.capo_record[0]["input_ids"], last_step["input_ids"])
    a = next(h for h in full.state.log_history if h.get("step") == 3 and "loss" in h)
    b = next(h for h in resumed.state.log_history if h.get("step") == 3 and "loss" in h)
    for key in (
        "loss",
        "capo/rejection_rate",
        "capo/global_m_H",
        "capo/global_m_F",
        "capo/completions_seen",
    ):
        assert abs(a[key] - b[key]) <= 1e-9 * max(1.0, abs(a[key])), key
    assert resumed.capo_moments.t == full.capo_moments.t == 3
    assert_params_close(H.params(full.model), H.params(resumed.model))

    # Sensitivity: without the saved moments the resumed step predicts different shifts.
    os.remove(ckpt / MOMENTS_FILE)
    fresh = H.trainer(str(tmp_path / "fresh"), **common, **MIXED)
    with pytest.warns(UserWarning, match="moments restart from zero"):
        fresh.train(resume_from_checkpoint=str(ckpt))
    c = next(h for h in fresh.state.log_history if h.get("step") == 3 and "loss" in h)
    assert abs(c["capo/global_m_F"] - a["capo/global_m_F"]) > 1e-6 * abs(a["capo/global_m_F"])


@pytest.mark.slow
def test_disabled_capo_equals_plain_grpo_trainer(tmp_path):
    grpo_args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        **{
            k: v
            for k, v in H.config(str(tmp_path / "x")).to_dict().items()
            if k
            in ("per_device_train_batch_size", "num_generations", "max_completion_length", "seed")
        },
        use_cpu=True,
        bf16=False,
        report_to=[],
        max_steps=2,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        gradient_checkpointing=False,
        loss_type="grpo",
        scale_rewards="group",
    )
    grpo = H.StubGRPOTrainer(
        model=H.tiny_model(),
        reward_funcs=H.length_reward,
        args=grpo_args,
        train_dataset=H.dataset(),
        processing_class=H.tokenizer(),
    )
    grpo.train()
    for track in (False, True):
        base = H.trainer(
            str(tmp_path / f"capo{track}"), capo_enabled=False, capo_track_shifts=track, **MIXED
        )
        base.train()
        expected = H.params(grpo.model)
        got = H.params(base.model)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
        logs = capo_logs(base)
        assert (len(logs) == 2) if track else (logs == [])


def test_reinforce_uses_the_raw_reward_as_advantage(tmp_path):
    seen: list[float] = []

    def reward(completions, **kwargs):
        values = [float(len(c) % 5) / 4.0 + 1.0 for c in completions]  # all positive
        seen.extend(values)
        return values

    tr = H.trainer(str(tmp_path), capo_variant="reinforce")
    tr.reward_funcs = [reward]
    tr.model.train()
    out = tr._generate_and_score_completions(
        [{"prompt": p} for p in H.PROMPTS[:2] for _ in range(4)]
    )
    torch.testing.assert_close(out["advantages"].double(), torch.tensor(seen, dtype=torch.float64))
    assert torch.equal(out["capo_group_ids"], torch.arange(8) // 4)


def test_zero_std_groups_and_truncated_completions_train_without_nan(tmp_path):
    tr = H.trainer(str(tmp_path), max_steps=1, **MIXED)
    tr.reward_funcs = [lambda completions, **kw: [1.0] * len(completions)]
    before = H.params(tr.model)
    tr.train()
    log = capo_logs(tr)[0]
    assert all(v == v for v in log.values())  # no NaN
    after = H.params(tr.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # zero advantages: zero gradient


def test_true_kl_matches_full_vocabulary_kl_of_the_step(tmp_path):
    tr = H.trainer(
        str(tmp_path),
        max_steps=1,
        capo_log_true_kl=True,
        temperature=0.7,
        learning_rate=1e-2,
        hessian_low=None,
        hessian_high=None,
        fisher_max=None,
    )
    # fresh (unpatched) copies: TRL's fused-head patch binds forward to the patched instance
    before = H.tiny_model()
    before.load_state_dict(tr.model.state_dict())
    tr.capo_record = []
    tr.train()
    after = H.tiny_model()
    after.load_state_dict(tr.model.state_dict())
    logged = [h["capo/true_kl"] for h in tr.state.log_history if "capo/true_kl" in h]
    kls, n = 0.0, 0
    with torch.no_grad():
        for entry in tr.capo_record:
            k = entry["valid"].shape[1]
            lp = [
                torch.log_softmax(
                    m(input_ids=entry["input_ids"], attention_mask=entry["attention_mask"]).logits[
                        :, -k - 1 : -1
                    ]
                    / 0.7,
                    dim=-1,
                )[entry["valid"]]
                for m in (before, after)
            ]
            kls += float((lp[0].exp() * (lp[0] - lp[1])).sum())
            n += int(entry["valid"].sum())
    assert logged[0] > 0
    assert abs(logged[0] - kls / n) <= 1e-9 * kls / n
