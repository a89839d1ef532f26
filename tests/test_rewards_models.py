"""Model-based rewards, with local models only: semantic_match with the packaged sentence-transformer, and
reward_model with tiny randomly initialised classifiers saved to a temporary folder (no hub, ever)."""

import json
import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification, BertTokenizer

from toolkit.models import ModelError, resolve_embedder
from toolkit.recipe import load_recipe
from toolkit.rewards import build_reward

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<", ">", "/", "answer", "think", "nebbiolo", "barolo",
         "which", "grape", "is", "the", "?", "merlot", "user", "assistant", ":"]


def tiny_classifier(path, num_labels=1, chat_template=None):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=num_labels)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return tiny_classifier(tmp_path_factory.mktemp("rm") / "one_logit")


COMPLETIONS = ["<think>the grape is nebbiolo</think><answer>nebbiolo</answer>", "<answer>merlot</answer>", "", "?"]
QUESTIONS = ["which grape is barolo?"] * 4


# ---------------------------------------------------------------------------------------------- reward_model
def test_reward_model_scores_in_unit_range_and_loads_once(classifier):
    reward = build_reward("reward_model", {"model": str(classifier), "max_length": 64, "batch_size": 3})
    assert reward._instance._model is None  # nothing loaded at build (recipe validation) time
    scores = reward(COMPLETIONS, question=QUESTIONS)
    model = reward._instance._model
    assert len(scores) == 4 and all(isinstance(s, float) and 0.0 < s < 1.0 for s in scores)
    assert reward(COMPLETIONS, question=QUESTIONS) == pytest.approx(scores)  # deterministic
    assert reward._instance._model is model  # loaded once per built reward
    assert len(set(scores)) > 1  # the input reaches the model


def test_reward_model_is_sigmoid_of_the_question_completion_pair(classifier):
    scores = build_reward("reward_model", {"model": str(classifier)})(COMPLETIONS[:2], question=QUESTIONS[:2])
    tokenizer = BertTokenizer.from_pretrained(classifier)
    model = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    with torch.no_grad():
        logits = model(**tokenizer(QUESTIONS[:2], COMPLETIONS[:2], return_tensors="pt", padding=True)).logits
    assert scores == pytest.approx(logits[:, 0].sigmoid().tolist(), abs=1e-6)
    alone = build_reward("reward_model", {"model": str(classifier), "with_question": False})(COMPLETIONS[:2])
    with torch.no_grad():
        logits = model(**tokenizer(COMPLETIONS[:2], return_tensors="pt", padding=True)).logits
    assert alone == pytest.approx(logits[:, 0].sigmoid().tolist(), abs=1e-6)


def test_reward_model_with_classes_and_a_chat_template(tmp_path):
    template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
    path = tiny_classifier(tmp_path / "three", num_labels=3, chat_template=template)
    last = build_reward("reward_model", {"model": str(path)})(COMPLETIONS, question=QUESTIONS)
    first = build_reward("reward_model", {"model": str(path), "positive_label": 0})(COMPLETIONS, question=QUESTIONS)
    # By hand: the softmax of the chat-rendered (question, completion) pair, not the text pair the tokenizer
    # would make without a template.
    tokenizer = BertTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": c}],
                                           tokenize=False) for q, c in zip(QUESTIONS, COMPLETIONS, strict=True)]
    assert chats[0].startswith("user : which grape is barolo? assistant : ")
    with torch.no_grad():
        encoded = tokenizer(chats, add_special_tokens=False, return_tensors="pt", padding=True)
        probs = model(**encoded).logits.softmax(-1)
        pairs = model(**tokenizer(QUESTIONS, COMPLETIONS, return_tensors="pt", padding=True)).logits.softmax(-1)
    assert last == pytest.approx(probs[:, 2].tolist(), abs=1e-6)
    assert first == pytest.approx(probs[:, 0].tolist(), abs=1e-6)
    assert last != pytest.approx(pairs[:, 2].tolist(), abs=1e-6)
    with pytest.raises(ModelError, match=r"^reward 'reward_model': positive_label 3 is not a class of a 3-label "
                                         r"model \("):
        build_reward("reward_model", {"model": str(path), "positive_label": 3})(COMPLETIONS, question=QUESTIONS)


def test_reward_model_without_question_column_still_scores(classifier):
    assert len(build_reward("reward_model", {"model": str(classifier)})(["<answer>x</answer>"])) == 1


