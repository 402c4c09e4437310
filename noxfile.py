"""Nox sessions: tests, lint, typecheck.

On a machine without CUDA (no ``nvidia-smi`` on PATH) every session that imports torch installs the CPU
build ``torch==2.13.0`` before the project, so that pip never pulls a multi-GB CUDA wheel. Set
``CAPO_TORCH_SPEC`` to override (e.g. ``CAPO_TORCH_SPEC="torch>=2.4"`` on a GPU box, or
``CAPO_TORCH_SPEC=skip`` to let the project's own range decide).
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

CPU_TORCH = "torch==2.13.0"
TESTED = "constraints/tested.txt"
"""The exact set CI tested; every session installs within it except ``latest`` (newest releases)."""


def torch_spec() -> str | None:
    spec = os.environ.get("CAPO_TORCH_SPEC")
    if spec is not None:
        return None if spec == "skip" else spec
    return None if shutil.which("nvidia-smi") else CPU_TORCH


def install_project(session: nox.Session, extras: str, constrained: bool = True) -> None:
    pins = ["-c", TESTED] if constrained else []
    spec = torch_spec()
    if spec:
        session.install(spec, *pins)
    session.install("-e", f".[{extras}]", *pins)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole pytest suite (CPU, float64 exact checks, tiny models, DeepSpeed ZeRO-2/3 on 2 CPU processes)."""
    install_project(session, "train,dev,deepspeed,tensorboard")
    session.run("pytest", *(session.posargs or ["-q"]), env={"OMP_NUM_THREADS": "2"})


@nox.session
def latest(session: nox.Session) -> None:
    """The fast suite against the newest releases (no constraints): what would break on the next upgrade."""
    install_project(session, "train,dev,deepspeed,tensorboard", constrained=False)
    session.run("pip", "list", "--format=freeze")
    session.run(
        "pytest", "-m", "not slow", *(session.posargs or ["-q"]), env={"OMP_NUM_THREADS": "2"}
    )


@nox.session
def lock(session: nox.Session) -> None:
    """Rewrite constraints/tested.txt from a fresh resolve (then run nox -s tests on it before committing)."""
    install_project(session, "train,dev,deepspeed,tensorboard", constrained=False)
    frozen = session.run("pip", "freeze", "--exclude-editable", silent=True) or ""
    lines = [line.replace("+cpu", "") for line in frozen.splitlines() if line and "@" not in line]
    with open(TESTED) as f:
        header = [line for line in f.read().splitlines() if line.startswith("#")]
    with open(TESTED, "w") as f:
        f.write("\n".join([*header, *lines]) + "\n")


@nox.session
def readme_table(session: nox.Session) -> None:
    """Rewrite the README's quickstart summary from what `capo train` (no arguments) prints."""
    install_project(session, "train,dev")
    session.run(
        "pytest", "-q", "tests/test_readme_quickstart.py",
        env={"CAPO_UPDATE_README": "1", "OMP_NUM_THREADS": "2"},
    )  # fmt: skip


@nox.session
def fast(session: nox.Session) -> None:
    """The edit-test loop: the suite without the ``slow`` tests (multi-process and full ``.train()`` runs)."""
    install_project(session, "train,dev")
    session.run(
        "pytest", "-m", "not slow", *(session.posargs or ["-q"]), env={"OMP_NUM_THREADS": "2"}
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check."""
    session.install("ruff", "-c", TESTED)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Mypy on the four import packages."""
    install_project(session, "train,dev")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """The README's main job: ``capo train`` on the embedded tiny default (CPU, a few minutes)."""
    install_project(session, "train")
    session.run("capo", "train", *(session.posargs or ["--overwrite_output_dir", "true"]))


@nox.session
def bench(session: nox.Session) -> None:
    """CAPO step vs the naive implementation: times, peak memory, scaling (benchmarks/run.py)."""
    install_project(session, "train,dev")
    args = session.posargs or ["--out", "outputs/bench"]
    session.run("python", "benchmarks/run.py", *args, env={"OMP_NUM_THREADS": "1"})


@nox.session
def verify(session: nox.Session) -> None:
    """Verification reports: capo vs reference vs autodiff, theorem checks on toy MDPs."""
    install_project(session, "dev")
    for name in ("agreement", "theorems"):
        session.run("python", "-m", "verification", name, "--out", f"outputs/verification/{name}")


@nox.session
def experiment(session: nox.Session) -> None:
    """Mechanism study (toy MDP, head-only and full tiny LLM): outputs/mechanism; ``-- --quick`` < 60 s.

    ``-- --regime race [--quick | --report-only | --worker]``: the race (docs/race), resumable run by run.
    """
    install_project(session, "train,dev")
    args = session.posargs or ["--out", "outputs/mechanism"]
    if args[:2] == ["--regime", "race"]:
        module = "capo_app.experiments.race"
        session.run("python", "-m", module, *args[2:], env={"OMP_NUM_THREADS": "1"})
        return
    session.run("python", "-m", "capo_app.experiments.study", *args, env={"OMP_NUM_THREADS": "1"})


@nox.session
def projection(session: nox.Session) -> None:
    """Per-GPU extra memory and H100 step time of CAPO at the paper's shapes (benchmarks/projection.py)."""
    install_project(session, "train,dev")
    args = session.posargs or ["--out", "outputs/projection.json"]
    session.run("python", "benchmarks/projection.py", *args, env={"OMP_NUM_THREADS": "1"})
