"""The mechanism study: ``python -m capo_app.experiments.study [--quick] [--regimes toy,head,full] [--out DIR]``.

Does curvature-aware masking control the policy shift, and when? Three regimes (exact toy token MDP, tiny
LLM with only ``lm_head`` trained, tiny LLM with every parameter trained), the same arms in each
(:mod:`capo_app.experiments.arms`), the protocol of :mod:`capo_app.experiments.protocol`, the criteria
and verdicts of :mod:`capo_app.experiments.verdict`, the report of
:mod:`capo_app.experiments.mechanism_report`. ``--quick`` is the smoke configuration (< 60 s, toy only
unless ``--regimes`` says otherwise); its artefacts are labelled as such.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from capo_app.experiments.llm_regime import LLMSetup
from capo_app.experiments.mechanism_report import write_report
from capo_app.experiments.protocol import RegimeConfig, RegimeResult, run_regime
from capo_app.experiments.toy_regime import ToySetup
from toy_mdps.prefix_tree import TaskSpec

__all__ = ["FULL", "QUICK", "SUPPLEMENTARY", "main"]

TOY_TASK = TaskSpec(
    vocab_size=10, horizon=3, n_prompts=16, n_random=32, cue_scale=1.0, cue_noise=0.3,
    bias_scale=6.0, n_junk=2, seed=0,
)  # fmt: skip
"""The toy task: a large shared ("bias") feature lets an aggressive step move a token everywhere."""

_LLM_ARMS: dict[str, Any] = {
    "tuning_seeds": (1000,),
    "percentiles": (95.0,),
    "bands": (False,),
    "lr_scales": (0.25,),
    "groups": False,
    "conservative": None,
    "kl_budgets": (1e-3,),
}
"""The tiny-LLM regimes' arms (a run costs 0.5-2 min on the shared CPU; see :data:`CUTS`)."""

CUTS = (
    "Arms: the `toy` regime runs every arm of the issue (Adam and SGD; GRPO (A) at lr x1, x0.5, x0.25; "
    "conservative GRPO (lr x0.2, 12x batch, Adam); CAPO with the paper's thresholds; CAPO with δ_F at "
    "GRPO (A)'s 99th, 95th and 80th token-m_F percentiles, each with the m_H band off and on; a random-mask "
    "control at each CAPO arm's realised per-step rate; GRPO (A) with a per-step KL budget of 0.1 nats; "
    "GRPO (A) without each sign(A) × π_a token group). The tiny-LLM regimes (`full`, `head`) run, with "
    "Adam and with SGD: GRPO (A), GRPO (A) at lr x0.25, the paper's CAPO, CAPO at GRPO (A)'s 95th "
    "token-m_F percentile (fixed in advance, not selected) and a random-mask control at each CAPO arm's "
    "rate; and (Adam) GRPO (A) with a per-step KL budget of 1e-3. Cut there (5 seeds per kept arm; arms "
    "cut first; a tiny-LLM run took 10-100 s on the shared 2-core machine): conservative GRPO (12x batch, "
    "about 12 runs' cost each), lr x0.5, the 99th/80th percentiles, the m_H band, and the token-group "
    "ablation. One tuning seed picks the tiny-LLM lr (two for the toy). Order of work, for the record: the "
    "Adam arms of all three regimes ran first; the tiny-LLM SGD arms, the random controls of the paper's "
    "arms, the KL-budget arms and the supplementary `toy_lr30` regime were added after those results were "
    "in, when the machine turned out faster than planned; no arm or criterion was changed. The `full` "
    "regime first ran with 16 completions per step; no lower lr improved on the base there (V2 failed), so, "
    "as the issue asks, the batch was raised to the paper's aggressive 96 completions per step (12 prompts "
    "x G = 8) with an extra lr x0.1 arm; the first attempt is kept as the supplementary `full_b16`."
)
"""Which arms each regime runs, and what was cut (the report prints it)."""

FULL: dict[str, RegimeConfig] = {
    "toy": RegimeConfig(
        "toy",
        ToySetup(task=TOY_TASK, steps=60, prompts_per_step=8, cue_weight=3.0),
        kl_budgets=(0.1,),
        lr_grid={"adam": (3.0, 10.0, 30.0), "sgd": (1.0, 3.0, 10.0)},
    ),
    "full": RegimeConfig(
        "full",
        LLMSetup(head_only=False, prompts_per_step=12),
        lr_grid={"adam": (3e-4, 1e-3), "sgd": (0.1, 0.3, 1.0)},
        **{**_LLM_ARMS, "lr_scales": (0.25, 0.1)},
    ),
    "head": RegimeConfig(
        "head",
        LLMSetup(head_only=True),
        lr_grid={"adam": (3e-2, 1e-1), "sgd": (0.3, 1.0, 3.0)},
        **_LLM_ARMS,
    ),
}
"""The reported configuration."""

