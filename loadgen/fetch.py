"""Side requests to a target (its model list, limits, metrics): each bounded in bytes and in
time, so a server that misbehaves (an endless or slow body, a thousand headers, a status line
without an end) gives a clean error, never a hang, a memory that grows, or a crash."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from typing import Any

MAX_BYTES = 8 << 20  # a model list, /props or /metrics is kilobytes; this is far past them
CHUNK = 1 << 16


class SideRequestError(OSError):
    """A side request that did not give a usable answer in time and size."""


def fetch(
    url: str,
    timeout_s: float = 5.0,
    headers: dict[str, str] | None = None,
    max_bytes: int = MAX_BYTES,
) -> bytes:
    """The body of a GET of `url`, whole within `timeout_s` and `max_bytes`.

    urllib.error.HTTPError for an error status (the caller may read its code); any other
    failure (no answer, an answer too long, too slow, or not HTTP) is an OSError saying so.
    """
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            body = bytearray()
            while chunk := r.read1(CHUNK):  # what one receive gives: a slow body is seen
                body += chunk
                if len(body) > max_bytes:
                    raise SideRequestError(f"{url}: answer over {max_bytes:,} bytes")
                if time.monotonic() > deadline:
                    raise SideRequestError(f"{url}: answer not whole within {timeout_s:g} s")
            return bytes(body)
    except http.client.HTTPException as e:  # too many headers, a line too long, not HTTP
        raise SideRequestError(f"{url}: not a usable HTTP answer ({type(e).__name__})") from None


def fetch_json(url: str, timeout_s: float = 5.0, headers: dict[str, str] | None = None) -> Any:
    """`fetch`'s body as JSON; ValueError for a body that is not (nested too deeply too)."""
    body = fetch(url, timeout_s, headers)
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError(f"{url}: JSON nested too deeply") from None
