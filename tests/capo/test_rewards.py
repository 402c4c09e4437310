import logging
import threading

import pytest

from capo_app.rewards import (
    accuracy_reward,
    boxed_format_reward,
    reset_unparseable_gold_counts,
    score_answer,
    unparseable_gold_counts,
)


@pytest.fixture(autouse=True)
def _fresh_counter():
    reset_unparseable_gold_counts()
    yield
    reset_unparseable_gold_counts()


def test_correct_boxed_answer_scores_one_and_wrong_or_missing_scores_zero():
    completions = ["2+3=5. \\boxed{5}", "2+3=6. \\boxed{6}", "2+3=5.", "\\boxed{5"]
    assert accuracy_reward(completions, ["5"] * 4) == [1.0, 0.0, 0.0, 0.0]


def test_math_verify_accepts_equivalent_forms_and_uses_the_last_box():
    assert score_answer("so \\boxed{0.5}", "\\frac{1}{2}") == 1.0
    assert score_answer("\\boxed{\\frac{2}{4}}", "1/2") == 1.0
    assert score_answer("\\boxed{-7}", "-7") == 1.0
    assert score_answer("first \\boxed{3}, finally \\boxed{4}", "3") == 0.0
    assert score_answer("first \\boxed{3}, finally \\boxed{4}", "4") == 1.0


def test_conversational_and_plain_completions_score_alike():
    chat = [
        [{"role": "assistant", "content": "\\boxed{12}"}],
        [{"role": "assistant", "content": "\\boxed{1}"}],
    ]
    assert accuracy_reward(chat, ["12", "12"]) == accuracy_reward(
        ["\\boxed{12}", "\\boxed{1}"], ["12", "12"]
    )
    assert accuracy_reward(chat, ["12", "12"]) == [1.0, 0.0]


def test_unparseable_gold_gives_none_warns_once_per_gold_and_counts_every_sample(caplog):
    logged = []
    with caplog.at_level(logging.WARNING, logger="capo_app.rewards"):
        rewards = accuracy_reward(
            ["\\boxed{\\frac{}", "\\boxed{1}", "\\boxed{2}", "\\boxed{2}"],
            ["\\frac{", "\\frac{", "", "2"],
            log_metric=lambda name, value: logged.append((name, value)),
        )
    assert rewards == [
        None,
        None,
        None,
        1.0,
    ]  # never 1 for an unparseable gold, even on identical text
    assert unparseable_gold_counts() == {"\\frac{": 2, "": 1}
    assert len([r for r in caplog.records if "unparseable gold" in r.getMessage()]) == 2
    assert logged == [("unparseable_gold", 0.75)]


def test_reward_works_outside_the_main_thread():
    out = {}
    thread = threading.Thread(
        target=lambda: out.update(r=accuracy_reward(["\\boxed{0.25}"], ["\\frac14"]))
    )
    thread.start()
    thread.join()
    assert out["r"] == [
        1.0
    ]  # math-verify's signal timeouts would raise ValueError here if not disabled


def test_mismatched_lengths_raise_and_format_reward_checks_for_a_complete_box():
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        accuracy_reward(["a", "b"], ["1"])
    assert boxed_format_reward(["\\boxed{1}", "\\boxed{1", "none"]) == [1.0, 0.0, 0.0]
