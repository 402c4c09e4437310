"""Reproduction for an upstream report: inductor's FX graph cache ignores ATEN_CPU_CAPABILITY (torch 2.13 CPU).

Run on a CPU with AVX-512:  python docs/upstream/inductor_isa_cache.py
It compiles one gather-multiply-reduce in a fresh cache folder three times, each in a new process: natively,
then with ATEN_CPU_CAPABILITY=avx2, then =default, and prints each result's error against eager. With the FX
graph cache on, the second and third processes hit the first one's graph (generated for the native vector
width) and rebuild it for another ISA: wrong numbers (avx2) or a C++ build error (default). With
TORCHINDUCTOR_FX_GRAPH_CACHE=0 every process agrees with eager.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

CHILD = """
import torch
def f(rows, index, hidden):
    return (rows[index] * hidden[:, None, :]).sum(dim=2)
g = torch.Generator().manual_seed(0)
rows, hidden = torch.randn(300, 40, generator=g), torch.randn(130, 40, generator=g)
index = torch.randint(0, 300, (130, 11), generator=g)
try:
    got = torch.compile(f, dynamic=True)(rows, index, hidden)
    err = float((got - f(rows, index, hidden)).abs().max() / f(rows, index, hidden).abs().max())
    print(f"{torch.backends.cpu.get_cpu_capability():8s} relative error {err:.1e}")
except Exception as e:
    print(f"{torch.backends.cpu.get_cpu_capability():8s} {type(e).__name__}")
"""


def main() -> None:
    """Each capability in a new process, with the FX graph cache on, then off."""
    for cache in ("1", "0"):
        print(f"TORCHINDUCTOR_FX_GRAPH_CACHE={cache}")
        with tempfile.TemporaryDirectory() as folder:
            for capability in (None, "avx2", "default"):
                env = {
                    **os.environ,
                    "TORCHINDUCTOR_CACHE_DIR": folder,
                    "TORCHINDUCTOR_FX_GRAPH_CACHE": cache,
                }
                env.pop("ATEN_CPU_CAPABILITY", None)
                if capability:
                    env["ATEN_CPU_CAPABILITY"] = capability
                out = subprocess.run(
                    [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True
                )
                print("  " + (out.stdout.strip() or out.stderr.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
