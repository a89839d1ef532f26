"""`python -m toolkit.chat`: retrieval + the training prompt format + the tuned model, answer and sources.

The slow tests ask the run exported in tests/export_run.py (shared with test_export.py), through its F16 GGUF in
llama.cpp and through its adapter in transformers.
"""

from __future__ import annotations

import io
import re

import pytest
from export_run import RECIPE, exported_run

from toolkit import chat
from toolkit.cli import index_command
from toolkit.index_store import Hit
from toolkit.prompts import build_messages
from toolkit.recipe import load_recipe

QUESTION = "Which grape is Barolo made from?"  # its document, region-barolo, is in the wine corpus


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return exported_run(tmp_path_factory)


def _reply_block(out: str) -> dict:
    answer = re.search(r"^answer: (.*)$", out, re.M)
    reply = re.search(r"^reply:  (.*)$", out, re.M)
    sources = re.findall(r"^  \d+\. (\S+)  \(score (-?[\d.]+)\)$", out, re.M)
    assert answer and reply and "sources:" in out, out
    return {"answer": answer.group(1), "reply": reply.group(1), "sources": [s for s, _ in sources]}


@pytest.mark.slow
def test_gguf_answers_a_wine_question_with_its_sources(run_dir, capsys):
    gguf = run_dir / "export" / "model-f16.gguf"
    status = chat.main(["recipes/wine.yaml", "--run", str(run_dir), "--gguf", str(gguf), "--question", QUESTION])
    assert status == 0
    block = _reply_block(capsys.readouterr().out)
    assert block["reply"].strip()
    assert block["sources"] == ["region-barolo"]  # the recipe's top_k is 1
    # llama.cpp prompts with the template stored in the file (not a built-in format it guessed), so a
    # prompt.open_think template's "<think>" is what it renders; wine.yaml's leaves the reply to the model.
    model = chat.GGUFChat(gguf, 8)
    assert model.llm.chat_format == "chat_template.default" and model.prefix == ""
    model.close()


@pytest.mark.slow
def test_adapter_is_the_default_and_k_widens_the_context(run_dir, capsys):
    assert chat.main(["recipes/wine.yaml", f"output_dir={run_dir}", "-k", "3", "--question", QUESTION]) == 0
    block = _reply_block(capsys.readouterr().out)
    assert block["reply"].strip()
    assert len(block["sources"]) == 3 and "region-barolo" in block["sources"]


@pytest.mark.slow
def test_interactive_loop_skips_blank_lines_until_exit(run_dir, monkeypatch, capsys):
    # A piped file of questions with blank lines between them is asked whole (it used to stop at the first one).
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{QUESTION}\n\n  \nWhat is Rioja mainly made from?\nexit\nnever "
                                                 "asked\n"))
    gguf = run_dir / "export" / "model-q8_0.gguf"
    assert chat.main(["recipes/wine.yaml", "--run", str(run_dir), "--gguf", str(gguf), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.count("sources:") == 2


def test_ask_prompts_in_the_training_format():
    recipe = load_recipe(RECIPE)
    hits = [Hit("region-barolo:0:ab", "Barolo is made from Nebbiolo.", "region-barolo", 0.8)]

    class Index:
        def search(self, queries, k):
            assert queries == [QUESTION] and k == recipe.retrieval.top_k
            return [hits]

    class Model:
        def complete(self, messages):
            self.messages = messages
            return "<think>The context says so.</think><answer>Nebbiolo</answer>", None

    model = Model()
    reply = chat.ask(recipe, Index(), model, QUESTION)
    assert model.messages == build_messages(recipe.prompt, QUESTION, ["Barolo is made from Nebbiolo."])
    assert reply.answer == "Nebbiolo" and reply.sources == ["region-barolo"]
    assert _reply_block(chat.render(reply)) == {"answer": "Nebbiolo", "reply": model.complete([])[0],
                                                "sources": ["region-barolo"]}


def test_missing_index_or_model_is_one_line(tmp_path, capsys):
    assert chat.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "--question", QUESTION]) == 2
    hint = index_command("recipes/wine.yaml", [f"output_dir={tmp_path}"])
    assert f"build it with: {hint}\n" in capsys.readouterr().err
    assert chat.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "--question", " "]) == 2
    assert "the question is empty" in capsys.readouterr().err
    # --run DIR reads the index under DIR: the command that builds it says so.
    run = tmp_path / "r"
    run.mkdir()
    assert chat.main(["recipes/wine.yaml", "retrieval.top_k=2", "--run", str(run), "--question", QUESTION]) == 2
    hint = index_command("recipes/wine.yaml", ["retrieval.top_k=2", f"output_dir={run}"])
    assert f"build it with: {hint}\n" in capsys.readouterr().err


