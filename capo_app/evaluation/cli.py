"""``capo eval``: pass@1 of a model on the paper's benchmarks or local files.

Heavy imports (datasets, transformers, math-verify) happen in the handler, so registering the sub-command
keeps ``capo --help`` light.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capo_app.evaluation.registry import BENCHMARKS

if TYPE_CHECKING:
    from capo_app.data.prompts import PromptFormat


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
    parser.add_argument("--output", default="capo_eval", help="folder for eval_results.json")
    parser.add_argument(
        "--prompt-template",
        default=None,
        help="prompt text in which {question} is replaced; default: the boxed instruction (or the tiny model's frame)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="plain-text prompts instead of the chat template"
    )
    parser.add_argument("--system-prompt", default=None)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(handler=run_eval)
    return parser


def _prompt_format(args: argparse.Namespace) -> PromptFormat:
    from capo_app.data.prompts import MATH_PROMPT, TINY_CHAT_PROMPT, PromptFormat
    from capo_app.tiny.build import is_tiny_model_dir

    default = TINY_CHAT_PROMPT if is_tiny_model_dir(args.model) else MATH_PROMPT
    template = args.prompt_template or default.template
    if args.plain:
        return PromptFormat(conversational=False, template=template)
    return PromptFormat(conversational=True, template=template, system_prompt=args.system_prompt)


def run_eval(args: argparse.Namespace) -> int:
    """Run ``capo eval``; returns the exit code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from capo_app.evaluation.pass_at_1 import evaluate_benchmarks, format_table, write_results

    prompt_format = _prompt_format(args)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model) if args.backend == "hf" else args.model
    results = evaluate_benchmarks(
        model,
        tokenizer,
        args.benchmarks,
        prompt_format=prompt_format,
        backend=args.backend,
        max_new_tokens=args.max_new_tokens,
        n_samples=args.n_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        limit=args.limit,
        seed=args.seed,
        progress=not args.no_progress,
    )
    settings = {
        key: getattr(args, key)
        for key in (
            "model",
            "benchmarks",
            "max_new_tokens",
            "n_samples",
            "temperature",
            "top_p",
            "backend",
            "seed",
            "limit",
        )
    }
    settings["prompt_format"] = {
        "conversational": prompt_format.conversational,
        "template": prompt_format.template,
        "system_prompt": prompt_format.system_prompt,
    }
    path = write_results(results, Path(args.output), settings)
    print(format_table(results))
    print(f"wrote {path}")
    return 0
