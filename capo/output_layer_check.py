"""Is the output layer trained the way CAPO's step model assumes? Frozen, adapter-wrapped or tied heads.

CAPO predicts the effect of the optimizer's update of the output layer W (arXiv 2510.00819, eqs 7-10): a
full-rank step on the rows of W, driven by the head gradient g_i = A_i · u_i ⊗ h_i alone. Three common
set-ups break that premise, and :func:`check_output_layer_training` tells them apart at construction:

- **frozen head** (LoRA without ``lm_head`` in ``modules_to_save``, or ``requires_grad=False``): W never
  moves, so the predicted shifts describe a step that never happens. → ``ValueError``.
- **adapter on the head** (LoRA targeting ``lm_head``): W moves by ΔW = s·(B·ΔA + ΔB·A + ΔB·ΔA), a step of
  rank ≤ 2r with Adam state on A [r, H] and B [V, r], not on W; its first-order part s·(B·ΔA + ΔB·A) is
  not the W-space Adam step the curvature model proposes (at LoRA's initialisation B = 0, so the first
  steps move W only inside the row space of A). Modelling it would need a step model in (A, B)
  coordinates; CAPO refuses. → ``ValueError``.
- **tied embeddings** (the output matrix is the input-embedding matrix): the optimizer's update of the
  shared matrix adds the input-embedding gradient (rows of the prompt and completion tokens) and its Adam
  state sees both parts. CAPO's step model keeps the paper's meaning, the head part only: the tracked
  moments and the proposed steps come from the head gradient, so the predicted shift misses (a) the
  embedding part of the update acting on those rows as output rows, (b) its effect on the hidden states
  (like any backbone parameter), and (c) the larger second moments of the real Adam state. → one
  ``UserWarning``.

Trained in full (``modules_to_save=["lm_head"]`` makes PEFT train a copy of the head; with tied
embeddings that copy is untied) the step model is the paper's, and nothing is raised.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from torch import nn

from capo.hidden_capture import causal_lm_of, output_head

__all__ = ["OutputLayerTraining", "check_output_layer_training", "output_layer_training"]

_HOW_TO_TRAIN_THE_HEAD = (
    "train the output layer in full (with PEFT: modules_to_save=['lm_head'] in the LoRA config, "
    "and lm_head not in target_modules), or turn CAPO off (capo_enabled=False, capo_track_shifts=False)"
)


@dataclass(frozen=True)
class OutputLayerTraining:
    """How the optimizer trains the output layer.

    Attributes:
        weight_trainable: the weight that produces the logits is a trainable parameter.
        adapter_parameters: names of the other trainable parameters inside the output layer (LoRA A/B).
        tied: the weight is the input-embedding matrix (one parameter for both uses).
    """

    weight_trainable: bool
    adapter_parameters: tuple[str, ...]
    tied: bool


def output_layer_training(model: nn.Module) -> OutputLayerTraining:
    """Inspect the output layer of a (PEFT-wrapped) causal LM: trainable, adapter-wrapped, tied.

    Raises:
        ValueError: if the model has no output layer whose weight is a parameter.
    """
    lm: Any = causal_lm_of(model)
    head = output_head(model)
    weight = head.weight  # PEFT's ModulesToSaveWrapper gives the active copy
    if not isinstance(weight, nn.Parameter):  # e.g. a view into a flattened (FSDP) parameter
        raise ValueError(
            f"the output layer's weight is a {type(weight).__name__}, not a parameter of the model: "
            "CAPO cannot tell how the optimizer trains it (FSDP flat parameters are not supported)"
        )
    bias = getattr(head, "bias", None)
    own = {id(weight), id(bias)}
    adapters = tuple(
        name for name, p in head.named_parameters() if p.requires_grad and id(p) not in own
    )
    embeddings = lm.get_input_embeddings()
    tied = getattr(embeddings, "weight", None) is weight
    return OutputLayerTraining(bool(weight.requires_grad), adapters, tied)


def check_output_layer_training(model: nn.Module, args: Any = None) -> OutputLayerTraining:
    """Refuse a frozen or adapter-trained output layer; warn once for tied embeddings (module doc).

    Args:
        model: the (PEFT-wrapped) causal LM the trainer optimises.
        args: the trainer's config; when it has the KL-budget option, the errors also suggest it.

    Returns:
        The inspection of :func:`output_layer_training`.

    Raises:
        ValueError: if the output layer is frozen or trained through an adapter.
    """
    info = output_layer_training(model)
    hint = _HOW_TO_TRAIN_THE_HEAD
    if hasattr(args, "capo_kl_budget"):
        hint += (
            ", or, with CAPO off, bound each step's KL with capo_kl_budget and "
            "capo_kl_model='lookahead' (it needs no head model)"
        )
    if info.adapter_parameters:
        raise ValueError(
            "CAPO does not support an adapter on the output layer (trainable "
            f"{', '.join(info.adapter_parameters)}): its step model is an Adam step of the full [V, H] "
            "matrix (eqs 7-10), while LoRA moves it by s·(B·ΔA + ΔB·A + ΔB·ΔA) with Adam state on A "
            f"and B; {hint}"
        )
    if not info.weight_trainable:
        raise ValueError(
            "the output layer is frozen (its weight does not require grad), so CAPO's curvature "
            "model (masking, shift tracking or the last_layer KL model) would predict the shift of a "
            "head update that never happens; " + hint
        )
    if info.tied:
        warnings.warn(
            "tied input/output embeddings: the optimizer's update of the shared matrix also carries "
            "the input-embedding gradient, which CAPO's step model (head gradient only) does not "
            "see; predicted shifts miss that part (see capo.output_layer_check)",
            UserWarning,
            stacklevel=3,
        )
    return info
