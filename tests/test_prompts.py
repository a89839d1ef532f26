"""Tests for toolkit.prompts: chat messages with numbered context, and dataset rows built from retrieval."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.chunking import chunk_documents
from toolkit.data import QA, Document
from toolkit.index_store import Index
from toolkit.models import resolve_embedder
from toolkit.prompts import (
    add_reply_prefix,
    build_messages,
    build_rows,
    build_splits,
    format_context,
    open_think,
    prepare_replies,
    prompt_length,
    reply_prefix,
    warn_if_examples_cut,
    warn_over_context,
)
from toolkit.recipe import FewShotExample, PromptSection, load_recipe

ROOT = Path(__file__).resolve().parents[1]
EMBEDDER = "packaged:all-minilm-l6-v2"

EXAMPLE = FewShotExample(
    question="Which grape is Chianti Classico mainly made from?",
    context=["Chianti Classico must contain at least 80% Sangiovese."],
    reply="<think>The context says Sangiovese.</think><answer>Sangiovese</answer>",
)
PROMPT = PromptSection(system="Answer from the context.", examples=[EXAMPLE])

DOCS = [
    Document("barolo", "Barolo is a red wine from Piedmont made entirely from Nebbiolo."),
    Document("rioja", "Rioja is a Spanish region whose reds are made mostly from Tempranillo."),
    Document("sancerre", "Sancerre is a Loire Valley appellation known for Sauvignon Blanc."),
    Document("tokaji", "Tokaji Aszú is a sweet Hungarian wine made from botrytised Furmint grapes."),
]
QUESTIONS = [
    QA("Which grape is Barolo made from?", "Nebbiolo", ["Spanna"], "barolo"),
    QA("Which country is Tokaji Aszú from?", "Hungary", [], "tokaji"),
    QA("Which grape dominates red Rioja?", "Tempranillo"),
]


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Index:
    index = Index(tmp_path_factory.mktemp("index"), "prompts", EMBEDDER, resolve_embedder(EMBEDDER))
    index.sync(chunk_documents(DOCS, index.embedder.tokenizer, 128, 16))
    return index


def test_format_context_numbers_chunks():
    assert format_context(["first", "second"]) == "[1] first\n[2] second"
    assert format_context([]) == ""


def test_build_messages_order_and_content():
    messages = build_messages(PROMPT, "Which grape makes Barolo?", ["Barolo is Nebbiolo.", "Rioja is Tempranillo."])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "Answer from the context."
    assert messages[1]["content"] == (
        "Context:\n[1] Chianti Classico must contain at least 80% Sangiovese.\n\n"
        "Question: Which grape is Chianti Classico mainly made from?"
    )
    assert messages[2]["content"] == EXAMPLE.reply
    assert messages[3]["content"] == (
        "Context:\n[1] Barolo is Nebbiolo.\n[2] Rioja is Tempranillo.\n\nQuestion: Which grape makes Barolo?"
    )


def test_build_messages_without_examples_and_custom_template():
    prompt = PromptSection(system="S", user_template="Q: {question}\n---\n{context}\n---\nQ again: {question}")
    assert build_messages(prompt, "why?", ["a"]) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q: why?\n---\n[1] a\n---\nQ again: why?"},
    ]


def test_braces_stay_literal():
    context = ["A {x} placeholder, a {0} and an empty {} pair.", "JSON: {\"grape\": \"Nebbiolo\"}"]
    question = "What does {y} mean in {context}?"
    [_, user] = build_messages(PromptSection(system="{system}"), question, context)
    assert user["content"] == f"Context:\n[1] {context[0]}\n[2] {context[1]}\n\nQuestion: {question}"


def test_question_placeholder_inside_a_document_stays_literal():
    context = ["Templates write {question} where the question goes."]
    [_, user] = build_messages(PromptSection(system="S"), "Which grape?", context)
    assert user["content"] == f"Context:\n[1] {context[0]}\n\nQuestion: Which grape?"


def test_build_rows(index):
    rows = build_rows(QUESTIONS, index, PROMPT, top_k=2)
    assert len(rows) == len(QUESTIONS)
    stored = index.collection.get(include=["documents", "metadatas"])
    text_of = dict(zip(stored["ids"], stored["documents"], strict=True))
    source_of = {i: m["source"] for i, m in zip(stored["ids"], stored["metadatas"], strict=True)}
    for row, qa in zip(rows, QUESTIONS, strict=True):
        assert set(row) == {
            "prompt", "question", "answer", "aliases", "source", "context", "context_ids", "context_sources",
            "examples",
        }
        assert row["examples"] == [example.reply for example in PROMPT.examples]
        assert (row["question"], row["answer"], row["aliases"], row["source"]) == (
            qa.question, qa.answer, qa.aliases, qa.source
        )
        assert row["aliases"] is not qa.aliases
        assert len(row["context"]) == len(row["context_ids"]) == len(row["context_sources"]) == 2
        assert row["context"] == [text_of[i] for i in row["context_ids"]]
        assert row["context_sources"] == [source_of[i] for i in row["context_ids"]]
        assert row["prompt"] == build_messages(PROMPT, qa.question, row["context"])
        assert f"[1] {row['context'][0]}\n[2] {row['context'][1]}" in row["prompt"][-1]["content"]
    assert [row["context_sources"][0] for row in rows] == ["barolo", "tokaji", "rioja"]


def test_build_rows_with_the_wine_recipe_prompt(index):
    recipe = load_recipe(ROOT / "recipes" / "wine.yaml")
    [row] = build_rows(QUESTIONS[:1], index, recipe.prompt, recipe.retrieval.top_k)
    assert [m["role"] for m in row["prompt"]] == ["system", "user", "assistant", "user"]
    assert row["prompt"][0]["content"] == recipe.prompt.system
    assert row["prompt"][-1]["content"].endswith(f"Question: {QUESTIONS[0].question}")
    assert len(row["context"]) == recipe.retrieval.top_k


def test_build_splits_follows_the_recipe_limits(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "wine.yaml", [f"output_dir={tmp_path}", "data.max_train_questions=5",
                                                           "eval.limit=3"])
    splits = build_splits(recipe)
    assert [qa.question for qa in splits.train_qa] == [qa.question for qa in splits.dataset.train[:5]]
    assert [qa.question for qa in splits.eval_qa] == [qa.question for qa in splits.dataset.eval[:3]]
    assert [row["question"] for row in splits.train] == [qa.question for qa in splits.train_qa]
    assert [row["question"] for row in splits.eval] == [qa.question for qa in splits.eval_qa]
    assert splits.counts.added == splits.index.count() > 0  # a fresh index: every chunk was added by this sync
    assert (tmp_path / "index").is_dir()
    # The rows are what build_rows makes of the same questions against the same index.
    assert splits.eval == build_rows(splits.eval_qa, splits.index, recipe.prompt, recipe.retrieval.top_k)
    # The wine data keeps eval documents out of training: no eval question is about a training question's source.
    assert {qa.source for qa in splits.dataset.eval}.isdisjoint(qa.source for qa in splits.dataset.train)


def test_build_rows_without_questions(index):
    assert build_rows([], index, PROMPT, top_k=2) == []


# ------------------------------------------------------------ templates that open the reply (DeepSeek-R1)
class _Template:
    """A tokenizer stand-in: only the chat template's generation prompt matters here."""

    def __init__(self, opening: str):
        self.opening = opening

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and not tokenize
        return "".join(m["content"] for m in messages) + "<|Assistant|>" + self.opening


