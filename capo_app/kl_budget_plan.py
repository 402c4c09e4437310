"""What the KL budget (``capo_kl_budget``, docs/design.md §5.1) would do in a recipe's real set-up, for the dry run.

- :func:`budget_refusal`: the budget's own refusal (:func:`capo.kl_budget.unsupported_reason`) for the set-up the
  dry run's launch line names: DeepSpeed ZeRO-2 (``recipes/accelerate/zero2.yaml``: no offload, the trainer's torch
  optimizer, float32 master weights) on several processes, else one process with the recipe's parameter dtype.
- :func:`extra_memory_mib`: its projected extra memory per GPU, the sum of what ``benchmarks/kl_budget_memory.py``
  counts: the output layer before the step and the step's final hidden states (in the model's dtype), the KL's
  [C, V] logits scratch (:data:`KL_SCRATCH_PER_LOGIT` float32 bytes per logit of a 1024-token chunk, counted
  there: 2,970 MiB at V = 152,064) and the move's temporaries (3 float32 [CHUNK] tensors, 192 MiB). No copy of the
  parameters.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from capo.applied_step import CHUNK
from capo.kl_budget import unsupported_reason

__all__ = ["KL_SCRATCH_PER_LOGIT", "budget_refusal", "extra_memory_mib", "model_shape"]

KL_SCRATCH_PER_LOGIT = 20.0
"""Peak scratch bytes of ``capo.true_kl.full_vocab_kl`` per logit of its [C, V] chunk (bf16 weights; counted by
``benchmarks/kl_budget_memory.py``: five float32 [C, V] tensors live at once)."""
KL_CHUNK = 1024
"""Tokens per [C, V] chunk of the KL (``full_vocab_kl``'s default)."""
MOVE_TEMPORARIES = 3
"""float32 [CHUNK] tensors a move holds at once (counted: 192 MiB at CHUNK = 2^24)."""
PAPER_MODEL = {"Qwen/Qwen2.5-Math-7B": (3584, 152_064)}
"""(hidden size, vocabulary) of the paper's model, from its config.json, for a dry run without a download."""
_ZERO2 = {"zero_optimization": {"stage": 2}}  # recipes/accelerate/zero2.yaml as DeepSpeed sees it


def budget_refusal(values: dict[str, Any], processes: int) -> str | None:
    """The budget's refusal in the recipe's real set-up (module docstring), or None if it runs."""
    if values.get("capo_kl_budget") is None:
        return None
    dtype = str((values.get("model_init_kwargs") or {}).get("dtype", "float32"))
    param = torch.nn.Linear(1, 1, dtype=getattr(torch, dtype.split(".")[-1], torch.float32))
    optim = str(getattr(values.get("optim"), "value", values.get("optim") or "adamw_torch"))
    setup = SimpleNamespace(
        is_deepspeed_enabled=processes > 1,
        is_fsdp_enabled=bool(values.get("fsdp")),
        accelerator=SimpleNamespace(
            scaler=object() if values.get("fp16") and processes == 1 else None,
            state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=_ZERO2)),
        ),
        model=param,
        optimizer=None,  # its flags are checked when the dry run builds the trainer
        get_optimizer_cls_and_kwargs=lambda args, model: (torch.optim.AdamW, {}),
        args=SimpleNamespace(optim=optim, fp16=bool(values.get("fp16"))),
    )
    return unsupported_reason(setup)


def model_shape(name: str, real_config: Any) -> tuple[int, int] | None:
    """(H, V) of the model: its config on disk, else the paper's model by name, else None."""
    if real_config is not None and hasattr(real_config, "hidden_size"):
        return int(real_config.hidden_size), int(real_config.vocab_size)
    return PAPER_MODEL.get(name)


def extra_memory_mib(
    hidden: int, vocab: int, completion_tokens_per_rank: int, dtype_bytes: int
) -> dict[str, float]:
    """The budget's projected extra memory per GPU, MiB, by part (module docstring)."""
    mib = 2.0**20
    return {
        "output layer before the step": vocab * hidden * dtype_bytes / mib,
        "final hidden states of the step": completion_tokens_per_rank * hidden * dtype_bytes / mib,
        "KL logits scratch": KL_SCRATCH_PER_LOGIT * KL_CHUNK * vocab / mib,
        "move temporaries": MOVE_TEMPORARIES * CHUNK * 4 / mib,
    }
