import pytest
import torch

import capo
from tests.capo._batches import random_batch
from tests.tolerances import PROB_SUM_ATOL


def fields(**over):
    b = random_batch(0, N=4, k=3, V=6, H=2)
    base = dict(hidden=b.hidden, support_ids=b.support_ids, support_probs=b.support_probs,
                action_index=b.action_index, advantages=b.advantages)  # fmt: skip
    base.update(over)
    return base


BAD = [
    ("hidden", {"hidden": torch.zeros(4)}),
    ("hidden", {"hidden": torch.zeros(4, 2, dtype=torch.int64)}),
    ("support_ids", {"support_ids": torch.zeros(3, 3, dtype=torch.int64)}),
    ("support_ids", {"support_ids": torch.zeros(4, 3, dtype=torch.int32)}),
    ("support_ids", {"support_ids": torch.tensor([[0, 1, 2]] * 3 + [[0, 1, -1]])}),
    ("support_ids", {"support_ids": torch.tensor([[0, 1, 2]] * 3 + [[4, 1, 4]])}),
    ("support_ids", {"support_ids": torch.tensor([[0, 1, 2]] * 4), "vocab_size": 2}),
    ("support_probs", {"support_probs": torch.full((4, 2), 0.5, dtype=torch.float64)}),
    ("support_probs", {"support_probs": torch.tensor([[0.5, 0.5, 0.0]] * 3 + [[1.2, -0.2, 0.0]])}),
    ("support_probs", {"support_probs": torch.tensor([[0.5, 0.5 + 10 * PROB_SUM_ATOL, 0.0]] * 4)}),
    ("action_index", {"action_index": torch.tensor([0, 1, 2, 3])}),
    ("action_index", {"action_index": torch.tensor([0, 1, 2])}),
    ("advantages", {"advantages": torch.zeros(5)}),
    ("advantages", {"advantages": torch.zeros(4, dtype=torch.int64)}),
]


@pytest.mark.parametrize("name,over", BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_input_raises_value_error_naming_the_argument(name, over):
    with pytest.raises(ValueError, match=name):
        capo.TokenBatch(**fields(**over))


def test_probabilities_within_tolerance_and_nonfinite_rows_are_accepted():
    probs = torch.tensor([[0.5, 0.5 + PROB_SUM_ATOL / 2, 0.0]] * 3 + [[float("nan"), 0.5, 0.5]])
    batch = capo.TokenBatch(**fields(support_probs=probs.to(torch.float64)))
    assert batch.finite_tokens().tolist() == [True, True, True, False]
    assert batch.dtype == torch.float64


def test_sampled_ids_follow_action_index():
    b = random_batch(0, N=4, k=3, V=6, H=2)
    assert torch.equal(b.sampled_ids, b.support_ids[torch.arange(4), b.action_index])
