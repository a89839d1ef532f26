"""`python -m toolkit.chat RECIPE [--gguf FILE | --adapter DIR] [--question "…"] [--run DIR]`: ask the tuned model.

Each question is answered the way the model was trained and evaluated: the recipe's index retrieves `top_k`
chunks, `toolkit.prompts.build_messages` lays out the same system prompt, worked examples and context, and the
model answers greedily. The answer is printed with the sources of the chunks it was given. Without `--question`
the command reads questions, one a line, until `exit`, `quit` or the end of input (Ctrl-D); blank lines are
skipped, so a file of questions with blank lines between them can be piped in whole.

Models: `--gguf FILE` runs an exported GGUF in llama.cpp (its own chat template, as any llama.cpp program would);
`--adapter DIR` runs the base model plus that LoRA in transformers; with neither, the run's `adapter/`.
"""

from __future__ import annotations

import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from toolkit.index import open_index
from toolkit.index_store import Hit, IndexUnavailable
from toolkit.metrics import extracted
from toolkit.models import ModelError, first_line
from toolkit.prompts import build_messages, opened_reply, prepare_replies
from toolkit.recipe import Recipe

logger = logging.getLogger("toolkit.chat")  # not __name__: "__main__" under python -m


@dataclass
class Reply:
    question: str
    completion: str
    answer: str | None  # the text inside <answer>…</answer>, when the model used the format
    hits: list[Hit]
    cut: str | None = None  # why the reply stops before the model ended it (`cut_note`)

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(hit.source for hit in self.hits))


class QuestionError(ModelError):
    """A question that cannot be asked (not text, too long for the model's context); in a session the next one can
    be. Any other ModelError (an embedder that cannot load, say) ends the session: asking again would not help."""


# llama.cpp allocates the KV cache of the whole context when it loads (Llama 3.1 would ask for 131072 tokens: 16 GB
# for an 8B model), so a GGUF is given its trained context only up to this.
GGUF_CONTEXT = 8192


def cut_note(new_tokens: int, limit: int, context: int | None) -> str:
    """Why a reply of `new_tokens` stopped before the model ended it: the new-token limit, or the context filling."""
    if new_tokens >= limit:
        return f"at the {limit}-token limit (--max-new-tokens); raise it to see more"
    return (f"after {new_tokens} tokens, when the {context}-token context was full; ask a shorter question or "
            "retrieve fewer chunks (-k)")


class GGUFChat:
    """An exported GGUF in llama.cpp, prompted through the chat template stored in the file."""

    def __init__(self, path: str | Path, max_new_tokens: int):
        from toolkit.verify import load_llama, trained_context

        if not Path(path).is_file():
            raise ModelError(f"no GGUF file at {path}")
        # Not a fixed 4096: past the context the model was trained for, llama.cpp's replies degrade without a word.
        trained = trained_context(Path(path))
        self.llm = load_llama(Path(path), n_ctx=min(trained or GGUF_CONTEXT, GGUF_CONTEXT))
        self.prefix = gguf_reply_prefix(self.llm)  # "<think>" after a prompt.open_think run: shown as trained
        self.max_new_tokens = max_new_tokens

    def complete(self, messages: list[dict]) -> tuple[str, str | None]:
        """The reply, and why it was cut (None when the model ended it)."""
        # temperature 0 is llama.cpp's greedy sampler; no repeat penalty, as in the transformers evaluation.
        try:
            out = self.llm.create_chat_completion(
                messages=messages, temperature=0.0, repeat_penalty=1.0, max_tokens=self.max_new_tokens
            )
        except ValueError as err:  # llama-cpp-python's "Requested tokens (N) exceed context window of 4096"
            if "context window" not in str(err):
                raise
            raise QuestionError(f"the prompt is too long for the GGUF model ({first_line(err)}); ask a shorter "
                             "question or retrieve fewer chunks (-k)") from None
        choice = out["choices"][0]
        text = self.prefix + (choice["message"]["content"] or "")
        # "length" is also where llama.cpp stops when the prompt left less room than max_tokens in the context.
        if choice["finish_reason"] != "length":
            return text, None
        return text, cut_note(out["usage"]["completion_tokens"], self.max_new_tokens, self.llm.n_ctx())

    def close(self) -> None:
        self.llm.close()  # now, not in a destructor at interpreter exit, where llama-cpp-python's fails


