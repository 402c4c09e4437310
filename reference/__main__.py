"""``python -m reference``: the dense reference agrees with torch.func autodiff on the toy MDPs.

Prints one row per comparison (see :mod:`reference.agreement`) and exits 0 iff every one agrees to
``AGREEMENT_RTOL`` relative to the largest autodiff entry. ``--all`` runs every case of
``toy_mdps.CASES`` instead of a representative few.
"""

from __future__ import annotations

import sys
import unicodedata

from capo_app.boundary import OneLineParser, guarded
from reference.agreement import AGREEMENT_RTOL, compare_case
from toy_mdps import CASES, case_by_id

DEFAULT_CASES = (
    "bandit-3ctx-4arm-d3",
    "token-K4-T2-sum-d5-top2",
    "random-S5-K3-T4-d4",
    "random-S5-K3-T4-disc0.9-d4",
)
"""A contextual bandit, a top-k token MDP, a finite-horizon and a discounted random MDP."""


def _pad(text: str, width: int) -> str:
    """Left-justify ``text`` to ``width`` display columns (combining marks such as g̃'s take none)."""
    shown = sum(not unicodedata.combining(c) for c in text)
    return text + " " * max(0, width - shown)


def main(argv: list[str] | None = None) -> int:
    """Run the agreement check and print the table.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        0 if every comparison agrees, 1 otherwise.
    """
    return guarded("python -m reference", lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    parser = OneLineParser(prog="python -m reference", description=__doc__)
    parser.add_argument("--all", action="store_true", help="run every case of toy_mdps.CASES")
    args = parser.parse_args(argv)

    cases = CASES if args.all else [case_by_id(c) for c in DEFAULT_CASES]
    print("CAPO dense reference (NumPy float64) vs torch.func autodiff on exact toy MDPs")
    print("  g̃ = Σ w Σ_a π A (e_a−π)⊗h          vs  ∇J and ∇L at W_old (policy gradient theorem)")
    print(
        "  H̃ = Σ w Σ_a π A [(uuᵀ−F)⊗hhᵀ]      vs  ∇²L at W_old (Hessian of the surrogate, Lemma C.1)"
    )
    print("  F̃ = Σ ν F(s)⊗hhᵀ                   vs  ∇²D̄_KL(W_old‖W) at W_old (eq 6)")
    print(
        "  w = γ^t d_t(s) per (t, s) (finite) or d_γ(s) (discounted); ν = w summed over t, normalised"
    )
    print(
        f"  rel err = max|ref − autodiff| / max|autodiff|; agree iff rel err <= {AGREEMENT_RTOL:g}"
    )
    print()
    rows = [row for case in cases for row in compare_case(case)]
    width = max(len("case"), *(len(r.case) for r in rows))
    header = (
        f"{'case':<{width}}  {'quantity':<10}  {'shape':<7}  {'max abs err':>11}  {'max rel err':>11}"
        "  verdict"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        shape = "x".join(str(n) for n in r.shape)
        verdict = "agree" if r.ok else "DISAGREE"
        print(
            f"{r.case:<{width}}  {_pad(r.quantity, 10)}  {shape:<7}  {r.max_abs:>11.2e}  {r.max_rel:>11.2e}"
            f"  {verdict}"
        )
    bad = sum(not r.ok for r in rows)
    print("-" * len(header))
    if bad:
        print(f"FAIL: {bad} of {len(rows)} comparisons disagree")
        return 1
    print(f"OK: all {len(rows)} comparisons over {len(cases)} cases agree to {AGREEMENT_RTOL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
