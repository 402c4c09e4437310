import re

import pytest

from capo_app.data import (
    EASY,
    HARD,
    MEDIUM,
    TINY_CHAT_PROMPT,
    ArithmeticTask,
    generate_problems,
    is_test_question,
    make_arithmetic_dataset,
)

STEP = re.compile(r"^(-?\d+)([+*-])(-?\d+)=(-?\d+)$")


def test_same_seed_gives_identical_problems_and_other_seeds_differ():
    first = generate_problems(200, "train", MEDIUM, seed=3)
    assert first == generate_problems(200, "train", MEDIUM, seed=3)
    assert first != generate_problems(200, "train", MEDIUM, seed=4)


@pytest.mark.parametrize("task", [EASY, MEDIUM], ids=["easy", "medium"])
def test_no_test_question_appears_in_train(task):
    train = {
        p.question for seed in (0, 1) for p in generate_problems(1500, "train", task, seed=seed)
    }
    test = {p.question for p in generate_problems(300, "test", task, seed=0)}
    assert len(test) == 300
    assert train.isdisjoint(test)
    assert all(is_test_question(q, task.test_fraction) for q in test)


@pytest.mark.parametrize("task", [EASY, MEDIUM, HARD], ids=["easy", "medium", "hard"])
def test_answer_equals_python_eval_of_the_question(task):
    for problem in generate_problems(300, "train", task, seed=1):
        assert int(problem.answer) == eval(problem.question)  # digits and + - * only


def test_worked_solution_steps_are_correct_and_end_in_the_boxed_answer():
    for problem in generate_problems(200, "train", HARD, seed=2):
        body, boxed = problem.solution.rsplit(". ", 1)
        assert boxed == f"\\boxed{{{problem.answer}}}"
        steps = body.split(", ")
        assert len(steps) == len(re.findall(r"[+*-]", problem.question.lstrip("-")))
        for step in steps:
            left, op, right, result = STEP.match(step).groups()
            assert eval(f"({left}){op}({right})") == int(result)
        assert STEP.match(steps[-1]).group(4) == problem.answer


def test_knobs_bound_operand_count_range_and_operators():
    task = ArithmeticTask(
        min_operands=4, max_operands=5, operand_low=10, operand_high=30, operations="*"
    )
    for problem in generate_problems(100, "train", task):
        operands = [int(x) for x in problem.question.split("*")]
        assert 4 <= len(operands) <= 5
        assert all(10 <= x <= 30 for x in operands)


def test_asking_for_more_problems_than_the_split_holds_raises():
    tiny_space = ArithmeticTask(min_operands=2, max_operands=2, operand_high=3, operations="+")
    with pytest.raises(ValueError, match="distinct"):
        generate_problems(50, "train", tiny_space)


@pytest.mark.parametrize(
    "kwargs",
    [{"min_operands": 1}, {"operand_low": -1}, {"operations": "/"}, {"test_fraction": 0.0}],
)
def test_invalid_knobs_raise(kwargs):
    with pytest.raises(ValueError):
        ArithmeticTask(**kwargs)


def test_dataset_has_the_trl_columns_in_plain_and_chat_form():
    plain = make_arithmetic_dataset(5, "test")
    chat = make_arithmetic_dataset(5, "test", prompt_format=TINY_CHAT_PROMPT)
    assert set(plain.column_names) == {"prompt", "question", "answer", "solution"}
    assert plain[0]["prompt"] == f"Q: {plain[0]['question']}\nA: "
    assert chat[0]["prompt"] == [{"role": "user", "content": plain[0]["question"]}]
    assert plain["answer"] == chat["answer"]