def gguf_reply_prefix(llm) -> str:
    """What the GGUF's own chat template writes at the start of every reply ("<think>" when the run used
    prompt.open_think), rendered as llama-cpp-python renders it; "" when llama.cpp prompts with a built-in format
    it recognised instead of the stored template."""
    template = llm.metadata.get("tokenizer.chat_template")
    if not template or llm.chat_format != "chat_template.default":
        return ""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    rendered = Jinja2ChatFormatter(template=template, eos_token="", bos_token="")(
        messages=[{"role": "user", "content": "?"}]
    ).prompt
    return opened_reply(rendered)


class AdapterChat:
    """The run's base model plus a LoRA adapter in transformers, generating as `toolkit.evaluate` does."""

    def __init__(self, recipe: Recipe, adapter: Path, max_new_tokens: int):
        from toolkit.models import check_adapter, load_adapter, load_model, run_adapter_hint
        from toolkit.run_record import base_model_path, warn_if_asked_otherwise

        if not (adapter / "adapter_config.json").is_file():
            hint = run_adapter_hint(adapter) or "train first, or pass --adapter DIR or --gguf FILE"
            raise ModelError(f"no LoRA adapter in {adapter}: {hint}")
        check_adapter(adapter)  # a broken adapter fails before the base model is loaded
        # The model is asked with this recipe's prompt: said when the run trained with another one (a recipe
        # loaded without the run's overrides), not refused, since trying another prompt can be the point.
        warn_if_asked_otherwise(recipe, adapter, "chat")
        model, self.tokenizer = load_model(base_model_path(recipe, recipe.output_dir), recipe.model.dtype)
        # transformers generates past the context the model was trained for without a word, and replies degrade
        # there: it is held to it, as llama.cpp is.
        self.context = getattr(model.config, "max_position_embeddings", None)
        self.prefix = prepare_replies(self.tokenizer, [], recipe.prompt)  # the reply opening, shown as trained
        self.model = load_adapter(model, adapter)
        self.max_new_tokens = max_new_tokens

    def complete(self, messages: list[dict]) -> tuple[str, str | None]:
        """The reply, and why it was cut (None when the model ended it)."""
        from toolkit.evaluate import generate

        limit = self.max_new_tokens
        if self.context:
            prompt = len(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                            return_dict=True)["input_ids"])
            if prompt >= self.context:
                raise QuestionError(f"the prompt is too long for the model ({prompt} tokens, its context is "
                                    f"{self.context}); ask a shorter question or retrieve fewer chunks (-k)")
            limit = min(limit, self.context - prompt)
        texts, lengths, truncated = generate(self.model, self.tokenizer, [messages], limit, 1)
        return self.prefix + texts[0], cut_note(lengths[0], self.max_new_tokens, self.context) if truncated[0] else None

    def close(self) -> None:
        pass


def ask(recipe: Recipe, index, model, question: str, top_k: int | None = None) -> Reply:
    """Retrieve context for `question`, prompt `model` in the training format, return the reply and its sources."""
    hits = index.search([question], top_k if top_k is not None else recipe.retrieval.top_k)[0]
    messages = build_messages(recipe.prompt, question, [hit.text for hit in hits])
    completion, cut = model.complete(messages)
    return Reply(question, completion, extracted(completion), hits, cut)


def render(reply: Reply) -> str:
    lines = [f"answer: {reply.answer if reply.answer is not None else '(no <answer> tag)'}",
             f"reply:  {reply.completion.strip()}"]
    if reply.cut:
        lines.append(f"cut:    {reply.cut}")
    lines.append("sources:")
    lines += [f"  {rank}. {hit.source}  (score {hit.score:.3f})" for rank, hit in enumerate(reply.hits, 1)]
    return "\n".join(lines)


def check_question(question: str) -> None:
    """Refuse a question that is not text: bytes that are not UTF-8 reach Python as lone surrogates
    (surrogateescape, in argv and on a C-locale stdin), which the tokenizers reject with a TypeError."""
    try:
        question.encode("utf-8")
    except UnicodeEncodeError as err:
        raise QuestionError(f"the question is not valid UTF-8 text (a bad byte at character {err.start + 1})") from None


