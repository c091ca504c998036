"""The one record schema of measured and simulated runs, and its JSON-lines IO."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Literal

Status = Literal["ok", "error", "cancelled", "timeout", "rejected"]
STATUSES: tuple[str, ...] = ("ok", "error", "cancelled", "timeout", "rejected")
# a planned request the generator never sent (its in-flight cap was reached): k6's
# dropped_iterations, kept as a record but not counted as a request
DROPPED = "dropped_in_flight_limit"


@dataclass(slots=True)
class RequestRecord:
    """One finished request. Times are seconds from the run's start."""

    id: str
    intended_start: float
    start: float  # when the request's bytes left (after connecting)
    first_token: float | None = None  # first chunk with non-empty content
    end: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # every content chunk, first included
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    token_source: str = "usage"  # usage (server-reported), chunks (counted), plan (simulated)
    status: Status = "ok"
    error_kind: str | None = None
    http_status: int | None = None
    error_detail: str | None = None  # first words of the server's error, secrets redacted
    source: Literal["measured", "simulated"] = "measured"
    persona: str = "default"
    session: int = 0
    turn: int = 0
    response_id: str | None = None
    prompt: str | None = None  # only when the scenario's privacy setting allows
    attempt: int = 0  # 0 for the first send; n for the n-th retry of the same request
    retried: bool = False  # this attempt failed and the client tried again
    planned_prompt_tokens: int | None = None  # what the plan asked for, beside the served count
    planned_output_tokens: int | None = None  # max_tokens the plan asked for
    regenerate: bool = False  # the user asked again for the previous turn's answer
    # tokens in each chunk, where the stream says (usage on every chunk, as vLLM's
    # continuous_usage_stats): several per chunk when a server batches its stream output
    chunk_tokens: list[int] | None = None
    cached_tokens: int | None = None  # prompt tokens the server took from its prefix cache
    schedule_lag_s: float | None = None  # the call began this late after its intended start
    connect_s: float | None = None  # seconds to open the connection
    first_byte: float | None = None  # when the response's status line arrived

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def e2e(self) -> float | None:
        return None if self.end is None else self.end - self.start

    @property
    def lateness(self) -> float:
        """How late the generator was: the schedule lag where measured, else start - intended."""
        if self.schedule_lag_s is not None:
            return self.schedule_lag_s
        return self.start - self.intended_start

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class RecordWriter:
    """Appends records to a JSON-lines file, flushing each so a killed run keeps them all."""

    def __init__(self, stream: IO[str]):
        self._stream = stream

    def write(self, record: RequestRecord) -> None:
        self._stream.write(record.to_json() + "\n")
        self._stream.flush()


def write_records(path: str | Path, records: Iterable[RequestRecord]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(r.to_json() + "\n")


def read_records(path: str | Path) -> list[RequestRecord]:
    """Read a requests.jsonl: a torn last line (a killed writer) is skipped, others raise."""
    out: list[RequestRecord] = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(RequestRecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError) as e:
            if n == len(lines):
                break
            raise ValueError(f"{path}:{n}: not a request record: {e}") from None
    return out
