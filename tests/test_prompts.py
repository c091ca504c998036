"""Prompt text sized in characters: exact sizes, shared prefixes, templates, and learning a
server's chars-per-token ratio from `usage`-like counts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from scenarios.corpora import CorpusSpec
from scenarios.prompts import (
    CodeSource,
    CorpusSource,
    Prompt,
    RagSource,
    SummariseSource,
    TextSource,
    UninformativeUsage,
    WordsSource,
    estimate_chars_per_token,
    fit_chars,
    prefix_text,
    shared_key,
)
from scenarios.text import count_tokens
from tests.corpus_sets import CorpusSet

QUERIES = [
    "How do I reset my password?",
    "my card got declined at the shop, why",
    "Can I change the delivery address of an order I placed yesterday?",
    "what is the exchange rate for euros today",
    "I was charged twice for the same payment. Please refund one of them.",
    "Where can I see my invoice?",
]


@pytest.fixture
def query_file(tmp_path: Path) -> CorpusSpec:
    path = tmp_path / "queries.txt"
    path.write_text("\n".join(QUERIES) + "\n", encoding="utf-8")
    return CorpusSpec(path="queries.txt", format="text")


def sources(spec: CorpusSpec) -> list[TextSource]:
    return [
        WordsSource(),
        CorpusSource(corpus=spec),
        RagSource(corpus=spec, passages=spec),
        RagSource(),
        SummariseSource(corpus=spec),
        SummariseSource(),
        CodeSource(),
    ]


SIZES = [1, 2, 3, 7, 20, 49, 50, 51, 99, 300, 1199, 2401, 10_000, 60_000]


def test_every_source_renders_exactly_the_size(query_file: CorpusSpec, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for source in sources(query_file):
        for n in SIZES:
            p = source.render(rng, n, base_dir=tmp_path)
            assert p.n_chars == len(p.system) + len(p.user) == n, (source.type, n)
            assert p.user or p.system
            p.user.encode("utf-8")
        assert source.render(rng, 0, base_dir=tmp_path).n_chars == 0


def test_deterministic_for_a_seed(query_file: CorpusSpec, tmp_path: Path) -> None:
    for source in sources(query_file):

        def draw(seed: int, src: TextSource = source) -> list[Prompt]:
            rng = np.random.default_rng(seed)
            return [src.render(rng, n, base_dir=tmp_path) for n in (80, 700, 3000)]

        assert draw(5) == draw(5)
        assert draw(5) != draw(6)


def test_rag_system_prompts_are_shared_and_stable(query_file: CorpusSpec, tmp_path: Path) -> None:
    src = RagSource(corpus=query_file, system_prompts=3, system_chars=500, passages_per_query=2)
    rng = np.random.default_rng(0)
    systems: dict[int, str] = {}
    for _ in range(60):
        p = src.render(rng, 2000, base_dir=tmp_path)
        ((key, text),) = p.shared
        assert text == p.system and len(text) == 500
        assert systems.setdefault(key, text) == text  # same index: byte-identical
        assert p.user.count("\n\n[") == 1 and p.user.startswith("[1] ")
        assert p.user.split("\n\nQuestion: ")[1] in QUERIES
    assert set(systems) == {shared_key("rag", i) for i in range(3)}
    assert len(set(systems.values())) == 3
    small = src.render(np.random.default_rng(1), 300, base_dir=tmp_path)
    assert len(small.system) == 150
    assert any(src.system_prompt(i).startswith(small.system) for i in range(3))


def test_prefix_text_blocks() -> None:
    a = prefix_text(42, 400)
    assert a == prefix_text(42, 400) and len(a) == 400 and a.endswith(" ")
    assert a != prefix_text(43, 400) and a != prefix_text(-42, 400)
    blocks = [prefix_text(k, 64) for k in range(200)]
    assert len(set(blocks)) == 200
    assert all(len(prefix_text(7, n)) == n for n in range(0, 70))
    assert shared_key("rag", 1) == shared_key("rag", 1) != shared_key("rag", 2)


def test_corpus_source_draws_whole_queries(query_file: CorpusSpec, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    lines: list[str] = []
    for _ in range(20):
        lines.extend(CorpusSource(corpus=query_file).render(rng, 1000, tmp_path).user.split("\n"))
        lines.pop()  # the last one is cut to size
    assert set(lines) <= set(QUERIES) and len(set(lines)) == len(QUERIES)
    whole = CorpusSource(corpus=query_file, pad=False).render(rng, 5000, tmp_path)
    assert whole.user in QUERIES


def test_summarise_pastes_consecutive_corpus_lines(query_file: CorpusSpec, tmp_path: Path) -> None:
    p = SummariseSource(corpus=query_file).render(np.random.default_rng(2), 400, tmp_path)
    instruction, doc = p.user.split("\n\n", 1)
    lines = doc.split("\n")[:-1]
    start = QUERIES.index(lines[0])
    assert lines == [QUERIES[(start + i) % len(QUERIES)] for i in range(len(lines))]
    assert instruction.endswith((".", ":"))


def test_code_source_has_code_and_traces() -> None:
    user = CodeSource().render(np.random.default_rng(4), 3000).user
    assert "```python\n" in user and user.endswith("\n```")
    for needle in ("def ", "class ", "Traceback (most recent call last):", "return "):
        assert needle in user


def test_fit_chars_cuts_at_a_word_boundary() -> None:
    text = "alpha beta gamma delta epsilon"
    for n in range(1, 40):
        out = fit_chars(text, n)
        assert len(out) == n
    out = fit_chars(text, 20)
    assert out.startswith("alpha beta gamma") and out.split()[:3] == ["alpha", "beta", "gamma"]
    assert fit_chars("", 30).strip() and len(fit_chars("", 30)) == 30


def test_union_parses_by_type(query_file: CorpusSpec) -> None:
    adapter: TypeAdapter[TextSource] = TypeAdapter(TextSource)
    got = adapter.validate_python(
        {"type": "rag", "corpus": {"path": "q.txt", "format": "text"}, "system_prompts": 2}
    )
    assert isinstance(got, RagSource) and got.system_prompts == 2
    assert isinstance(adapter.validate_python({"type": "code"}), CodeSource)
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "poem"})
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "rag", "system_prompts": 0})


def test_estimate_recovers_a_line_and_falls_back() -> None:
    chars = [100, 400, 1000, 2500, 4000]
    tokens = [13 + c / 3.5 for c in chars]
    cpt, a = estimate_chars_per_token(chars, tokens)
    assert cpt == pytest.approx(3.5) and a == pytest.approx(13)
    assert estimate_chars_per_token([400], [100]) == (4.0, 0.0)
    assert estimate_chars_per_token([400, 400], [100, 120]) == (pytest.approx(400 / 110), 0.0)
    cpt, a = estimate_chars_per_token([100, 200], [10, 40])  # intercept would be -20
    assert a == 0.0 and cpt == pytest.approx(50_000 / 9_000)
    with pytest.raises(ValueError):
        estimate_chars_per_token([], [])
    with pytest.raises(ValueError):
        estimate_chars_per_token([1, 2], [1])


def test_usage_that_ignores_the_prompt_teaches_no_ratio() -> None:
    """A fixed count whatever the length (the sizing probes' three sizes): the slope is zero,
    its ratio infinite, and through the origin no tokenizer's either: refused, not returned."""
    chars = [192, 768, 3072]
    with pytest.raises(UninformativeUsage, match="do not follow the prompts' lengths"):
        estimate_chars_per_token(chars, [7, 7, 7])
    with pytest.raises(UninformativeUsage):  # nor a count that falls as prompts grow
        estimate_chars_per_token(chars, [900, 300, 2])
    assert estimate_chars_per_token(chars, [c / 15 for c in chars])[0] == pytest.approx(15)


TEMPLATE_TOKENS = 9  # a chat template's fixed overhead, as a server's `usage` includes it


def served_tokens(p: Prompt) -> int:
    return count_tokens(p.system) + count_tokens(p.user) + TEMPLATE_TOKENS


def check_sizing_via_fit(source: TextSource, base_dir: Path | None) -> None:
    """Fit on 20 prompts, then size 200 prompts of planned token counts through the fit."""
    rng = np.random.default_rng(11)
    n_fit = rng.integers(400, 8000, size=20)
    served = [served_tokens(source.render(rng, int(n), base_dir)) for n in n_fit]
    cpt, a = estimate_chars_per_token(n_fit.tolist(), served)
    planned = rng.integers(200, 2001, size=200)
    got = np.array(
        [served_tokens(source.render(rng, round((t - a) * cpt), base_dir)) for t in planned]
    )
    err = np.abs(got - planned) / planned
    assert np.median(err) < 0.05 and np.quantile(err, 0.9) < 0.05, (source.type, cpt, a)


@pytest.mark.parametrize("source", [WordsSource(), RagSource(), SummariseSource(), CodeSource()])
def test_sizing_through_a_learned_ratio_generated(source: TextSource) -> None:
    check_sizing_via_fit(source, None)


def test_sizing_through_a_learned_ratio_catalog_corpora(corpora: CorpusSet) -> None:
    """The catalog's queries, RAG questions and passages; a document to summarise made of the
    passages (homogeneous prose: the summariser's own mix of reports, transcripts and lists
    varies in characters per token beyond this 5% bound, one ratio for all)."""
    for source in (
        CorpusSource(corpus=corpora.queries),
        RagSource(corpus=corpora.questions, passages=corpora.passages),
        SummariseSource(corpus=corpora.passages),
    ):
        check_sizing_via_fit(source, None)


def test_catalog_corpus_queries_are_verbatim(corpora: CorpusSet) -> None:
    spec = corpora.queries
    assert spec.format == "csv"
    with Path(spec.path).open(encoding="utf-8", newline="") as f:
        truth = {row[spec.text_field or "text"].strip() for row in csv.DictReader(f)}
    src = CorpusSource(corpus=spec)
    lines = src.render(np.random.default_rng(0), 5000).user.split("\n")[:-1]
    assert len(lines) > 20 and set(lines) <= truth
