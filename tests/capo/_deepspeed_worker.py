"""Worker of test_distributed_deepspeed.py: one rank of a CAPO run under a DeepSpeed launch.

Usage: ``accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 2
--mixed_precision no tests/capo/_deepspeed_worker.py OUT [DTYPE]`` (DTYPE: float64 by default; ZeRO-3
accepts float32, bf16 and fp16 only). The configuration asks for ``use_cpu=False``,
as a GPU recipe does; :func:`capo_app.launch.launch_overrides` is what makes the CPU launch work.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from capo_app.launch import exit_launched_process, launch_overrides, skip_unused_deepspeed_build
from tests.capo import _distributed_worker as W
from tests.capo import _trainer_helpers as H


def run(out_dir: str, world: int, dtype: torch.dtype = torch.float64) -> dict:
    skip_unused_deepspeed_build()
    settings = {**W.SETTINGS, "use_cpu": False, **launch_overrides()}
    batch = W.GLOBAL_BATCH // world
    model = H.tiny_model(dtype)
    tr = H.trainer(out_dir, cls=W.Stub, model=model, per_device_train_batch_size=batch, **settings)
    tr.capo_record = []
    tr.train()
    return {
        "world_size": tr.args.world_size,
        "lm_head_sharded": hasattr(tr.accelerator.unwrap_model(tr.model).lm_head.weight, "ds_id"),
        "distributed_type": str(tr.accelerator.distributed_type),
        "record": [
            {k: e[k] for k in ("completion_index", "valid", "keep")} for e in tr.capo_record
        ],
        "moments": tr.capo_moments.state_dict(),
        "dense": tr.capo_moments.to_dense(),
        "params": H.params(tr.accelerator.unwrap_model(tr.model)),
    }


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    out = Path(sys.argv[1])
    dtype = getattr(torch, sys.argv[2]) if len(sys.argv) > 2 else torch.float64
    result = run(str(out / "run"), int(os.environ.get("WORLD_SIZE", "1")), dtype)
    torch.save(result, out / f"rank{int(os.environ.get('RANK', '0'))}.pt")
    exit_launched_process()  # last: a gloo thread alive at interpreter exit aborts the process
