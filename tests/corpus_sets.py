"""The corpora the corpus tests read, as the catalog reads them: the project's own sets
(`scenarios/data/`, always there) and the public corpora under `../shared/data` (developers'
machines only; a user's clone has none). Tests take the `corpora` fixture (tests/conftest.py) or
`FILES` and run the same checks on both; where the public corpora are absent their cases report
as skipped, naming the folder looked for."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from scenarios import CATALOG
from scenarios.corpora import CorpusSpec, resolve_path
from scenarios.prompts import CorpusSource, RagSource, SummariseSource
from scenarios.spec import load_scenario

ROOT = Path(__file__).resolve().parents[1]


def _candidates() -> list[Path]:
    """`$SURGECAST_SHARED_DATA` when set (a missing folder: as on a user's clone), else
    `<repo>/../shared/data` and `/work/shared/data`."""
    env = os.environ.get("SURGECAST_SHARED_DATA")
    return [Path(env)] if env else [ROOT.parent / "shared" / "data", Path("/work/shared/data")]


DATA = next((c for c in _candidates() if (c / "corpora").is_dir()), None)
_LOOKED = " nor ".join(str(c) for c in _candidates())
ABSENT = f"public corpora not checked (the project's own sets were): no corpora/ in {_LOOKED}"
needs_data = pytest.mark.skipif(DATA is None, reason=ABSENT)
SETS = [pytest.param("shipped", id="shipped"), pytest.param("real", id="real", marks=needs_data)]


@dataclass(frozen=True)
class CorpusSet:
    """One catalog's corpora by role, every path absolute."""

    name: str  # "shipped" or "real"
    queries: CorpusSpec  # short support messages: support-chatbot.yaml's corpus
    questions: CorpusSpec  # rag-assistant.yaml's questions
    passages: CorpusSpec  # rag-assistant.yaml's passages
    documents: CorpusSpec  # summariser.yaml's documents
    corpus_dir: Path | None  # what --corpus-dir gives the catalog for this set


def _absolute(spec: CorpusSpec | None) -> CorpusSpec:
    assert spec is not None
    return spec.model_copy(update={"path": str(resolve_path(spec.path, CATALOG))})


def catalog_corpora(name: str) -> CorpusSet:
    """The corpora the catalog reads: its own (`shipped`) or, under DATA, the public ones."""
    corpus_dir = DATA if name == "real" else None
    if name == "real" and corpus_dir is None:
        pytest.skip(ABSENT)

    def text(file: str) -> Any:
        return load_scenario(CATALOG / file, corpus_dir).workload.text

    support, rag, summary = (
        text(f) for f in ("support-chatbot.yaml", "rag-assistant.yaml", "summariser.yaml")
    )
    assert isinstance(support, CorpusSource) and isinstance(rag, RagSource)
    assert isinstance(summary, SummariseSource)
    return CorpusSet(
        name,
        _absolute(support.corpus),
        _absolute(rag.corpus),
        _absolute(rag.passages),
        _absolute(summary.corpus),
        corpus_dir,
    )


def csv_count(path: Path, column: str) -> int:
    with path.open(encoding="utf-8", newline="") as f:
        return sum(1 for row in csv.DictReader(f) if row[column].strip())


def line_count(path: Path) -> int:
    return sum(1 for s in path.read_text(encoding="utf-8").splitlines() if s.strip())


@dataclass(frozen=True)
class Counted:
    """Corpus files with an independent count of their texts and the total their README says."""

    specs: tuple[CorpusSpec, ...]
    count: Callable[[CorpusSpec], int]
    readme: int
    first: str | None = None  # the first file's first text
    scrubbed: tuple[tuple[str, int], ...] = ()  # identifiers the scrubber finds, by kind


def _csv(spec: CorpusSpec) -> int:
    return csv_count(Path(spec.path), spec.text_field or "text")


def _lines(spec: CorpusSpec) -> int:
    return line_count(Path(spec.path))


def _json(spec: CorpusSpec) -> int:
    doc = json.loads(Path(spec.path).read_text(encoding="utf-8"))
    lists = [doc["train"]] if spec.text_field == "train[*][0]" else list(doc.values())
    return sum(len(v) for v in lists)


def _shipped() -> dict[str, Counted]:
    def spec(name: str) -> CorpusSpec:
        fmt: Literal["csv", "text"] = "csv" if name.endswith(".csv") else "text"
        return CorpusSpec(path=str(CATALOG / "data" / name), format=fmt)

    first = "I ordered a new card ten days ago and it still hasn't come. Is that normal?"
    return {  # the figures of scenarios/data/README.md
        "support-queries": Counted((spec("support-queries.csv"),), _csv, 414, first),
        "rag-questions": Counted((spec("rag-questions.csv"),), _csv, 216),
        "rag-passages": Counted((spec("rag-passages.txt"),), _lines, 96),
        "summarise-documents": Counted((spec("summarise-documents.txt"),), _lines, 175),
    }


def _real(data: Path) -> dict[str, Counted]:
    c = data / "corpora"

    def spec(rel: str, fmt: Literal["csv", "json", "text"], field: str | None = None) -> CorpusSpec:
        return CorpusSpec(path=str(c / rel), format=fmt, text_field=field)

    intents = sorted((c / "bitext-customer-support/intent-detection").glob("*.csv"))
    pairs = "bitext-customer-support/llm-chatbot-v2023-08/"
    pairs += "Bitext_Sample_Customer_Support_Training_Dataset.csv"
    bank = (spec("banking77/train.csv", "csv"), spec("banking77/test.csv", "csv"))
    return {  # the figures of ../shared/data/README.md
        "banking77": Counted(bank, _csv, 13_083, "I am still waiting on my card?"),
        "clinc150-train": Counted(
            (spec("clinc150/data_full.json", "json", "train[*][0]"),), _json, 15_000
        ),
        "clinc150-all": Counted(
            (spec("clinc150/data_full.json", "json", "*[*][0]"),), _json, 23_700
        ),
        "bitext-intents": Counted(
            tuple(spec(str(p.relative_to(c)), "csv", "utterance") for p in intents), _csv, 8_100
        ),
        "bitext-pairs": Counted((spec(pairs, "csv", "instruction"),), _csv, 4_514),
        "bitext-answers": Counted(  # two example addresses: support@company.com
            (spec(pairs, "csv", "response"),), _csv, 4_514, scrubbed=(("email", 2),)
        ),
        "sonnet": Counted((spec("sonnet/sonnet.txt", "text"),), _lines, 518),
    }


SHIPPED = _shipped()
REAL = _real(DATA) if DATA is not None else {}


def _file_params() -> list[Any]:
    """The shipped sets, then the public corpora (one skipped case naming the folder when they
    are absent), as pytest params."""
    params = [pytest.param(v, id=f"shipped-{k}") for k, v in SHIPPED.items()]
    params += [pytest.param(v, id=f"real-{k}") for k, v in REAL.items()]
    if not REAL:
        params.append(pytest.param(None, id="real", marks=pytest.mark.skip(reason=ABSENT)))
    return params


FILES = _file_params()
