"""Prompts: retrieve context for each question and build the chat prompt GRPO samples from.

Each dataset row carries what the rewards need as columns (TRL passes them to reward functions as keyword
arguments): `prompt` (chat messages), `question`, `answer`, `aliases`, `source`, `context` (retrieved chunk
texts), `context_ids`, `context_sources` and `examples` (the worked examples' replies).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from toolkit.data import QA, Dataset, load_dataset
from toolkit.index import build_index
from toolkit.index_store import Index, SyncCounts
from toolkit.models import ModelError
from toolkit.recipe import PromptSection, Recipe

logger = logging.getLogger(__name__)
_PLACEHOLDER = re.compile(r"\{(context|question)\}")


def format_context(chunks: list[str]) -> str:
    return "\n".join(f"[{i}] {text}" for i, text in enumerate(chunks, 1))


def build_messages(prompt: PromptSection, question: str, context: list[str]) -> list[dict]:
    """System message (none for a blank `prompt.system`), few-shot turns, then the question with its context."""
    # A blank system prompt means no system message (the recipe allows it as a choice), not an empty one: a
    # template that refuses a system turn (Gemma's) failed on it, and others rendered an empty turn instead of
    # their own default.
    messages = [{"role": "system", "content": prompt.system}] if prompt.system.strip() else []
    for example in prompt.examples:
        messages.append({"role": "user", "content": _user(prompt, example.question, example.context)})
        messages.append({"role": "assistant", "content": example.reply})
    messages.append({"role": "user", "content": _user(prompt, question, context)})
    return messages


def _user(prompt: PromptSection, question: str, context: list[str]) -> str:
    # One pass over the template, not str.format or chained replace: documents and questions may contain braces,
    # even the text "{question}", and must come out verbatim.
    values = {"context": format_context(context), "question": question}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], prompt.user_template)


def build_rows(questions: list[QA], index: Index, prompt: PromptSection, top_k: int) -> list[dict]:
    hits = index.search([q.question for q in questions], top_k)
    rows = []
    for qa, found in zip(questions, hits, strict=True):
        context = [h.text for h in found]
        rows.append(
            {
                "prompt": build_messages(prompt, qa.question, context),
                "question": qa.question,
                "answer": qa.answer,
                "aliases": list(qa.aliases),
                "source": qa.source,
                "context": context,
                "context_ids": [h.id for h in found],
                "context_sources": [h.source for h in found],
                "examples": [example.reply for example in prompt.examples],
            }
        )
    return rows


@dataclass
class Splits:
    """A recipe's data made ready for training and evaluation: the questions each split uses (after
    `data.max_train_questions` and `eval.limit`), the synced index, and one prompt row per question."""

    dataset: Dataset
    index: Index
    counts: SyncCounts  # what the index sync added, updated and deleted
    train_qa: list[QA]
    eval_qa: list[QA]
    train: list[dict]
    eval: list[dict]


def build_splits(recipe: Recipe) -> Splits:
    """Load the recipe's data, sync its index with the corpus and retrieve context for every question: the steps
    `toolkit.run` and the benchmarks share, so they all train on the same prompts."""
    dataset = load_dataset(recipe.data)  # documents; question files plus questions generated from CSV rows
    train_qa = dataset.train[: recipe.data.max_train_questions]
    eval_qa = dataset.eval[: recipe.eval.limit]
    index, counts = build_index(recipe, dataset.documents)
    top_k = recipe.retrieval.top_k
    return Splits(dataset, index, counts, train_qa, eval_qa, build_rows(train_qa, index, recipe.prompt, top_k),
                  build_rows(eval_qa, index, recipe.prompt, top_k))


def reply_prefix(tokenizer) -> str:
    """Text the chat template writes at the start of the assistant's reply, which the model then continues and
    which is therefore missing from every sampled completion: DeepSeek-R1's template ends the generation prompt
    with "<think>\n". Only an opening <think> is recognised; "" for templates that leave the reply to the model."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "?"}], add_generation_prompt=True,
                                             tokenize=False)
    return opened_reply(rendered)


def opened_reply(rendered: str) -> str:
    """The reply opening at the end of a rendered generation prompt (a trailing "<think>", with any whitespace
    after it), or ""; `reply_prefix` for templates rendered elsewhere (llama.cpp's, for an exported GGUF)."""
    start = rendered.rfind("<think>")
    return rendered[start:] if start != -1 and not rendered[start:].strip().removeprefix("<think>") else ""


