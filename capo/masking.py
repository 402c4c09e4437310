"""One micro-batch of CAPO: support, shifts, acceptance mask, and the loss coefficients applying it.

Shapes (:mod:`capo.shapes`): B completions, T = ``logits_to_keep`` completion positions, N valid (unpadded) tokens, H hidden,
k support size, S subsets.

How the mask reaches TRL's loss without copying it (docs/design.md §2, "Losses after masking"): TRL's
GRPO/Dr.GRPO losses are  L = Σ_bt w_bt · ℓ(logp_bt)  with w_bt = mask_bt / (B · n_b) (grpo, n_b the
valid tokens of completion b) or mask_bt / (B · T_max) (dr_grpo), and ℓ the clipped surrogate of one
token. Feeding TRL  logp' = logp.detach() + c ⊙ (logp − logp.detach())  leaves every value (ratios,
clipping decisions, logged metrics) unchanged and multiplies each token's gradient by c_bt, so with

- c_bt = keep_bt · n_b / n_acc_b (grpo, reinforce; c = 0 for a completion with no accepted token),
- c_bt = keep_bt (dr_grpo),

∇L = Σ_b (1/B)(1/n_acc_b) Σ_{t accepted} ∇ℓ_bt, resp. (1/(B·T_max)) Σ_{accepted} ∇ℓ_bt: exactly the
masked losses of docs/design.md §2 (per-completion mean over accepted tokens; Dr.GRPO's fixed denominator).
Only the reported loss *value* stays the unmasked surrogate's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from capo.selection import Thresholds, acceptance
from capo.shifts import Shifts, directional_shifts
from capo.steps import StepModel
from capo.support import Support, support_from_hidden
from capo.tokens import TokenBatch

__all__ = ["MicroBatchSelection", "accept_micro_batch", "loss_coefficients", "subset_ids"]


@dataclass(eq=False)
class MicroBatchSelection:
    """The outcome of the acceptance test on one micro-batch.

    Attributes:
        valid: [B, T] bool, the completion tokens that enter TRL's loss at all.
        keep: [B, T] bool, valid tokens whose subset passed the test (and whose inputs are finite).
        batch: the N valid tokens (row-major order of ``valid``) with their top-k support.
        shifts: the shifts of the S subsets (token level: S = N).
        subsets: [N] int64 subset id of each valid token, or None at token level.
        fail_hessian: [N] bool, the token's subset failed the m_H band (or had no finite shift).
        fail_fisher: [N] bool, the token's subset failed m_F < fisher_max (or had no finite shift).
        sampled_logprob: [N] log π(a) of each valid token over the full vocabulary at the temperature
            (from the support's logsumexp: no second softmax).
    """

    valid: torch.Tensor
    keep: torch.Tensor
    batch: TokenBatch
    shifts: Shifts
    subsets: torch.Tensor | None
    fail_hessian: torch.Tensor
    fail_fisher: torch.Tensor
    sampled_logprob: torch.Tensor

    @property
    def keep_flat(self) -> torch.Tensor:
        """[N] bool: ``keep`` at the valid tokens."""
        return self.keep[self.valid]

    def sampled_prob(self) -> torch.Tensor:
        """[B, T] π(a) over the full vocabulary at the temperature at the valid tokens, 0 elsewhere."""
        out = torch.zeros(
            self.valid.shape, dtype=self.sampled_logprob.dtype, device=self.valid.device
        )
        out[self.valid] = self.sampled_logprob.exp()
        return out


def subset_ids(
    granularity: str, valid: torch.Tensor, group_ids: torch.Tensor | None
) -> torch.Tensor | None:
    """[N] int64 subset ids 0..S−1 of the valid tokens, or None for token granularity.

    Args:
        granularity: "token", "completion", "group" or "batch".
        valid: [B, T] bool.
        group_ids: [B] int64 prompt-group id of each completion (needed for "group").
    """
    b, k = valid.shape
    if granularity == "token":
        return None
    if granularity == "batch":
        return torch.zeros(int(valid.sum()), dtype=torch.int64, device=valid.device)
    if granularity == "completion":
        rows = torch.arange(b, device=valid.device)
    elif granularity == "group":
        if group_ids is None:
            raise ValueError("granularity 'group' needs the group id of each completion")
        rows = group_ids.to(valid.device, torch.int64)
    else:
        raise ValueError(f"unknown granularity {granularity!r}")
    per_token = rows[:, None].expand(b, k)[valid]
    return torch.unique(per_token, return_inverse=True)[1]


def accept_micro_batch(
    hidden: torch.Tensor,
    completion_ids: torch.Tensor,
    valid: torch.Tensor,
    advantages: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    support_size: int,
    temperature: float,
    step: StepModel,
    thresholds: Thresholds,
    granularity: str,
    group_ids: torch.Tensor | None = None,
    chunk_size: int | None = None,
    support: Support | None = None,
    kernel: str = "auto",
) -> MicroBatchSelection:
    """Run the acceptance test (eq 11) on the valid tokens of one micro-batch.

    Args:
        hidden: [B, T, H] hidden states that produced each completion token's logits (already
            shifted by one position, see :func:`capo.hidden_capture.completion_hidden`).
        completion_ids: [B, T] int64 sampled token ids.
        valid: [B, T] bool, tokens that enter the loss (completion mask, tool mask).
        advantages: [B, T] float, the coefficient A_i the variant's loss gives each token.
        weight: [V, H] output-layer weight (needed without ``support``).
        bias: [V] output-layer bias or None.
        support_size: k (of the support computed here).
        temperature: the policy's sampling temperature (the support is top-k of logits / τ).
        step: the step model (η = the scheduled learning rate of the current step).
        thresholds: the acceptance bounds.
        granularity: "token", "completion", "group" or "batch" (subsets local to the micro-batch).
        group_ids: [B] prompt-group ids (for "group").
        chunk_size: tokens per chunk for the support and the shifts (None = memory-budget default).
        support: the N valid tokens' support ([N, k], row-major order of ``valid``) if already known,
            e.g. from the policy forward (:mod:`capo.forward_support`); None: computed here from
            ``hidden``, ``weight`` and ``bias`` (:func:`capo.support.support_from_hidden`).
        kernel: how the shifts' gathers run (:data:`capo.fused_shift.KERNELS`, ``capo_shift_kernel``).

    Returns:
        :class:`MicroBatchSelection`.

    Raises:
        ValueError: without ``support`` and ``weight``, or on a ``support`` of another N.
    """
    with torch.no_grad():
        valid = valid.bool()
        h = hidden[valid]
        sampled = completion_ids[valid].to(torch.int64)
        adv = advantages[valid].to(h.dtype if h.dtype == torch.float64 else torch.float32)
        sup = _support(h, sampled, support, weight, bias, support_size, temperature, chunk_size)
        batch = sup.token_batch(h, adv)
        subsets = subset_ids(granularity, valid, group_ids)
        n = batch.num_tokens
        num_subsets = None if subsets is None else (int(subsets.max()) + 1 if n else 0)
        shifts = directional_shifts(
            batch, step, subsets, num_subsets=num_subsets, chunk_size=chunk_size, kernel=kernel
        )
    return _selection(valid, batch, shifts, subsets, thresholds, sup.sampled_logprob)


def _support(
    hidden: torch.Tensor,
    sampled: torch.Tensor,
    support: Support | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    k: int,
    temperature: float,
    chunk_size: int | None,
) -> Support:
    """The given support of the N tokens of [N, H] ``hidden`` (checked), or one recomputed from the head."""
    n = hidden.shape[0]
    if support is not None:
        if support.support_ids.shape[0] != n:
            raise ValueError(
                f"support has {support.support_ids.shape[0]} tokens, valid has N = {n}"
            )
        return support
    if weight is None:
        raise ValueError("accept_micro_batch needs the output-layer weight or a support")
    return support_from_hidden(hidden, weight, sampled, k, temperature, bias, chunk_size)


def _selection(
    valid: torch.Tensor,
    batch: TokenBatch,
    shifts: Shifts,
    subsets: torch.Tensor | None,
    thresholds: Thresholds,
    sampled_logprob: torch.Tensor,
) -> MicroBatchSelection:
    """Apply eq 11 to the subsets' shifts and map the verdicts back to the [B, T] tokens."""
    keep_subset, hessian_ok, fisher_ok = acceptance(shifts, thresholds)
    if subsets is not None:
        keep_subset, hessian_ok, fisher_ok = (
            x[subsets] for x in (keep_subset, hessian_ok, fisher_ok)
        )
    keep = torch.zeros_like(valid)
    keep[valid] = keep_subset & shifts.token_finite
    fail_h, fail_f = ~hessian_ok, ~fisher_ok
    return MicroBatchSelection(valid, keep, batch, shifts, subsets, fail_h, fail_f, sampled_logprob)


def loss_coefficients(
    applied: torch.Tensor, valid: torch.Tensor, per_completion_mean: bool, dtype: torch.dtype
) -> torch.Tensor:
    """[B, T] gradient coefficients c that turn TRL's loss into the masked loss (module docstring).

    Args:
        applied: [B, T] bool, the tokens whose gradient is kept.
        valid: [B, T] bool, the tokens TRL's loss normalises over.
        per_completion_mean: True for grpo / reinforce (c = applied · n_b / n_acc_b), False for
            dr_grpo (c = applied).
        dtype: dtype of the result (that of the log-probabilities).
    """
    c = applied.to(dtype)
    if per_completion_mean:
        n_valid = valid.sum(dim=1, keepdim=True).clamp(min=1).to(dtype)
        n_acc = applied.sum(dim=1, keepdim=True).clamp(min=1).to(dtype)
        c = c * (n_valid / n_acc)
    return c
