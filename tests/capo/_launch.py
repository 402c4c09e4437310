"""One way for the tests to run a multi-process launch (torchrun or ``accelerate launch``) and read its ranks.

If the launch outlives ``timeout``, the launcher and every process under it are killed and the test fails with
the tail of what the ranks printed. Every process: torchrun starts each rank in a session of its own, so
neither killing the launcher nor its process group reaches them, and an orphaned rank lives on (seen: 10
minutes after its launcher was killed) holding its port, the output pipes the test is reading and any lock
it took. Each rank's own
``torch.distributed`` environment comes from the launcher; DeepSpeed's extension builds, if any, go to a
folder of the test's own (``TORCH_EXTENSIONS_DIR``), never the machine's shared cache.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT_S = 300
"""A launch here takes 10-40 s (under a concurrent load of two busy processes, up to ~2 min)."""


def free_port() -> int:
    """A TCP port that was free a moment ago (for the launcher's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(worker: str | Path, *args: str) -> list[str]:
    """The torchrun command for 2 processes on this machine."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(worker), *args,
    ]  # fmt: skip


def accelerate_launch(config: str | Path, worker: str | Path, *args: str) -> list[str]:
    """The ``accelerate launch`` command for 2 processes with ``config`` (a DeepSpeed or DDP file)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
        str(worker), *args,
    ]  # fmt: skip


def kill_tree(pid: int) -> None:
    """SIGKILL the process ``pid`` and every descendant (listed first: an orphan is no longer one)."""
    try:
        root = psutil.Process(pid)
        tree = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)


def run_ranks(cmd: list[str], out: Path, timeout: float = LAUNCH_TIMEOUT_S) -> list[dict]:
    """Run the launch ``cmd`` (its ranks write ``out/rank{r}.pt``) and return both ranks' records."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TORCH_EXTENSIONS_DIR": str(out / "torch_extensions"),
    }
    with subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            stdout, stderr = proc.communicate()
            pytest.fail(
                f"the launch ran past {timeout:.0f} s and was killed with its ranks:\n"
                f"stdout: {stdout[-2000:]}\nstderr: {stderr[-2000:]}"
            )
    assert proc.returncode == 0, stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
