"""What a multi-process launch needs from the configuration on a machine without a GPU.

transformers starts a process group only for a device backend or for ``use_cpu=True``: without CUDA and
without ``use_cpu``, each process launched by ``accelerate launch`` (DeepSpeed included) or ``torchrun``
builds a one-process state (``TrainingArguments.world_size == 1``). DeepSpeed then fails its batch check
("train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size 64 != 64 * 1 *
2"), and plain DDP would train every process alone. With ``use_cpu=True`` the processes form one gloo
group and DeepSpeed ZeRO runs on its ``cpu`` accelerator.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["launch_overrides"]


def launch_overrides(
    environ: Mapping[str, str] | None = None, has_gpu: bool | None = None
) -> dict[str, Any]:
    """``{"use_cpu": True}`` for a multi-process launch (``WORLD_SIZE`` > 1) without CUDA, else ``{}``.

    Args:
        environ: The environment (default ``os.environ``); the launcher sets ``WORLD_SIZE``.
        has_gpu: Whether CUDA is available (default: ask torch).
    """
    env = os.environ if environ is None else environ
    if int(env.get("WORLD_SIZE", "1")) <= 1:
        return {}
    if has_gpu is None:
        import torch

        has_gpu = torch.cuda.is_available()
    return {} if has_gpu else {"use_cpu": True}
