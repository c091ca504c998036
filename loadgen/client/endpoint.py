"""The target a client sends to (`Endpoint`: URL, API, model, key, limits) and its request body."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from scenarios.plan import RequestSpec
from scenarios.redact import Redactor
from scenarios.spec import TargetSpec

Messages = list[dict[str, str]]


class MissingApiKey(ValueError):
    pass


def read_api_key(target: TargetSpec) -> str | None:
    """The key from the env var the scenario names; never stored anywhere else."""
    if not target.api_key_env:
        return None
    key = os.environ.get(target.api_key_env)
    if not key:
        raise MissingApiKey(
            f"target.api_key_env names {target.api_key_env}, which is not set: "
            f"export {target.api_key_env}=... and run again"
        )
    return key


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # ends in /v1 (or whatever prefix the API lives under)
    api: str = "chat"
    model: str = "surgecast-reference"
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    stream: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)
    max_response_bytes: int = 8 << 20

    @classmethod
    def from_target(
        cls,
        target: TargetSpec,
        base_url: str | None,
        api_key: str | None,
        required: dict[str, Any] | None = None,
    ) -> Endpoint:
        """The scenario's target at `base_url`; `required`: body fields the server needs (a
        random-weight model's `ignore_eos`), which the scenario's own extra_body overrides."""
        url = base_url or target.base_url
        if not url:
            raise ValueError("no target URL: give --target or target.base_url")
        return cls(
            url.rstrip("/"),
            target.api,
            target.model,
            api_key,
            target.timeout_s,
            target.stream,
            {**(required or {}), **target.extra_body},
            target.max_response_bytes,
        )

    @property
    def path(self) -> str:
        prefix = urlsplit(self.base_url).path.rstrip("/")
        return prefix + ("/chat/completions" if self.api == "chat" else "/completions")

    def body(self, spec: RequestSpec, messages: Messages | None = None) -> dict[str, Any]:
        """The request body; `messages` (a chat's history and new turn) default to the prompt."""
        if messages is None:
            messages = [{"role": "user", "content": spec.prompt or ""}]
        body: dict[str, Any] = {"model": self.model, "max_tokens": spec.max_tokens}
        if self.api == "chat":
            body["messages"] = messages
        else:
            body["prompt"] = "\n".join(m["content"] for m in messages)
        if self.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return {**body, **self.extra_body}

    @cached_property
    def redact(self) -> Redactor:
        """Masks the API key, and forms derived from it, in a target's words."""
        return Redactor(self.api_key)

    def address(self) -> tuple[str, int]:
        """(host, port) to connect to: a plain-HTTP host resolved to its address once (HTTPS
        keeps the name, which the certificate check needs)."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if self.tls else 80)
        if self.tls:
            return host, port
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return host, port  # connecting will fail and say why
        return str(info[0][4][0]), port

    @property
    def tls(self) -> bool:
        return urlsplit(self.base_url).scheme == "https"

    @property
    def host_header(self) -> str:
        """The Host header the URL names (kept when connecting to a resolved address)."""
        return urlsplit(self.base_url).netloc
