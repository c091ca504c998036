"""Keeping a secret (an API key) out of everything a run writes, including forms derived from it.

A target can echo a key whole, cut short ("sk-abc...xyz"), in another case, or encoded (base64,
hex). A `Redactor` replaces every token that carries such a form with "***": a token holding a
stretch of `PLAIN` characters of the key, or of `ENCODED` characters of one of its encodings.
Whole tokens are matched, never fragments of ordinary words, so a short key does not garble
every message or show where its characters occur (issue 26, finding 12); a key shorter than
`PLAIN` is redacted where it stands as a token of its own.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

PLAIN = 6  # key characters in a row that mark a token as carrying the key (any case)
ENCODED = 8  # base64 characters in a row that do (48 bits: no chance match)
HEX = 12  # hex digits in a row that do (48 bits)
MASK = "***"

# a word as a key, base64 or percent-encoding spell it ('=' only as base64's padding), so
# "key=sk-..." keeps its "key="
_TOKEN = re.compile(r"[A-Za-z0-9_\-+/.~%]+=*")
_KEY_CHARS = r"A-Za-z0-9_\-"


def _windows(text: str, width: int) -> set[str]:
    return {text[i : i + width] for i in range(len(text) - width + 1)}


def _base64_cores(secret: bytes) -> list[str]:
    """The characters of the key's base64 that do not depend on the bytes around it, for each
    of the three alignments the key can have inside a longer encoded text."""
    cores = []
    for shift in range(3):
        encoded = base64.b64encode(bytes(shift) + secret).decode()
        cores.append(encoded[4 if shift else 0 : -4])  # the groups holding only key bytes
    return cores


@dataclass(frozen=True)
class Redactor:
    """`redactor(text)`: `text` with the secret and its derived forms masked."""

    secret: str | None = field(default=None, repr=False)
    _plain: frozenset[str] = field(init=False, repr=False, compare=False)
    _encoded: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plain: set[str] = set()
        encoded: set[str] = set()
        if self.secret and len(self.secret) >= PLAIN:
            raw = self.secret.encode()
            plain = _windows(self.secret.lower(), PLAIN) | _windows(raw.hex(), HEX)
            for core in _base64_cores(raw):
                urlsafe = core.replace("+", "-").replace("/", "_")
                encoded |= _windows(core, ENCODED) | _windows(urlsafe, ENCODED)
        object.__setattr__(self, "_plain", frozenset(plain))
        object.__setattr__(self, "_encoded", frozenset(encoded))

    def __call__(self, text: str) -> str:
        if not self.secret:
            return text
        whole = rf"(?<![{_KEY_CHARS}]){re.escape(self.secret)}(?![{_KEY_CHARS}])"
        text = re.sub(whole, MASK, text)
        if not self._plain:
            return text
        return _TOKEN.sub(lambda m: MASK if self._carries(m.group()) else m.group(), text)

    def _carries(self, token: str) -> bool:
        lower = token.lower()
        if any(lower[i : i + w] in self._plain for w in (PLAIN, HEX) for i in range(len(lower))):
            return True
        return any(token[i : i + ENCODED] in self._encoded for i in range(len(token)))
