import numpy as np
import torch

import capo
from reference import sample_gradient
from tests.capo._batches import BATCH_CASES, dense_inputs, random_batch
from tests.tolerances import EXACT_ATOL, EXACT_RTOL


def test_last_layer_gradient_of_accepted_tokens_matches_reference():
    """The mean of A_i (e_{a_i} − π_i) ⊗ h_i over the masked tokens (eq 7), scattered by id."""
    case = BATCH_CASES[3]
    batch = random_batch(**case)
    mask = torch.arange(case["N"]) % 3 != 0
    rows, grads = capo.last_layer_gradient(batch, mask, chunk_size=4)
    h, p, a, adv = dense_inputs(batch, case["V"])
    ref = sample_gradient(h[mask], p[mask], a[mask], adv[mask]).reshape(case["V"], case["H"])
    dense = np.zeros_like(ref)
    dense[rows.numpy()] = grads.numpy()
    np.testing.assert_allclose(dense, ref, rtol=EXACT_RTOL, atol=EXACT_ATOL)
    summed = capo.last_layer_gradient(batch, mask, reduction="sum")[1]
    torch.testing.assert_close(summed, grads * int(mask.sum()), rtol=EXACT_RTOL, atol=EXACT_ATOL)


def test_last_layer_gradient_with_nothing_selected_is_empty():
    batch = random_batch(0, N=3, k=2, V=5, H=2)
    rows, grads = capo.last_layer_gradient(batch, torch.zeros(3, dtype=torch.bool))
    assert rows.shape == (0,) and grads.shape == (0, 2)
