"""Worker of test_kl_budget_distributed.py: one rank of two GRPO runs (no budget, then a KL budget).

Usage: ``torchrun --nproc_per_node N tests/capo/_kl_budget_worker.py OUT``; writes OUT/rank{r}.pt.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capo import metrics
from capo_app.launch import exit_launched_process
from tests.capo import _trainer_helpers as H

GLOBAL_BATCH = 8
BUDGET = 1e-3
KEYS = (metrics.KL_PREDICTED, metrics.KL_SCALE, metrics.TRUE_KL, metrics.TRUE_KL_HEAD)


def run(out_dir: str, world: int, budget: float | None) -> list[dict[str, float]]:
    tr = H.trainer(
        out_dir,
        per_device_train_batch_size=GLOBAL_BATCH // world,
        capo_enabled=False,
        capo_log_true_kl=True,
        capo_kl_budget=budget,
        optim="adamw_torch",
        max_steps=3,
    )
    tr.train()
    return [{k: h[k] for k in KEYS} for h in tr.state.log_history if metrics.KL_SCALE in h]


def run_both(out_dir: str, world: int) -> dict[str, list[dict[str, float]]]:
    return {
        "free": run(os.path.join(out_dir, "free"), world, None),
        "budget": run(os.path.join(out_dir, "budget"), world, BUDGET),
    }


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    out = Path(sys.argv[1])
    import torch.distributed as dist

    result = run_both(str(out / "run"), int(os.environ.get("WORLD_SIZE", "1")))
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.save(result, out / f"rank{rank}.pt")
    exit_launched_process()  # last: a gloo thread alive at interpreter exit aborts the process
