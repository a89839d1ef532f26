"""Where a completion's text is, and its answer and think blocks: the shapes TRL hands the rewards (a string, or a
chat-form list of messages), the reply prefix a chat template adds, and a dataset column's value for one sample.

Everything here is pure and never raises on model text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


# ------------------------------------------------------------------------------------------------- completions
def completion_text(completion: Any) -> str:
    """Text of one completion: a string as is, else the last message's content."""
    if isinstance(completion, str):
        return completion
    if type(completion) is list and completion and type(completion[-1]) is dict:  # TRL's chat form, fast path
        content = completion[-1].get("content")
        if type(content) is str:
            return content
    if isinstance(completion, (list, tuple)):
        completion = completion[-1] if completion else ""
        if isinstance(completion, str):
            return completion
    if isinstance(completion, dict):
        content = completion.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # content given as typed parts
            return "".join(p["text"] for p in content
                           if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def with_prefix(completion: Any, prefix: str) -> Any:
    """The completion with ``prefix`` (text the chat template put at the start of the reply) in front, in the
    completion's own shape: a string, or a conversational list whose first message's content gets it."""
    if not prefix:
        return completion
    if isinstance(completion, str):
        return prefix + completion
    if isinstance(completion, list) and completion and isinstance(completion[0], dict):
        first = dict(completion[0], content=prefix + str(completion[0].get("content") or ""))
        return [first, *completion[1:]]
    return completion


def row(column: Sequence[Any] | None, i: int) -> Any:
    """Value of a dataset column for sample i; a short or absent column means "does not apply"."""
    return column[i] if column is not None and i < len(column) else None


# ------------------------------------------------------------------------------------------------ extraction
def extract_answer(text: str) -> str | None:
    """Content of the first ``<answer>`` block after the first ``</think>`` (anywhere when there is no
    ``</think>``); else what follows the last ``</think>``. An answer inside the think block does not count."""
    # str.find, not a regex: a lazy regex goes quadratic on many unclosed tags.
    think_end = text.find("</think>")
    start = text.find("<answer>", think_end if think_end != -1 else 0)
    if start != -1:
        end = text.find("</answer>", start)
        if end != -1:
            return text[start + len("<answer>"):end].strip()
    if think_end == -1:
        return None
    return text.rpartition("</think>")[2].strip() or None


def think_text(text: str) -> str:
    """Content of the first ``<think>…</think>`` block, or ""."""
    start = text.find("<think>")
    end = text.find("</think>", start) if start != -1 else -1
    return text[start + len("<think>"):end] if end != -1 else ""
