"""Worker of the multi-process KL budget tests: one rank of GRPO runs with and without a KL budget.

Usage: ``torchrun --nproc_per_node 2 tests/capo/_kl_budget_worker.py OUT [DTYPE]`` (DDP), or
``accelerate launch --config_file CONFIG --num_processes 2 --mixed_precision no tests/capo/_kl_budget_worker.py
OUT [DTYPE]`` (DeepSpeed ZeRO-2/3, which needs float32); writes OUT/rank{r}.pt. Under DeepSpeed it also resumes
the budgeted run from its checkpoint after step 2 and records that run's weights.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capo import metrics
from capo_app.launch import exit_launched_process, launch_overrides, skip_unused_deepspeed_build
from tests.capo import _trainer_helpers as H

GLOBAL_BATCH = 8
BUDGET = 1e-3
KEYS = (metrics.KL_PREDICTED, metrics.KL_SCALE, metrics.TRUE_KL, metrics.TRUE_KL_HEAD)


def weights(tr) -> dict[str, torch.Tensor]:
    """The model's full weights on every rank (gathered from their shards under ZeRO-3)."""
    model = tr.accelerator.unwrap_model(tr.model)
    gather: contextlib.AbstractContextManager = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(model.parameters()))
    with gather:
        return H.params(model)


def trainer(out_dir: str, world: int, budget: float | None, dtype: torch.dtype, **extra):
    return H.trainer(
        out_dir,
        model=H.tiny_model(dtype),
        per_device_train_batch_size=GLOBAL_BATCH // world,
        capo_enabled=False,
        capo_log_true_kl=True,
        capo_kl_budget=budget,
        optim="adamw_torch",
        max_steps=3,
        **{"use_cpu": world == 1, **launch_overrides()},
        **extra,
    )


def history(tr) -> list[dict[str, float]]:
    keys = (*KEYS, metrics.KL_LOOKAHEADS)
    return [
        {k: h[k] for k in keys if k in h} for h in tr.state.log_history if metrics.KL_SCALE in h
    ]


def run(out_dir: str, world: int, budget: float | None, dtype=torch.float64, **extra) -> dict:
    tr = trainer(out_dir, world, budget, dtype, **extra)
    tr.train()
    return {"history": history(tr), "weights": weights(tr)}


def run_all(out_dir: str, world: int, dtype: torch.dtype = torch.float64) -> dict:
    out = {
        "free": run(os.path.join(out_dir, "free"), world, None, dtype),
        "budget": run(
            os.path.join(out_dir, "budget"),
            world,
            BUDGET,
            dtype,
            save_strategy="steps",
            save_steps=2,
        ),
    }
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        tr = trainer(os.path.join(out_dir, "resumed"), world, BUDGET, dtype)
        tr.train(resume_from_checkpoint=os.path.join(out_dir, "budget", "checkpoint-2"))
        out["resumed"] = {"history": history(tr), "weights": weights(tr)}
    return out


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    skip_unused_deepspeed_build()
    out = Path(sys.argv[1])
    dtype = getattr(torch, sys.argv[2]) if len(sys.argv) > 2 else torch.float64
    result = run_all(str(out / "run"), int(os.environ.get("WORLD_SIZE", "1")), dtype)
    torch.save(result, out / f"rank{int(os.environ.get('RANK', '0'))}.pt")
    exit_launched_process()  # last: a gloo thread alive at interpreter exit aborts the process
