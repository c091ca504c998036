"""Measuring how messy text came out, against its originals (`measure`, `MessStats`)."""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scenarios.messy import Messiness
from scenarios.messy_vocab import (
    FOREIGN_SET,
    INJECTIONS,
    NON_ALNUM,
    SLANG_KEYS,
    SLANG_PAIRS,
    SLANG_VALUES,
    ZERO_WIDTH,
    norm,
    split_word,
    typo_eligible,
)


def _words(text: str) -> list[str]:
    return text.split()


def _osa_distance_is_one(a: str, b: str) -> bool:
    """True when `b` is `a` with one substitution, deletion, insertion or adjacent swap."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        d = [i for i in range(len(a)) if a[i] != b[i]]
        if len(d) == 1:
            return True  # a substitution
        return len(d) == 2 and d[1] == d[0] + 1 and a[d[0]] == b[d[1]] and a[d[1]] == b[d[0]]
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long_[i]:
        i += 1
    return short[i:] == long_[i + 1 :]


def _is_typo(word: str, messy: str) -> bool:
    return (
        word.isascii()
        and word.isalpha()
        and (word, messy) not in SLANG_PAIRS
        and _osa_distance_is_one(word, messy)
    )


def _word_diff(orig: str, messy: str) -> tuple[int, int, bool]:
    """(eligible words in `orig`, how many of them one typo changed, whether letter case changed)
    by aligning the normalised word sequences."""
    wa, wb = _words(orig), _words(messy)
    eligible = sum(1 for w in wa if typo_eligible(split_word(w)[1]))
    if orig == messy:
        return eligible, 0, False
    a, b = [norm(w) for w in wa], [norm(w) for w in wb]
    blocks: Sequence[tuple[str, int, int, int, int]] = [("equal", 0, len(a), 0, len(b))]
    if len(a) != len(b):  # typos and case keep the word count; other kinds need aligning
        blocks = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    changed, case = 0, False
    for op, i1, i2, j1, j2 in blocks:
        if op in ("equal", "replace") and i2 - i1 == j2 - j1:  # pair word by word
            pairs = range(i2 - i1)
            changed += sum(_is_typo(a[i1 + k], b[j1 + k]) for k in pairs)
            case = case or any(
                a[i1 + k] == b[j1 + k]
                and NON_ALNUM.sub("", wa[i1 + k]) != NON_ALNUM.sub("", wb[j1 + k])
                for k in pairs
            )
        elif op == "replace":  # unequal runs: pair each original with any one-typo match
            pool = list(b[j1:j2])
            for w in a[i1:i2]:
                hit = next((k for k, v in enumerate(pool) if _is_typo(w, v)), None)
                if hit is not None:
                    changed += 1
                    pool.pop(hit)
    return eligible, changed, case


def _punct(text: str) -> str:
    return "".join(c for c in text if c in string.punctuation)


_EMOJI_RE = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
_EDGE_RES = {
    "rtl": re.compile("[\u0590-\u05ff\u200e\u200f\u202a-\u202e]"),
    "combining": re.compile("[\u0300-\u036f]"),
    "zero_width": re.compile("[" + "".join(ZERO_WIDTH) + "]"),
    "non_bmp": re.compile("[\U00010000-\U0001f2ff\U0001fb00-\U0010ffff]"),  # not emoji
}


def count_emoji(text: str) -> int:
    """Emoji characters in `text` (the pictograph and dingbat blocks)."""
    return len(_EMOJI_RE.findall(text))


def edge_kinds(text: str) -> set[str]:
    """Which Unicode edge-case kinds `text` holds (bidi controls or Hebrew, combining
    diacriticals, zero-width characters, non-BMP characters that are not emoji)."""
    return {kind for kind, pattern in _EDGE_RES.items() if pattern.search(text)}


def _count_foreign(text: str) -> int:
    return sum(
        1 for w in _words(text) if w.strip(string.punctuation) in FOREIGN_SET or w in FOREIGN_SET
    )


def _count_injections(text: str) -> int:
    return sum(text.count(s) for s in INJECTIONS)


@dataclass(frozen=True, slots=True)
class MessStats:
    """How messy texts came out, measured against their originals (element by element)."""

    n_messages: int
    typo_rate: float  # share of eligible original words changed by one typo
    slang_share: float  # slang abbreviations added per eligible phrase in the originals
    code_mixing_rate: float  # other-language words added per original word
    case_share: float  # messages whose letter case changed
    punctuation_share: float  # messages whose ASCII punctuation changed
    emoji_share: float  # messages that gained emoji
    unicode_edge_share: float  # messages that gained a Unicode edge case
    injection_share: float  # messages that gained an injection string
    empty_share: float  # messages empty or whitespace only
    non_ascii_share: float  # non-ASCII share of all characters
    length_p50: float
    length_p90: float
    length_p99: float
    original_p50: float
    original_p90: float
    original_p99: float

    def rows(self, settings: Messiness) -> list[tuple[str, str, str]]:
        """(name, setting, measured) to print beside the settings; for lengths the setting
        column holds the originals' length."""
        pairs = [
            ("typo", settings.typo, self.typo_rate),
            ("slang", settings.slang, self.slang_share),
            ("code_mixing", settings.code_mixing, self.code_mixing_rate),
            ("case_noise", settings.case_noise, self.case_share),
            ("punctuation_noise", settings.punctuation_noise, self.punctuation_share),
            ("emoji", settings.emoji, self.emoji_share),
            ("unicode_edge", settings.unicode_edge, self.unicode_edge_share),
            ("injection", settings.injection, self.injection_share),
            ("empty", settings.empty, self.empty_share),
        ]
        rows = [(name, f"{s:.3f}", f"{m:.3f}") for name, s, m in pairs]
        rows.append(("non_ascii chars", "-", f"{self.non_ascii_share:.3f}"))
        for q, o, m in (
            ("p50", self.original_p50, self.length_p50),
            ("p90", self.original_p90, self.length_p90),
            ("p99", self.original_p99, self.length_p99),
        ):
            rows.append((f"length {q} (chars)", f"{o:.0f}", f"{m:.0f}"))
        return rows