@pytest.mark.parametrize(("params", "message"), [
    ({}, "reward 'reward_model': model must be a local folder with a config.json, got ''"),
    ({"model": "{tmp}/missing"}, "model must be a local folder with a config.json, got '{tmp}/missing'"),
    ({"model": "{causal}"}, "{causal} is not a sequence-classification model (architectures: LlamaForCausalLM)"),
    ({"model": "{broken}"}, "reward 'reward_model': cannot read {broken}/config.json"),
    ({"model": "{ok}", "batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"model": "{ok}", "max_length": 2.5}, "max_length must be an integer >= 1, got 2.5"),
    ({"model": "{ok}", "positive_label": 0.5}, "positive_label must be an integer, got 0.5"),
    ({"model": "{ok}", "with_question": "yes"}, "param 'with_question' must be a bool"),
])
def test_reward_model_errors_at_build(tmp_path, classifier, params, message):
    (tmp_path / "causal").mkdir()
    (tmp_path / "causal/config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken/config.json").write_text("{not json")
    fill = {"tmp": tmp_path, "causal": tmp_path / "causal", "broken": tmp_path / "broken", "ok": classifier}
    params = {k: v.format(**fill) if isinstance(v, str) else v for k, v in params.items()}
    with pytest.raises(ValueError, match=re.escape(message.format(**fill))) as err:
        build_reward("reward_model", params)
    assert "\n" not in str(err.value)


# -------------------------------------------------------------------------------------------- semantic_match
@pytest.fixture(scope="module")
def semantic():
    return build_reward("semantic_match")


def test_semantic_match_scores(semantic):
    assert semantic._instance._model is None  # loaded on the first call, not at build time
    completions = ["<answer>Pinot Noir</answer>", "<think>x</think><answer>pinot noir grape</answer>",
                   "<answer>Chardonnay</answer>", "<think>t</think>", "<answer>Pinot Noir</answer><answer>x</answer>",
                   "<answer>Spätburgunder</answer>", "<answer>Pinot Noir</answer>"]
    answer = ["Pinot Noir"] * 6 + [None]
    aliases = [[]] * 5 + [["Spätburgunder"], []]
    scores = semantic(completions, answer=answer, aliases=aliases)
    exact, paraphrase, other, missing, hedged, alias, no_gold = scores
    assert exact == pytest.approx(1.0, abs=1e-5) and alias == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= other < paraphrase < exact
    assert missing == 0.0 and hedged == 0.0 and no_gold is None
    model = semantic._instance._model
    assert semantic(completions, answer=answer, aliases=aliases) == pytest.approx(scores)
    assert semantic._instance._model is model


def test_semantic_match_chat_completions_and_empty_batch(semantic):
    assert semantic([[{"role": "assistant", "content": "<answer>Barolo</answer>"}]], answer=["Barolo"]) == [
        pytest.approx(1.0, abs=1e-5)]
    assert semantic([], answer=[]) == []


@pytest.mark.parametrize(("params", "message"), [
    ({"embedder": "packaged:nope"}, "reward 'semantic_match': unknown packaged embedder 'nope'"),
    ({"batch_size": 0}, "reward 'semantic_match': batch_size must be an integer >= 1, got 0"),
    ({"batch_size": 1.5}, "batch_size must be an integer >= 1, got 1.5"),
    ({"device": 0}, "param 'device' must be str"),
])
def test_semantic_match_errors_at_build(params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_reward("semantic_match", params)


@pytest.mark.parametrize(("params", "message"), [
    ({"embedder": "{tmp}/no-such-embedder"}, "reward 'semantic_match': embedder '{tmp}/no-such-embedder' on device "
                                             "'cpu': FileNotFoundError: Path {tmp}/no-such-embedder not found"),
    ({"device": "gpu"}, "reward 'semantic_match': embedder '{packaged}' on device 'gpu': RuntimeError: Expected "),
])
def test_semantic_match_load_fails_as_one_line(tmp_path, params, message):
    reward = build_reward("semantic_match", {k: v.format(tmp=tmp_path) for k, v in params.items()})
    fill = {"tmp": tmp_path, "packaged": reward._instance.path}
    for call in (reward.load, lambda: reward(["<answer>x</answer>"], answer=["y"])):  # early, or on first use
        with pytest.raises(ModelError, match=re.escape(message.format(**fill))) as err:
            call()
        assert "\n" not in str(err.value)


def test_build_rewards_load_loads_the_models_at_once(classifier):
    reward_model = "{name: reward_model, params: {model: " + str(classifier) + "}}"
    recipe = load_recipe("recipes/wine.yaml", [f"rewards=[{{name: semantic_match}}, {reward_model}]"])
    lazy, eager = recipe.build_rewards(), recipe.build_rewards(load=True)
    assert [r._instance._model for r in lazy] == [None, None]
    assert all(r._instance._model is not None for r in eager)
    bad = load_recipe("recipes/wine.yaml", ["rewards=[{name: semantic_match, params: {device: gpu}}]"])
    with pytest.raises(ModelError, match="on device 'gpu'"):
        bad.build_rewards(load=True)


def test_model_paths_in_reward_params_expand_home(classifier, monkeypatch):
    # A recipe param never passes through a shell: "~/rm" was a folder without config.json, or a hub id.
    monkeypatch.setenv("HOME", str(classifier.parent))
    reward = build_reward("reward_model", {"model": f"~/{classifier.name}", "max_length": 64})
    assert reward._instance.path == str(classifier)
    assert len(reward(COMPLETIONS[:1], question=QUESTIONS[:1])) == 1
    assert resolve_embedder("~/embedder") == str(classifier.parent / "embedder")
    assert resolve_embedder("org/name") == "org/name"
