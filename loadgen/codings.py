"""A response body's Content-Encoding undone as its bytes come: gzip and deflate (the stdlib's
zlib), in bounded pieces, so a small compressed body standing for gigabytes (a zip bomb) is
counted piece by piece by the reader and never inflated whole."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

PIECE = 1 << 16  # decoded bytes handed on at a time
IDENTITY = ("", "identity")
DECODED = ("gzip", "x-gzip", "deflate")


class ContentEncodingError(ValueError):
    """A body in a coding the client does not undo, or not in the coding its header names."""


class BodyDecoder:
    """One body's coding, undone as it is fed. Deflate is taken zlib-wrapped (RFC 9110) or
    raw, as browsers take it, told apart by its first two bytes."""

    def __init__(self, coding: str):
        coding = coding.strip().lower()
        if coding not in DECODED:
            raise ContentEncodingError(
                f"the body is {coding!r}-encoded, which is not decoded (surgecast asks for "
                "identity, or takes gzip and deflate)"
            )
        self.coding = coding
        self._inflate: zlib._Decompress | None = None
        self._lead = b""  # deflate's first bytes, until its wrapping is known

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes `data` completes, in pieces of at most PIECE bytes."""
        if self._inflate is None:
            self._lead += data
            if len(self._lead) < 2:
                return
            data, self._lead = self._lead, b""
            self._inflate = zlib.decompressobj(self._wbits(data))
        inflate = self._inflate
        try:
            piece = inflate.decompress(data, PIECE)
            while True:
                if piece:
                    yield piece
                if not inflate.unconsumed_tail:
                    return
                piece = inflate.decompress(inflate.unconsumed_tail, PIECE)
        except zlib.error as e:
            raise ContentEncodingError(f"the body is not valid {self.coding}: {e}") from None

    def finish(self) -> None:
        """At the body's end: it must have been a whole compressed stream (or nothing)."""
        if self._inflate is None and not self._lead:
            return  # no body at all (a 204, a redirect)
        if self._inflate is None or not self._inflate.eof:
            raise ContentEncodingError(f"the {self.coding} body ended before its stream did")

    def _wbits(self, lead: bytes) -> int:
        if self.coding != "deflate":
            return 31  # gzip's header and trailer
        zlib_wrapped = lead[0] & 0x0F == 8 and ((lead[0] << 8) | lead[1]) % 31 == 0
        return 15 if zlib_wrapped else -15


def decoder_for(content_encoding: str) -> BodyDecoder | None:
    """The decoder a Content-Encoding header asks for; None for an identity body.
    ContentEncodingError for a coding not undone, or several stacked."""
    coding = content_encoding.strip().lower()
    if coding in IDENTITY:
        return None
    if "," in coding:
        raise ContentEncodingError(f"the body is encoded several times ({coding!r})")
    return BodyDecoder(coding)
