"""Prompt text of a known length, and the word-level token count the reference target uses.

The reference target counts a token per word or punctuation mark, so a prompt built here with
`make_prompt(rng, n)` is exactly `n` tokens to it. Real engines tokenize differently; their own
`usage` counts are what records keep when a server reports them.
"""

from __future__ import annotations

import re

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")

_WORDS = (  # noqa: SIM905 - a word list reads best as text
    "the be to of and a in that have it for not on with he as you do at this but his by from they "
    "we say her she or an will my one all would there their what so up out if about who get which "
    "go me when make can like time no just him know take people into year your good some could "
    "them see other than then now look only come its over think also back after use two how our "
    "work first well way even new want because any these give day most us account card payment "
    "order refund delivery password login transfer balance invoice model server latency token "
    "cache batch queue deploy error retry timeout limit price plan upgrade cancel help please "
    "thanks question answer explain summary code python function table report data chart"
).split()
_PUNCT = (",", ".", "?", "!")


def count_tokens(text: str) -> int:
    """Tokens as the reference target counts them: one per word or punctuation mark."""
    return len(_TOKEN.findall(text))


def make_prompt(rng: np.random.Generator, n_tokens: int) -> str:
    """A sentence-like prompt of exactly `n_tokens` tokens (by `count_tokens`)."""
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    words = rng.choice(len(_WORDS), size=n_tokens)
    punct = rng.random(n_tokens) < 0.12
    out: list[str] = []
    for i in range(n_tokens):
        if punct[i] and out and out[-1] not in _PUNCT and i < n_tokens - 1:
            out.append(_PUNCT[int(words[i]) % len(_PUNCT)])
        else:
            out.append(_WORDS[int(words[i])])
    text = " ".join(out)
    for p in _PUNCT:
        text = text.replace(f" {p}", p)
    return text


def output_word(index: int) -> str:
    """The word the reference target emits as output token `index` (one token per chunk)."""
    return _WORDS[(index * 7 + 3) % len(_WORDS)]
