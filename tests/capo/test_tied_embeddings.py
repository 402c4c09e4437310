"""What CAPO's predicted shift misses with tied input/output embeddings (capo.output_layer_check).

A tiny tied Qwen2 and its untied twin (same function, the output matrix a separate copy) train one step
with only the output matrix trainable, plain SGD for the optimizer and the SGD step model (so that the
update is linear in the gradient and the parts can be told apart). CAPO's prediction sees only the head
part of the shared matrix's update: it is identical for both. The twin's step is exactly that head part
(its hidden states cannot move), so its measured KL is the shift the step model describes; the tied step
adds the input-embedding gradient on the rows of the input tokens, which moves the hidden states too.
"""

from __future__ import annotations

import warnings

import torch

from tests.capo import _trainer_helpers as H
from tests.capo._tied_model import tied_tiny_model, train_only_the_output_matrix, untied_twin
from tests.capo.test_trainer_training import MIXED
from tests.tolerances import FLOAT32_ATOL, FLOAT32_RTOL

TAU = 0.7


def one_step(tmp_path, model):
    """Train one SGD step; return the trainer and fresh copies of the model before and after it."""
    before, after = copy_of(model), copy_of(model)
    tr = H.trainer(
        str(tmp_path),
        model=train_only_the_output_matrix(model),
        max_steps=1,
        optim="sgd",
        capo_step_model="sgd",
        learning_rate=1e-2,
        temperature=TAU,
        **MIXED,
    )
    tr.capo_record = []
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # the tied-embeddings warning, tested elsewhere
        tr.train()
    after.load_state_dict(tr.model.state_dict())
    return tr, before, after


def copy_of(model):
    """A fresh (unpatched by TRL) model with the same weights and the same tying."""
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    fresh = tied_tiny_model() if tied else untied_twin(tied_tiny_model())
    fresh.load_state_dict(model.state_dict())
    return fresh


@torch.no_grad()
def measured_kl(record, before, after) -> float:
    """Mean exact full-vocabulary KL(π_before || π_after) over the step's valid completion tokens."""
    total, n = 0.0, 0
    for entry in record:
        k = entry["valid"].shape[1]
        lp = [
            torch.log_softmax(
                m(input_ids=entry["input_ids"], attention_mask=entry["attention_mask"]).logits[
                    :, -k - 1 : -1
                ][entry["valid"]]
                / TAU,
                dim=-1,
            )
            for m in (before, after)
        ]
        total += float((lp[0].exp() * (lp[0] - lp[1])).sum())
        n += int(entry["valid"].sum())
    return total / n


def test_tied_step_moves_the_policy_more_than_the_head_part_capo_predicts(tmp_path):
    tied = tied_tiny_model()
    tr_t, before_t, after_t = one_step(tmp_path / "tied", tied)
    tr_u, before_u, after_u = one_step(tmp_path / "untied", untied_twin(tied_tiny_model()))

    # 1. CAPO's prediction is blind to the tying: the same masks and shifts for both models.
    for a, b in zip(tr_t.capo_record, tr_u.capo_record, strict=True):
        assert torch.equal(a["keep"], b["keep"])
    log_t, log_u = (next(h for h in t.state.log_history if "loss" in h) for t in (tr_t, tr_u))
    for key in ("capo/global_m_H", "capo/global_m_F", "capo/m_F/max", "capo/rejection_rate"):
        assert log_t[key] == log_u[key], key

    # 2. The tied update = the head part (the twin's update) + the input-embedding part, which sits
    #    exactly on the rows of the tokens fed to the model.
    d_tied = after_t.lm_head.weight - before_t.lm_head.weight
    d_head = after_u.lm_head.weight - before_u.lm_head.weight
    embedding_part = (d_tied - d_head).abs().amax(dim=1)
    tol = FLOAT32_RTOL * float(d_head.abs().max()) + FLOAT32_ATOL
    fed = torch.unique(
        torch.cat([e["input_ids"][e["attention_mask"].bool()] for e in tr_t.capo_record])
    )
    assert float(embedding_part.max()) > 100 * tol
    outside = torch.ones_like(embedding_part, dtype=torch.bool)
    outside[fed] = False
    assert float(embedding_part[outside].max()) <= tol

    # 3. The measured KL of the tied step exceeds that of the head part CAPO models (13x here).
    kl_tied = measured_kl(tr_t.capo_record, before_t, after_t)
    kl_head = measured_kl(tr_u.capo_record, before_u, after_u)
    assert kl_head > 0
    assert kl_tied > 2 * kl_head, (kl_tied, kl_head)
