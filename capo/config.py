"""CAPOConfig: GRPOConfig plus the curvature-aware masking options of CAPO (docs/design.md §2, paper App. J).

One config covers the six methods of the paper: ``capo_variant`` picks the policy-gradient objective
(grpo, dr_grpo, reinforce) and ``capo_enabled`` switches curvature-aware masking on (CAPO, Dr.CAPO,
ReinCAPO) or off (the GRPO, Dr.GRPO and REINFORCE baselines). The variant is mapped onto TRL's own
options wherever TRL has them:

=========  =============  =================  ==============================================
variant    ``loss_type``  ``scale_rewards``  advantage A_i of a token of completion b
=========  =============  =================  ==============================================
grpo       ``"grpo"``     ``"group"``        (r_b − mean_group r) / (std_group r + 1e-4)
dr_grpo    ``"dr_grpo"``  ``"none"``         r_b − mean_group r
reinforce  ``"grpo"``     ``"none"``         r_b (raw reward; set by CAPOTrainer)
=========  =============  =================  ==============================================

``loss_type`` and ``scale_rewards`` therefore follow ``capo_variant``: left unset (None, this config's
default) they take the variant's values; an explicit value that disagrees raises ``ValueError``, TRL's own
defaults (``"dapo"``, ``"group"``) included. The TRL options the step model leaves out are refused or warned
about by :mod:`capo.trl_options`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

from trl import GRPOConfig

from capo.fused_shift import KERNELS, check_kernel
from capo.methods import VARIANT_LOSSES
from capo.selection import Thresholds
from capo.trl_options import check_options

__all__ = [
    "CAPO_GRANULARITIES",
    "CAPO_KL_MODELS",
    "CAPO_KL_MODES",
    "CAPO_STEP_MODELS",
    "CAPO_VARIANTS",
    "CAPOConfig",
]

CAPO_VARIANTS = VARIANT_LOSSES
"""variant -> (TRL ``loss_type``, TRL ``scale_rewards``): :data:`capo.methods.VARIANT_LOSSES`."""

CAPO_GRANULARITIES = ("token", "completion", "group", "batch")
"""Subsets the acceptance test is applied to (paper §5: tokens, sentences, groups or batches)."""

CAPO_STEP_MODELS = ("adam", "sgd")
"""Step models of the last-layer optimizer (paper §4.1, App. I ablation)."""

CAPO_KL_MODELS = ("last_layer", "lookahead")
CAPO_KL_MODES = ("cap", "target")
"""How the KL budget scales a step: ``cap`` (only down, the default) or ``target`` (up and down)."""
"""How the KL budget predicts the KL of the step actually taken (an extension beyond the paper)."""


@dataclass
class CAPOConfig(GRPOConfig):
    """Configuration of :class:`capo.CAPOTrainer`: every ``GRPOConfig`` field plus the CAPO options.

    The defaults are the paper's CAPO setting (GRPO objective, token granularity, Adam step model,
    top-50 support, thresholds (−1e-2, 1e-2, 1e-4)). Use ``capo_enabled=False`` for the baselines.
    """

    loss_type: str | None = field(  # type: ignore[assignment]
        default=None,
        metadata={
            "help": "TRL's loss aggregation. Leave unset: capo_variant sets it (grpo: 'grpo', dr_grpo: "
            "'dr_grpo', reinforce: 'grpo'); an explicit value must equal the variant's."
        },
    )
    scale_rewards: str | None = field(  # type: ignore[assignment]
        default=None,
        metadata={
            "help": "TRL's reward scaling. Leave unset: capo_variant sets it (grpo: 'group', dr_grpo and "
            "reinforce: 'none'); an explicit value must equal the variant's."
        },
    )
    capo_enabled: bool = field(
        default=True,
        metadata={
            "help": "Apply curvature-aware masking (CAPO). False trains the plain baseline of "
            "`capo_variant` (GRPO, Dr.GRPO or REINFORCE) with the same trainer, and skips every CAPO "
            "computation."
        },
    )
    capo_track_shifts: bool = field(
        default=False,
        metadata={
            "help": "With capo_enabled=False, still run the curvature model and log the shifts and the "
            "rejection statistics CAPO would give, without masking any token (the baselines' curves of "
            "the paper's Fig. 3). Costs the CAPO overhead; ignored when capo_enabled=True."
        },
    )
    capo_variant: str = field(
        default="grpo",
        metadata={
            "help": "Policy-gradient objective: 'grpo' (group-normalised advantages, each completion "
            "averaged over its tokens, then over completions), 'dr_grpo' (centred advantages, sum over "
            "tokens divided by max_completion_length), 'reinforce' (raw reward as advantage, per-"
            "completion mean). Sets TRL's loss_type and scale_rewards."
        },
    )
    hessian_low: float | None = field(
        default=-1e-2,
        metadata={
            "help": "Lower bound δ_H of the predicted objective shift: keep a subset only if m_H > "
            "hessian_low. None disables the bound. Paper: -1e-2 (CAPO), -5e-4 (Dr.CAPO), -1e-1 "
            "(ReinCAPO)."
        },
    )
    hessian_high: float | None = field(
        default=1e-2,
        metadata={
            "help": "Upper bound δ_H^high of the predicted objective shift: keep a subset only if "
            "m_H < hessian_high. None disables the bound. Paper: 1e-2 (CAPO), 5e-4 (Dr.CAPO), 1e-1 "
            "(ReinCAPO)."
        },
    )
    fisher_max: float | None = field(
        default=1e-4,
        metadata={
            "help": "Bound δ_F of the predicted policy shift (≈ mean KL): keep a subset only if m_F < "
            "fisher_max. None disables the bound. Paper: 1e-4 (CAPO), 1e-3 (Dr.CAPO), 1e-5 (ReinCAPO)."
        },
    )
    capo_granularity: str = field(
        default="token",
        metadata={
            "help": "Subsets the acceptance test is applied to: 'token', 'completion', 'group' (the "
            "completions of one prompt) or 'batch'. 'group' and 'batch' subsets are formed within one "
            "micro-batch on one rank (the mask must be known before that micro-batch's backward)."
        },
    )
    capo_support_size: int = field(
        default=50,
        metadata={
            "help": "k, the number of vocabulary ids (largest logits at the sampling temperature, the "
            "sampled id always included) the last-layer model keeps per token."
        },
    )
    capo_step_model: str = field(
        default="adam",
        metadata={
            "help": "How the last-layer model predicts the step from a gradient: 'adam' (tracked sparse "
            "Adam moments, updated once per optimizer step with the accepted gradient) or 'sgd' "
            "(Δ = lr · g). The learning rate is the one the scheduler gives the current step. 'adam' "
            "models Adam's step, so `capo train` refuses it with a non-Adam optim (e.g. --optim sgd: "
            "add --capo_step_model sgd); 'sgd' is exact for SGD and the first-order ablation (App. I) "
            "for Adam."
        },
    )
    capo_shift_kernel: str = field(
        default="auto",
        metadata={
            "help": "How the shifts' per-token gathers of moment and step rows run: 'fused' (one "
            "compiled kernel per call, torch.compile: Triton on CUDA, C++ on CPU; no [chunk, k, hidden] "
            "temporaries), 'plain' (eager torch, chunk by chunk) or 'auto' (fused on CUDA with Triton, "
            "after its first call matched the plain path; plain on CPU, where a compilation costs more "
            "than a run saves). Both compute the same formula and agree to rounding.",
            "choices": KERNELS,
        },
    )
    capo_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Tokens processed at once when building the support and the shifts (bounds the "
            "[chunk, k, hidden] temporaries). None picks a chunk within a fixed memory budget."
        },
    )
    capo_moments_dtype: str = field(
        default="float32",
        metadata={
            "help": "Storage of the tracked Adam moments: 'float32' (float64 with a float64 model) or "
            "'bfloat16' (half the memory: 2.1 instead of 4.2 GB per GPU once all 152k rows of Qwen2.5 "
            "are touched). bf16 rows are updated and decayed in float32 and stored with stochastic "
            "rounding: unbiased, ~1.5 % median error in v against float32 (tests/capo/test_moments_memory.py)."
        },
    )
    capo_global_shift: bool = field(
        default=True,
        metadata={
            "help": "Log capo/global_m_H and capo/global_m_F, the shifts the step's whole accepted set "
            "proposes. Keeps every accepted token's hidden state and support until the step end "
            "(~180 MB per GPU at the paper's shapes) and builds the [U, H] float32 proposed step there "
            "(2.1 GB when the gradient touches all 152k rows; docs/projection). False skips both; "
            "masks, moments and parameters are unchanged."
        },
    )
    capo_log_true_kl: bool = field(
        default=False,
        metadata={
            "help": "Log capo/true_kl: the exact full-vocabulary KL(π_before || π_after) between the "
            "policy before and after each optimizer step, averaged over the step's completion tokens. "
            "Costs one extra no-grad forward of the step's batch after the optimizer step and keeps a "
            "copy of the output-layer weight and the step's final hidden states until then."
        },
    )

    capo_kl_budget: float | None = field(
        default=None,
        metadata={
            "help": "Extension beyond the paper: δ, the allowed mean KL(π_θ || π_θ') per optimizer step "
            "over the step's valid completion tokens (policy at its sampling temperature). Right after "
            "each optimizer step its KL is measured (capo_kl_model) and the step is scaled to the one the "
            "optimizer takes at lr·s, s = min(1, sqrt(δ / KL)) (capo_kl_mode), then checked and shrunk "
            "again (capo_kl_backtrack). None (default): no budget, the paper's method unchanged."
        },
    )
    capo_kl_model: str = field(
        default="lookahead",
        metadata={
            "help": "How the KL of the step is measured: 'lookahead' (exact full-vocabulary KL from a "
            "no-grad forward at the stepped parameters, one extra forward per check) or 'last_layer' "
            "(½ vᵀFv of the output layer's step over the top-k support, no extra forward; blind to "
            "the backbone's share of the move)."
        },
    )
    capo_kl_mode: str = field(
        default="cap",
        metadata={
            "help": "Extension beyond the paper, with capo_kl_budget: 'cap' (default) scales a step only "
            "down, s = min(1, sqrt(δ / KL)); 'target' (δ-driven steps, TRPO-style) scales it up as well as "
            "down, s = min(capo_kl_max_scale, sqrt(δ / KL)), so that every step moves the policy by about δ."
        },
    )
    capo_kl_max_scale: float = field(
        default=10.0,
        metadata={
            "help": "With capo_kl_mode='target': s_max, the largest factor on the scheduled learning rate "
            "(a finite number >= 1; it bounds the step where the predicted KL is ~0)."
        },
    )
    capo_kl_backtrack: bool | None = field(
        default=None,
        metadata={
            "help": "With capo_kl_model='lookahead' and a scaled step: measure the KL of the scaled step and, "
            "while it exceeds 1.1 capo_kl_budget, shrink it again by a power-law fit of KL(s) (one extra "
            "forward per check, at most 3 checks). None (default): on for 'lookahead', off for "
            "'last_layer' (exactly quadratic in s)."
        },
    )

    @property
    def thresholds(self) -> Thresholds:
        """The acceptance bounds of eq 11 (``hessian_low``, ``hessian_high``, ``fisher_max``)."""
        return Thresholds(self.hessian_low, self.hessian_high, self.fisher_max)

    @property
    def capo_curvature_model(self) -> bool:
        """Whether the curvature model runs on every training micro-batch (masking or shift tracking)."""
        return self.capo_enabled or self.capo_track_shifts

    @property
    def capo_kl_backtracks(self) -> bool:
        """Whether a scaled ``lookahead`` step is checked and shrunk again (``capo_kl_backtrack``, None: on)."""
        if self.capo_kl_backtrack is None:
            return self.capo_kl_model == "lookahead"
        return bool(self.capo_kl_backtrack)

    @property
    def capo_predicts_step_kl(self) -> bool:
        """Whether the trainer predicts the KL of each step (a budget is set or the true KL is logged)."""
        return self.capo_kl_budget is not None or self.capo_log_true_kl

    def __post_init__(self) -> None:
        """Validate the CAPO fields and map ``capo_variant`` onto TRL's options, then GRPOConfig's."""
        if self.capo_variant not in CAPO_VARIANTS:
            raise ValueError(
                f"capo_variant must be one of {sorted(CAPO_VARIANTS)}, got {self.capo_variant!r}"
            )
        loss_type, scale = CAPO_VARIANTS[self.capo_variant]
        if self.loss_type is None:
            self.loss_type = loss_type
        elif self.loss_type != loss_type:
            raise ValueError(
                f"capo_variant={self.capo_variant!r} needs loss_type={loss_type!r}, got "
                f"loss_type={self.loss_type!r}; leave loss_type unset (capo_variant sets it)"
            )
        scale_rewards = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)  # type: ignore[call-overload]
        if scale_rewards is None:
            self.scale_rewards = scale
        elif scale_rewards != scale:
            raise ValueError(
                f"capo_variant={self.capo_variant!r} needs scale_rewards={scale!r}, got "
                f"scale_rewards={self.scale_rewards!r}; leave scale_rewards unset (capo_variant sets it)"
            )
        else:
            self.scale_rewards = scale
        if self.capo_variant == "reinforce" and (
            self.multi_objective_aggregation != "sum_then_normalize"
        ):
            raise ValueError(
                "capo_variant='reinforce' uses the raw (weighted-sum) reward as advantage and needs "
                f"multi_objective_aggregation='sum_then_normalize', got "
                f"{self.multi_objective_aggregation!r}"
            )
        self._validate_capo()
        super().__post_init__()
        check_options(self)

    def _validate_capo(self) -> None:
        if self.capo_granularity not in CAPO_GRANULARITIES:
            raise ValueError(
                f"capo_granularity must be one of {list(CAPO_GRANULARITIES)}, got "
                f"{self.capo_granularity!r}"
            )
        check_kernel(self.capo_shift_kernel)
        if self.capo_step_model not in CAPO_STEP_MODELS:
            raise ValueError(
                f"capo_step_model must be one of {list(CAPO_STEP_MODELS)}, got "
                f"{self.capo_step_model!r}"
            )
        if self.capo_moments_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f"capo_moments_dtype must be 'float32' or 'bfloat16', got {self.capo_moments_dtype!r}"
            )
        if isinstance(self.capo_support_size, bool) or int(self.capo_support_size) < 1:
            raise ValueError(f"capo_support_size must be an int >= 1, got {self.capo_support_size}")
        self.capo_support_size = int(self.capo_support_size)
        if self.capo_chunk_size is not None:
            if isinstance(self.capo_chunk_size, bool) or int(self.capo_chunk_size) < 1:
                raise ValueError(
                    f"capo_chunk_size must be None or an int >= 1, got {self.capo_chunk_size}"
                )
            self.capo_chunk_size = int(self.capo_chunk_size)
        thresholds = Thresholds(self.hessian_low, self.hessian_high, self.fisher_max)  # validates
        for name, value in thresholds.as_dict().items():
            setattr(self, name, value)
        if self.fisher_max is not None and not self.fisher_max > 0.0:
            raise ValueError(f"fisher_max must be > 0 or None, got {self.fisher_max}")
        unused = {k: v for k, v in thresholds.as_dict().items() if v != _DEFAULT_THRESHOLDS[k]}
        if unused and not self.capo_curvature_model:
            warnings.warn(
                f"{', '.join(f'{k}={v}' for k, v in unused.items())} unused: capo_enabled=False trains the "
                "baseline, which masks nothing (capo_track_shifts=True would log what CAPO would reject)",
                UserWarning,
                stacklevel=4,
            )
        self._validate_kl_budget()
        if self.capo_enabled and self.importance_sampling_level != "token":
            raise ValueError(
                "CAPO masks tokens, so it needs importance_sampling_level='token', got "
                f"{self.importance_sampling_level!r}"
            )

    def _validate_kl_budget(self) -> None:
        if self.capo_kl_model not in CAPO_KL_MODELS:
            raise ValueError(
                f"capo_kl_model must be one of {list(CAPO_KL_MODELS)}, got {self.capo_kl_model!r}"
            )
        if self.capo_kl_budget is not None:
            budget = float(self.capo_kl_budget)
            if not 0.0 < budget < float("inf"):
                raise ValueError(
                    f"capo_kl_budget must be a finite number > 0 or None, got {budget}"
                )
            self.capo_kl_budget = budget
        if self.capo_kl_mode not in CAPO_KL_MODES:
            raise ValueError(
                f"capo_kl_mode must be one of {list(CAPO_KL_MODES)}, got {self.capo_kl_mode!r}"
            )
        if self.capo_kl_mode == "target" and self.capo_kl_budget is None:
            raise ValueError("capo_kl_mode='target' needs capo_kl_budget (δ)")
        s_max = float(self.capo_kl_max_scale)
        if not 1.0 <= s_max < float("inf"):
            raise ValueError(f"capo_kl_max_scale must be a finite number >= 1, got {s_max}")
        self.capo_kl_max_scale = s_max
        if self.capo_kl_backtrack and self.capo_kl_model != "lookahead":
            raise ValueError("capo_kl_backtrack needs capo_kl_model='lookahead'")


_DEFAULT_THRESHOLDS = {
    f.name: f.default
    for f in fields(CAPOConfig)
    if f.name in ("hessian_low", "hessian_high", "fisher_max")
}
"""The thresholds' field defaults (the paper's CAPO); other values on a baseline are unused and said so."""
