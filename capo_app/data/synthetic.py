r"""A synthetic verifiable arithmetic task: multi-step integer expressions with a ``\boxed{}`` answer.

A problem is an expression such as ``7+3*2-4`` (non-negative integer operands, binary ``+``, ``-``, ``*`` with
the usual precedence, no parentheses). Its worked solution reduces the expression one operation at a time
(multiplications first, then left to right) and ends in the boxed value::

    Q: 7+3*2-4
    A: 3*2=6, 7+6=13, 13-4=9. \boxed{9}

The alphabet is digits, the three operators, ``=``, ``,``, ``.``, space and the letters of ``\boxed``, so a
character-level tiny model can learn it. Difficulty knobs: the number of operands (steps = operands - 1), the
operand range and the operator set. A fixed seed gives identical problems. Train and test are disjoint by
construction: a question belongs to the test split iff a hash of its text falls below ``test_fraction``, so
no seed or size can put a test question into the training split.
"""

from __future__ import annotations

import hashlib
import operator
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

from datasets import Dataset

from capo_app.data.prompts import TINY_PROMPT, PromptFormat

_APPLY: dict[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}

Split = Literal["train", "test"]


@dataclass(frozen=True)
class ArithmeticTask:
    """Difficulty knobs of the synthetic task.

    Attributes:
        min_operands: Fewest operands in a problem (at least 2; the problem has ``operands - 1`` steps).
        max_operands: Most operands in a problem.
        operand_low: Smallest operand (non-negative).
        operand_high: Largest operand.
        operations: Operators to draw from, a subset of ``"+-*"``.
        test_fraction: Fraction of the question space reserved for the test split.
    """

    min_operands: int = 2
    max_operands: int = 3
    operand_low: int = 0
    operand_high: int = 9
    operations: str = "+-"
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        """Validate the knobs."""
        if not 2 <= self.min_operands <= self.max_operands:
            raise ValueError(
                f"need 2 <= min_operands <= max_operands, got {self.min_operands}, {self.max_operands}"
            )
        if not 0 <= self.operand_low <= self.operand_high:
            raise ValueError(
                f"need 0 <= operand_low <= operand_high, got {self.operand_low}, {self.operand_high}"
            )
        if not self.operations or set(self.operations) - set(_APPLY):
            raise ValueError(
                f"operations must be a non-empty subset of '+-*', got {self.operations!r}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    def to_dict(self) -> dict[str, int | float | str]:
        """Return the knobs as a JSON-serialisable dict."""
        return asdict(self)


#: Presets. ``EASY`` is the embedded default (2-3 single-digit operands, + and -).
EASY = ArithmeticTask()
MEDIUM = ArithmeticTask(min_operands=3, max_operands=4, operand_high=20, operations="+-*")
HARD = ArithmeticTask(min_operands=4, max_operands=6, operand_high=99, operations="+-*")
HELD_OUT_SEED = 0
"""The held-out split's seed in ``capo train`` and the race: one fixed set of problems for every training seed."""

PRESETS: dict[str, ArithmeticTask] = {"easy": EASY, "medium": MEDIUM, "hard": HARD}


@dataclass(frozen=True)
class Problem:
    r"""One problem of the synthetic task.

    Attributes:
        question: The expression, e.g. ``"7+3*2-4"``.
        answer: The gold value as a decimal string.
        solution: The worked solution ending in ``\boxed{answer}``.
    """

    question: str
    answer: str
    solution: str


def solve(operands: list[int], operators: list[str]) -> Problem:
    """Reduce an expression step by step: multiplications left to right, then ``+``/``-`` left to right.

    Args:
        operands: The n operands.
        operators: The n - 1 operators between them.

    Returns:
        The problem with its worked solution and answer.
    """
    if len(operators) != len(operands) - 1:
        raise ValueError(
            f"need len(operators) == len(operands) - 1, got {len(operators)}, {len(operands)}"
        )
    question = str(operands[0]) + "".join(
        op + str(x) for op, x in zip(operators, operands[1:], strict=True)
    )
    values, ops, steps = list(operands), list(operators), []
    for precedence in ("*", "+-"):
        index = 0
        while index < len(ops):
            if ops[index] in precedence:
                left, right, op = values[index], values[index + 1], ops[index]
                result = _APPLY[op](left, right)
                steps.append(f"{left}{op}{right}={result}")
                values[index : index + 2] = [result]
                del ops[index]
            else:
                index += 1
    answer = str(values[0])
    return Problem(
        question=question, answer=answer, solution=", ".join(steps) + f". \\boxed{{{answer}}}"
    )


def is_test_question(question: str, test_fraction: float) -> bool:
    """Return True iff ``question`` belongs to the test split (a seed-independent hash of its text)."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction


def generate_problems(
    num_problems: int, split: Split = "train", task: ArithmeticTask = EASY, seed: int = 0
) -> list[Problem]:
    """Draw ``num_problems`` distinct problems of ``split``; the same arguments give the same list.

    Args:
        num_problems: How many problems.
        split: ``"train"`` or ``"test"``; the two splits never share a question.
        task: Difficulty knobs.
        seed: Random seed.

    Returns:
        The problems, in drawing order.

    Raises:
        ValueError: If the split cannot supply that many distinct problems.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"capo-arithmetic:{seed}:{split}")
    problems: list[Problem] = []
    seen: set[str] = set()
    budget = 200 * num_problems + 10_000
    for _ in range(budget):
        if len(problems) == num_problems:
            break
        n = rng.randint(task.min_operands, task.max_operands)
        operands = [rng.randint(task.operand_low, task.operand_high) for _ in range(n)]
        operators = [rng.choice(task.operations) for _ in range(n - 1)]
        problem = solve(operands, operators)
        if problem.question in seen or is_test_question(problem.question, task.test_fraction) != (
            split == "test"
        ):
            continue
        seen.add(problem.question)
        problems.append(problem)
    if len(problems) < num_problems:
        raise ValueError(
            f"only {len(problems)} distinct {split} problems found for {task}; ask for fewer or widen the task"
        )
    return problems


def make_arithmetic_dataset(
    num_problems: int,
    split: Split = "train",
    task: ArithmeticTask = EASY,
    seed: int = 0,
    prompt_format: PromptFormat = TINY_PROMPT,
) -> Dataset:
    r"""Build the synthetic task as a ``datasets.Dataset`` ready for TRL's ``GRPOTrainer``.

    Args:
        num_problems: How many problems.
        split: ``"train"`` or ``"test"`` (disjoint).
        task: Difficulty knobs (see :data:`PRESETS`).
        seed: Random seed.
        prompt_format: How questions become prompts; the default is the tiny model's plain
            ``"Q: ...\nA: "`` frame.

    Returns:
        A dataset with columns ``prompt`` (str or chat messages), ``question``, ``answer`` (gold, str) and
        ``solution`` (the worked completion ending in ``\boxed{answer}``, for the supervised warm start).
    """
    problems = generate_problems(num_problems, split=split, task=task, seed=seed)
    return Dataset.from_dict(
        {
            "prompt": [prompt_format.render(p.question) for p in problems],
            "question": [p.question for p in problems],
            "answer": [p.answer for p in problems],
            "solution": [p.solution for p in problems],
        }
    )