def test_run_flag_expands_home_so_the_hint_and_the_reader_agree(tmp_path, capsys, monkeypatch):
    # chat kept `--run=~/r` literal while the hint's output_dir=~/r is expanded by the recipe: pasting the hint
    # built an index chat never read.
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "r").mkdir()
    assert chat.main(["recipes/wine.yaml", "--run=~/r", "--question", QUESTION]) == 2
    err = capsys.readouterr().err
    assert f"no index at {tmp_path}/r/index" in " ".join(err.split())
    assert index_command("recipes/wine.yaml", [f"output_dir={tmp_path}/r"]) in err


@pytest.mark.parametrize(("flags", "message"), [
    (["-k", "0"], "-k must be at least 1, got 0"),  # not silently the recipe's top_k
    (["-k", "-2"], "-k must be at least 1, got -2"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    (["--max-new-tokens", "-5"], "--max-new-tokens must be at least 1, got -5"),
])
def test_counts_below_one_are_one_line(tmp_path, capsys, flags, message):
    assert chat.main(["recipes/wine.yaml", f"output_dir={tmp_path}", *flags, "--question", QUESTION]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and len(err.strip().splitlines()) == 1, err


def test_a_question_where_the_overrides_go_names_question_flag(tmp_path, capsys):
    # `chat RECIPE "Which grape ...?"`, the way search takes its query, said only "override 'Which grape ...?' must
    # look like section.field=value", not how to ask it.
    assert chat.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "Which grape makes Barolo?"]) == 2
    err = capsys.readouterr().err
    assert " ".join(err.split()) == ("error: 'Which grape makes Barolo?' is no section.field=value override; to ask "
                                     "it, pass --question 'Which grape makes Barolo?'")


def test_missing_adapter_or_gguf_is_one_line(tmp_path, capsys):
    # With the index there, the model is the next thing chat checks.
    from toolkit import index

    assert index.main(["recipes/wine.yaml", f"output_dir={tmp_path}"]) == 0
    capsys.readouterr()
    empty, missing = tmp_path / "empty", tmp_path / "missing.gguf"
    empty.mkdir()
    (tmp_path / "run" / "adapter").mkdir(parents=True)  # --adapter given the run folder, not its adapter/
    (tmp_path / "run" / "adapter" / "adapter_config.json").write_text("{}")
    cases = ((["--adapter", str(empty)], f"no LoRA adapter in {empty}: train first, or pass --adapter DIR"),
             (["--adapter", str(tmp_path / "run")], f"no LoRA adapter in {tmp_path / 'run'}: did you mean --adapter "
                                                    f"{tmp_path / 'run' / 'adapter'}?"),
             (["--gguf", str(missing)], f"no GGUF file at {missing}"))
    for flags, message in cases:
        assert chat.main(["recipes/wine.yaml", f"output_dir={tmp_path}", *flags, "--question", QUESTION]) == 2
        err = capsys.readouterr().err
        assert message in " ".join(err.split()) and len(err.strip().splitlines()) == 1, err
    # A file for --adapter is refused by argparse before anything loads, in evaluate's words.
    file = tmp_path / "index" / "chroma.sqlite3"
    with pytest.raises(SystemExit) as exit_:
        chat.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "--adapter", str(file), "--question", QUESTION])
    assert exit_.value.code == 2
    assert f"argument --adapter: {file} is a file, not a folder" in " ".join(capsys.readouterr().err.split())


def test_gguf_reply_opened_by_its_template_is_shown_whole(monkeypatch):
    # An export of a prompt.open_think run stores a template that ends the prompt with "<think>"; llama.cpp's
    # reply then starts after it, and the chat shows it as trained and evaluated (as AdapterChat does).
    from transformers import AutoTokenizer

    from toolkit import verify
    from toolkit.models import resolve_model
    from toolkit.prompts import open_think

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("packaged:smollm2-135m-instruct"))
    plain = tokenizer.chat_template
    open_think(tokenizer)

    class Llama:  # llama-cpp-python's Llama as loaded from such a file: its metadata and its reply
        chat_format = "chat_template.default"

        def __init__(self, template):
            self.metadata = {"tokenizer.chat_template": template}

        def create_chat_completion(self, **kwargs):
            return {"choices": [{"message": {"content": "Nebbiolo</think><answer>Nebbiolo</answer>"},
                                 "finish_reason": "stop"}]}

    for template, prefix in ((tokenizer.chat_template, "<think>"), (plain, "")):
        monkeypatch.setattr(verify, "load_llama", lambda path, n_ctx, template=template: Llama(template))
        model = chat.GGUFChat(__file__, 8)  # any existing file: the loader is the stand-in above
        assert model.prefix == prefix
        assert model.complete([]) == (prefix + "Nebbiolo</think><answer>Nebbiolo</answer>", None)


