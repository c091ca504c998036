"""Prompt text rendered at send time and sized to the plan's tokens on any tokenizer.

The plan fixes each new message's length in tokens; a server's tokenizer is unknown. `SizedPrompts`
renders `tokens x chars_per_token` characters of the persona's text source, made messy as the
persona says, and learns the ratio (and the server's fixed per-request overhead, its chat
template) from the `usage` of the responses: a probe before the run, then every first attempt.
Plain Python: safe to import without gevent.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadgen.client import (
    AUTH_STATUSES,
    Endpoint,
    Messages,
    StreamingCall,
    TargetRefused,
    refused_message,
)
from scenarios.messy import Messiness, empty_text, paste_text
from scenarios.messy_measure import MessStats, measure
from scenarios.plan import RequestSpec
from scenarios.prompts import RagSource, UninformativeUsage, estimate_chars_per_token
from scenarios.records import RequestRecord
from scenarios.spec import Persona, Scenario
from scenarios.text import make_prompt

DEFAULT_CHARS_PER_TOKEN = 4.0  # English on BPE tokenizers; the first responses correct it
FIT_WINDOW = 256  # the newest (characters, served tokens) pairs the fit uses
BLOCK_WORDS = 64  # a shared block's text is drawn this many words at a time
KEPT_TEXTS = 500  # per persona: user messages kept (before and after messiness) to measure it


class SizedPrompts:
    """Renders each request's new messages and learns characters per token from `usage`."""

    def __init__(self, scenario: Scenario, base_dir: Path | None = None, salt: str = ""):
        self.salt_text = salt
        self.salt = f"[{salt}] " if salt else ""  # begins each conversation (see run_salt)
        self.personas: dict[str, Persona] = {p.name: p for p in scenario.mix()}
        self.base_dir = base_dir
        for persona in self.personas.values():  # a bad corpus fails now, not mid-run
            assert persona.workload is not None
            persona.workload.text.render(np.random.default_rng(0), 64, base_dir)
        self.chars_per_token = DEFAULT_CHARS_PER_TOKEN
        self.overhead_tokens = 0.0
        self._seen: deque[tuple[int, int]] = deque(maxlen=FIT_WINDOW)
        self._block_cpt: float | None = None  # frozen at the first shared block rendered
        self.texts: dict[str, list[tuple[str, str]]] = {}  # persona -> (clean, messy) samples

    def messages(self, spec: RequestSpec, measured: bool = True) -> Messages:
        """The new messages of `spec`: the system prompt (first turns only) and the user's;
        `measured` keeps the user's message for the messiness measurement."""
        first = spec.after is None or spec.turn == 0
        out = self._messages(spec, first, measured)
        if first and self.salt:
            out[0] = {**out[0], "content": self.salt + out[0]["content"]}
        return out

    def _messages(self, spec: RequestSpec, first: bool, measured: bool) -> Messages:
        if spec.prompt is not None:  # fixed text (replayed logs, hand-made plans)
            return [{"role": "user", "content": spec.prompt}]
        persona = self.personas[spec.persona]
        assert persona.workload is not None
        rng = np.random.default_rng(spec.text_seed)
        tokens = spec.message_tokens or spec.prompt_tokens
        budget = tokens - (self.overhead_tokens if first else 0.0)
        n_chars = max(1, round(budget * self.chars_per_token))
        if spec.text_kind == "empty":
            text = empty_text(rng)
            if measured:
                self._keep(spec.persona, text, text)
            return [{"role": "user", "content": text}]
        if spec.text_kind == "long_paste":
            return [{"role": "user", "content": paste_text(rng, n_chars)}]
        source = persona.workload.text
        rag = isinstance(source, RagSource)
        shared = self._blocks(spec.prefix[1:] if rag else spec.prefix) if first else ""
        n_chars = max(1, n_chars - len(shared))
        if isinstance(source, RagSource):  # the system prompt the plan chose (a shared prefix)
            index = source.system_index(spec.text_seed)
            prompt = source.render(rng, n_chars, self.base_dir, index)
        else:
            prompt = source.render(rng, n_chars, self.base_dir)
        messy = persona.workload.messiness.apply(prompt.user, rng)
        if measured:
            self._keep(spec.persona, prompt.user, messy)
        user = shared + messy
        out: Messages = []
        if prompt.system and first:
            out.append({"role": "system", "content": prompt.system})
        out.append({"role": "user", "content": user})
        return out

    @property
    def common_prefix_tokens(self) -> float:
        """Tokens every conversation of the run begins with: the chat template's and the salt.
        A prefix cache may serve them to every request but the first; the plan counts on it."""
        return self.overhead_tokens + len(self.salt) / self.chars_per_token

    def _keep(self, persona: str, clean: str, messy: str) -> None:
        kept = self.texts.setdefault(persona, [])
        if len(kept) < KEPT_TEXTS:
            kept.append((clean, messy))

    def keep_texts(self, texts: dict[str, list[tuple[str, str]]]) -> None:
        """Add messages rendered elsewhere (a run's workers) to the messiness measurement."""
        for persona, pairs in texts.items():
            for clean, messy in pairs:
                self._keep(persona, clean, messy)

    def _blocks(self, prefix: tuple[tuple[int, int], ...]) -> str:
        """The text of a first turn's shared prefix blocks (a trace's hash_ids): the same
        (key, tokens) renders the same bytes all run long, so engines' prefix caches can hit."""
        if not prefix:
            return ""
        if self._block_cpt is None:
            self._block_cpt = self.chars_per_token
        cpt = self._block_cpt
        return "".join(block_text(key, max(1, round(tokens * cpt))) for key, tokens in prefix)

    def messiness(self) -> dict[str, MessStats]:
        """Measured messiness of the user messages rendered so far, per persona that has any."""
        out = {}
        for name, pairs in self.texts.items():
            settings = self.personas[name].workload
            if pairs and settings is not None and settings.messiness != Messiness():
                clean, messy = zip(*pairs, strict=True)
                out[name] = measure(clean, messy)
        return out

    def probe(self, endpoint: Endpoint) -> ProbeResult:
        """Size the prompts to `endpoint` before a run (`probe_sizes`, the first persona's)."""
        result = probe_sizes(endpoint, self, next(iter(self.personas)))
        result.chars_per_token, result.overhead_tokens = self.chars_per_token, self.overhead_tokens
        return result

    def observe(self, sent_chars: int, record: RequestRecord) -> bool:
        """Learn from a served request: its characters against the server's prompt tokens.
        False when it taught nothing: no usage, or usage that does not follow the prompts'
        lengths (the ratio then stays what it was)."""
        if record.token_source != "usage" or not record.prompt_tokens or sent_chars <= 0:
            return False
        self._seen.append((sent_chars, record.prompt_tokens))
        chars, tokens = zip(*self._seen, strict=True)
        try:
            self.chars_per_token, self.overhead_tokens = estimate_chars_per_token(chars, tokens)
        except UninformativeUsage:
            return False
        return True


