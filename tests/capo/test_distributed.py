"""Two CPU processes (torch.distributed gloo, launched with torchrun) vs one process, same global batch.

The 2-process run must give the same masks (by global completion index), the same moments, the same
rejection statistics and the same parameters as one process holding the whole batch. In its second
step rank 1 holds only truncated completions masked out by ``mask_truncated_completions``: a rank with
no valid token must still join every collective (the run would hang or fail otherwise).
"""

from __future__ import annotations

import pytest
import torch

from tests.capo import _distributed_worker as W
from tests.capo._launch import run_ranks, torchrun
from tests.tolerances import FLOAT32_ATOL, FLOAT32_RTOL


def masks(records_by_rank):
    out = {}
    for record in records_by_rank:
        for step, entry in enumerate(record):
            for i, idx in enumerate(entry["completion_index"].tolist()):
                out[(step, idx)] = entry["keep"][i][entry["valid"][i]]
    return out


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    ranks = run_ranks(torchrun(W.__file__, str(tmp_path)), tmp_path)
    single = W.run(str(tmp_path / "single"), world=1)

    assert int(ranks[1]["record"][1]["valid"].sum()) == 0  # rank 1: no valid token in step 2
    two = masks([r["record"] for r in ranks])
    one = masks([single["record"]])
    assert two.keys() == one.keys() and len(one) == 2 * W.GLOBAL_BATCH
    assert all(torch.equal(two[k], one[k]) for k in one)
    assert any(not m.all() for m in one.values()) and any(m.any() for m in one.values())

    for rank in ranks:
        assert rank["moments"]["t"] == single["moments"]["t"] == 2
        for x, y in zip(rank["dense"], single["dense"], strict=True):
            assert float((x - y).abs().max()) <= 1e-9 * float(y.abs().max())
        for a, b in zip(rank["logs"], single["logs"], strict=True):
            for key in (
                "capo/rejection_rate",
                "capo/rejection_rate_hessian",
                "capo/rejection_rate_fisher",
                "capo/accepted_tokens",
                "capo/completions_seen",
            ):
                assert a[key] == b[key], key
            for key in ("capo/global_m_H", "capo/global_m_F", "capo/m_F/p50", "capo/m_H/max"):
                assert abs(a[key] - b[key]) <= 1e-9 * abs(b[key]) + 1e-15, key
        for name, p in single["params"].items():
            err = float((rank["params"][name] - p).abs().max())
            assert err <= FLOAT32_RTOL * float(p.abs().max()) + FLOAT32_ATOL, name
