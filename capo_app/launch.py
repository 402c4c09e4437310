"""What a multi-process launch needs from the configuration on a machine without a GPU.

transformers starts a process group only for a device backend or for ``use_cpu=True``: without CUDA and
without ``use_cpu``, each process launched by ``accelerate launch`` (DeepSpeed included) or ``torchrun``
builds a one-process state (``TrainingArguments.world_size == 1``). DeepSpeed then fails its batch check
("train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size 64 != 64 * 1 *
2"), and plain DDP would train every process alone. With ``use_cpu=True`` the processes form one gloo
group and DeepSpeed ZeRO runs on its ``cpu`` accelerator.

A process that joined a group must also leave it before the interpreter exits (:func:`end_process_group`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["end_process_group", "launch_overrides"]


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


def end_process_group() -> None:
    """Destroy the default process group, if this process started one; call it before the process exits.

    Without it a gloo process can abort at exit with "terminate called without an active exception": a
    ``pt_gloo_runloop`` thread may still be destroying the last finished collective (its tensors are released
    through Python, so it asks for the GIL) while the main thread is already in ``Py_FinalizeEx``; CPython then
    ends that thread with ``pthread_exit``, whose forced unwind crosses a ``noexcept`` C++ destructor, so
    ``std::terminate`` aborts the process. The more the machine is loaded, the later the thread runs and the more
    often it happens. Destroying the group joins those threads while the interpreter is still whole.
    """
    dist = sys.modules.get("torch.distributed")  # a process that never imported it has no group
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