def measure(originals: Sequence[str], messy: Sequence[str]) -> MessStats:
    """Measure messiness by comparing each messy text with its original (same order)."""
    if len(originals) != len(messy) or not originals:
        raise ValueError(f"need equal, non-empty sequences; got {len(originals)}, {len(messy)}")
    n = len(originals)
    eligible = typos = 0
    slang_eligible = slang_added = 0
    words = foreign = 0
    case = punct = emoji = edge = inject = empty = 0
    non_ascii = chars = 0
    for o, m in zip(originals, messy, strict=True):
        if not m.strip():
            empty += 1
        e, t, c = _word_diff(o, m)
        eligible += e
        typos += t
        case += c
        slang_eligible += len(SLANG_KEYS.findall(o))
        slang_added += len(SLANG_VALUES.findall(m)) - len(SLANG_VALUES.findall(o))
        words += len(_words(o))
        foreign += _count_foreign(m) - _count_foreign(o)
        punct += _punct(o) != _punct(m)
        emoji += count_emoji(m) > count_emoji(o)
        edge += bool(edge_kinds(m) - edge_kinds(o))
        inject += _count_injections(m) > _count_injections(o)
        non_ascii += len(m) - len(m.encode("ascii", "ignore"))
        chars += len(m)
    lm = np.percentile([len(m) for m in messy], [50, 90, 99])
    lo = np.percentile([len(o) for o in originals], [50, 90, 99])
    return MessStats(
        n_messages=n,
        typo_rate=typos / max(eligible, 1),
        slang_share=max(slang_added, 0) / max(slang_eligible, 1),
        code_mixing_rate=max(foreign, 0) / max(words, 1),
        case_share=case / n,
        punctuation_share=punct / n,
        emoji_share=emoji / n,
        unicode_edge_share=edge / n,
        injection_share=inject / n,
        empty_share=empty / n,
        non_ascii_share=non_ascii / max(chars, 1),
        length_p50=float(lm[0]),
        length_p90=float(lm[1]),
        length_p99=float(lm[2]),
        original_p50=float(lo[0]),
        original_p90=float(lo[1]),
        original_p99=float(lo[2]),
    )
