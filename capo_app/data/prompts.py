"""How a question becomes a TRL prompt: plain text or a conversation (a list of chat messages).

TRL 1.16's ``GRPOTrainer`` accepts both: a plain ``str`` prompt is tokenised as is, a conversation is rendered
with the tokenizer's chat template (``add_generation_prompt=True``) and completions come back as
``[{"role": "assistant", "content": ...}]``. The rewards in :mod:`capo_app.rewards` accept either form.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from capo_app.checks import UsageError
from capo_app.run_folder import PROMPT_FILE

#: The instruction Qwen2.5-Math is trained with; appended to MATH-style questions.
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

#: The plain-text frame of the embedded tiny task. The tiny tokenizer's chat template renders a one-user-message
#: conversation to exactly this text, so both prompt formats give the tiny model identical token ids.
TINY_PLAIN_TEMPLATE = "Q: {question}\nA: "


@dataclass(frozen=True)
class PromptFormat:
    r"""How to turn a question into a prompt.

    Attributes:
        conversational: If True the prompt is ``[{"role": "user", "content": ...}]`` (preceded by a system
            message when ``system_prompt`` is set); otherwise a plain string.
        template: Text in which ``{question}`` is replaced by the question (plain substitution, so other
            braces such as ``\boxed{}`` stay as they are): the user message content (conversational) or the
            whole prompt text (plain).
        system_prompt: Optional system message (conversational prompts only).
    """

    conversational: bool = True
    template: str = "{question}\n" + BOXED_INSTRUCTION
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        """Check that the template has a ``{question}`` field."""
        if "{question}" not in self.template:
            raise ValueError(f"template must contain '{{question}}', got {self.template!r}")
        if self.system_prompt is not None and not self.conversational:
            raise ValueError("system_prompt needs conversational=True")

    def render(self, question: str) -> str | list[dict[str, str]]:
        """Return the prompt for ``question`` (a string or a list of chat messages)."""
        content = self.template.replace("{question}", question)
        if not self.conversational:
            return content
        messages = (
            []
            if self.system_prompt is None
            else [{"role": "system", "content": self.system_prompt}]
        )
        messages.append({"role": "user", "content": content})
        return messages


#: The default for MATH-style hub datasets and real chat models.
MATH_PROMPT = PromptFormat()
#: The default for the synthetic task and the embedded tiny model: plain ``"Q: ...\nA: "`` text.
TINY_PROMPT = PromptFormat(conversational=False, template=TINY_PLAIN_TEMPLATE)
#: The same text as :data:`TINY_PROMPT`, as a conversation rendered by the tiny tokenizer's chat template.
TINY_CHAT_PROMPT = PromptFormat(conversational=True, template="{question}")


def save_prompt_format(prompt_format: PromptFormat, folder: str | os.PathLike[str]) -> Path:
    """Write how a model was prompted into its folder (:data:`capo_app.run_folder.PROMPT_FILE`)."""
    path = Path(folder) / PROMPT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(prompt_format), indent=2) + "\n")
    return path


def prompt_format_file(folder: str | os.PathLike[str]) -> Path:
    """Where a model folder's prompt format is: its own file, or its run's for a checkpoint (``RUN/checkpoint-N``)."""
    path = Path(folder) / PROMPT_FILE
    if not path.is_file() and Path(folder).name.startswith("checkpoint-"):
        return Path(folder).parent / PROMPT_FILE
    return path


def load_prompt_format(folder: str | os.PathLike[str]) -> PromptFormat | None:
    """The prompt format saved in a model folder by :func:`save_prompt_format`, or None when there is none.

    A checkpoint folder (``RUN/checkpoint-N``) has the format of its run: ``RUN``'s file is read.

    Raises:
        UsageError: When the file is there but unreadable or malformed (naming the file).
    """
    path = prompt_format_file(folder)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: not a readable prompt format ({error})") from error
    if not isinstance(saved, dict) or set(saved) - {"conversational", "template", "system_prompt"}:
        raise UsageError(f"{path}: expected an object with conversational, template, system_prompt")
    if not (
        isinstance(saved.get("conversational", True), bool)
        and isinstance(saved.get("template", ""), str)
        and isinstance(saved.get("system_prompt"), str | None)
    ):
        raise UsageError(
            f"{path}: conversational must be true/false, template a string, system_prompt a string or null"
        )
    try:
        return PromptFormat(**saved)
    except ValueError as error:
        raise UsageError(f"{path}: {error}") from error


def completion_text(completion: Any) -> str:
    """Return the text of one TRL completion, plain (``str``) or conversational (list of messages).

    For a conversation the content of the last assistant message is used (TRL 1.16 passes a list holding
    one assistant message).

    Args:
        completion: A string, or a list of ``{"role", "content"}`` dicts.

    Returns:
        The completion's text.

    Raises:
        TypeError: If ``completion`` is neither form.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and all(isinstance(m, dict) for m in completion):
        contents = [
            m.get("content") for m in completion if m.get("role", "assistant") == "assistant"
        ]
        texts = [c for c in contents if isinstance(c, str)]
        return texts[-1] if texts else ""
    raise TypeError(
        f"a completion must be a str or a list of chat messages, got {type(completion).__name__}"
    )
