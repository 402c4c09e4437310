"""Worker of test_distributed.py: one rank of a CAPO run; writes its record to OUT/rank{r}.pt.

Usage: ``accelerate launch --cpu --num_processes N tests/capo/_distributed_worker.py OUT``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capo_app.launch import exit_launched_process
from tests.capo import _trainer_helpers as H

SETTINGS = dict(
    optim="sgd",
    max_steps=2,
    hessian_low=-0.05,
    hessian_high=0.05,
    fisher_max=1.3e-3,
    mask_truncated_completions=True,
)
GLOBAL_BATCH = 8


class Stub(H.StubCAPOTrainer):
    truncate_second_half_at_step = 1  # step 2: rank 1 of 2 has no valid token


def run(out_dir: str, world: int) -> dict:
    tr = H.trainer(out_dir, cls=Stub, per_device_train_batch_size=GLOBAL_BATCH // world, **SETTINGS)
    tr.capo_record = []
    tr.train()
    return {
        "record": [
            {k: e[k] for k in ("completion_index", "valid", "keep")} for e in tr.capo_record
        ],
        "moments": tr.capo_moments.state_dict(),
        "dense": tr.capo_moments.to_dense(),
        "logs": [
            {k: v for k, v in h.items() if k.startswith("capo/")}
            for h in tr.state.log_history
            if "capo/rejection_rate" in h
        ],
        "params": H.params(tr.model),
    }


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    out = Path(sys.argv[1])
    import torch.distributed as dist

    result = run(str(out / "run"), int(__import__("os").environ.get("WORLD_SIZE", "1")))
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save(result, out / f"rank{rank}.pt")
    exit_launched_process()  # last: a gloo thread alive at interpreter exit aborts the process
