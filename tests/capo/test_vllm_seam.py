"""The vLLM generation path feeds CAPO's forward exactly what HF generation feeds it.

vLLM cannot run here, so TRL's two generation back ends are replaced at the method level by one
deterministic generator: ``VLLMGeneration`` (what ``use_vllm=True`` builds, in server and colocate mode)
by a class whose ``generate`` returns the generator's completions, and the model's ``generate`` (TRL's HF
path) by a function returning the same completions after the left-padded prompts. Everything in between is
TRL's own code (``_generate_single_turn``, EOS masking, padding, rewards, advantages), so the CAPO
micro-batches of both runs (inputs, masks, advantages, accepted tokens) must be identical.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from trl.trainer import grpo_trainer

from capo.trainer import CAPOTrainer
from tests.capo import _trainer_helpers as H

MAX_LEN = 8
VLLM_CALLS: list[int] = []


def completions(prompts: list[list[int]], call: int, eos: int) -> list[list[int]]:
    """Deterministic completions: 2..MAX_LEN ids from 3..39, ending in EOS unless MAX_LEN long."""
    out = []
    for i, ids in enumerate(prompts):
        g = torch.Generator().manual_seed(H._stable_seed(tuple(ids), i, call))
        length = int(torch.randint(2, MAX_LEN + 1, (1,), generator=g))
        tokens = torch.randint(3, 40, (length,), generator=g).tolist()
        out.append(tokens if length == MAX_LEN else [*tokens[: length - 1], eos])
    return out


class FakeVLLMGeneration:
    """Stands in for ``trl.generation.vllm_generation.VLLMGeneration``: no vLLM, same interface."""

    def __init__(self, processing_class: Any, **kwargs: Any) -> None:
        self.eos = processing_class.eos_token_id
        self.calls = 0

    def sync_weights(self) -> None:
        """Nothing to push: the generator has no weights."""

    def generate(self, prompts, images, num_generations, profiler=None):  # type: ignore[no-untyped-def]
        """(prompt_ids, completion_ids, logprobs [B, T, 1], logprob token ids) as vLLM returns them."""
        self.calls += 1
        VLLM_CALLS.append(len(prompts))
        ids = completions(prompts, self.calls, self.eos)
        logprobs = [[[-1.0] for _ in c] for c in ids]
        return prompts, ids, logprobs, [[[t] for t in c] for c in ids]


def _hf_generate(model: Any, eos: int, pad: int) -> Any:
    calls = {"n": 0}

    def generate(input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
        calls["n"] += 1
        prompts = [
            row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask, strict=True)
        ]
        ids = completions(prompts, calls["n"], eos)
        out = torch.full((len(ids), MAX_LEN), pad, dtype=torch.long)
        for row, c in zip(out, ids, strict=True):
            row[: len(c)] = torch.tensor(c)
        return torch.cat([input_ids, out.to(input_ids.device)], dim=1)

    return generate


def _run(tmp_path, monkeypatch, **vllm: Any) -> list[dict[str, torch.Tensor]]:
    monkeypatch.setattr(grpo_trainer, "VLLMGeneration", FakeVLLMGeneration)
    model, tok = H.tiny_model(), H.tokenizer()
    if not vllm:
        model.generate = _hf_generate(model, tok.eos_token_id, tok.pad_token_id)
    tr = H.trainer(
        str(tmp_path / str(vllm.get("vllm_mode", "hf"))), cls=CAPOTrainer, model=model,
        max_completion_length=MAX_LEN, hessian_low=-0.05, hessian_high=0.05, fisher_max=1.3e-3,
        **vllm,
    )  # fmt: skip
    tr.capo_record = []
    tr.train()
    return tr.capo_record


@pytest.mark.parametrize("mode", ["server", "colocate"])
def test_vllm_path_gives_capo_the_same_micro_batches_as_hf_generation(tmp_path, monkeypatch, mode):
    hf = _run(tmp_path, monkeypatch)
    VLLM_CALLS.clear()
    vllm = _run(
        tmp_path, monkeypatch, use_vllm=True, vllm_mode=mode,
        vllm_importance_sampling_correction=False,
    )  # fmt: skip
    assert len(hf) == len(vllm) == 2 and len(VLLM_CALLS) == 2  # one vLLM round per step
    for a, b in zip(hf, vllm, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert any(not r["keep"][r["valid"]].all() for r in hf)  # CAPO rejected something: not vacuous
