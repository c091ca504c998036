"""Query corpora read by path: CSV, JSON, ShareGPT, OpenAI request logs and plain text.

A scenario names a file and its format, and `load_corpus` reads it into a `Corpus` of single
queries (`texts`) and, for conversational formats, whole conversations as (role, text) turns. Every
problem in a file is reported at once in a `CorpusError`, each naming the file, the line and the
column or field. The catalog reads the project's own query sets (`scenarios/data/`); public
corpora stay outside the project (licences), in a corpus folder (`--corpus-dir`,
`$SURGECAST_CORPUS_DIR`): given one, a corpus with `in_corpus_dir` reads that file, under the
folder, instead of its `path`.

JSON selector (`text_field` for format "json"): dot-separated keys, each optionally followed by
`[n]` (one list item) or `[*]` (every item); a key `*` takes every value of a mapping (or every
item of a list). CLINC150's `data_full.json` (`{"train": [[text, intent], ...], ...}`):
`train[*][0]` reads its 15,000 training queries, `*[*][0]` all 23,700. Without a selector the
top level must be a list of strings.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from scenarios.base import Strict
from scenarios.corpus_formats import (
    CorpusError,
    decode,
    read_csv,
    read_json,
    read_openai,
    read_sharegpt,
)
from scenarios.files import data_file_problem
from scenarios.scrub import scrub

DEFAULT_MAX_MB = 256.0  # files larger than this are refused unless the spec raises the limit
_CACHE_SIZE = 16


class CorpusFile(Strict):
    """Where a corpus lives and how to read its queries.

    `text_field`: the column for "csv" (default `text`), the selector for "json" (see the module
    docstring), the conversations key for "sharegpt" (default `conversations`); unused for
    "openai-jsonl" and "text".
    """

    path: str
    format: Literal["csv", "json", "sharegpt", "openai-jsonl", "text"]
    text_field: str | None = None
    max_texts: int | None = Field(default=None, gt=0)  # keep the first N texts only
    max_mb: float = Field(default=DEFAULT_MAX_MB, gt=0)  # size limit of the file
    # replace e-mail addresses, phone numbers, card numbers and IBANs by placeholders (counted)
    scrub: bool = True


class CorpusSpec(CorpusFile):
    """A scenario's corpus: `path` (relative: to the scenario's folder, else the cwd), or, when a
    corpus folder is given, `in_corpus_dir` (relative: to that folder) when the spec has one."""

    in_corpus_dir: CorpusFile | None = None


CORPUS_DIR_ENV = "SURGECAST_CORPUS_DIR"


def env_corpus_dir() -> Path | None:
    """The corpus folder `$SURGECAST_CORPUS_DIR` names, if set and not empty."""
    value = os.environ.get(CORPUS_DIR_ENV, "").strip()
    return Path(value) if value else None


M = TypeVar("M", bound=BaseModel)


def with_corpus_dir(model: M, corpus_dir: Path, given_by: str = CORPUS_DIR_ENV) -> M:
    """`model` (a scenario) with every corpus that has `in_corpus_dir` replaced by that file,
    a relative path made absolute under `corpus_dir`; `model` itself when none has one. A
    missing folder is a CorpusError naming it and `given_by` (the flag or variable)."""
    root = corpus_dir.expanduser().resolve()

    def swap(spec: CorpusSpec) -> CorpusSpec:
        alt = spec.in_corpus_dir
        if alt is None:
            return spec
        if not root.is_dir():
            raise CorpusError(str(corpus_dir), [f"not a folder (given by {given_by})"])
        path = Path(alt.path).expanduser()
        return CorpusSpec(**{**alt.model_dump(), "path": str(root / path)})

    return _map_corpora(model, swap)


def _map_corpora(value: Any, fn: Callable[[CorpusSpec], CorpusSpec]) -> Any:
    """`value` with `fn` applied to every CorpusSpec in it; unchanged parts are the same objects."""
    if isinstance(value, CorpusSpec):
        return fn(value)
    if isinstance(value, BaseModel):
        changed = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = _map_corpora(old, fn)
            if new is not old:
                changed[name] = new
        return value.model_copy(update=changed) if changed else value
    if isinstance(value, list | tuple):
        items = [_map_corpora(v, fn) for v in value]
        same = all(a is b for a, b in zip(items, value, strict=True))
        return value if same else type(value)(items)
    if isinstance(value, dict):
        mapped = {k: _map_corpora(v, fn) for k, v in value.items()}
        return value if all(mapped[k] is value[k] for k in value) else mapped
    return value


@dataclass(frozen=True, slots=True)
class Corpus:
    """Queries read from one file. `conversations` is empty for flat corpora."""

    texts: tuple[str, ...]
    conversations: tuple[tuple[tuple[str, str], ...], ...]
    source: str
    scrubbed: tuple[tuple[str, int], ...] = ()  # identifiers replaced, by kind


def resolve_path(path: str, base_dir: Path | None = None) -> Path:
    """`path` as given if absolute; else under `base_dir` if it exists there, else under the cwd."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if base_dir is not None and (base_dir / p).exists():
        return (base_dir / p).resolve()
    return (Path.cwd() / p).resolve()


