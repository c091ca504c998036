"""Query corpora: real files counted independently, every format, every error with its place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scenarios.corpora import (
    CorpusError,
    CorpusSpec,
    load_corpus,
    parse_corpus,
)
from scenarios.corpus_formats import MAX_PROBLEMS, select_json
from tests.corpus_sets import FILES, REAL, SHIPPED, CorpusSet, Counted, line_count, needs_data


@pytest.mark.parametrize("case", FILES)
def test_counts_match_readme_and_an_independent_count(case: Counted) -> None:
    """Every file of the project's own sets and of the public corpora: the loader keeps each
    text an independent reader finds, and the total is the one its README states."""
    total = 0
    for spec in case.specs:
        corpus = load_corpus(spec)
        assert len(corpus.texts) == case.count(spec), spec.path
        assert corpus.conversations == ()
        total += len(corpus.texts)
    assert total == case.readme
    if case.first is not None:
        assert load_corpus(case.specs[0]).texts[0] == case.first


def test_relative_path_resolves_against_base_dir_then_cwd(
    corpora: CorpusSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(corpora.passages.path)
    base = path.parents[1]
    spec = CorpusSpec(path=str(path.relative_to(base)), format="text")
    n = line_count(path)
    assert len(load_corpus(spec, base_dir=base).texts) == n > 50
    monkeypatch.chdir(base)
    assert len(load_corpus(spec, base_dir=tmp_path).texts) == n


def _words(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


@needs_data
def test_the_shipped_sets_share_no_text_with_the_public_corpora() -> None:
    """The project's own sets are its own: not one text (case, punctuation and spacing aside)
    is a text of banking77, CLINC150 or bitext."""
    public = {_words(t) for c in REAL.values() for s in c.specs for t in load_corpus(s).texts}
    assert len(public) > 40_000
    for case in SHIPPED.values():
        (spec,) = case.specs
        assert not {_words(t) for t in load_corpus(spec).texts} & public, spec.path


def test_cache_reloads_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("one\ntwo\n", encoding="utf-8")
    spec = CorpusSpec(path=str(path), format="text")
    a = load_corpus(spec)
    assert load_corpus(spec) is a  # cached
    path.write_text("one\ntwo\nthree and more\n", encoding="utf-8")
    os.utime(path, ns=(1, 10**18))  # a distinct mtime even on coarse file systems
    assert load_corpus(spec).texts == ("one", "two", "three and more")


def test_sharegpt_array_and_jsonl(tmp_path: Path) -> None:
    convs = [
        {
            "id": "a",
            "conversations": [
                {"from": "human", "value": "hi there"},
                {"from": "gpt", "value": "hello"},
                {"from": "human", "value": "what is 2+2?"},
            ],
        },
        {"id": "b", "conversations": [{"from": "system", "value": "be brief"}]},
    ]
    spec = CorpusSpec(path="x", format="sharegpt")
    for raw in (json.dumps(convs), "\n".join(json.dumps(c) for c in convs)):
        got = parse_corpus(raw.encode(), spec, "conv.json")
        assert got.texts == ("hi there", "what is 2+2?")
        assert got.conversations[0] == (
            ("user", "hi there"),
            ("assistant", "hello"),
            ("user", "what is 2+2?"),
        )
        assert got.conversations[1] == (("system", "be brief"),)


def test_openai_jsonl_bodies_and_wrappers() -> None:
    req = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ],
    }
    lines = [
        json.dumps(req),
        json.dumps({"custom_id": "1", "body": {"messages": [{"role": "user", "content": "b"}]}}),
        "",
        json.dumps({"request": {"messages": [{"role": "user", "content": "c"}]}}),
        json.dumps({"body": {"prompt": "completion prompt"}}),
    ]
    got = parse_corpus("\n".join(lines).encode(), CorpusSpec(path="x", format="openai-jsonl"), "l")
    assert got.texts == ("second", "b", "c", "completion prompt")
    assert got.conversations[0][0] == ("system", "sys")
    assert len(got.conversations) == 4


def test_max_texts_and_blank_lines() -> None:
    spec = CorpusSpec(path="x", format="text", max_texts=2)
    assert parse_corpus(b"\n a \n\n b\nc\n", spec, "t").texts == ("a", "b")


def test_select_json_rules() -> None:
    doc = {"a": [{"t": "x"}, {"t": "y"}], "b": {"c": ["p", "q"]}}
    assert select_json(doc, "a[*].t") == ["x", "y"]
    assert select_json(doc, "a[-1].t") == ["y"]
    assert select_json(doc, "b.c[*]") == ["p", "q"]
    assert select_json(doc, "*") == [doc["a"], doc["b"]]
    assert select_json(doc, "a[5].t") == []
    with pytest.raises(ValueError, match="bad selector"):
        select_json(doc, "a[x]")


def problems_of(data: bytes, spec: CorpusSpec) -> list[str]:
    with pytest.raises(CorpusError) as info:
        parse_corpus(data, spec, "f")
    assert str(info.value).startswith("f: ")
    return info.value.problems


def test_errors_name_place() -> None:
    csv_spec = CorpusSpec(path="x", format="csv", text_field="utterance")
    (p,) = problems_of(b"text,category\nhi,a\n", csv_spec)
    assert "no column 'utterance'" in p and "columns found: text, category" in p
    (p,) = problems_of(b"  \n\n", CorpusSpec(path="x", format="text"))
    assert "empty" in p
    got = problems_of(b"good\nbad \xff here\n\xc3(\n", CorpusSpec(path="x", format="text"))
    assert got == [
        "line 2, column 5: not UTF-8 (byte 0xff at offset 9)",
        "line 3, column 1: not UTF-8 (byte 0xc3 at offset 16)",
    ]
    (p,) = problems_of(b'{"a": [1,, 2]}', CorpusSpec(path="x", format="json", text_field="a"))
    assert p.startswith("line 1, column 10: invalid JSON")
    jl = b'{"messages": []}\n{"messages": [\n{"nope": 1}\n'
    got = problems_of(jl, CorpusSpec(path="x", format="openai-jsonl"))
    assert [g.split(":")[0] for g in got] == ["line 2, column 15", "line 3, field 'messages'"]
    (p,) = problems_of(b'{"a": 1}', CorpusSpec(path="x", format="json", text_field="b[*]"))
    assert "selector 'b[*]' matches nothing (top level: a)" in p
    (p,) = problems_of(b"text\n \n\n", CorpusSpec(path="x", format="csv"))
    assert "no non-empty texts" in p
    (p,) = problems_of(b"a,text\n1\n", CorpusSpec(path="x", format="csv"))
    assert p.startswith("line 2, field 'text': row has 1 columns")


def test_error_list_is_capped() -> None:
    lines = b"\n".join(b"{bad" for _ in range(30))
    got = problems_of(lines, CorpusSpec(path="x", format="sharegpt"))
    assert len(got) == MAX_PROBLEMS + 1
    assert got[-1] == "... and 10 more"
    assert got[0].startswith("line 1, column 2: invalid JSON")


def test_missing_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="cannot read file"):
        load_corpus(CorpusSpec(path="nope.txt", format="text"), base_dir=tmp_path)
    big = tmp_path / "big.txt"
    big.write_bytes(b"word\n" * 300_000)
    with pytest.raises(CorpusError, match=r"1,500,000 bytes, over the limit of 1,048,576"):
        load_corpus(CorpusSpec(path=str(big), format="text", max_mb=1))
