"""Messy text: each rate lands near its setting, 0 leaves text untouched, output is valid UTF-8,
and the measurements agree with independent counts."""

from __future__ import annotations

import math
import unicodedata
from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from scenarios.corpora import load_corpus
from scenarios.messy import Messiness, empty_text, paste_text, typo
from scenarios.messy_measure import MessStats, edge_kinds, measure
from scenarios.messy_vocab import INJECTIONS
from tests.corpus_sets import CorpusSet

SENTENCES = [
    "Thank you for the quick reply, by the way.",
    "Can you please tell me why my card payment was declined?",
    "I want to cancel the order I placed yesterday.",
    "My transfer has been pending for three days, what is going on?",
    "Thanks! Could you send the invoice to my new email address?",
    "To be honest I really don't understand the exchange rate you applied.",
    "Please let me know as soon as possible if the refund went through.",
    "Where can I change the delivery address for my parcel?",
    "I am going to travel abroad tomorrow. Will my card work there?",
    "Why was I charged twice for the same purchase with your app?",
    "People keep telling me the password reset link is broken.",
    "How long does a standard bank transfer usually take before it arrives?",
    "Your message said my account was locked, because of what?",
    "I got a notification about a payment I never made!",
    "Is there a fee for topping up with Apple Pay or Google Pay?",
    "Never mind, I found the statement in the settings page.",
]
MESSAGES = [SENTENCES[i % len(SENTENCES)] for i in range(2000)]

# A standard QWERTY layout's letter neighbours, written out by hand as the independent truth.
NEAR = {
    "a": "qwsz",
    "s": "weadzx",
    "g": "tyfhvb",
    "k": "iojlm",
    "p": "ol",
    "m": "njk",
    "q": "wa",
}


def messy_all(m: Messiness, seed: int = 0, messages: list[str] = MESSAGES) -> list[str]:
    rng = np.random.default_rng(seed)
    return [m.apply(t, rng) for t in messages]


def tol(p: float, n: int) -> float:
    """4.5 binomial standard errors (never flakes at a fixed seed, catches a wrong rate)."""
    return 4.5 * math.sqrt(max(p * (1 - p), 0.0025) / n) + 1e-9


def eligible_words(texts: list[str]) -> int:
    return sum(
        1
        for t in texts
        for w in t.split()
        if len(c := w.strip("!?,.'\"")) >= 2 and c.isascii() and c.isalpha()
    )


def test_zero_rates_leave_text_untouched() -> None:
    m = Messiness()
    rng = np.random.default_rng(0)
    assert [m.apply(t, rng) for t in MESSAGES[:50]] == MESSAGES[:50]
    assert rng.random() == np.random.default_rng(0).random()  # nothing drawn
    assert m.request_kind(rng) == "normal"
    stats = measure(MESSAGES, MESSAGES)
    assert stats.typo_rate == stats.emoji_share == stats.non_ascii_share == 0.0


@pytest.mark.parametrize(
    ("field", "p", "stat", "unit"),
    [
        ("typo", 0.08, "typo_rate", "eligible"),
        ("slang", 0.4, "slang_share", "phrases"),
        ("code_mixing", 0.05, "code_mixing_rate", "words"),
        ("case_noise", 0.2, "case_share", "messages"),
        ("punctuation_noise", 0.3, "punctuation_share", "messages"),
        ("emoji", 0.15, "emoji_share", "messages"),
        ("unicode_edge", 0.1, "unicode_edge_share", "messages"),
        ("injection", 0.05, "injection_share", "messages"),
    ],
)
def test_each_rate_lands_near_its_setting(field: str, p: float, stat: str, unit: str) -> None:
    m = Messiness.model_validate({field: p})
    out = messy_all(m, seed=7)
    stats = measure(MESSAGES, out)
    n = {
        "eligible": eligible_words(MESSAGES),
        "phrases": 0,
        "words": sum(len(t.split()) for t in MESSAGES),
        "messages": len(MESSAGES),
    }[unit]
    if unit == "phrases":  # hand-counted eligible phrases per sentence, times repetitions
        per_sentence = [2, 2, 1, 0, 2, 4, 3, 0, 2, 2, 1, 1, 3, 0, 1, 1]
        n = sum(per_sentence[i % len(SENTENCES)] for i in range(len(MESSAGES)))
    got = getattr(stats, stat)
    assert abs(got - p) < tol(p, n), (field, got, p, n)
    untouched = sum(o == t for o, t in zip(MESSAGES, out, strict=True)) / len(out)
    assert untouched < 1.0