def _answer_questions(recipe: Recipe, index, model, question: str | None, k: int | None, out, console) -> None:
    """One question, or questions read from stdin until `exit`, `quit` or end of input, blank lines skipped; a
    question that cannot be asked is reported on `console` and the session goes on."""
    if question is not None:
        out.print(render(ask(recipe, index, model, question, k)), markup=False)
        return
    # Bad bytes typed or piped in arrive as surrogates, as in argv, whatever the locale: check_question then
    # reports them, where a strict stdin would end the session with a UnicodeDecodeError.
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")
    # The prompt is for a person typing: with questions piped in, it would pile up on stdout between the answers.
    prompt = "question> " if sys.stdin.isatty() else ""
    while True:
        try:
            # A file saved with a BOM starts with U+FEFF, which strip() keeps: "quit" would be asked, not obeyed.
            question = input(prompt).lstrip("\ufeff").strip()
        except (EOFError, KeyboardInterrupt):
            return
        if not question:
            continue
        if question.lower() in ("exit", "quit"):
            return
        try:
            check_question(question)
            reply = ask(recipe, index, model, question, k)
        except QuestionError as err:  # not text, or too long for the model: the next question can be asked
            from rich.markup import escape

            console.print(f"[red]error:[/] {escape(str(err))}; ask again", highlight=False, soft_wrap=True)
            continue
        out.print(render(reply), markup=False)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from toolkit.cli import ERRORS, Parser, fail, folder_arg, index_command, path_arg, run_folder, setup_logging
    from toolkit.recipe import load_recipe

    parser = Parser("python -m toolkit.chat", __doc__)
    parser.add_argument("recipe", help="path to a recipe YAML, e.g. recipes/wine.yaml")
    parser.add_overrides("dotted overrides, e.g. retrieval.top_k=3")
    model_args = parser.add_mutually_exclusive_group()
    model_args.add_argument("--gguf", type=path_arg,
                            help="an exported GGUF file (needs the export extra: llama-cpp-python)")
    model_args.add_argument("--adapter", type=folder_arg, help="a LoRA adapter folder (default: <run>/adapter)")
    parser.add_argument("--question", help="ask this one question and exit (default: read questions from stdin, "
                                           "one a line, until exit, quit or end of input)")
    parser.add_argument("--run", type=run_folder,
                        help="the run folder with index/ and adapter/ (default: the recipe's output_dir)")
    parser.add_argument("-k", type=int, default=None, help="chunks retrieved (default: retrieval.top_k)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: eval.max_new_tokens")
    args = parser.parse_intermixed_args(argv)
    console = setup_logging()
    out = Console(highlight=False, soft_wrap=True)
    try:
        # Checked here, not left to `x or default`: 0 would silently become the default, and a negative count
        # would reach chromadb or transformers as a traceback.
        for flag, value in (("-k", args.k), ("--max-new-tokens", args.max_new_tokens)):
            if value is not None and value < 1:
                raise ModelError(f"{flag} must be at least 1, got {value}")
        # `chat RECIPE "Which grape ...?"`, as search takes its query, said only that the override must look like
        # section.field=value.
        asked = next((text for text in args.overrides if "=" not in text), None)
        if asked is not None and args.question is None:
            raise ModelError(f"{asked!r} is no section.field=value override; to ask it, pass "
                             f"--question {shlex.quote(asked)}")
        recipe = load_recipe(args.recipe, args.overrides)
        if args.run:
            recipe = recipe.model_copy(update={"output_dir": Path(args.run)})
        if args.question is not None:
            if not args.question.strip():
                raise ModelError("the question is empty")
            check_question(args.question)
        try:
            index = open_index(recipe, create=False)
        except IndexUnavailable as err:
            run = [f"output_dir={args.run}"] if args.run else []  # --run DIR reads the index under DIR
            raise IndexUnavailable(f"{err}; build it with: {index_command(args.recipe, [*args.overrides, *run])}") \
                from None
        limit = args.max_new_tokens if args.max_new_tokens is not None else recipe.eval.max_new_tokens
        if args.gguf:
            model = GGUFChat(args.gguf, limit)
        else:
            model = AdapterChat(recipe, Path(args.adapter) if args.adapter else recipe.output_dir / "adapter", limit)
        try:
            _answer_questions(recipe, index, model, args.question, args.k, out, console)
        finally:
            model.close()
    except ERRORS as err:
        return fail(console, err)
    except KeyboardInterrupt:  # Ctrl-C while loading or generating (at the prompt it ends the session with 0)
        console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
