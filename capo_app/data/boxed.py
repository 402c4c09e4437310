r"""Find the ``\boxed{...}`` answers of a LaTeX text (balanced braces, the last one wins)."""

from __future__ import annotations

_BOXED_COMMANDS = ("\\boxed", "\\fbox")


def boxed_contents(text: str) -> list[str]:
    r"""Return the contents of every ``\boxed{...}`` (or ``\fbox{...}``) in ``text``, in order.

    Braces are matched with a counter, so nested groups such as ``\boxed{\frac{1}{2}}`` come back whole.
    A box whose closing brace is missing (a truncated completion) is ignored.

    Args:
        text: Any text, typically a model completion or a reference solution.

    Returns:
        The list of box contents, possibly empty.
    """
    found: list[str] = []
    position = 0
    while True:
        starts = [(text.find(cmd, position), cmd) for cmd in _BOXED_COMMANDS]
        starts = [(index, cmd) for index, cmd in starts if index >= 0]
        if not starts:
            return found
        index, command = min(starts)
        cursor = index + len(command)
        while cursor < len(text) and text[cursor] == " ":
            cursor += 1
        if cursor >= len(text) or text[cursor] != "{":
            position = index + len(command)
            continue
        depth = 0
        for end in range(cursor, len(text)):
            if text[end] == "{":
                depth += 1
            elif text[end] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[cursor + 1 : end].strip())
                    position = end + 1
                    break
        else:
            return found


def last_boxed(text: str) -> str | None:
    r"""Return the contents of the last ``\boxed{...}`` in ``text``, or None when there is none.

    Args:
        text: Any text, typically a model completion or a reference solution.

    Returns:
        The stripped contents of the last complete box, or None.
    """
    contents = boxed_contents(text)
    return contents[-1] if contents else None