def test_slang_eligible_phrase_count_is_the_hand_count() -> None:
    stats = measure(MESSAGES[:16], messy_all(Messiness(slang=1.0), messages=MESSAGES[:16]))
    assert stats.slang_share == 1.0
    rng = np.random.default_rng(0)
    out = Messiness(slang=1.0).apply("Thank you, by the way. Please see you tomorrow!", rng)
    assert out == "ty, btw. pls cya tmrw!"


def test_typo_kinds_all_occur_evenly() -> None:
    out = messy_all(Messiness(typo=0.2), seed=3)
    kinds: Counter[str] = Counter()
    for o, t in zip(MESSAGES, out, strict=True):
        for a, b in zip(o.split(), t.split(), strict=True):  # typos keep the word count
            a, b = a.lower(), b.lower()
            if a == b:
                continue
            if len(b) == len(a) - 1:
                kinds["drop"] += 1
            elif len(b) == len(a) + 1:
                i = next(k for k in range(len(a)) if a[k] != b[k]) if b[:-1] != a else len(a)
                assert b[i] == b[i - 1]  # a doubled letter
                kinds["double"] += 1
            else:
                d = [k for k in range(len(a)) if a[k] != b[k]]
                if len(d) == 1:
                    assert b[d[0]] in NEAR.get(a[d[0]], b[d[0]])
                    kinds["adjacent"] += 1
                else:
                    assert len(d) == 2 and (a[d[0]], a[d[1]]) == (b[d[1]], b[d[0]])
                    kinds["swap"] += 1
    total = sum(kinds.values())
    assert measure(MESSAGES, out).typo_rate == pytest.approx(total / eligible_words(MESSAGES))
    assert set(kinds) == {"adjacent", "drop", "double", "swap"}
    for c in kinds.values():
        assert abs(c / total - 0.25) < tol(0.25, total), kinds


def test_case_and_punctuation_kinds_all_occur() -> None:
    cased = messy_all(Messiness(case_noise=1.0), seed=12)
    kinds = Counter(
        "lower" if t == o.lower() else "upper" if t == o.upper() else "random"
        for o, t in zip(MESSAGES, cased, strict=True)
    )
    for c in kinds.values():
        assert abs(c / len(cased) - 1 / 3) < tol(1 / 3, len(cased)), kinds
    assert all(t.lower() == o.lower() for o, t in zip(MESSAGES, cased, strict=True))
    punct = messy_all(Messiness(punctuation_noise=1.0), seed=13)
    seen: Counter[str] = Counter()
    for o, t in zip(MESSAGES, punct, strict=True):
        if t.endswith(("!!!", "??", "?!?!", "...")):
            seen["repeated"] += 1
        elif t == o[:-1]:
            seen["dropped"] += 1
        else:
            assert t == "".join(c for c in o if c not in ",.!?'")
            seen["stripped"] += 1
    # Three distinct changes where a sentence has inner punctuation (7 of 16), else two.
    inner = sum(any(c in ",.!?'" for c in o[:-1]) for o in SENTENCES)
    assert inner == 7
    share = {"stripped": inner / 16 / 3, "dropped": inner / 48 + (16 - inner) / 32}
    for kind, p in share.items():
        assert abs(seen[kind] / len(punct) - p) < tol(p, len(punct)), seen


def test_typo_function_kinds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        out = typo("aaaa", rng, "swap")  # nothing to swap: doubles instead, still a change
        assert out == "aaaaa"
        adj = typo("Mask", rng, "adjacent")
        assert adj != "Mask" and len(adj) == 4
        i = next(k for k in range(4) if adj[k] != "Mask"[k])
        assert adj[i].lower() in NEAR.get("Mask"[i].lower(), adj[i].lower())
        assert adj[0].isupper()  # case kept


def test_deterministic_for_a_seed() -> None:
    m = Messiness(typo=0.1, slang=0.3, emoji=0.2, code_mixing=0.05, unicode_edge=0.2, injection=0.1)
    assert messy_all(m, seed=1) == messy_all(m, seed=1)
    assert messy_all(m, seed=1) != messy_all(m, seed=2)


def test_output_is_valid_utf8_and_edge_kinds_all_occur() -> None:
    m = Messiness(
        typo=0.3,
        slang=0.5,
        case_noise=0.5,
        punctuation_noise=0.5,
        emoji=0.5,
        code_mixing=0.2,
        unicode_edge=1.0,
        injection=0.2,
    )
    out = messy_all(m, seed=5)
    kinds: Counter[str] = Counter()
    for t in out:
        t.encode("utf-8")  # raises on lone surrogates
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in t)
        kinds.update(edge_kinds(t))
    # Each of the four kinds is drawn for a quarter of messages (code-mixing adds no edge kind).
    for kind in ("rtl", "combining", "zero_width", "non_bmp"):
        assert abs(kinds[kind] / len(out) - 0.25) < tol(0.25, len(out)), kinds
    joined = "".join(out)
    assert any(unicodedata.bidirectional(c) in ("R", "RLO", "RLE") for c in joined)
    assert any(unicodedata.category(c) == "Mn" for c in joined)
    assert "\u200b" in joined or "\u200d" in joined
    assert any(ord(c) > 0xFFFF for c in joined)


