r"""Verifiable rewards for TRL's ``GRPOTrainer``: math-verify accuracy of the last ``\boxed{}`` answer.

Signature (TRL 1.16): the trainer calls ``reward(prompts=..., completions=..., completion_ids=..., **columns)``
where every dataset column other than ``prompt`` arrives as a keyword list (here ``answer``), plus
``trainer_state``, ``log_extra`` and ``log_metric``. Completions are strings for plain prompts and
``[{"role": "assistant", "content": ...}]`` for conversational ones; both are accepted.

Policy for an unparseable gold answer: the sample gets ``None``. TRL 1.16 turns ``None`` into NaN, leaves the
completion out of the group baseline and gives it advantage 0 (``GRPOTrainer._generate_and_score_completions``),
so it neither rewards nor penalises. A warning is logged once per distinct gold; :func:`unparseable_gold_counts`
counts every occurrence. It is never rewarded 1.

Timeouts: math-verify bounds ``parse`` and ``verify`` with ``signal.alarm``, which only works in the main
thread. In the main thread we pass finite timeouts; elsewhere (async reward loop, thread pools) we pass
``None`` (no timeout) and bound the work instead by verifying only the short boxed string, never the whole
completion, and by refusing boxes longer than :data:`MAX_BOXED_CHARS`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from latex2sympy2_extended import NormalizationConfig
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

from capo_app.checks import UsageError
from capo_app.data.boxed import last_boxed
from capo_app.data.prompts import completion_text

logger = logging.getLogger(__name__)

#: Timeouts (seconds) used in the main thread; math-verify's own defaults are 5 s.
PARSE_TIMEOUT_S = 5
VERIFY_TIMEOUT_S = 5
#: Longer boxed answers score 0 without being parsed (bounds the un-timed work outside the main thread).
MAX_BOXED_CHARS = 500

_INTEGER = re.compile(r"^[+-]?\d+$")
_unparseable_gold: Counter[str] = Counter()
_lock = threading.Lock()


def unparseable_gold_counts() -> dict[str, int]:
    """Return how many times each unparseable gold answer has been seen (a copy)."""
    with _lock:
        return dict(_unparseable_gold)


def reset_unparseable_gold_counts() -> None:
    """Forget the unparseable-gold counter (the warnings will be logged again)."""
    with _lock:
        _unparseable_gold.clear()


def _timeouts() -> tuple[int | None, int | None]:
    if threading.current_thread() is threading.main_thread():
        return PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S
    return None, None


@lru_cache(maxsize=65536)
def _parse_gold(gold: str, parse_timeout: int | None) -> tuple[Any, ...]:
    if not gold.strip():
        return ()
    return tuple(
        parse(
            "\\boxed{" + gold + "}",
            extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
            fallback_mode="no_fallback",
            parsing_timeout=parse_timeout,
        )
    )


def _record_unparseable(gold: str) -> None:
    with _lock:
        first = gold not in _unparseable_gold
        _unparseable_gold[gold] += 1
    if first:
        logger.warning(
            "unparseable gold answer %r: its samples get reward None (skipped, advantage 0)", gold
        )


def score_answer(text: str, gold: str) -> float | None:
    r"""Score one completion against one gold answer with math-verify.

    Args:
        text: The completion text; its last ``\boxed{}`` is the prediction.
        gold: The gold answer (LaTeX or plain, without ``\boxed``).

    Returns:
        1.0 if the prediction is mathematically equal to the gold, 0.0 if not (or if there is no complete
        box, or it cannot be parsed), None if the gold itself cannot be parsed.
    """
    parse_timeout, verify_timeout = _timeouts()
    gold = str(gold).strip()
    gold_parsed = list(_parse_gold(gold, parse_timeout))
    if not gold_parsed:
        _record_unparseable(gold)
        return None
    boxed = last_boxed(text)
    if boxed is None or not boxed or len(boxed) > MAX_BOXED_CHARS:
        return 0.0
    try:
        predicted = parse(
            "\\boxed{" + boxed + "}",
            extraction_config=[
                LatexExtractionConfig(
                    normalization_config=NormalizationConfig(units=True),
                    boxed_match_priority=0,
                    try_extract_without_anchor=False,
                )
            ],
            extraction_mode="first_match",
            parsing_timeout=parse_timeout,
        )
        if predicted:
            return float(verify(gold_parsed, predicted, timeout_seconds=verify_timeout))
    except (Exception, TimeoutException):  # math-verify's TimeoutException is a BaseException
        logger.debug("math-verify failed on %r vs %r", boxed, gold, exc_info=True)
    return _exact_match(boxed, gold)


def _exact_match(boxed: str, gold: str) -> float:
    """Fallback when math-verify cannot read the prediction (timeout, parser error): exact match."""
    if _INTEGER.match(boxed) and _INTEGER.match(gold):
        return float(int(boxed) == int(gold))
    return float(boxed.replace(" ", "") == gold.replace(" ", ""))


def accuracy_reward(
    completions: Sequence[Any],
    answer: Sequence[Any],
    log_metric: Callable[[str, float], None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    r"""TRL reward function: 1 if the last ``\boxed{}`` of a completion equals the gold ``answer``, else 0.

    Args:
        completions: One per sample: a string (plain prompts) or a list of chat messages (conversational).
        answer: The gold answers (the dataset's ``answer`` column), one per completion.
        log_metric: Provided by TRL 1.16; receives the fraction of samples with an unparseable gold as
            ``unparseable_gold`` when any is present.
        **kwargs: Other columns and trainer arguments (``prompts``, ``completion_ids``, ``trainer_state``,
            ...), unused.

    Returns:
        One reward per completion: 1.0, 0.0, or None for an unparseable gold (skipped by TRL).
    """
    if len(completions) != len(answer):
        raise ValueError(f"got {len(completions)} completions but {len(answer)} answers")
    rewards = [
        score_answer(completion_text(c), str(g)) for c, g in zip(completions, answer, strict=True)
    ]
    skipped = sum(r is None for r in rewards)
    if skipped and log_metric is not None:
        log_metric("unparseable_gold", skipped / len(rewards))
    return rewards


def boxed_format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    r"""TRL reward function: 1 if a completion contains a complete ``\boxed{...}``, else 0.

    Args:
        completions: One per sample, plain or conversational.
        **kwargs: Dataset columns and trainer arguments, unused.

    Returns:
        One reward per completion.
    """
    return [float(last_boxed(completion_text(c)) is not None) for c in completions]


#: The reward functions ``capo train --reward_funcs`` names.
REWARD_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "accuracy": accuracy_reward,
    "boxed_format": boxed_format_reward,
}


def reward_functions(names: Sequence[str]) -> list[Callable[..., Any]]:
    """Resolve reward names (:data:`REWARD_FUNCTIONS`) to TRL reward functions.

    Raises:
        UsageError: Naming the choices when a name is unknown.
    """
    unknown = [n for n in names if n not in REWARD_FUNCTIONS]
    if unknown:
        raise UsageError(
            f"unknown reward functions {unknown}; choose from {', '.join(REWARD_FUNCTIONS)}"
        )
    return [REWARD_FUNCTIONS[n] for n in names]
