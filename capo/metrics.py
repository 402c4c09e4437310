"""Names of the ``capo/*`` metrics the trainer appends to TRL's metric stream, one per optimizer step.

The one source of truth for these strings: the trainer writes them, the CLI's summary, reports and plots read
them. Shift statistics (m_H, m_F over the step's valid tokens) are logged as ``{M_H}/{stat}`` for each stat
in :data:`SHIFT_STATS`.
"""

from __future__ import annotations

COMPLETIONS_SEEN = "capo/completions_seen"
"""Completions trained on so far (all ranks)."""
REJECTION_RATE = "capo/rejection_rate"
"""Fraction of the step's valid tokens that the acceptance test (eq 11) rejected."""
REJECTION_RATE_HESSIAN = "capo/rejection_rate_hessian"
"""Fraction rejected by the Hessian band (m_H outside (hessian_low, hessian_high))."""
REJECTION_RATE_FISHER = "capo/rejection_rate_fisher"
"""Fraction rejected by the Fisher bound (m_F >= fisher_max)."""
NONFINITE_TOKENS = "capo/nonfinite_tokens"
"""Tokens with a non-finite hidden state, advantage or shift (always rejected)."""
ACCEPTED_TOKENS = "capo/accepted_tokens"
"""Tokens whose gradient the step applied."""
ALL_REJECTED_MICROBATCHES = "capo/all_rejected_microbatches"
"""Micro-batches in which every token was rejected."""
GLOBAL_M_H = "capo/global_m_H"
"""m_H of the whole accepted batch (eq 10 with b = all accepted tokens)."""
GLOBAL_M_F = "capo/global_m_F"
"""m_F of the whole accepted batch (eq 10 with b = all accepted tokens)."""
M_H = "capo/m_H"
"""Prefix of the per-token m_H statistics."""
M_F = "capo/m_F"
"""Prefix of the per-token m_F statistics."""
SHIFT_STATS = ("mean", "p50", "p99", "max")
"""Statistics logged for :data:`M_H` and :data:`M_F`."""
TRUE_KL = "capo/true_kl"
"""Measured mean KL(π_before || π_after) of the step over its completion tokens (``capo_log_true_kl``)."""
TRUE_KL_HEAD = "capo/true_kl_head"
"""Head-only part of :data:`TRUE_KL`: old hidden states, output layer before vs after the step."""
KL_PREDICTED = "capo/kl_predicted"
"""KL of the optimizer's full step (s = 1) by ``capo_kl_model`` (``lookahead``: measured), mean over the step's
valid tokens (``capo_kl_budget`` or ``capo_log_true_kl``; an extension beyond the paper)."""
KL_SCALE = "capo/kl_scale"
"""s, the step taken as a fraction of the optimizer's step (the step at lr·s): min(s_max, sqrt(capo_kl_budget /
kl_predicted)), shrunk again by backtracking (s_max = 1 for capo_kl_mode "cap"; 1.0 without a budget)."""
KL_LOOKAHEADS = "capo/kl_lookaheads"
"""Lookahead forwards the KL control ran in the step (0 for ``last_layer``)."""