@pytest.mark.parametrize("flag", ["--gguf", "--adapter", "--run"])
def test_empty_flag_values_are_refused(tmp_path, capsys, flag):
    # Not silently the default model or run folder.
    with pytest.raises(SystemExit) as exit_:
        chat.main(["recipes/wine.yaml", f"output_dir={tmp_path}", f"{flag}=", "--question", QUESTION])
    assert exit_.value.code == 2
    assert f"argument {flag}: must not be empty" in capsys.readouterr().err


def test_a_question_that_is_not_utf8_is_one_line(tmp_path, capsys):
    # $'caf\xff' on the command line reaches Python as "caf\udcff" (surrogateescape), which tokenizers reject.
    assert chat.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "--question", "caf\udcff"]) == 2
    err = capsys.readouterr().err
    assert "the question is not valid UTF-8 text" in err and len(err.strip().splitlines()) == 1, err


def test_interactive_bad_bytes_are_reported_and_the_session_goes_on(monkeypatch):
    from rich.console import Console

    recipe = load_recipe(RECIPE)
    hits = [Hit("region-barolo:0:ab", "Barolo is made from Nebbiolo.", "region-barolo", 0.8)]

    class Index:
        def search(self, queries, k):
            queries[0].encode("utf-8")  # as a tokenizer would, it refuses a lone surrogate
            return [hits]

    class Model:
        def complete(self, messages):
            return "<think>The context says so.</think><answer>Nebbiolo</answer>", None

    monkeypatch.setattr("sys.stdin", io.StringIO(f"caf\udcff\n{QUESTION}\n\n"))
    out, err = io.StringIO(), io.StringIO()
    chat._answer_questions(recipe, Index(), Model(), None, None, Console(file=out, width=200),
                           Console(file=err, width=200))
    assert err.getvalue().count("the question is not valid UTF-8 text") == 1, err.getvalue()
    assert out.getvalue().count("answer: Nebbiolo") == 1, out.getvalue()


def test_blank_lines_are_skipped_and_exit_ends_the_session(monkeypatch):
    recipe = load_recipe(RECIPE)

    class Index:
        def search(self, queries, k):
            return [[Hit("region-barolo:0:ab", "Barolo is made from Nebbiolo.", "region-barolo", 0.8)]]

    class Model:
        asked = 0

        def complete(self, messages):
            self.asked += 1
            return "<think>The context says so.</think><answer>Nebbiolo</answer>", None

    from rich.console import Console

    model = Model()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{QUESTION}\n\n   \n{QUESTION}\nQuit\nnever asked\n"))
    out = io.StringIO()
    chat._answer_questions(recipe, Index(), model, None, None, Console(file=out, width=200),
                           Console(file=io.StringIO()))
    assert model.asked == 2 and out.getvalue().count("answer: Nebbiolo") == 2
    # A BOM before the first line (a file saved by Notepad) does not hide an exit.
    monkeypatch.setattr("sys.stdin", io.StringIO(f"\ufeffquit\n{QUESTION}\n"))
    chat._answer_questions(recipe, Index(), model, None, None, Console(file=out, width=200),
                           Console(file=io.StringIO()))
    assert model.asked == 2


@pytest.mark.parametrize("tty", [False, True])
def test_the_prompt_is_shown_only_to_a_terminal(monkeypatch, capsys, tty):
    from rich.console import Console

    class Stdin(io.StringIO):
        def isatty(self):
            return tty

    class Model:
        def complete(self, messages):
            return "<think>The context says so.</think><answer>Nebbiolo</answer>", None

    class Index:
        def search(self, queries, k):
            return [[Hit("region-barolo:0:ab", "Barolo is made from Nebbiolo.", "region-barolo", 0.8)]]

    monkeypatch.setattr("sys.stdin", Stdin(f"{QUESTION}\n{QUESTION}\n"))
    chat._answer_questions(load_recipe(RECIPE), Index(), Model(), None, None, Console(file=io.StringIO()),
                           Console(file=io.StringIO()))
    assert capsys.readouterr().out.count("question> ") == (3 if tty else 0)


def test_an_unloadable_gguf_is_one_model_error(tmp_path):
    pytest.importorskip("llama_cpp")
    from toolkit.models import ModelError

    for name, data in (("text.gguf", b"not a model\n"), ("truncated.gguf", b"GGUF\x03\x00\x00\x00" + b"\x00" * 8)):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ModelError, match=f"^{re.escape(str(path))}: llama.cpp cannot load it"):
            chat.GGUFChat(path, 8)


