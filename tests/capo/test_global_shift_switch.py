"""capo_global_shift=False drops the global-shift buffer and metrics, and changes nothing else."""

from __future__ import annotations

import torch

from capo import metrics
from tests.capo import _trainer_helpers as H


def _run(tmp_path, global_shift: bool) -> dict:
    tr = H.trainer(
        str(tmp_path / str(global_shift)), optim="adamw_torch", capo_global_shift=global_shift,
        hessian_low=-0.05, hessian_high=0.05, fisher_max=1.3e-3,
    )  # fmt: skip
    tr.capo_record = []
    tr.train()
    logs = [h for h in tr.state.log_history if metrics.REJECTION_RATE in h]
    return {
        "tr": tr,
        "logs": logs,
        "dense": tr.capo_moments.to_dense(),
        "params": H.params(tr.model),
    }


def test_without_the_global_shift_masks_moments_and_parameters_are_identical(tmp_path) -> None:
    on, off = _run(tmp_path, True), _run(tmp_path, False)
    keep_on = [e["keep"] for e in on["tr"].capo_record]
    keep_off = [e["keep"] for e in off["tr"].capo_record]
    assert all(torch.equal(a, b) for a, b in zip(keep_on, keep_off, strict=True))
    assert any(not k[e["valid"]].all() for k, e in zip(keep_on, on["tr"].capo_record, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(on["dense"], off["dense"], strict=True))
    assert all(torch.equal(on["params"][n], off["params"][n]) for n in on["params"])
    assert all(metrics.GLOBAL_M_H in h for h in on["logs"])
    assert not any(metrics.GLOBAL_M_H in h or metrics.GLOBAL_M_F in h for h in off["logs"])