def open_think(tokenizer) -> None:
    """Make the chat template end every generation prompt with "<think>" (the recipe's `prompt.open_think`), in
    place. Appended to the template itself, not to each prompt, so that TRL's sampling, the evaluation, the
    saved tokenizer and an exported GGUF all render the same prompt. A template that opens the reply already
    is left alone."""
    if tokenizer.chat_template is None:
        raise ModelError("prompt.open_think: the model's tokenizer has no chat template to open the reply in")
    if not reply_prefix(tokenizer):
        tokenizer.chat_template += "{% if add_generation_prompt %}<think>{% endif %}"


def prepare_replies(tokenizer, rows: list[dict], recipe_prompt: PromptSection) -> str:
    """The recipe's reply opening on the tokenizer, then each row's `completion_prefix` (`add_reply_prefix`)."""
    if recipe_prompt.open_think:
        open_think(tokenizer)
    check_template_takes(tokenizer, recipe_prompt)
    if rows:
        warn_if_examples_cut(tokenizer, recipe_prompt)
    return add_reply_prefix(rows, tokenizer)


def check_template_takes(tokenizer, prompt: PromptSection) -> None:
    """Render the recipe's layout of messages once: a chat template that refuses it (Gemma's raises on a system
    turn) failed at the first real prompt, after the model loaded, as a jinja traceback."""
    from jinja2 import TemplateError

    if getattr(tokenizer, "chat_template", None) is None:
        return
    try:
        tokenizer.apply_chat_template(build_messages(prompt, "?", []), add_generation_prompt=True, tokenize=False)
    except TemplateError as err:
        hint = ""
        if prompt.system.strip() and "system" in str(err).lower():
            hint = "; set prompt.system to '' (no system message) and put its instructions in prompt.user_template"
        raise ModelError(f"prompt: the model's chat template refuses the recipe's messages ({err}){hint}") from None


def warn_if_examples_cut(tokenizer, prompt: PromptSection) -> list[int]:
    """Warn about (and return the numbers of) worked examples whose reply the chat template does not render whole.
    DeepSeek-R1's template, and Qwen3's for earlier turns, drop everything up to "</think>" from an assistant turn:
    the model is then shown the example's answer without the think block the strict format asks for."""
    if not prompt.examples or getattr(tokenizer, "chat_template", None) is None:
        return []
    rendered = tokenizer.apply_chat_template(build_messages(prompt, "?", []), add_generation_prompt=True,
                                             tokenize=False)
    cut = [i for i, example in enumerate(prompt.examples, 1) if example.reply.strip() not in rendered]
    if cut:
        logger.warning(
            "the chat template does not show the whole reply of worked example %s (a template that drops the "
            "<think> block of earlier assistant turns, as DeepSeek-R1's does): the model sees a shorter example than "
            "the recipe's; put the example in prompt.system to show it whole", ", ".join(map(str, cut)))
    return cut


def add_reply_prefix(rows: list[dict], tokenizer) -> str:
    """Give every row a `completion_prefix` column when the template opens the reply itself: the rewards and the
    evaluation put it back in front, so a reply that closes </think> and answers still has the full format."""
    prefix = reply_prefix(tokenizer)
    if prefix:
        logger.info("the chat template opens every reply with %r: scored as part of the completion", prefix)
        for row in rows:
            row["completion_prefix"] = prefix
    return prefix


def prompt_length(tokenizer, row: dict) -> int:
    """Tokens in a row's chat prompt, generation prompt included."""
    return len(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"])


def warn_over_context(tokenizer, rows: list[dict], new_tokens: int, limit: int | None, what: str) -> int:
    """Warn when a prompt plus `new_tokens` (`what` names both: "eval prompts + eval.max_new_tokens") is longer
    than the model's context `limit`. Past it a model with rotary positions reads positions it never saw and one
    with learned positions fails outright; long retrieved chunks times top_k are the usual cause. Returns how many."""
    if not limit:
        return 0
    over = [(n, row) for row in rows if (n := prompt_length(tokenizer, row)) + new_tokens > limit]
    if over:
        longest, row = max(over, key=lambda pair: pair[0])
        question = row["question"] if len(row["question"]) <= 60 else row["question"][:60].rstrip() + "…"
        logger.warning("%d of %d %s (%d) are longer than the model's context of %d tokens; the longest prompt "
                       "(%d tokens) asks %r. Lower retrieval.top_k or retrieval.chunk_size", len(over), len(rows),
                       what, new_tokens, limit, longest, question)
    return len(over)