@pytest.mark.parametrize("defect", ["config not JSON", "config a list", "weights truncated", "rank differs"])
def test_a_broken_adapter_is_one_model_error(tmp_path, defect):
    import json

    from test_export import _tiny_model
    from test_models import broken_adapter

    from toolkit.models import ModelError

    model, _, base = _tiny_model(tmp_path, "llama")
    run = tmp_path / "run"
    run.mkdir()
    adapter = broken_adapter(run / "adapter", model, defect)
    (run / "report.json").write_text(json.dumps({"model_path": str(base)}))
    recipe = load_recipe(RECIPE, [f"output_dir={run}"])
    with pytest.raises(ModelError, match=f"^{re.escape(str(adapter))}: not a loadable LoRA adapter: "):
        chat.AdapterChat(recipe, adapter, 8)


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(chat, "open_index", interrupted)  # Ctrl-C while the embedder loads
    try:
        code = chat.main(["recipes/wine.yaml", f"output_dir={tmp_path}", "--question", QUESTION])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main() as a traceback")
    captured = capsys.readouterr()
    assert code == 130 and not captured.out
    assert captured.err.strip() == "interrupted"


def test_a_packaged_base_whose_cache_is_gone_is_made_again(tmp_path, monkeypatch):
    # The run's report names the converted cache folder; once it is gone, chat makes the packaged model again in
    # the current cache instead of failing.
    from test_export import gone_packaged_base

    run, conversions = gone_packaged_base(tmp_path, monkeypatch)
    model = chat.AdapterChat(load_recipe(RECIPE, [f"output_dir={run}"]), run / "adapter", 8)
    assert conversions == [tmp_path / "cache" / "toolkit"]
    assert model.model.peft_config and model.tokenizer.chat_template


def test_an_adapter_asked_with_another_prompt_than_the_run_is_warned_about(tmp_path, caplog):
    # The run trained with prompt.open_think; chat with the recipe alone would prompt without <think>: said, and
    # the chat goes on (another prompt may be the point). The same prompt says nothing.
    from test_export import _finished_run, record_prompt

    run = _finished_run(tmp_path)
    record_prompt(run, open_think=True)
    model = chat.AdapterChat(load_recipe(RECIPE, [f"output_dir={run}"]), run / "adapter", 8)
    assert ("asking the model unlike its training: prompt.open_think is true in the run (report.json) but false "
            "here: chat with the overrides the run trained with (prompt.open_think=true)") in caplog.text
    assert model.prefix == ""  # asked as this recipe says
    caplog.clear()
    model = chat.AdapterChat(load_recipe(RECIPE, [f"output_dir={run}", "prompt.open_think=true"]), run / "adapter", 8)
    assert "unlike its training" not in caplog.text
    assert model.prefix == "<think>"


def test_a_question_too_long_for_the_gguf_is_one_line_and_the_session_goes_on(tmp_path, monkeypatch):
    # llama-cpp-python refuses a prompt longer than the context with a bare ValueError: it was a traceback, and
    # in a session it ended the session.
    pytest.importorskip("llama_cpp")
    from rich.console import Console
    from test_export import _tiny_model

    from toolkit.gguf_convert import convert
    from toolkit.models import ModelError

    _, _, folder = _tiny_model(tmp_path, "llama")
    model = chat.GGUFChat(convert(folder, tmp_path / "tiny.gguf", "f32"), 2)
    try:
        with pytest.raises(ModelError, match="^the prompt is too long for the GGUF model"):
            model.complete([{"role": "user", "content": "Which grape " * 3000}])

        class Index:
            def search(self, queries, k):
                return [[Hit("region-barolo:0:ab", "Barolo is made from Nebbiolo.", "region-barolo", 0.8)]]

        monkeypatch.setattr("sys.stdin", io.StringIO(f"{'Which grape ' * 3000}\n{QUESTION}\n"))
        out, err = io.StringIO(), io.StringIO()
        chat._answer_questions(load_recipe(RECIPE), Index(), model, None, None, Console(file=out, width=200),
                               Console(file=err, width=200))
    finally:
        model.close()
    assert err.getvalue().count("the prompt is too long for the GGUF model") == 1, err.getvalue()
    assert out.getvalue().count("sources:") == 1, out.getvalue()


def test_an_embedder_that_cannot_load_ends_the_session(monkeypatch):
    # The index loads its embedder at the first search; one that cannot load (offline, package gone) is no fault of
    # the question: "ask again" for every question and exit 0 would hide it. It ends the session (exit 2 in main).
    from rich.console import Console

    from toolkit.models import ModelError

    class Index:
        searched = 0

        def search(self, queries, k):
            self.searched += 1
            raise ModelError("cannot load embedder 'packaged:all-minilm-l6-v2': We couldn't connect")

    class Model:
        def complete(self, messages):
            return "<answer>Nebbiolo</answer>", None

    index = Index()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{QUESTION}\n{QUESTION}\n"))
    with pytest.raises(ModelError, match="^cannot load embedder"):
        chat._answer_questions(load_recipe(RECIPE), index, Model(), None, None, Console(file=io.StringIO()),
                               Console(file=io.StringIO()))
    assert index.searched == 1