@pytest.mark.parametrize(("opening", "prefix"), [
    ("<think>\n", "<think>\n"), ("<think>", "<think>"), ("", ""), ("\n", ""),
    ("<think>done</think>", ""),  # a template that closes the block is not an opening
])
def test_reply_prefix(opening, prefix):
    assert reply_prefix(_Template(opening)) == prefix


def test_reply_prefix_of_the_packaged_model_is_empty():
    from transformers import AutoTokenizer

    from toolkit.models import resolve_model

    assert reply_prefix(AutoTokenizer.from_pretrained(resolve_model("packaged:smollm2-135m-instruct"))) == ""


def test_prefixed_rows_score_the_whole_reply():
    from toolkit.rewards import build_reward

    rows = [{"answer": "Nebbiolo"}, {"answer": "Nebbiolo"}]
    assert add_reply_prefix(rows, _Template("<think>\n")) == "<think>\n"
    sampled = ["Barolo is Nebbiolo.</think><answer>Nebbiolo</answer>",
               [{"role": "assistant", "content": "Barolo is Nebbiolo.</think><answer>Nebbiolo</answer>"}]]
    strict = build_reward("format", {"mode": "strict"})
    prefixes = [row["completion_prefix"] for row in rows]
    assert strict(sampled, completion_prefix=prefixes) == [1.0, 1.0]
    assert strict(sampled) == [0.0, 0.0]  # without the prefix the reply lacks its opening tag


# ------------------------------------------------------------------------------ prompt.open_think
def _packaged_tokenizer():
    from transformers import AutoTokenizer

    from toolkit.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("packaged:smollm2-135m-instruct"))


def test_open_think_opens_every_generation_prompt_and_scores_the_whole_reply():
    tokenizer = _packaged_tokenizer()
    messages = build_messages(PROMPT, "Which grape is Barolo made from?", ["Barolo is made from Nebbiolo."])
    before = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    rows = [{"answer": "Nebbiolo"}]
    assert prepare_replies(tokenizer, rows, PROMPT.model_copy(update={"open_think": True})) == "<think>"
    after = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert after == before + "<think>"
    # The worked example's turn and a conversation without a generation prompt render as before.
    assert after.count("<think>") == before.count("<think>") + 1
    assert tokenizer.apply_chat_template(messages, tokenize=False) in before
    assert rows[0]["completion_prefix"] == "<think>"
    # Applied again (chat after a run, a second evaluation), the template is not opened twice.
    prepare_replies(tokenizer, [], PROMPT.model_copy(update={"open_think": True}))
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == after


