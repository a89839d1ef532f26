"""Tests for toolkit.search: `python -m toolkit.search RECIPE "query" [-k N]` over an index toolkit.index built."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WINEMAG_COLUMNS, WINEMAG_ROWS

from toolkit.cli import index_command
from toolkit.index_store import Hit
from toolkit.search import format_hit, main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "winemag.yaml")


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    """recipes/winemag.yaml pointed at a 10-review CSV, with its index built."""
    from toolkit.index import main as index_main

    tmp = tmp_path_factory.mktemp("search")
    with open(tmp / "reviews.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([WINEMAG_COLUMNS, *WINEMAG_ROWS])
    overrides = [f"data.corpus.0.path={tmp / 'reviews.csv'}", f"output_dir={tmp / 'out'}"]
    assert index_main([RECIPE, *overrides]) == 0
    return overrides


def search(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_top_k_chunks_with_scores_and_sources(overrides, capsys):
    code, out, _ = search(capsys, RECIPE, "Which grape variety is 'Alto Sol 2017 Malbec (Mendoza)'?", "-k", "3",
                          *overrides)
    assert code == 0
    heads = re.findall(r"^(\d)\. (\d\.\d{3})  (\S+)  \[(\S+)\]", out, flags=re.MULTILINE)
    assert [rank for rank, *_ in heads] == ["1", "2", "3"]
    scores = [float(score) for _, score, _, _ in heads]
    assert scores == sorted(scores, reverse=True)
    _, _, source, chunk_id = heads[0]
    assert source == "reviews#17" and chunk_id.startswith("reviews#17:0:")
    # The document's metadata follows, then its text, indented; braces and quotes come out verbatim.
    assert "country=Argentina" in out.splitlines()[0] and "variety=Malbec" in out.splitlines()[0]
    assert '   Alto Sol 2017 Malbec (Mendoza): a Malbec from Mendoza Province, Argentina. Dark fruit, "big" and ' \
           "plush, with {braces} kept." in out


def test_k_defaults_to_the_recipe_top_k(overrides, capsys):
    code, out, _ = search(capsys, RECIPE, "Sancerre", *overrides)  # winemag.yaml: top_k 1
    assert code == 0
    assert re.findall(r"^\d\. ", out, flags=re.MULTILINE) == ["1. "]
    assert "reviews#14" in out


@pytest.mark.parametrize("k", ["100", str(2**40)])
def test_a_k_past_the_chunks_gives_them_all(overrides, capsys, k):
    # A k past 2**32 made Chroma raise OverflowError: a traceback.
    code, out, err = search(capsys, RECIPE, "Malbec", "-k", k, *overrides)
    assert code == 0 and "Traceback" not in err
    assert len(re.findall(r"^\d+\. ", out, flags=re.MULTILINE)) == 10  # the index's 10 chunks


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["Malbec", "output_dir={tmp}/nowhere"], "error: no index at {tmp}/nowhere/index; build it with: "),
        (["Malbec", "retrieval.collection=other"], "error: no collection 'other' in the index at"),
        (["Malbec", "retrieval.embedder=/some/other-embedder"], "was built with embedder 'packaged:all-minilm-l6-v2', "
                                                               "not '/some/other-embedder'"),
        (["  "], "error: the query is empty"),
        (["Malbec", "-k", "0"], "error: -k must be at least 1, got 0"),
        (["Malbec", "retrieval.top_kk=2"], "retrieval.top_kk: unknown field (did you mean 'top_k'?)"),
        # Chunks cut otherwise than the recipe says: answered from them, silently, before the chunking was recorded.
        (["Malbec", "retrieval.chunk_size=100"], "was built with retrieval.chunk_size 200, not 100; build it with: "),
        (["Malbec", "retrieval.chunk_overlap=8"], "was built with retrieval.chunk_overlap 32, not 8; build it with: "),
    ],
)
def test_errors_are_one_line(overrides, capsys, tmp_path, argv, expected):
    query, *rest = [a.format(tmp=tmp_path) for a in argv]
    code, out, err = search(capsys, RECIPE, query, *overrides, *rest)  # later overrides win
    assert code == 2 and not out
    [line] = [line for line in err.splitlines() if line.strip()]
    assert expected.format(tmp=tmp_path) in line, line
    assert not (tmp_path / "nowhere").exists()  # searching never creates an index


def test_a_partly_built_index_is_refused_until_the_build_completes(overrides, capsys, stopped_index_build, tmp_path):
    # A build stopped after some batches left an index that answered from those alone, with exit 0.
    from toolkit.index import main as index_main

    built = [overrides[0], f"output_dir={tmp_path}", "retrieval.write_batch_size=4"]
    assert stopped_index_build([RECIPE, *built], at=3) == 130
    capsys.readouterr()
    code, out, err = search(capsys, RECIPE, "Malbec", *built)
    assert code == 2 and not out
    assert err.strip() == f"error: the index at {tmp_path}/index is incomplete (its last build failed or was " \
                          f"stopped); build it with: {index_command(RECIPE, built)}"
    assert index_main([RECIPE, *built]) == 0  # the command the error names completes it
    code, out, _ = search(capsys, RECIPE, "Malbec", "-k", "100", *built)
    assert code == 0 and len(re.findall(r"^\d+\. ", out, flags=re.MULTILINE)) == 10


def test_format_hit():
    hit = Hit("notes#fino:0:abc", "## Fino\n\nAged under flor.", "notes#fino", 0.81234,
              {"source": "notes#fino", "position": 0, "style": "dry"})
    assert format_hit(2, hit) == "2. 0.812  notes#fino  [notes#fino:0:abc]  style=dry\n   ## Fino\n   Aged under flor."


def test_the_build_hint_carries_the_overrides(overrides, capsys, tmp_path):
    # The hint once named the recipe alone: pasted, it built the recipe's default index, not the one asked for.
    nowhere = f"output_dir={tmp_path}/my runs/x"
    code, _, err = search(capsys, RECIPE, "Malbec", *overrides, nowhere)
    assert code == 2
    assert err.strip().endswith(f"build it with: {index_command(RECIPE, [*overrides, nowhere])}")
    assert f"-m toolkit.index {RECIPE} {overrides[0]} {overrides[1]} '{nowhere}'" in err  # quoted for a shell


def test_the_build_hint_names_this_interpreter(monkeypatch, tmp_path):
    # A bare `python` may be another interpreter, or none: the README's is .venv/bin/python.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
    assert index_command("r.yaml", ["a=b c"]) == ".venv/bin/python -m toolkit.index r.yaml 'a=b c'"
    monkeypatch.setattr(sys, "executable", "/usr/bin/python3")
    assert index_command("r.yaml", []) == "/usr/bin/python3 -m toolkit.index r.yaml"


def test_runs_as_a_module(tmp_path, overrides):
    proc = subprocess.run([sys.executable, "-m", "toolkit.search", RECIPE, "Malbec", overrides[0],
                           f"output_dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"no index at {tmp_path}/index" in proc.stderr and "Traceback" not in proc.stderr


def test_a_query_that_is_not_utf8(overrides, capsys):
    # Bytes that are not UTF-8 reach argv as lone surrogates (Python's surrogateescape).
    code, out, err = search(capsys, RECIPE, os.fsdecode(b"caf\xff"), *overrides)
    assert code == 2 and not out
    assert err.strip() == "error: the query is not valid UTF-8 text"


def test_an_index_that_is_a_file_or_damaged(overrides, capsys, tmp_path):
    (tmp_path / "file").mkdir()
    (tmp_path / "file" / "index").write_text("x")
    code, _, err = search(capsys, RECIPE, "Malbec", *overrides, f"output_dir={tmp_path / 'file'}")
    assert code == 2
    assert err.strip().startswith(f"error: {tmp_path}/file/index is a file, not a folder: ")
    (tmp_path / "bad" / "index").mkdir(parents=True)
    (tmp_path / "bad" / "index" / "chroma.sqlite3").write_text("garbage")
    code, _, err = search(capsys, RECIPE, "Malbec", *overrides, f"output_dir={tmp_path / 'bad'}")
    assert code == 2 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.strip()]
    assert line.startswith(f"error: the index at {tmp_path}/bad/index is unreadable (") and "file is not a database" \
        in line and "delete that folder to rebuild it" in line
    assert (tmp_path / "bad" / "index" / "chroma.sqlite3").read_text() == "garbage"


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("toolkit.search.open_index", interrupted)  # Ctrl-C while the embedder loads
    try:
        code, out, err = search(capsys, "recipes/wine.yaml", "Malbec", f"output_dir={tmp_path}")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main() as a traceback")
    assert code == 130 and not out
    assert err.strip() == "interrupted"


def test_an_override_where_the_query_goes_is_refused(overrides, capsys):
    # `search RECIPE output_dir=runs/x "Malbec"` searched for "output_dir=runs/x" and printed its chunks, exit 0.
    code, out, err = search(capsys, RECIPE, overrides[1], "Malbec", overrides[0])
    assert code == 2 and not out
    assert err.strip() == (f"error: the query {overrides[1]!r} looks like an override: the query comes right after "
                           "the recipe, then the overrides")
    code, out, _ = search(capsys, RECIPE, "E=mc2 Malbec", *overrides)  # an '=' in a question is no override
    assert code == 0 and out.startswith("1. ")
