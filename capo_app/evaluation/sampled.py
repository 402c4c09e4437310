"""Held-out sampled accuracy at the training temperature: the score an RL user cares about.

GRPO optimises the policy's own samples, so the score is the accuracy of those samples: k completions per
held-out problem at the training temperature, their mean over problems, with its Monte Carlo standard error
(the spread of the k-sample estimate on this fixed set of problems). Greedy accuracy is measured beside it.

Generation draws from its own torch RNG stream, seeded from (run seed, evaluation index) and independent of
training's: the global torch RNG is forked around it, so evaluating does not perturb training, and two
seeds never share an evaluation stream (:func:`capo_app.evaluation.generation.generate_hf` forks the RNG).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["EVAL_STREAM", "SampledScore", "eval_seed", "sampled_accuracy", "sampled_score"]

EVAL_STREAM = 0x5EED_E7A1
"""The spawn key that separates evaluation streams from every training stream of the same seed."""


@dataclass(frozen=True)
class SampledScore:
    """One held-out evaluation.

    Attributes:
        sampled: Mean over problems of the fraction of k samples correct (the score).
        sampled_se: Its Monte Carlo SE: sqrt(Σ_i p_i(1 − p_i) / (k − 1)) / n over the n problems.
        pass_at_k: Fraction of problems with at least one correct sample.
        greedy: Greedy accuracy on the same problems (None when not measured).
        k: Samples per problem.
        temperature: Sampling temperature.
        n_problems: Problems scored (those whose gold answer parses).
    """

    sampled: float
    sampled_se: float
    pass_at_k: float
    greedy: float | None
    k: int
    temperature: float
    n_problems: int

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def sampled_score(
    correct: np.ndarray, temperature: float, greedy: float | None = None
) -> SampledScore:
    """Summarise an [n problems, k samples] 0/1 matrix (rows with an unparseable gold removed)."""
    x = np.asarray(correct, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"correct must be [n problems, k samples], got shape {x.shape}")
    n, k = x.shape
    if n == 0:
        nan = math.nan
        return SampledScore(nan, nan, nan, greedy, k, temperature, 0)
    p = x.mean(axis=1)
    se = math.sqrt(float((p * (1.0 - p)).sum()) / (k - 1)) / n if k > 1 else math.nan
    return SampledScore(float(p.mean()), se, float((p > 0).mean()), greedy, k, temperature, n)


def eval_seed(seed: int, index: int) -> int:
    """The torch seed of evaluation ``index`` of a run with training seed ``seed``."""
    state = np.random.SeedSequence([int(seed), EVAL_STREAM, int(index)]).generate_state(1)
    return int(state[0])


Score = Callable[[str, str], "float | None"]


def sampled_accuracy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    answers: Sequence[str],
    *,
    temperature: float,
    k: int = 8,
    max_new_tokens: int = 40,
    seed: int = 0,
    greedy: bool = True,
    batch_size: int = 64,
    score: Score | None = None,
) -> SampledScore:
    """Sampled accuracy of ``model`` on fixed held-out problems, greedy beside it.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        prompts: The held-out prompts (strings or chat conversations).
        answers: Their gold answers.
        temperature: The training temperature (> 0).
        k: Samples per problem.
        max_new_tokens: Completion cap (a collapsed model cannot make an evaluation slow).
        seed: This evaluation's seed (:func:`eval_seed`); the caller's torch RNG state is left untouched.
        greedy: Also measure greedy accuracy.
        batch_size: Prompts per generate call.
        score: (completion, gold) -> 1/0/None (default: math-verify on the last box).

    Returns:
        The :class:`SampledScore`.
    """
    from capo_app.evaluation.generation import generate_hf

    if temperature <= 0 or k < 1:
        raise ValueError(
            f"sampled accuracy needs temperature > 0 and k >= 1, got {temperature}, {k}"
        )
    if score is None:
        from capo_app.rewards import score_answer

        score = score_answer
    options: dict[str, Any] = {
        "max_new_tokens": max_new_tokens, "batch_size": batch_size, "progress": False,
    }  # fmt: skip
    samples = generate_hf(  # its own RNG stream: training's state is left untouched
        model, tokenizer, prompts, n_samples=k, temperature=temperature, seed=seed, **options
    )
    best = generate_hf(model, tokenizer, prompts, seed=seed, **options) if greedy else None
    rows, hits = [], []
    for i, gold in enumerate(answers):
        marks = [score(text, str(gold)) for text in samples[i]]
        if any(m is None for m in marks):
            continue  # the gold does not parse
        rows.append([float(m or 0.0) for m in marks])
        if best is not None:
            hits.append(float(score(best[i][0], str(gold)) or 0.0))
    greedy_acc = float(np.mean(hits)) if hits else None
    return sampled_score(np.asarray(rows).reshape(len(rows), k), temperature, greedy_acc)