def test_without_open_think_the_template_is_untouched():
    tokenizer = _packaged_tokenizer()
    template = tokenizer.chat_template
    rows = [{"answer": "Nebbiolo"}]
    assert prepare_replies(tokenizer, rows, PROMPT) == ""
    assert tokenizer.chat_template == template and "completion_prefix" not in rows[0]


def test_a_template_that_drops_an_examples_think_block_is_warned_about(caplog):
    # DeepSeek-R1-Distill's template keeps only what follows "</think>" in an assistant turn: the worked example
    # reached the model as "<answer>Sangiovese</answer>", without a word.
    tokenizer = _packaged_tokenizer()
    rows = [{"answer": "Nebbiolo"}]
    with caplog.at_level("WARNING", logger="toolkit.prompts"):
        assert warn_if_examples_cut(tokenizer, PROMPT) == []
        prepare_replies(tokenizer, rows, PROMPT)
    assert "worked example" not in caplog.text
    tokenizer.chat_template = (
        "{% for m in messages %}{% set content = m['content'] %}{% if m['role'] == 'assistant' and '</think>' in "
        "content %}{% set content = content.split('</think>')[-1] %}{% endif %}<|{{ m['role'] }}|>{{ content }}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    with caplog.at_level("WARNING", logger="toolkit.prompts"):
        assert warn_if_examples_cut(tokenizer, PROMPT) == [1]
        caplog.clear()
        prepare_replies(tokenizer, rows, PROMPT)
    assert "does not show the whole reply of worked example 1" in caplog.text


def test_open_think_without_a_chat_template_is_a_clear_error():
    from toolkit.models import ModelError

    class NoTemplate:
        chat_template = None

    with pytest.raises(ModelError, match="prompt.open_think: the model's tokenizer has no chat template"):
        open_think(NoTemplate())


# Gemma 2's template, shortened: no system turn, strictly alternating user and model turns.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<start_of_turn>' + message['role'] + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def test_a_blank_system_prompt_sends_no_system_message():
    # The recipe allows a blank prompt.system as "no system message"; it went out as an empty system turn, which
    # Gemma's template refuses (and others render in place of their own default).
    blank = PROMPT.model_copy(update={"system": " "})
    messages = build_messages(blank, "Which grape is Barolo made from?", ["Barolo is made from Nebbiolo."])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    tokenizer = _packaged_tokenizer()
    tokenizer.chat_template = GEMMA_TEMPLATE
    prepare_replies(tokenizer, [{"answer": "Nebbiolo"}], blank)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.count("<start_of_turn>user") == 2 and rendered.endswith("<start_of_turn>model\n")


def test_a_template_that_refuses_the_prompt_is_one_line_with_the_fix():
    # It failed at the first real render (prompt lengths, after the model loaded) as a jinja traceback.
    from toolkit.models import ModelError

    tokenizer = _packaged_tokenizer()
    tokenizer.chat_template = GEMMA_TEMPLATE
    with pytest.raises(ModelError) as err:
        prepare_replies(tokenizer, [{"answer": "Nebbiolo"}], PROMPT)
    assert str(err.value) == ("prompt: the model's chat template refuses the recipe's messages (System role not "
                              "supported); set prompt.system to '' (no system message) and put its instructions "
                              "in prompt.user_template")


def test_prompts_longer_than_the_context_are_warned_about(caplog):
    # Evaluated silently before: a model past its context answers from positions it never saw.
    tokenizer = _packaged_tokenizer()
    short = {"prompt": build_messages(PROMPT, "Which grape is Barolo made from?", ["Barolo is made from Nebbiolo."]),
             "question": "Which grape is Barolo made from?"}
    question = "Which grape is the long one made from, " + "really " * 20 + "?"
    long = {"prompt": build_messages(PROMPT, question, ["Barolo is made from Nebbiolo. " * 40]), "question": question}
    n_short, n_long = prompt_length(tokenizer, short), prompt_length(tokenizer, long)
    assert n_short < n_long
    assert n_short == len(tokenizer(tokenizer.apply_chat_template(short["prompt"], add_generation_prompt=True,
                                                                  tokenize=False), add_special_tokens=False).input_ids)
    with caplog.at_level("WARNING", logger="toolkit.prompts"):
        assert warn_over_context(tokenizer, [short, long], 48, n_long + 48, "eval prompts + eval.max_new_tokens") == 0
        assert warn_over_context(tokenizer, [short, long], 48, None, "eval prompts") == 0  # a config without a limit
        assert not caplog.records
        what = "eval prompts + eval.max_new_tokens"
        assert warn_over_context(tokenizer, [short, long, long], 48, n_long + 47, what) == 2
    message = " ".join(caplog.records[-1].getMessage().split())
    assert message.startswith(
        f"2 of 3 eval prompts + eval.max_new_tokens (48) are longer than the model's context of {n_long + 47} tokens; "
        f"the longest prompt ({n_long} tokens) asks 'Which grape is the long one made from, really really really…'. "
        "Lower retrieval.top_k "), message
