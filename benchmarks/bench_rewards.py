"""Throughput of every rule-based reward over 10,000 realistic completions; prints one JSON line.

    .venv/bin/python benchmarks/bench_rewards.py

Completions are generated deterministically from the wine training questions: clean answers, wrong answers,
malformed formats, copies of the worked example, long rambling replies and reward-hack repetitions, in groups of 4
per question as GRPO samples them, scored through ``build_reward`` in batches of 64 with the columns TRL passes
(conversational completions, ``completion_ids``, the row's gold, retrieved context and worked example). The row
caches are cleared before each timed pass, and the best of 7 passes is kept. Time is this process's CPU time
(``time.process_time``): the rewards run on one core, so that is completions/s on an idle core, and other load on
a shared machine does not count. ``baseline_len_per_s`` is a trivial ``len()`` over the same completions in the
same run: the ratio to it survives a faster or slower machine. Every reward of the wine recipe is measured.
The model-based rewards (semantic_match, reward_model) are not measured: they run a neural network.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from toolkit.cli import Parser
from toolkit.rewards import build_reward, builtin, completion_text, text

ROOT = Path(__file__).resolve().parent.parent

N_COMPLETIONS, GROUP, BATCH, REPEATS = 10_000, 4, 64, 7
VARIANTS = {
    "answer_match": ("answer_match", {}),
    "answer_match:partial": ("answer_match", {"partial": True, "rel_tolerance": 0.01}),
    "format:strict": ("format", {"mode": "strict"}),
    "format:soft": ("format", {"mode": "soft"}),
    "context_grounding": ("context_grounding", {}),
    "context_grounding:reasoning": ("context_grounding", {"include_reasoning": True}),
    "length": ("length", {"min_words": 3, "max_words": 40, "falloff": 40}),
    "length:chars+overlong": ("length", {"unit": "chars", "min_words": 20, "max_words": 300, "falloff": 200,
                                         "max_completion_length": 64, "overlong_buffer": 16}),
    "repetition": ("repetition", {"ngram_size": 3}),
    "context_grounding:exclude_question": ("context_grounding", {"exclude_question": True}),
    "reasoning_match": ("reasoning_match", {}),
    "no_example_copy": ("no_example_copy", {}),
}
# The wine recipe's worked example (its `examples` column), which some completions copy: the measured hack.
EXAMPLE = ("<think>Rioja is a wine region in northern Spain that follows the Ebro River.</think>"
           "<answer>Ebro River</answer>")


def _load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_rows(rng: random.Random) -> list[dict]:
    """One row per completion (groups of GROUP share a question), with the completion text."""
    docs = {d["id"]: d["text"] for d in _load(ROOT / "data/wine/docs.jsonl")}
    questions = _load(ROOT / "data/wine/train.jsonl")
    golds = [q["answer"] for q in questions]
    rows = []
    while len(rows) < N_COMPLETIONS:
        q = rng.choice(questions)
        doc = docs.get(q["source"], next(iter(docs.values())))
        sentences = [s.strip() for s in doc.split(". ") if s.strip()]
        for _ in range(GROUP):
            rows.append({"question": q["question"], "answer": q["answer"], "aliases": q.get("aliases", []),
                         "context": [doc], "text": _completion(rng, q, sentences, golds)})
    return rows[:N_COMPLETIONS]


def _completion(rng: random.Random, q: dict, sentences: list[str], golds: list[str]) -> str:
    gold = rng.choice([q["answer"], *q.get("aliases", [])])
    reason = rng.choice(sentences)
    kind = rng.random()
    if kind < 0.30:  # clean, sometimes with case or punctuation noise
        answer = rng.choice([gold, gold.lower(), f"the {gold}.", gold.upper()])
        return f"<think>The context says: {reason}.</think>\n<answer>{answer}</answer>"
    if kind < 0.50:  # well formed, wrong answer
        return f"<think>{reason}. I think it is this one.</think><answer>{rng.choice(golds)}</answer>"
    if kind < 0.70:  # malformed: missing or unclosed tags, text after the answer, answer only
        return rng.choice([
            f"{gold}", f"<answer>{gold}</answer>", f"<think>{reason}</think> {gold}",
            f"<think>{reason}<answer>{gold}", f"<think>{reason}</think><answer>{gold}</answer> Hope this helps!",
            f"Sure! Here is the answer: <think>{reason}</think><answer>{gold}</answer>",
            f"<think>{reason}</think><think>again</think><answer>{gold}</answer>"])
    if kind < 0.75:  # the worked example copied, whole or its answer only
        return rng.choice([EXAMPLE, f"<think>{reason}</think><answer>Ebro River</answer>"])
    if kind < 0.85:  # long rambling reasoning, often cut off at the length limit
        ramble = " ".join(rng.choice(sentences) for _ in range(rng.randint(6, 14)))
        tail = rng.choice(["", f"</think><answer>{gold}</answer>", "</think><answer>I am not"])
        return f"<think>Let me think step by step. {ramble}{tail}"
    # degenerate repetition: the measured answer-tag hack, or a looping phrase
    if rng.random() < 0.5:
        return f"<think>{reason}</think>" + f"\n<answer>{gold}</answer>" * rng.randint(5, 20)
    return "<think>" + f"the wine is {gold} and " * rng.randint(10, 40)


def _clear_caches() -> None:
    # Every memo of the reward modules (context forms, gold forms, question and example tokens), not a list of
    # them that a new cache would silently miss: a cache left warm from the previous pass makes that pass cheaper.
    for module in (builtin, text):
        for fn in vars(module).values():
            if callable(getattr(fn, "cache_clear", None)):
                fn.cache_clear()


def _seconds(fn, batches: list[tuple[list, dict]]) -> float:
    _clear_caches()
    start = time.process_time()
    for completions, columns in batches:
        fn(completions, **columns)
    return time.process_time() - start


def main(argv: list[str] | None = None) -> int:
    Parser(f"python benchmarks/{Path(__file__).name}", __doc__).parse_args(argv)  # no options: --help, and a typo
    rows = make_rows(random.Random(0))
    prompt = [{"role": "user", "content": "..."}]
    batches = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        completions = [[{"role": "assistant", "content": r["text"]}] for r in chunk]
        columns = {key: [r[key] for r in chunk] for key in ("question", "answer", "aliases", "context")}
        columns["examples"] = [[EXAMPLE]] * len(chunk)
        # Token ids as TRL passes them; about 4 characters a token, generation stops at 64.
        columns["completion_ids"] = [list(range(min(len(r["text"]) // 4, 64))) for r in chunk]
        columns["prompts"] = [prompt] * len(chunk)
        batches.append((completions, columns))

    def baseline(completions, **_):
        return [float(len(completion_text(c))) for c in completions]

    fns = {"baseline": baseline} | {name: build_reward(reward, params, name)
                                    for name, (reward, params) in VARIANTS.items()}
    # Rounds outside, rewards inside: a burst of load from elsewhere hits one round of every reward, not all
    # rounds of one; the best round of each is kept.
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(REPEATS):
        for name, fn in fns.items():
            best[name] = min(best[name], _seconds(fn, batches))
    baseline_rate = N_COMPLETIONS / best.pop("baseline")
    per_reward = {name: round(N_COMPLETIONS / seconds) for name, seconds in best.items()}
    slowest = min(per_reward.values())
    print(json.dumps({
        "bench": "rewards", "completions": N_COMPLETIONS, "batch_size": BATCH, "per_reward": per_reward,
        "min_completions_per_s": slowest, "baseline_len_per_s": round(baseline_rate),
        "min_vs_baseline": round(slowest / baseline_rate, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
