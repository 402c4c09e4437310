"""``capo eval``: pass@1 of a model on the paper's benchmarks or local files.

A model trained by ``capo train`` is prompted as it was trained (its folder holds the prompt format), and its
results go into its folder (``MODEL/capo_eval``) unless ``--output`` says otherwise; an earlier result is never
overwritten without ``--overwrite``. Heavy imports (datasets, transformers, math-verify) happen in the handler, so
registering the sub-command keeps ``capo --help`` light.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capo_app.checks import UsageError, check_evaluation, check_writable_dir
from capo_app.evaluation.registry import BENCHMARKS
from capo_app.run_folder import EVAL_DIR, EVAL_RESULTS_FILE, add_run_files

if TYPE_CHECKING:
    from capo_app.data.prompts import PromptFormat

_SETTINGS = ("model", "benchmarks", "max_new_tokens", "n_samples", "temperature", "top_p", "backend",
             "seed", "limit")  # fmt: skip


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``capo eval`` on the ``capo`` sub-parsers and set its handler.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.

    Returns:
        The ``eval`` sub-parser.
    """
    names = ", ".join(b.name for b in BENCHMARKS.values())
    parser = subparsers.add_parser(
        "eval",
        help="pass@1 with math-verify on benchmarks or local files",
        description=f"pass@1 with math-verify. Benchmarks by name ({names}) or local JSON/JSONL/Parquet/CSV files.",
    )
    parser.add_argument(
        "--model", required=True, help="model folder (or hub id) with its tokenizer"
    )
    parser.add_argument("--benchmarks", nargs="+", required=True, metavar="NAME_OR_FILE")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--n-samples", type=int, default=1, help="samples per problem")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate call (hf)")
    parser.add_argument(
        "--limit", type=int, default=None, help="first N problems of each benchmark"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output",
        default=None,
        help=f"folder for {EVAL_RESULTS_FILE} (default: MODEL/{EVAL_DIR} for a local model, "
        f"./{EVAL_DIR}/ORG--NAME for a hub id)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace the earlier results of these benchmarks in {EVAL_RESULTS_FILE} (others are kept)",
    )
    parser.add_argument(
        "--prompt-template",
        default=None,
        help="prompt text in which {question} is replaced; default: as the model was trained (capo train "
        "writes it into its output), else the boxed instruction (or the tiny model's frame)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="plain-text prompts instead of the chat template"
    )
    parser.add_argument("--system-prompt", default=None)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(handler=run_eval)
    return parser


def prompt_format(args: argparse.Namespace) -> tuple[PromptFormat, str]:
    """``(format, where it came from)``: as trained when the model folder says, else from the options."""
    from capo_app.data.prompts import (
        MATH_PROMPT,
        TINY_CHAT_PROMPT,
        PromptFormat,
        load_prompt_format,
        prompt_format_file,
    )
    from capo_app.tiny.build import is_tiny_model_dir

    saved = load_prompt_format(args.model)
    custom = args.prompt_template is not None or args.plain or args.system_prompt is not None
    if saved is not None and not custom:
        return saved, f"as trained ({prompt_format_file(args.model)})"
    default = saved or (TINY_CHAT_PROMPT if is_tiny_model_dir(args.model) else MATH_PROMPT)
    template = args.prompt_template or default.template
    if args.plain:
        return PromptFormat(conversational=False, template=template), "options"
    if (
        args.system_prompt is None and not default.conversational
    ):  # a new template keeps plain prompts plain
        return PromptFormat(conversational=False, template=template), "options"
    system = default.system_prompt if args.system_prompt is None else args.system_prompt
    return PromptFormat(conversational=True, template=template, system_prompt=system), "options"


def output_dir(args: argparse.Namespace) -> Path:
    """Where the results go; refuses to replace an earlier result of the same benchmark unless ``--overwrite``.

    Results accumulate by benchmark key in one file: another benchmark's earlier result is kept, and
    ``--overwrite`` replaces only the keys being evaluated.
    """
    from capo_app.evaluation.pass_at_1 import read_results
    from capo_app.evaluation.registry import resolve_benchmark, unique_names

    if args.output is not None:
        folder = Path(args.output)
    elif Path(args.model).is_dir():
        folder = Path(args.model) / EVAL_DIR
    else:
        folder = Path(EVAL_DIR) / args.model.replace("/", "--")
    keys = unique_names([resolve_benchmark(b) for b in args.benchmarks])
    earlier = sorted(set(keys) & set(read_results(folder)["benchmarks"]))
    if earlier and not args.overwrite:
        raise UsageError(
            f"{folder / EVAL_RESULTS_FILE} holds an earlier evaluation of {', '.join(earlier)}; pass --overwrite to replace "
            "those results (the other benchmarks' stay) or --output DIR for another folder"
        )
    return folder


def run_eval(args: argparse.Namespace) -> int:
    """Run ``capo eval``; returns the exit code.

    Raises:
        UsageError: On bad options, a model that cannot be loaded, or unreadable benchmark files.
    """
    check_evaluation(args)
    from capo_app.data.loading import check_local_columns

    for (
        benchmark
    ) in args.benchmarks:  # a file without a question column: one line before any weights load
        check_local_columns(benchmark)
    folder = output_dir(args)
    check_writable_dir(folder, "--output")
    fmt, fmt_source = prompt_format(args)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from capo_app.evaluation.pass_at_1 import evaluate_benchmarks, format_table, write_results

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = (
            AutoModelForCausalLM.from_pretrained(args.model) if args.backend == "hf" else args.model
        )
    except (OSError, ValueError) as error:  # missing files, or a name that is no hub id
        raise UsageError(
            f"cannot load model {args.model}: {str(error).strip().splitlines()[0]}"
        ) from error
    results = evaluate_benchmarks(
        model, tokenizer, args.benchmarks, prompt_format=fmt, backend=args.backend,
        max_new_tokens=args.max_new_tokens, n_samples=args.n_samples, temperature=args.temperature,
        top_p=args.top_p, batch_size=args.batch_size, limit=args.limit, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip
    settings: dict[str, Any] = {key: getattr(args, key) for key in _SETTINGS}
    settings["prompt_format"] = {
        "conversational": fmt.conversational,
        "template": fmt.template,
        "system_prompt": fmt.system_prompt,
        "source": fmt_source,
    }
    path = write_results(results, folder, settings)
    if Path(args.model).is_dir() and Path(args.model).resolve() in path.resolve().parents:
        add_run_files(args.model, [path])  # in a run's folder: the run's own file from now on
    print(f"prompt format: {fmt_source}")
    print(format_table(results))
    print(f"wrote {path}")
    return 0
