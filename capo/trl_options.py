"""The GRPOConfig options CAPO's step model leaves out: each refused or warned, from one table.

CAPO predicts the step of the loss TRL builds from its advantages, completion mask and temperature (eq 7,
Section 4.1). Some TRL options add a gradient the model does not see (an entropy bonus, the KL penalty), drop
tokens TRL does not drop from the completion mask (the entropy quantile, the off-policy mask), or weight the
step by a ratio that is not 1 (later iterations on one generation, vLLM's importance correction). With the
curvature model on (masking or tracking), such an option is either refused (one ValueError naming it and
why) or, where the paper's own runs used it (β > 0), accepted with one warning naming what the model leaves
out; :func:`unmodelled` lists the warned ones for a run's summary. docs/design.md §6 has the table of every
GRPOConfig field.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RULES", "OptionRule", "check_options", "unmodelled"]


@dataclass(frozen=True)
class OptionRule:
    """One TRL option the step model leaves out.

    Attributes:
        option: The GRPOConfig field.
        status: ``refused`` (ValueError) or ``warned`` (one warning; listed by :func:`unmodelled`).
        applies: Whether a config (curvature model on) sets the option to a value the model leaves out.
        why: What the model leaves out (the error or warning's reason).
    """

    option: str
    status: str
    applies: Callable[[Any], bool]
    why: str


RULES = (
    OptionRule(
        "top_entropy_quantile", "refused", lambda c: c.top_entropy_quantile < 1.0,
        "TRL drops the low-entropy tokens from the loss, while CAPO would still score, count and feed "
        "them into its moments",
    ),
    OptionRule(
        "entropy_coef", "refused", lambda c: c.entropy_coef != 0.0,
        "the entropy bonus's gradient (rejected tokens included) is outside the step model",
    ),
    OptionRule(
        "use_adaptive_entropy", "refused", lambda c: bool(c.use_adaptive_entropy),
        "the entropy bonus's gradient (rejected tokens included) is outside the step model",
    ),
    OptionRule(
        "off_policy_mask_threshold", "refused", lambda c: c.off_policy_mask_threshold is not None,
        "TRL masks off-policy sequences out of the loss, while CAPO would still score and count them",
    ),
    OptionRule(
        "fsdp", "refused", lambda c: bool(c.fsdp),
        "CAPO reads the whole output layer on every micro-batch; use DeepSpeed ZeRO-2/3 "
        "(recipes/accelerate/zero2.yaml, zero3.yaml)",
    ),
    OptionRule(
        "beta", "warned", lambda c: c.beta > 0.0,
        "the KL penalty's gradient is outside the step model (as in the paper's β > 0 runs)",
    ),
    OptionRule(
        "num_iterations", "warned", lambda c: c.num_iterations > 1,
        "on a generation's later updates the importance ratio and its clipping scale each token's "
        "gradient; the step model takes ratio 1",
    ),
    OptionRule(
        "steps_per_generation", "warned",
        lambda c: (c.steps_per_generation or 0) > c.gradient_accumulation_steps,
        "a generation spans several optimizer steps, so the later ones are off-policy: the importance "
        "ratio and its clipping scale each token's gradient; the step model takes ratio 1",
    ),
    OptionRule(
        "vllm_importance_sampling_correction", "warned",
        lambda c: bool(c.use_vllm and c.vllm_importance_sampling_correction),
        "the vLLM/trainer importance weight scales each token's gradient; the step model takes weight 1",
    ),
    OptionRule(
        "router_aux_loss_coef", "warned", lambda c: bool(c.router_aux_loss_coef),
        "a mixture-of-experts router loss's gradient is outside the step model",
    ),
)  # fmt: skip
"""Every option the step model leaves out, in the order they are checked."""


def check_options(config: Any) -> None:
    """Refuse (ValueError) or warn about each :data:`RULES` entry ``config`` triggers (curvature model on)."""
    for rule in _triggered(config):
        message = f"{rule.option}={getattr(config, rule.option)!r} with CAPO: {rule.why}"
        if rule.status == "refused":
            raise ValueError(message + "; switch it off, or run the baseline (capo_enabled=False)")
        warnings.warn(message + "; the run's summary lists it", UserWarning, stacklevel=3)


def unmodelled(config: Any) -> list[str]:
    """The warned options ``config`` sets: what the step model leaves out of this run."""
    return [rule.option for rule in _triggered(config) if rule.status == "warned"]


def _triggered(config: Any) -> list[OptionRule]:
    if not (config.capo_enabled or config.capo_track_shifts):
        return []
    return [rule for rule in RULES if rule.applies(config)]
