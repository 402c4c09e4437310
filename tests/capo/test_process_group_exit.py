"""A launched process leaves its process group and ends without finalization (:mod:`capo_app.launch`).

Without that, a gloo ``pt_gloo_runloop`` thread still releasing the last collective's tensors asks for the GIL
during ``Py_FinalizeEx`` and CPython's ``pthread_exit`` aborts the process ("terminate called without an active
exception"), more often the busier the machine: the flaky SIGABRT of the two-process tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist

from capo_app.launch import end_process_group
from tests.capo._launch import free_port

REPO = Path(__file__).resolve().parents[2]
WORKERS = sorted(Path(__file__).parent.glob("_*worker.py"))


def test_end_process_group_destroys_the_group_and_is_a_no_op_without_one() -> None:
    end_process_group()  # no group: nothing to do
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    assert dist.is_initialized()
    end_process_group()
    assert not dist.is_initialized()


def test_every_multi_process_worker_ends_through_exit_launched_process() -> None:
    assert len(WORKERS) == 3
    for worker in WORKERS:
        assert "exit_launched_process()" in worker.read_text(), worker.name


def test_a_gloo_process_exits_with_its_code_and_its_output_flushed(tmp_path) -> None:
    script = (
        "import os, torch.distributed as dist\n"
        "from capo_app.launch import exit_launched_process\n"
        "os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=os.environ['PORT'])\n"
        "dist.init_process_group('gloo', rank=0, world_size=1)\n"
        "dist.all_reduce(__import__('torch').ones(3))\n"
        "print('work done', end='')\n"  # buffered: only a flush makes it reach the pipe
        "exit_launched_process(3)\n"
        "print('not reached')\n"
    )
    env = {**os.environ, "PORT": str(free_port()), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == 3 and proc.stdout == "work done", proc.stderr[-2000:]
