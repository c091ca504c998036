"""Messy user text: typos, slang, case and punctuation noise, emoji, code-mixing, Unicode edge
cases, prompt injections, long pastes and empty prompts (what they are made of:
`scenarios.messy_vocab`; how messy text came out: `scenarios.messy_measure`).

`Messiness.apply` changes text in place of a user: per-word kinds (slang, code-mixing, typos)
first, then per-message kinds (case, punctuation, emoji, Unicode edge cases, an appended
injection). Lengths change little except through injections: a typo adds or removes at most one
character, slang shortens phrases (you -> u), code-mixing adds a word (about 7 characters) where
it inserts, emoji add 2 to 6 characters, Unicode edge cases 2 to 20, an injection 50 to 110. At
rates of a few percent and no injections, text stays within a few percent of its length.

`long_paste` and `empty` act per request, not on text: `request_kind(rng)` draws which of
"normal", "long_paste" (render `paste_text(rng, paste_factor * planned chars)`) or "empty"
(`empty_text(rng)`) a request is. Apply messiness to the user message only: system prompts and
shared prefix blocks must stay byte-identical for prefix caching.
"""

from __future__ import annotations

import re
import string
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from scenarios.base import Strict
from scenarios.messy_vocab import (
    COMBINING,
    EMOJI,
    FOREIGN,
    INJECTIONS,
    NEAR,
    NON_BMP,
    RTL,
    SLANG,
    SLANG_KEYS,
    TYPO_KINDS,
    UNICODE_EDGE_KINDS,
    ZERO_WIDTH,
    split_word,
    typo_eligible,
)
from scenarios.prompts import code_snippet, fit_chars, prose

RequestKind = Literal["normal", "long_paste", "empty"]

_SPACE_SPLIT = re.compile(r"(\s+)")
_EMPTY = ("", " ", "  ", "\n", "\t", " \n\t ", "\r\n", "\u00a0", "\u2003", "\u3000", "\n\n\n")


class Messiness(Strict):
    """Per-persona rates of messy text, all 0 by default (text untouched)."""

    typo: float = Field(default=0.0, ge=0, le=1)  # per eligible word (ASCII letters, >= 2)
    slang: float = Field(default=0.0, ge=0, le=1)  # per phrase in `SLANG`
    case_noise: float = Field(default=0.0, ge=0, le=1)  # per message
    punctuation_noise: float = Field(default=0.0, ge=0, le=1)  # per message
    emoji: float = Field(default=0.0, ge=0, le=1)  # per message, 1-3 emoji
    code_mixing: float = Field(default=0.0, ge=0, le=1)  # per word: replace or insert
    unicode_edge: float = Field(default=0.0, ge=0, le=1)  # per message
    injection: float = Field(default=0.0, ge=0, le=1)  # per message, appended
    long_paste: float = Field(default=0.0, ge=0, le=1)  # per request
    empty: float = Field(default=0.0, ge=0, le=1)  # per request
    paste_factor: float = Field(default=20.0, ge=1)  # a paste is this many times the plan

    @model_validator(mode="after")
    def _per_request_at_most_one(self) -> Messiness:
        if self.long_paste + self.empty > 1:
            raise ValueError(f"long_paste + empty must be <= 1, got {self.long_paste + self.empty}")
        return self

    def request_kind(self, rng: np.random.Generator) -> RequestKind:
        """Which kind of request this is: one uniform draw (none when both rates are 0)."""
        if self.long_paste == 0 and self.empty == 0:
            return "normal"
        u = rng.random()
        if u < self.empty:
            return "empty"
        return "long_paste" if u < self.empty + self.long_paste else "normal"

    def apply(self, text: str, rng: np.random.Generator) -> str:
        """`text` made messy by the text-level kinds; deterministic for the rng state."""
        if self.slang:
            text = SLANG_KEYS.sub(
                lambda m: SLANG[m.group(0).lower()] if rng.random() < self.slang else m.group(0),
                text,
            )
        if self.code_mixing or self.typo:
            text = self._per_word(text, rng)
        if self.case_noise and rng.random() < self.case_noise:
            text = _case_noise(text, rng)
        if self.punctuation_noise and rng.random() < self.punctuation_noise:
            text = _punctuation_noise(text, rng)
        if self.emoji and rng.random() < self.emoji:
            for _ in range(int(rng.integers(1, 4))):
                text = _insert_at_space(text, EMOJI[int(rng.integers(len(EMOJI)))], rng)
        if self.unicode_edge and rng.random() < self.unicode_edge:
            text = unicode_edge(text, rng, UNICODE_EDGE_KINDS[int(rng.integers(4))])
        if self.injection and rng.random() < self.injection:
            text = text + "\n\n" + INJECTIONS[int(rng.integers(len(INJECTIONS)))]
        return text

    def _per_word(self, text: str, rng: np.random.Generator) -> str:
        parts = _SPACE_SPLIT.split(text)
        for i in range(0, len(parts), 2):
            word = parts[i]
            if not word:
                continue
            if self.code_mixing and rng.random() < self.code_mixing:
                foreign = FOREIGN[int(rng.integers(len(FOREIGN)))]
                pre, _, post = split_word(word)
                word = pre + foreign + post if rng.random() < 0.5 else f"{word} {foreign}"
            elif self.typo:
                pre, core, post = split_word(word)
                if typo_eligible(core) and rng.random() < self.typo:
                    kind = TYPO_KINDS[int(rng.integers(len(TYPO_KINDS)))]
                    word = pre + typo(core, rng, kind) + post
            parts[i] = word
        return "".join(parts)


