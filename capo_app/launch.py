"""What a multi-process launch needs from the configuration on a machine without a GPU.

transformers starts a process group only for a device backend or for ``use_cpu=True``: without CUDA and
without ``use_cpu``, each process launched by ``accelerate launch`` (DeepSpeed included) or ``torchrun``
builds a one-process state (``TrainingArguments.world_size == 1``). DeepSpeed then fails its batch check
("train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size 64 != 64 * 1 *
2"), and plain DDP would train every process alone. With ``use_cpu=True`` the processes form one gloo
group and DeepSpeed ZeRO runs on its ``cpu`` accelerator.

A process that joined a group must also leave it before the interpreter exits (:func:`end_process_group`), and a
gloo process ends without the interpreter's finalization (:func:`exit_launched_process`). A DeepSpeed process on
the CPU does not build DeepSpeed's shared-memory all-reduce kernel, which training never calls
(:func:`skip_unused_deepspeed_build`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = [
    "end_process_group",
    "exit_launched_process",
    "launch_overrides",
    "skip_unused_deepspeed_build",
]


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


DEEPSPEED_SHM_OP = "deepspeed_shm_comm"
"""DeepSpeed's CPU shared-memory all-reduce kernel (``ShareMemCommBuilder``), used by ``inference_all_reduce`` only."""


def skip_unused_deepspeed_build(environ: Mapping[str, str] | None = None) -> bool:
    """In a DeepSpeed launch without CUDA, keep DeepSpeed from JIT-building its shared-memory kernel.

    DeepSpeed's torch communication backend compiles :data:`DEEPSPEED_SHM_OP` (C++ through torch's
    ``cpp_extension``) when the process group starts on its CPU accelerator. Training never calls it (only
    ``inference_all_reduce`` does); the build takes minutes of compiler time on a loaded 2-core machine, and
    it waits without limit on the build lock in ``~/.cache/torch_extensions`` (``TORCH_EXTENSIONS_DIR``) that
    a process killed mid-build leaves behind: every later DeepSpeed process on that machine then hangs before
    its first step (both ZeRO tests of one CI run timed out that way). Marking the op incompatible in
    DeepSpeed's own op table (``deepspeed.ops.__compatible_ops__``, one dict per process, meant to be edited)
    makes the backend skip it. Call it before the training arguments start the process group; it returns
    whether it applied (a DeepSpeed launch, ``ACCELERATE_USE_DEEPSPEED``, on a machine without CUDA).
    """
    env = os.environ if environ is None else environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return False
    import torch

    if torch.cuda.is_available():
        return False
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[DEEPSPEED_SHM_OP] = False
    return True


def end_process_group() -> str | None:
    """Destroy the default process group, if this process started one; call it before the process exits.

    Without it a gloo process can abort at exit with "terminate called without an active exception": a
    ``pt_gloo_runloop`` thread may still be destroying the last finished collective (its tensors are released
    through Python, so it asks for the GIL) while the main thread is already in ``Py_FinalizeEx``; CPython then
    ends that thread with ``pthread_exit``, whose forced unwind crosses a ``noexcept`` C++ destructor, so
    ``std::terminate`` aborts the process. The more the machine is loaded, the later the thread runs and the more
    often it happens. Destroying the group joins those threads while the interpreter is still whole, if nothing
    else holds the group. Returns the backend of the group it destroyed ("gloo", "nccl", ...), or None if there was none.
    """
    dist = sys.modules.get("torch.distributed")  # a process that never imported it has no group
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    backend = str(dist.get_backend())
    dist.destroy_process_group()
    return backend


def exit_launched_process(code: int = 0) -> None:
    """End a launched gloo process now, without the interpreter's finalization; return if there is no group.

    :func:`end_process_group` is not enough on its own: while anything still holds the group (a DDP reducer
    in a reference cycle that only the final garbage collection frees), its ``pt_gloo_runloop`` threads live on
    into ``Py_FinalizeEx`` and the abort above can still happen (seen once in a loaded full-suite run). So once
    the work is done and its files are written, a gloo process flushes what is buffered (stdio, logging, an
    open W&B run) and leaves with ``os._exit``: no finalization, no thread asking for the GIL during it.
    Call it last, on success only (an exception must still reach the error boundary).
    """
    if end_process_group() != "gloo":
        return
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