SUPPLEMENTARY: dict[str, RegimeConfig] = {
    "toy_lr30": replace(FULL["toy"], name="toy_lr30", lr_grid={"adam": (30.0,)}, sgd=False),
    "full_b16": replace(
        FULL["full"],
        name="full_b16",
        setup=LLMSetup(head_only=False, prompts_per_step=2),
        lr_scales=(0.25,),
    ),
}
"""Reported, never part of a verdict. ``toy_lr30`` (post hoc): the toy's Adam arms at the next lr of its grid,
where GRPO (A) crashes more reliably than at the protocol's lr (3/5 seeds there). ``full_b16``: the first
``full`` regime, 16 completions per step, where nothing learned (lower-lr GRPO (A) +0.002 ± 0.012 over the
base); ``full`` now uses the paper's aggressive batch, 96 completions per step (12 prompts x G = 8), where a
small lr learned in a pilot (+0.03 to +0.06 in 30 steps at lr 3e-5 on two tuning seeds) — the issue's "change
the batch until conservative training improves"."""

_TINY_LLM = LLMSetup(
    steps=2, group_size=4, prompts_per_step=1, eval_every=0, num_test_problems=4,
    num_train_problems=64, max_completion_length=16,
)  # fmt: skip

QUICK: dict[str, RegimeConfig] = {
    "toy": replace(
        FULL["toy"],
        setup=ToySetup(
            task=replace(TOY_TASK, n_prompts=4, n_random=4),
            steps=6,
            prompts_per_step=2,
            group_size=4,
            cue_weight=3.0,
            shift_samples=400,
        ),
        lr_grid={"adam": (10.0,), "sgd": (30.0,)},
        tuning_seeds=(1000,),
        seeds=(0, 1),
        percentiles=(95.0,),
        conservative=(0.2, 2),
    ),
    "full": replace(
        FULL["full"], setup=_TINY_LLM, lr_grid={"adam": (1e-3,), "sgd": (0.1,)}, seeds=(0,)
    ),
    "head": replace(
        FULL["head"],
        setup=replace(_TINY_LLM, head_only=True),
        lr_grid={"adam": (1e-1,), "sgd": (1.0,)},
        seeds=(0,),
    ),
}
"""The smoke configuration (toy: seconds; LLM regimes: a few runs of 2 steps)."""


def run_study(
    configs: dict[str, RegimeConfig], regimes: Sequence[str], out: Path, quick: bool = False
) -> Path:
    """Run the regimes in order and write the report; returns its path."""
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[study {time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    results: dict[str, RegimeResult] = {}
    path = out / "report.md"
    for name in regimes:
        results[name] = run_regime(configs[name], out, say)
        say(f"{name}: done (lr {results[name].lr})")
        pending = [r for r in regimes if r not in results]
        status = f"**INCOMPLETE**: regimes {', '.join(pending)} still running. " if pending else ""
        path = write_report(results, out, _header(quick, status, regimes, start), CUTS)
    return path


def _header(quick: bool, status: str, regimes: Sequence[str], start: float) -> str:
    return (
        "# Mechanism study: does curvature-aware masking control the policy shift, and when?\n\n"
        + ("**QUICK SMOKE RUN** (micro configuration, not the study's results). " if quick else "")
        + status
        + (
            f"Regimes {', '.join(regimes)}; this invocation took {time.perf_counter() - start:.0f} s on "
            "one core of a shared 2-core machine (runs saved under raw/ by earlier invocations are "
            "reused). Arms, protocol and criteria: `capo_app.experiments.study` and the modules it names."
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module doc)."""
    parser = argparse.ArgumentParser(
        prog="python -m capo_app.experiments.study", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--out", default="outputs/mechanism", help="output folder")
    parser.add_argument("--quick", action="store_true", help="smoke configuration (< 60 s)")
    parser.add_argument("--regimes", default=None, help="comma-separated subset of toy,head,full")
    parser.add_argument(
        "--adam-only",
        action="store_true",
        help="skip the SGD arms (a first pass: a later run without it adds them, reusing saved runs)",
    )
    args = parser.parse_args(argv)
    configs = QUICK if args.quick else {**FULL, **SUPPLEMENTARY}
    if args.adam_only:
        configs = {name: replace(cfg, sgd=False) for name, cfg in configs.items()}
    regimes = (args.regimes or ("toy" if args.quick else ",".join(configs))).split(",")
    unknown = [r for r in regimes if r not in configs]
    if unknown:
        parser.error(f"unknown regime(s) {', '.join(unknown)}; choose from {', '.join(configs)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    path = run_study(configs, regimes, Path(args.out), quick=args.quick)
    print(f"report: {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