def run_salt() -> str:
    """Six random hex digits, new for each run (kept in run.json): prompts starting with them
    share no prefix with an earlier run's, so a server's prefix cache cannot serve one run from
    another. Random on purpose; the plan itself stays seeded."""
    return secrets.token_hex(3)


PROBE_TOKENS = (48, 192, 768)
PROBE_TRIES = 4  # a probe rejected (429, 503) waits out Retry-After and goes again


@dataclass
class ProbeResult:
    """What the sizing probes sent and learned (kept in run.json)."""

    sent: int = 0  # requests, retries included
    rejected: int = 0  # of them answered 429 or 503
    learned: int = 0  # probes whose usage was learned from
    prompt_tokens: int = 0  # what the server counted for them (its counters include these)
    output_tokens: int = 0
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN  # what the prompts knew after them
    overhead_tokens: float = 0.0

    def describe(self) -> str:
        if self.learned:
            return (
                f"prompt sizing: {self.chars_per_token:.2f} characters per token, "
                f"{self.overhead_tokens:.0f} tokens of template per request "
                "(probed; refined from every response's usage)"
            )
        if self.rejected == self.sent:
            return "prompt sizing: the target refused every probe (429/503); sizes are estimates"
        if self.prompt_tokens:
            return (
                "prompt sizing: the target's usage does not follow the prompts' lengths (fixed "
                "by a proxy or mock?); prompt sizes are estimates"
            )
        return "prompt sizing: the target reports no usage; prompt sizes are estimates"


def probe_sizes(endpoint: Endpoint, prompts: SizedPrompts, persona: str) -> ProbeResult:
    """Send a few one-token requests of known sizes before the run so the first planned
    requests are already sized right. The probes are not part of the run's records; none
    learned from means the target reports no usage and sizes stay estimates."""
    result = ProbeResult()
    for i, tokens in enumerate(PROBE_TOKENS):
        spec = RequestSpec(
            id=f"probe-{i}",
            arrival=0.0,
            prompt_tokens=tokens,
            max_tokens=1,
            persona=persona,
            message_tokens=tokens,
            text_seed=7919 + i,
        )
        messages = prompts.messages(spec, measured=False)
        for _ in range(PROBE_TRIES):
            call = StreamingCall(endpoint, spec, time.monotonic, messages=messages)
            record = call.run()
            result.sent += 1
            if record.status != "rejected":
                break
            result.rejected += 1
            time.sleep(min(call.retry_after_s or 0.5, 5.0))
        if record.http_status in AUTH_STATUSES:
            detail = record.error_detail or ""
            raise TargetRefused(refused_message(endpoint, record.http_status or 0, detail))
        if record.status != "ok":
            return result
        result.prompt_tokens += record.prompt_tokens or 0
        result.output_tokens += record.output_tokens or 0
        if record.token_source == "usage":
            result.learned += prompts.observe(sum(len(m["content"]) for m in messages), record)
    return result


def block_text(key: int, n_chars: int) -> str:
    """The first `n_chars` of a text stream seeded by `key`: a block cut short (a trace row's
    last, partial block) is a prefix of the whole block, as the tokens it stands for are."""
    rng = np.random.default_rng(key)
    parts: list[str] = []
    size = 0
    while size < n_chars:
        parts.append(make_prompt(rng, BLOCK_WORDS) + " ")
        size += len(parts[-1])
    return "".join(parts)[:n_chars]
