"""The one record schema of measured and simulated runs, and its JSON-lines IO."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TypeVar

from scenarios.runfiles import MAX_LINE_BYTES, UnreadableFile, lines, open_regular

Status = Literal["ok", "error", "cancelled", "timeout", "rejected"]
STATUSES: tuple[str, ...] = ("ok", "error", "cancelled", "timeout", "rejected")
# a planned request the generator never sent (its in-flight cap was reached): k6's
# dropped_iterations, kept as a record but not counted as a request
DROPPED = "dropped_in_flight_limit"
# an attempt the generator itself failed to make (its own exception, not the target's answer)
GENERATOR_FAILED = "generator_failed"
# an attempt sent by a local worker that died before recording its end (SIGKILL): the target
# may have served it; recorded from the worker's write-ahead mark (`SentMark`), outcome unknown
WORKER_LOST = "worker_lost"


@dataclass(slots=True)
class RequestRecord:
    """One finished request. Times are seconds from the run's start."""

    id: str
    intended_start: float
    start: float  # when the request was written (once connected)
    first_token: float | None = None  # first chunk with non-empty content
    end: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # every content chunk, first included
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    # usage (server-reported), chunks (counted), plan (simulated), none (no count: it failed first)
    token_source: str = "usage"
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
    response_bytes: int | None = None  # body bytes read (counted, never stored)

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
        # a shallow dict: every field is a number, a string or a list of them (asdict's deep
        # copy of each chunk time cost more than the rest of writing a record)
        values = {name: getattr(self, name) for name in _FIELDS}
        return json.dumps(values, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


_FIELDS = tuple(f.name for f in fields(RequestRecord))


@dataclass(frozen=True, slots=True)
class SentMark:
    """An attempt about to be sent, written ahead of it by the process sending it (see
    `scenarios.record_files`): the attempt's record follows unless the worker dies first, and
    then the mark stands for the request the target may have served (`lost`)."""

    id: str
    attempt: int
    intended_start: float
    start: float  # when the worker was about to send it
    persona: str = "default"
    session: int = 0
    turn: int = 0
    planned_prompt_tokens: int | None = None
    planned_output_tokens: int | None = None
    regenerate: bool = False

    @property
    def key(self) -> tuple[str, int]:
        """What its record shares with it: the request and the attempt."""
        return self.id, self.attempt

    def to_json(self) -> str:
        values = {name: getattr(self, name) for name in _MARK_FIELDS}
        return json.dumps(values, separators=(",", ":"))

    def lost(self, worker: str) -> RequestRecord:
        """The record of this attempt when its worker died before recording it: an error of
        unknown outcome, sent at the mark's time, no token counted."""
        return RequestRecord(
            id=self.id,
            intended_start=self.intended_start,
            start=self.start,
            token_source="none",
            status="error",
            error_kind=WORKER_LOST,
            error_detail=f"in flight when its generator process ({worker}) died; the target "
            "may have served it",
            persona=self.persona,
            session=self.session,
            turn=self.turn,
            attempt=self.attempt,
            planned_prompt_tokens=self.planned_prompt_tokens,
            planned_output_tokens=self.planned_output_tokens,
            regenerate=self.regenerate,
        )


_MARK_FIELDS = tuple(f.name for f in fields(SentMark))


class RecordSink(Protocol):
    """Where a run's records go as they finish."""

    def write(self, record: RequestRecord) -> None: ...


class MarkSink(Protocol):
    """Where a worker writes each attempt's mark before sending it."""

    def write(self, mark: SentMark) -> None: ...


class RecordWriter:
    """Appends records to a JSON-lines file, flushing each so a killed run keeps them all."""

    def __init__(self, stream: IO[str]):
        self._stream = stream

    def write(self, record: RequestRecord) -> None:
        self._stream.write(record.to_json() + "\n")
        self._stream.flush()


def write_records(path: str | Path, records: Iterable[RequestRecord]) -> None:
    """A records file written whole: to a new file beside `path`, renamed into place (a pipe
    or a link planted there is replaced, never written through or waited on)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in records:
                f.write(r.to_json() + "\n")
        os.replace(tmp, path)
    except IsADirectoryError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise FileExistsError(f"{path} is a folder: cannot write the file there") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


MAX_BAD_SHARE = 0.05  # more bad lines than this share of a file's lines refuse the file
_LISTED = 5  # bad lines named in a refusal
_MB = MAX_LINE_BYTES >> 20


class RecordsError(ValueError):
    """A records file that cannot be used, naming the file and its bad lines."""


MAX_SECONDS = 1e9  # any time or duration in a record (about 31 years)
MAX_COUNT = 2**53  # any count: exact as a JSON number, and in a 64-bit column


def _number(v: Any, none_ok: bool = True) -> str | None:
    """What is wrong with `v` as a time in seconds, or None."""
    if v is None:
        return None if none_ok else "required"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return f"must be a number, got {type(v).__name__}"
    if isinstance(v, int) and abs(v) > MAX_SECONDS:
        return f"must be within +-{MAX_SECONDS:g} s, got an integer of {len(str(abs(v)))} digits"
    if not math.isfinite(v):
        return f"must be a finite number, got {v}"
    return None if abs(v) <= MAX_SECONDS else f"must be within +-{MAX_SECONDS:g} s, got {v:g}"


def _count(v: Any, most: int = MAX_COUNT) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        return f"must be a whole number, got {type(v).__name__}"
    if v < 0:
        return f"must be >= 0, got {v}"
    if v <= most:
        return None
    return (
        f"must be at most {most}, got {v if v < 10**12 else f'an integer of {len(str(v))} digits'}"
    )


def _http_status(v: Any) -> str | None:
    if v is None:
        return None
    problem = _count(v, 599)
    return problem or (None if v >= 100 else f"must be an HTTP status (100-599), got {v}")


def _of(kind: type, none_ok: bool = True) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None and none_ok:
            return None
        ok = isinstance(v, kind) and not (kind is int and isinstance(v, bool))
        return None if ok else f"must be {kind.__name__}, got {type(v).__name__}"

    return check


def _not_null(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    """`check` for a field that has a default but no null (absent is fine: the default)."""
    return lambda v: "must not be null" if v is None else check(v)


def _list_of(
    item: Callable[[Any], str | None], numbers: bool = False
) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if v is None:
            return None
        if not isinstance(v, list):
            return f"must be a list, got {type(v).__name__}"
        fast = numbers and {type(x) for x in v} <= {int, float}  # the common case, quickly:
        if fast and all(-MAX_SECONDS <= x <= MAX_SECONDS for x in v):  # (NaN and inf fail it)
            return None
        return next((f"[{i}] {e}" for i, x in enumerate(v) if (e := item(x))), None)

    return check


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "id": _of(str, none_ok=False),
    "intended_start": lambda v: _number(v, none_ok=False),
    "start": lambda v: _number(v, none_ok=False),
    "first_token": _number,
    "end": _number,
    "chunk_times": _not_null(_list_of(lambda v: _number(v, none_ok=False), numbers=True)),
    "prompt_tokens": _count,
    "output_tokens": _count,
    "token_source": _of(str, none_ok=False),
    "status": lambda v: None if v in STATUSES else f"must be one of {', '.join(STATUSES)}",
    "error_kind": _of(str),
    "http_status": _http_status,
    "error_detail": _of(str),
    "source": lambda v: None if v in ("measured", "simulated") else "must be measured or simulated",
    "persona": _of(str, none_ok=False),
    "session": _not_null(_count),
    "turn": _not_null(_count),
    "response_id": _of(str),
    "prompt": _of(str),
    "attempt": _not_null(_count),
    "retried": _of(bool, none_ok=False),
    "planned_prompt_tokens": _count,
    "planned_output_tokens": _count,
    "regenerate": _of(bool, none_ok=False),
    "chunk_tokens": _list_of(lambda v: _count(v) if v is not None else "required"),
    "cached_tokens": _count,
    "schedule_lag_s": _number,
    "connect_s": _number,
    "first_byte": _number,
    "response_bytes": _count,
}


def _checked(line: bytes, required: tuple[str, ...]) -> dict[str, Any]:
    """One JSON line as an object whose fields pass their checks; ValueError saying why not."""
    try:
        d = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(
            f"not UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})"
        ) from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and integers too long to convert
        raise ValueError(f"not JSON ({str(e)[:120]})") from None
    if not isinstance(d, dict):
        raise ValueError(f"not a JSON object, got {type(d).__name__}")
    for name in required:
        if name not in d:
            raise ValueError(f"{name}: required field is missing")
    for name, check in _CHECKS.items():
        if name in d and (problem := check(d[name])):
            raise ValueError(f"{name}: {problem}")
    return d


def parse_record(line: bytes) -> RequestRecord:
    """One JSON line as a record; ValueError saying what is wrong with it."""
    return RequestRecord.from_dict(_checked(line, ("id", "intended_start", "start")))


def parse_mark(line: bytes) -> SentMark:
    """One JSON line as a sent mark; ValueError saying what is wrong with it."""
    d = _checked(line, ("id", "attempt", "intended_start", "start"))
    if d["attempt"] is None:
        raise ValueError("attempt: required")
    return SentMark(**{k: v for k, v in d.items() if k in _MARK_FIELDS})


def read_records(
    path: str | Path, warn: Callable[[str], None] | None = None
) -> list[RequestRecord]:
    """Every record of a requests.jsonl in a list (`iter_records` streams them)."""
    return list(iter_records(path, warn))


def iter_records(
    path: str | Path, warn: Callable[[str], None] | None = None
) -> Iterator[RequestRecord]:
    """Stream a requests.jsonl, one line in memory at a time. A torn last line (a killed
    writer) is skipped silently; other bad lines are skipped, each passed to `warn` with its
    line number at the end, unless more than MAX_BAD_SHARE of the lines are bad: then, after
    the last record, RecordsError names the first few (a consumer that keeps what it was given
    must drop it on that error)."""
    return _iter_lines(path, parse_record, "request record", warn)


def iter_marks(path: str | Path, warn: Callable[[str], None] | None = None) -> Iterator[SentMark]:
    """Stream a worker's sent marks as `iter_records` streams records (a mark torn by the
    worker's death is skipped: that attempt was never sent)."""
    return _iter_lines(path, parse_mark, "sent mark", warn)


_T = TypeVar("_T")


def _iter_lines(
    path: str | Path,
    parse: Callable[[bytes], _T],
    what: str,
    warn: Callable[[str], None] | None,
) -> Iterator[_T]:
    try:
        f = open_regular(path)
    except OSError as e:
        raise RecordsError(f"{path}: cannot read file: {e.strerror or e}") from None
    except UnreadableFile as e:
        raise RecordsError(f"{path}: {e}") from None
    bad: list[str] = []
    n = 0
    with f:
        for n, line in enumerate(lines(f), 1):
            if line is None:
                bad.append(f"{path}: line {n}: not a {what}: longer than {_MB} MiB")
                continue
            if not line.strip():
                continue
            try:
                item = parse(line)
            except ValueError as e:
                if not line.endswith(b"\n") and not line.rstrip().endswith(b"}"):
                    break  # the last line, torn by a killed writer
                bad.append(f"{path}: line {n}: not a {what}: {e}")
                continue
            yield item
    if bad and len(bad) > MAX_BAD_SHARE * n:
        listed = bad[:_LISTED] + (
            [f"... and {len(bad) - _LISTED} more"] if len(bad) > _LISTED else []
        )
        raise RecordsError(
            f"{len(bad)} of {n} lines are bad (over {MAX_BAD_SHARE:.0%}): "
            "the file is corrupt; rerun, or fix or delete those lines:\n  " + "\n  ".join(listed)
        )
    say = warn or _stderr
    for b in bad:
        say(f"{b} (skipped)")


def _stderr(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)
