"""DeepSpeed on CPU: two processes under ``accelerate launch`` with the recipes' ZeRO-2 config vs one process.

On a machine without a GPU the launch works only through :func:`capo_app.launch.launch_overrides`
(``use_cpu=True``; without it every process builds a one-process state and DeepSpeed's batch check fails).
The 2-process ZeRO-2 run must give the same masks, moments and parameters as one plain process holding the
whole global batch (as DDP does, tests/capo/test_distributed.py), up to float32 rounding: ZeRO keeps float32
master weights of this float64 model, so the second step's hidden states differ by ~1e-7 relative.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from capo_app.launch import DEEPSPEED_SHM_OP, launch_overrides, skip_unused_deepspeed_build
from tests.capo import _deepspeed_worker as DW
from tests.capo import _distributed_worker as W
from tests.capo._launch import REPO, accelerate_launch, run_ranks
from tests.capo.test_distributed import masks
from tests.tolerances import FLOAT32_ATOL, FLOAT32_RTOL


def test_a_multi_process_launch_without_gpu_trains_on_the_cpu() -> None:
    assert launch_overrides({"WORLD_SIZE": "2"}, has_gpu=False) == {"use_cpu": True}
    assert launch_overrides({"WORLD_SIZE": "2"}, has_gpu=True) == {}
    assert launch_overrides({}, has_gpu=False) == {}


def test_a_cpu_deepspeed_launch_skips_the_shared_memory_kernel_and_nothing_else(
    monkeypatch,
) -> None:
    """Training never calls DeepSpeed's shm all-reduce kernel; on a CPU DeepSpeed launch it is not built."""
    pytest.importorskip("deepspeed")
    assert not skip_unused_deepspeed_build({})  # not a DeepSpeed launch: DeepSpeed untouched
    import deepspeed.ops

    before = dict(deepspeed.ops.__compatible_ops__)
    monkeypatch.setitem(
        deepspeed.ops.__compatible_ops__, DEEPSPEED_SHM_OP, before[DEEPSPEED_SHM_OP]
    )
    assert skip_unused_deepspeed_build({"ACCELERATE_USE_DEEPSPEED": "true"})
    after = deepspeed.ops.__compatible_ops__
    assert after[DEEPSPEED_SHM_OP] is False
    assert {k: v for k, v in after.items() if k != DEEPSPEED_SHM_OP} == {
        k: v for k, v in before.items() if k != DEEPSPEED_SHM_OP
    }


def _stale_build_lock(out: Path) -> None:
    """The lock a process killed mid-build leaves: a DeepSpeed process that built the kernel would wait on it
    for ever (torch's cpp_extension waits for the file to go), so the launch would time out."""
    folder = out / "torch_extensions" / DEEPSPEED_SHM_OP  # run_ranks sets TORCH_EXTENSIONS_DIR
    folder.mkdir(parents=True)
    (folder / "lock").touch()


def _launch(out: Path, config: str, dtype: str = "float64") -> list[dict]:
    _stale_build_lock(out)
    return run_ranks(accelerate_launch(config, DW.__file__, str(out), dtype), out)


@pytest.mark.slow
def test_zero2_two_processes_match_one_process(tmp_path) -> None:
    pytest.importorskip("deepspeed")
    ranks = _launch(tmp_path, str(REPO / "recipes" / "accelerate" / "zero2.yaml"))
    single = W.run(str(tmp_path / "single"), world=1)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(r["distributed_type"] == "DistributedType.DEEPSPEED" for r in ranks)
    two, one = masks([r["record"] for r in ranks]), masks([single["record"]])
    assert two.keys() == one.keys() and all(torch.equal(two[k], one[k]) for k in one)
    for rank in ranks:
        assert rank["moments"]["t"] == single["moments"]["t"] == 2
        for x, y in zip(rank["dense"], single["dense"], strict=True):  # ZeRO steps fp32 masters
            assert float((x - y).abs().max()) <= FLOAT32_RTOL * float(y.abs().max())
        for name, p in single["params"].items():
            err = float((rank["params"][name] - p).abs().max())
            assert err <= FLOAT32_RTOL * float(p.abs().max()) + FLOAT32_ATOL, name


@pytest.mark.slow
def test_zero3_gathers_the_sharded_output_layer_and_matches_one_process(tmp_path) -> None:
    """ZeRO-3 shards lm_head; CAPO gathers it (capo.sharding) and selects the same tokens as one process."""
    pytest.importorskip("deepspeed")
    config = (
        REPO / "recipes" / "accelerate" / "zero3.yaml"
    )  # the shipped file (_launch sets 2 CPU processes)
    ranks = _launch(tmp_path, str(config), "float32")  # ZeRO-3 refuses float64 parameters
    single = DW.run(str(tmp_path / "single"), world=1, dtype=torch.float32)
    assert all(r["lm_head_sharded"] for r in ranks) and not single["lm_head_sharded"]
    two, one = masks([r["record"] for r in ranks]), masks([single["record"]])
    assert two.keys() == one.keys() and all(torch.equal(two[k], one[k]) for k in one)
    assert any(not m.all() for m in one.values())  # some tokens rejected: the test can fail
    for rank in ranks:
        for x, y in zip(rank["dense"], single["dense"], strict=True):
            assert float((x - y).abs().max()) <= FLOAT32_RTOL * float(y.abs().max())