def test_code_mixing_brings_other_scripts() -> None:
    out = messy_all(Messiness(code_mixing=0.1), seed=2)
    stats = measure(MESSAGES, out)
    assert stats.non_ascii_share > 0.005
    joined = "".join(out)
    for lo, hi in ((0x0900, 0x097F), (0x4E00, 0x9FFF), (0x0600, 0x06FF)):  # Devanagari, CJK, Arabic
        assert any(lo <= ord(c) <= hi for c in joined)
    assert stats.emoji_share == 0 and stats.injection_share == 0


def test_injection_strings_appear_at_the_rate() -> None:
    out = messy_all(Messiness(injection=0.1), seed=4)
    hits = [t for t in out if any(t.endswith("\n\n" + s) for s in INJECTIONS)]
    assert abs(len(hits) / len(out) - 0.1) < tol(0.1, len(out))
    assert all(h.startswith(o) for h, o in zip(out, MESSAGES, strict=True))


def test_request_kinds_at_their_rates() -> None:
    m = Messiness(long_paste=0.05, empty=0.1)
    rng = np.random.default_rng(8)
    kinds = Counter(m.request_kind(rng) for _ in range(20_000))
    assert abs(kinds["empty"] / 20_000 - 0.1) < tol(0.1, 20_000)
    assert abs(kinds["long_paste"] / 20_000 - 0.05) < tol(0.05, 20_000)


def test_paste_and_empty_texts() -> None:
    rng = np.random.default_rng(6)
    pastes = [paste_text(rng, n) for n in (50, 999, 20_000) for _ in range(6)]
    assert [len(p) for p in pastes] == [n for n in (50, 999, 20_000) for _ in range(6)]
    joined = "\n".join(pastes)
    assert "Traceback" in joined and "Z INFO" in joined and "req_id=" in joined
    empties = [empty_text(rng) for _ in range(300)]
    assert all(e.strip() == "" for e in empties)
    assert "" in empties and "\u00a0" in empties and len(set(empties)) >= 8


def test_length_stays_close_without_injections() -> None:
    m = Messiness(typo=0.05, slang=0.1, case_noise=0.2, punctuation_noise=0.2, emoji=0.1)
    out = messy_all(m, seed=9)
    ratio = sum(map(len, out)) / sum(map(len, MESSAGES))
    assert 0.95 < ratio < 1.05


def test_measure_lengths_rows_and_empty_share() -> None:
    messy = [t if i % 10 else " \n" for i, t in enumerate(MESSAGES)]
    stats = measure(MESSAGES, messy)
    lengths = [len(t) for t in messy]
    assert stats.empty_share == pytest.approx(0.1)
    assert stats.length_p90 == pytest.approx(float(np.percentile(lengths, 90)))
    assert stats.original_p50 == pytest.approx(float(np.median([len(t) for t in MESSAGES])))
    rows = stats.rows(Messiness(empty=0.1))
    assert ("empty", "0.100", "0.100") in rows
    assert [r[0] for r in rows][:2] == ["typo", "slang"]
    assert isinstance(stats, MessStats) and stats.n_messages == 2000
    with pytest.raises(ValueError):
        measure(["a"], [])


def test_settings_validated() -> None:
    with pytest.raises(ValidationError):
        Messiness(typo=1.5)
    with pytest.raises(ValidationError):
        Messiness(long_paste=0.6, empty=0.5)
    with pytest.raises(ValidationError):
        Messiness.model_validate({"typos": 0.1})


def test_rates_hold_on_catalog_queries(corpora: CorpusSet) -> None:
    texts = list(load_corpus(corpora.queries).texts[:2000])
    for field, p, stat in (
        ("typo", 0.05, "typo_rate"),
        ("code_mixing", 0.05, "code_mixing_rate"),
        ("case_noise", 0.2, "case_share"),
        ("emoji", 0.1, "emoji_share"),
    ):
        m = Messiness.model_validate({field: p})
        got = getattr(measure(texts, messy_all(m, seed=21, messages=texts)), stat)
        # Per-word kinds see ~9 words a query; 2000 trials is the conservative count.
        assert abs(got - p) < tol(p, len(texts)), (field, got)
