"""Personal data taken out of imported text: e-mail addresses, phone numbers, payment card
numbers and IBANs, each replaced by a placeholder and counted.

Cards are Luhn-checked and IBANs mod-97-checked, so an order number of the right length is not
taken for either. Phone numbers need a phone's shape (a leading +country code, or digit groups
joined by separators or a bracketed area code), so a bare run of digits is left alone: imported
text keeps its numbers, and a false alarm costs only a placeholder.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

PLACEHOLDERS = {"email": "[EMAIL]", "iban": "[IBAN]", "card": "[CARD]", "phone": "[PHONE]"}

_EMAIL = re.compile(r"\b[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # +44 20 7946 0958
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r"|0\d{1,4}(?:[ .-]\d{2,4}){2,4}"  # 020 7946 0958, 06-12 34 56 78
    r")(?!\w)"
)


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in reversed(_digits(number))]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits))
    return len(digits) >= 13 and total % 10 == 0


# issuer prefixes and lengths of the card networks (Visa; Mastercard; Amex; Discover)
_ISSUERS = re.compile(r"4(?:\d{12}|\d{15}|\d{18})|5[1-5]\d{14}|2[2-7]\d{14}|3[47]\d{13}|6\d{15,18}")


def card_ok(text: str) -> bool:
    """A card number: a network's prefix and length, and a valid Luhn check digit (an order
    number of the right length passes the check one time in ten; few have a card's prefix)."""
    digits = _digits(text)
    return _ISSUERS.fullmatch(digits) is not None and luhn_ok(digits)


def iban_ok(text: str) -> bool:
    iban = text.replace(" ", "")
    moved = iban[4:] + iban[:4]
    return 15 <= len(iban) <= 34 and int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _phone_ok(text: str) -> bool:
    return 8 <= len(_digits(text)) <= 15


RULES: tuple[tuple[str, re.Pattern[str], Callable[[str], bool]], ...] = (
    ("email", _EMAIL, lambda _: True),
    ("iban", _IBAN, iban_ok),
    ("card", _CARD, card_ok),
    ("phone", _PHONE, _phone_ok),
)


def scrub(text: str, counts: Counter[str] | None = None) -> str:
    """`text` with every identifier found replaced by its placeholder; `counts` (if given)
    gains one per identifier replaced, by kind."""
    for kind, pattern, valid in RULES:

        def replace(
            m: re.Match[str], kind: str = kind, valid: Callable[[str], bool] = valid
        ) -> str:
            if not valid(m.group(0)):
                return m.group(0)
            if counts is not None:
                counts[kind] += 1
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
    return text


HASH_SCHEME = "hmac-sha256:"  # a hashed prompt's prefix: the scheme a reader can tell


def stored_prompt(text: str | None, mode: str, key: bytes) -> str | None:
    """What a record keeps of a prompt, per the scenario's `privacy.store_prompts`: nothing,
    an HMAC-SHA256 of it keyed with the run's secret `key` (equal prompts hash alike within the
    run; without the key a short prompt cannot be found by hashing guesses), or the text."""
    if text is None or mode == "none":
        return None
    if mode == "hashed":
        return HASH_SCHEME + hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    return text


QUOTED_CHARS = 12  # a stretch this long that a server's words share with the prompt quotes it


def mask_quoted(text: str, prompt: str, k: int = QUOTED_CHARS) -> str:
    """`text` (a server's error message) with every stretch of `k` characters or more that it
    shares with `prompt` replaced by "[prompt]": servers quote the prompt they refuse, and a run
    whose privacy setting keeps no prompt must not keep it there either."""
    if len(text) < k or not prompt:
        return text
    covered = bytearray(len(text))
    for i in range(len(text) - k + 1):
        if text[i : i + k] in prompt:
            covered[i : i + k] = b"\x01" * k
    if not any(covered):
        return text
    out, i = [], 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append("[prompt]")
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class PromptStore:
    """A run's `privacy.store_prompts` and its hashing key: random per run, held in memory and
    handed to the run's worker processes, never written (a run's hashes cannot be compared with
    another run's, nor reversed by hashing guesses)."""

    mode: str = "none"
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def keep(self, text: str | None) -> str | None:
        return stored_prompt(text, self.mode, self.key)
