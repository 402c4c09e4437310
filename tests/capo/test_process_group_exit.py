"""A launched process leaves its process group before it exits (:func:`capo_app.launch.end_process_group`).

Without that, a gloo ``pt_gloo_runloop`` thread still releasing the last collective's tensors asks for the GIL
during ``Py_FinalizeEx`` and CPython's ``pthread_exit`` aborts the process ("terminate called without an active
exception"), more often the busier the machine: the flaky SIGABRT of the two-process tests.
"""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from capo_app.launch import end_process_group
from tests.capo.test_distributed import free_port

WORKERS = sorted(Path(__file__).parent.glob("_*worker.py"))


def test_end_process_group_destroys_the_group_and_is_a_no_op_without_one() -> None:
    end_process_group()  # no group: nothing to do
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    assert dist.is_initialized()
    end_process_group()
    assert not dist.is_initialized()


def test_every_multi_process_worker_leaves_its_group_before_exit() -> None:
    assert len(WORKERS) == 3
    for worker in WORKERS:
        assert "end_process_group()" in worker.read_text(), worker.name
