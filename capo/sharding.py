"""The output layer under DeepSpeed ZeRO-3: its shape while sharded, and the full weight while CAPO reads it.

ZeRO-3 partitions every parameter across the ranks (locally a tensor of ``numel 0``) and gathers it only
inside its own module's forward. CAPO reads ``lm_head`` directly (support, shifts, true-KL copies), so it
gathers the weight (and bias) for the duration of those reads, with TRL's own
``maybe_gather_lm_head_ctx`` (DeepSpeed's ``GatheredParameters``; a null context without ZeRO-3 or when
the parameter is already available, e.g. tied to ``embed_tokens``). Every rank must enter the context
at the same point (it is a collective), which holds here: each rank runs the same micro-batches.
Costs one all-gather of [V, H] per micro-batch and the full weight in memory while CAPO runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from capo.hidden_capture import output_head

__all__ = ["gathered_output_layer", "output_layer_shape"]


def output_layer_shape(model: nn.Module) -> tuple[int, int, torch.dtype]:
    """(V, H, dtype) of the output-layer weight, also while ZeRO-3 holds only a shard of it."""
    weight = output_head(model).weight
    shape = getattr(weight, "ds_shape", None) or weight.shape
    if len(shape) != 2:
        raise ValueError(f"the output-layer weight has shape {list(shape)}; CAPO needs [V, H]")
    return int(shape[0]), int(shape[1]), weight.dtype


@contextmanager
def gathered_output_layer(model: nn.Module) -> Iterator[None]:
    """Within the block, ``lm_head``'s weight and bias are whole on every rank (module docstring)."""
    head = output_head(model)
    if getattr(head.weight, "ds_id", None) is None:  # not a ZeRO-3 parameter
        yield
        return
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    params = [p for p in (head.weight, getattr(head, "bias", None)) if p is not None]
    with maybe_gather_lm_head_ctx(*params):
        yield
