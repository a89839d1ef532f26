"""Model-based rewards: semantic similarity to the gold answer, and a user-named sequence-classification model.

Both are classes, not functions: the recipe's params go to ``__init__`` (build_reward calls it once per built
reward) and the model is loaded by ``load()`` (which toolkit.run and toolkit.evaluate call before the policy model
loads) or else on the first call, never at import or at recipe validation, so a recipe that does not use them never
pays for torch or a model load. Scores are mapped into [0, 1] like every other reward.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolkit.rewards.completions import completion_text, extract_answer, row
from toolkit.rewards.text import golds

logger = logging.getLogger(__name__)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SemanticMatch:
    """``max(0, max_g cos(e(answer), e(g)))`` over the gold and its aliases g, with sentence-transformer
    embeddings e; in [0, 1]. 0.0 when there is no extracted answer or several ``<answer>`` tags; None without
    gold. Partial credit for a rewording ("the Pinot Noir grape": 0.87 against "Pinot Noir") where answer_match
    gives none; synonyms the embedder does not know score low ("Shiraz" against "Syrah": 0.27), so keep aliases."""

    def __init__(self, *, embedder: str = "packaged:all-minilm-l6-v2", device: str = "cpu", batch_size: int = 64):
        from toolkit.models import ModelError, resolve_embedder

        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"reward 'semantic_match': batch_size must be an integer >= 1, got {batch_size!r}")
        try:
            self.path = resolve_embedder(embedder)  # packaged: a local folder; else a folder or a hub id
        except ModelError as err:
            raise ValueError(f"reward 'semantic_match': {err}") from None
        self.device, self.batch_size = device, batch_size
        self._model = None

    def load(self) -> None:
        """Load the embedder (the first call does, if nothing did before); ModelError, one line, when it cannot."""
        if self._model is not None:
            return
        from sentence_transformers import SentenceTransformer

        from toolkit.models import loading

        logger.info("semantic_match: loading embedder %s", self.path)
        with loading(f"reward 'semantic_match': embedder {self.path!r} on device {self.device!r}"):
            self._model = SentenceTransformer(self.path, device=_device(self.device))

    def _embed(self, texts: list[str]) -> dict[str, Any]:
        self.load()
        unique = list(dict.fromkeys(texts))
        vectors = self._model.encode(unique, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        return dict(zip(unique, vectors, strict=True))

    def __call__(self, completions: Sequence[Any], *, answer: Sequence[str | None] | None = None,
                 aliases: Sequence[Sequence[str] | None] | None = None, **kwargs: Any) -> list[float | None]:
        preds: list[str | None] = []
        gold_lists: list[list[str]] = []
        for i, completion in enumerate(completions):
            text = completion_text(completion)
            gold_lists.append(golds(row(answer, i), row(aliases, i)) if isinstance(row(answer, i), str) else [])
            preds.append(extract_answer(text) if text.count("<answer>") <= 1 else None)
        needed = [t for p, g in zip(preds, gold_lists, strict=True) if p and g for t in (p, *g)]
        vectors = self._embed(needed) if needed else {}
        rewards: list[float | None] = []
        for pred, gold_list in zip(preds, gold_lists, strict=True):
            if not gold_list:
                rewards.append(None)
            elif not pred:
                rewards.append(0.0)
            else:
                cos = max(float(vectors[pred] @ vectors[g]) for g in gold_list)
                # Rounding can push a self-similarity a hair past 1.
                rewards.append(min(max(cos, 0.0), 1.0) if math.isfinite(cos) else 0.0)
        return rewards


class RewardModel:
    """A learned reward from a local sequence-classification model (``AutoModelForSequenceClassification``).

    Input: the question and the completion, through the model's chat template when its tokenizer has one
    (user turn, assistant turn), else as a text pair; only the completion when ``with_question`` is false.
    Score: ``sigmoid(logit)`` for a one-logit model, else the softmax probability of class ``positive_label``
    (default: the last class); in [0, 1]. The ``question`` column is used rather than the full prompt, so that
    evaluation (which passes no prompts) scores exactly like training.
    """

    def __init__(self, *, model: str = "", with_question: bool = True, positive_label: int = -1,
                 max_length: int = 512, batch_size: int = 8, device: str = "auto"):
        model = os.path.expanduser(model)  # a recipe param, which the shell never saw
        config = Path(model) / "config.json"
        if not model or not config.is_file():
            raise ValueError(f"reward 'reward_model': model must be a local folder with a config.json, got {model!r}")
        try:
            architectures = json.loads(config.read_text()).get("architectures") or []
        except (OSError, ValueError, AttributeError) as err:
            raise ValueError(f"reward 'reward_model': cannot read {config}: {err}") from None
        # Loading a causal LM here would succeed with a randomly initialised head: a reward of pure noise.
        if architectures and not any(str(a).endswith("ForSequenceClassification") for a in architectures):
            raise ValueError(f"reward 'reward_model': {model} is not a sequence-classification model "
                             f"(architectures: {', '.join(map(str, architectures))})")
        for key, value in (("max_length", max_length), ("batch_size", batch_size)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"reward 'reward_model': {key} must be an integer >= 1, got {value!r}")
        if not isinstance(positive_label, int):
            raise ValueError(f"reward 'reward_model': positive_label must be an integer, got {positive_label!r}")
        self.path, self.with_question, self.positive_label = model, with_question, positive_label
        self.max_length, self.batch_size, self.device = max_length, batch_size, device
        self._model = self._tokenizer = None

    def load(self) -> None:
        """Load the model (the first call does, if nothing did before); ModelError, one line, when it cannot."""
        if self._model is not None:
            return
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from toolkit.models import ModelError, loading

        logger.info("reward_model: loading %s", self.path)
        with loading(f"reward 'reward_model': {self.path} on device {self.device!r}"):
            tokenizer = AutoTokenizer.from_pretrained(self.path)
            model = AutoModelForSequenceClassification.from_pretrained(self.path).to(_device(self.device)).eval()
        if tokenizer.pad_token is None:  # decoder reward models often have none; batching needs one
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if not -model.config.num_labels <= self.positive_label < model.config.num_labels:
            raise ModelError(f"reward 'reward_model': positive_label {self.positive_label} is not a class of a "
                             f"{model.config.num_labels}-label model ({self.path})")
        self._model, self._tokenizer = model, tokenizer

    def _encode(self, texts: list[str], questions: list[str]):
        tok = self._tokenizer
        common = {"return_tensors": "pt", "padding": True, "truncation": True, "max_length": self.max_length}
        if not self.with_question:
            return tok(texts, **common)
        if tok.chat_template:
            chats = [tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": t}],
                                             tokenize=False) for q, t in zip(questions, texts, strict=True)]
            return tok(chats, add_special_tokens=False, **common)
        return tok(questions, texts, **common)

    def __call__(self, completions: Sequence[Any], *, question: Sequence[str | None] | None = None,
                 **kwargs: Any) -> list[float]:
        import torch

        self.load()
        texts = [completion_text(c) for c in completions]
        questions = [q if isinstance(q := row(question, i), str) else "" for i in range(len(texts))]
        rewards: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self._encode(texts[start:start + self.batch_size], questions[start:start + self.batch_size])
            with torch.inference_mode():
                logits = self._model(**batch.to(self._model.device)).logits.float()
            probs = logits[:, 0].sigmoid() if logits.shape[1] == 1 else logits.softmax(-1)[:, self.positive_label]
            rewards.extend(probs.tolist())
        return rewards
