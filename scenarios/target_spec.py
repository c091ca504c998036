"""A scenario's target sections: the endpoint a run sends to (`target`) and the engine model the
built-in reference target serves (`reference_target`, with the faults it may inject)."""

from __future__ import annotations

import random
import re
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, field_validator, model_validator

from scenarios.base import Strict


class CredentialInUrl(ValueError):
    """A URL that carries a credential: its message never repeats the URL."""


SECRET_PARAMETER = re.compile(r"key|token|secret|passw|auth|sig|credential", re.IGNORECASE)


def check_base_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host and a valid port, and no credential in it (a
    URL is written to run.json and the reports: `user:pass@` or `?api-key=` would leak);
    ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            "must be an http:// or https:// URL with a host, like http://127.0.0.1:8000/v1"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError when out of range
    except ValueError:
        raise ValueError("the port must be between 1 and 65535") from None
    secret = [
        k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if SECRET_PARAMETER.search(k)
    ]
    if parts.username is not None or parts.password is not None or secret:
        what = "user:password@" if parts.username is not None else f"?{secret[0]}="
        raise CredentialInUrl(
            f"carries a credential ({what}), which would be written to run.json and the "
            "reports: put the key in an environment variable and name it in target.api_key_env"
        )
    return url


class TargetSpec(Strict):
    base_url: str | None = Field(
        None, description="OpenAI-compatible base URL; null starts the built-in reference target."
    )
    api: Literal["chat", "completions"] = "chat"
    model: str = "surgecast-reference"
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Name of the env var with the key."
    )
    timeout_s: float = Field(60.0, gt=0, le=3600)
    stream: bool = True
    max_response_bytes: int = Field(
        8 << 20,
        ge=1024,
        le=1 << 30,
        description="A response body longer than this is cut off and the request fails as "
        "response_too_large: bytes are counted, never kept.",
    )
    extra_body: dict[str, Any] = Field(default_factory=dict)
    salt_prompts: bool = Field(
        True,
        description="Begin every conversation with a salt unique to the run, so a rerun does "
        "not hit the server's prefix cache; false sends the same text every run.",
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        return None if v is None else check_base_url(v)


class StepCostSpec(Strict):
    base_ms: float = Field(12.0, ge=0, description="Fixed time of one engine step.")
    per_decode_seq_ms: float = Field(0.4, ge=0, description="Added per sequence decoding.")
    per_prefill_token_ms: float = Field(0.05, ge=0, description="Added per prompt token.")


class TargetFaults(Strict):
    """Faults the reference target injects on purpose, each a probability per request (one
    draw per request picks at most one; their sum must be at most 1)."""

    reject_429: float = Field(0.0, ge=0, le=1, description="Answer 429 with Retry-After.")
    retry_after_s: float = Field(1.0, ge=0, le=3600, description="The Retry-After it sends.")
    retry_after_date: bool = Field(
        False, description="Send Retry-After as an HTTP-date (retry_after_s on, in whole seconds)."
    )
    error_500: float = Field(0.0, ge=0, le=1, description="Answer 500 before generating.")
    reset_stream: float = Field(
        0.0, ge=0, le=1, description="Cut the connection halfway through a streamed answer."
    )
    stall: float = Field(0.0, ge=0, le=1, description="Wait stall_s before the first token.")
    stall_s: float = Field(5.0, ge=0, le=3600)
    malformed_sse: float = Field(
        0.0, ge=0, le=1, description="Write one event mid-stream without its `data:` prefix."
    )
    missing_usage: float = Field(
        0.0, ge=0, le=1, description="Leave out the usage the client asked for."
    )
    slow_headers: float = Field(
        0.0, ge=0, le=1, description="Wait slow_headers_s before the response headers."
    )
    slow_headers_s: float = Field(5.0, ge=0, le=3600)
    oversized: float = Field(
        0.0, ge=0, le=1, description="Stream one content chunk of oversized_bytes characters."
    )
    oversized_bytes: int = Field(1 << 20, ge=1, le=1 << 30)
    die_after: int | None = Field(
        None, ge=1, description="Exit abruptly (a crash) when this many requests have come."
    )
    seed: int = Field(0, ge=0, description="Seed of the fault draws.")

    @model_validator(mode="after")
    def _one_draw(self) -> TargetFaults:
        if sum(self.chances().values()) > 1 + 1e-9:
            raise ValueError("the fault probabilities add up to more than 1")
        return self

    def chances(self) -> dict[str, float]:
        """Each per-request fault and its probability, in the order they are drawn."""
        names = ("reject_429", "error_500", "reset_stream", "stall", "malformed_sse")
        more = ("missing_usage", "slow_headers", "oversized")
        return {n: float(getattr(self, n)) for n in (*names, *more)}

    def draws(self) -> FaultDraws:
        """The faults of successive requests, as the reference target draws them."""
        return FaultDraws(self)

    @property
    def any(self) -> bool:
        return any(self.chances().values()) or self.die_after is not None


class FaultDraws:
    """Each request's injected fault in the order requests come: one uniform draw per request
    from a generator seeded by `faults.seed`, picking at most one fault by its probability. The
    reference target draws so, and the simulator as its twin."""

    def __init__(self, faults: TargetFaults):
        self.chances = faults.chances()
        self._rng = random.Random(faults.seed)

    def next(self) -> str | None:
        """The next request's fault (a TargetFaults field name), or None."""
        draw = self._rng.random()
        for name, chance in self.chances.items():
            if draw < chance:
                return name
            draw -= chance
        return None


class ReferenceTargetSpec(Strict):
    """The engine model that the built-in reference target serves."""

    max_num_seqs: int = Field(32, ge=1, le=4096)
    kv_cache_tokens: int = Field(65536, ge=16)
    max_batched_tokens: int = Field(8192, ge=1)
    cold_start_s: float = Field(0.5, ge=0, le=600)
    step: StepCostSpec = StepCostSpec()
    slowdown: float = Field(
        1.0,
        gt=0,
        le=100,
        description="Multiplies every step's time: 1.3 injects a 30% slowdown (gate tests).",
    )
    faults: TargetFaults = TargetFaults()
    stream_interval: int = Field(
        1, ge=1, le=64, description="Tokens per streamed chunk (vLLM's --stream-interval)."
    )