def typo(word: str, rng: np.random.Generator, kind: str) -> str:
    """`word` (ASCII letters, >= 2) with one typo of `kind` (see `TYPO_KINDS`); always changed."""
    i = int(rng.integers(len(word)))
    if kind == "swap":
        spots = [j for j in range(len(word) - 1) if word[j] != word[j + 1]]
        if spots:
            j = spots[int(rng.integers(len(spots)))]
            return word[:j] + word[j + 1] + word[j] + word[j + 2 :]
        kind = "double"  # "aa": no swap changes it
    if kind == "adjacent":
        near = NEAR[word[i].lower()]
        c = near[int(rng.integers(len(near)))]
        return word[:i] + (c.upper() if word[i].isupper() else c) + word[i + 1 :]
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    return word[: i + 1] + word[i] + word[i + 1 :]  # double


def _case_noise(text: str, rng: np.random.Generator) -> str:
    flips = rng.random(len(text)) < 0.5
    random_caps = "".join(c.upper() if f else c.lower() for c, f in zip(text, flips, strict=True))
    options = [t for t in (text.lower(), text.upper(), random_caps) if t != text]
    return options[int(rng.integers(len(options)))] if options else text


def _punctuation_noise(text: str, rng: np.random.Generator) -> str:
    body = text.rstrip()
    stripped = "".join(c for c in text if c not in string.punctuation)
    options = [stripped if stripped.strip() else text]
    options.append(body.rstrip(".!?") + ("!!!", "??", "?!?!", "...")[int(rng.integers(4))])
    if body and body[-1] in ".!?":
        options.append(body[:-1])
    options = list(dict.fromkeys(o for o in options if o != text))  # distinct changes only
    return options[int(rng.integers(len(options)))] if options else text


def _insert_at_space(text: str, piece: str, rng: np.random.Generator) -> str:
    """`piece` inserted after a random word (or at the end), separated by a space."""
    spaces = [m.start() for m in re.finditer(r" ", text)] + [len(text)]
    at = spaces[int(rng.integers(len(spaces)))]
    return text[:at] + " " + piece + text[at:]


def unicode_edge(text: str, rng: np.random.Generator, kind: str) -> str:
    """`text` with one Unicode edge case of `kind` (see `UNICODE_EDGE_KINDS`) inserted."""
    if kind == "rtl":
        return _insert_at_space(text, RTL[int(rng.integers(len(RTL)))], rng)
    if kind == "non_bmp":
        return _insert_at_space(text, NON_BMP[int(rng.integers(len(NON_BMP)))], rng)
    letters = [i for i, c in enumerate(text) if c.isascii() and c.isalpha()]
    if not letters:
        return text + ("a\u0301" if kind == "combining" else "a\u200db")
    i = letters[int(rng.integers(len(letters)))]
    if kind == "combining":  # one accent, or a zalgo-like stack
        k = 1 if rng.random() < 0.5 else int(rng.integers(3, 7))
        marks = "".join(COMBINING[int(j)] for j in rng.integers(len(COMBINING), size=k))
        return text[: i + 1] + marks + text[i + 1 :]
    return text[:i] + ZERO_WIDTH[int(rng.integers(len(ZERO_WIDTH)))] + text[i:]


_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
_COMPONENTS = ("api", "worker", "scheduler", "db.pool", "auth", "cache", "http")


def paste_text(rng: np.random.Generator, n_chars: int) -> str:
    """A long paste of exactly `n_chars`: a log dump, a stack trace, or a document."""
    kind = int(rng.integers(3))
    if kind == 1:
        return fit_chars(code_snippet(rng, n_chars), n_chars)
    if kind == 2:
        return prose(rng, n_chars)
    lines: list[str] = []
    size = 0
    t = float(rng.uniform(0, 3600))
    while size < n_chars:
        t += float(rng.exponential(0.4))
        level = _LEVELS[int(rng.integers(len(_LEVELS)))]
        comp = _COMPONENTS[int(rng.integers(len(_COMPONENTS)))]
        msg = prose(rng, int(rng.integers(20, 90))).rstrip(".?")
        line = (
            f"2026-03-14T{int(t // 3600) % 24:02d}:{int(t // 60) % 60:02d}:{t % 60:06.3f}Z "
            f"{level:<5} [{comp}] {msg} req_id={int(rng.integers(16**8)):08x}"
        )
        lines.append(line)
        size += len(line) + 1
    return fit_chars("\n".join(lines), n_chars)


def empty_text(rng: np.random.Generator) -> str:
    """An empty or whitespace-only prompt ('' or spaces, newlines, tabs, NBSP, ideographic)."""
    return _EMPTY[int(rng.integers(len(_EMPTY)))]