def load_corpus(spec: CorpusSpec, base_dir: Path | None = None) -> Corpus:
    """Read the corpus `spec` names; cached per (resolved path, mtime, size, spec)."""
    path = resolve_path(spec.path, base_dir)
    try:
        st = path.stat()
    except OSError as e:
        tried = [str(path)]
        if base_dir is not None and not Path(spec.path).is_absolute():
            tried.insert(0, str((base_dir / spec.path).resolve()))
        raise CorpusError(
            spec.path, [f"cannot read file ({e.strerror}); tried {', '.join(tried)}"]
        ) from None
    refused = data_file_problem(path)
    if refused:
        raise CorpusError(str(path), [refused])
    return _load_cached(str(path), st.st_mtime_ns, st.st_size, spec)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_cached(path: str, mtime_ns: int, size: int, spec: CorpusSpec) -> Corpus:
    del mtime_ns  # part of the cache key only
    limit = int(spec.max_mb * 1024 * 1024)
    if size > limit:
        raise CorpusError(path, [f"file is {size:,} bytes, over the limit of {limit:,} (max_mb)"])
    data = Path(path).read_bytes()
    return parse_corpus(data, spec, path)


def parse_corpus(data: bytes, spec: CorpusSpec, source: str) -> Corpus:
    """Parse a corpus from bytes (pure; `source` only names the file in errors and the result)."""
    if not data.strip():
        raise CorpusError(source, ["file is empty"])
    text = decode(data, source)
    texts: list[str]
    convs: list[tuple[tuple[str, str], ...]] = []
    if spec.format == "text":
        texts = [s for s in (line.strip() for line in text.splitlines()) if s]
    elif spec.format == "csv":
        texts = read_csv(text, spec.text_field or "text", source)
    elif spec.format == "json":
        texts = read_json(text, spec.text_field, source)
    elif spec.format == "sharegpt":
        texts, convs = read_sharegpt(text, spec.text_field or "conversations", source)
    else:
        texts, convs = read_openai(text, source)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CorpusError(source, ["no non-empty texts found"])
    if spec.max_texts is not None:
        texts = texts[: spec.max_texts]
        convs = convs[: spec.max_texts]
    found: Counter[str] = Counter()
    if spec.scrub:
        in_turns: Counter[str] = Counter()
        texts = [scrub(t, found) for t in texts]
        convs = [tuple((role, scrub(t, in_turns)) for role, t in turns) for turns in convs]
        if convs:  # every turn, the texts' among them: counted once
            found = in_turns
    return Corpus(tuple(texts), tuple(convs), source, tuple(sorted(found.items())))


def named_corpora(model: BaseModel) -> list[CorpusSpec]:
    """Every corpus a scenario (or any part of one) names, each once, in the order met."""
    found: list[CorpusSpec] = []

    def walk(value: object) -> None:
        if isinstance(value, CorpusSpec):
            if value not in found:
                found.append(value)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(model)
    return found


def scrub_lines(model: BaseModel, base_dir: Path | None) -> list[str]:
    """A line per corpus whose text lost identifiers to the scrubber, saying how many."""
    lines = []
    for spec in named_corpora(model):
        counts = load_corpus(spec, base_dir).scrubbed
        if counts:
            found = ", ".join(f"{n} {NAMES[kind][n != 1]}" for kind, n in counts)
            lines.append(f"{spec.path}: replaced {found} by placeholders (scrub: false keeps them)")
    return lines


def corpus_lines(model: BaseModel, base_dir: Path | None) -> list[str]:
    """A line per corpus file a scenario reads: its resolved path and how many texts it holds."""
    counts: dict[str, int] = {}
    for spec in named_corpora(model):
        corpus = load_corpus(spec, base_dir)
        counts.setdefault(corpus.source, len(corpus.texts))
    return [f"{source} ({n:,} texts)" for source, n in counts.items()]


NAMES = {  # each identifier kind: one, several
    "email": ("e-mail address", "e-mail addresses"),
    "phone": ("phone number", "phone numbers"),
    "card": ("card number", "card numbers"),
    "iban": ("IBAN", "IBANs"),
}
