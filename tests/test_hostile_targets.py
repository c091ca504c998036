"""A target misbehaving in each way a real server or proxy can (tests/hostile_cases.py), through
the client and through `surgecast run` (issue 26, hardening round two): every request one record
of the right status, error kind and http_status, in bounded time and memory, never a traceback;
the run's verdict and exit code right; the target's words plain text wherever they are shown.

Seeded: the cases' order, and where each answer's bytes are cut, follow SEED (set
SURGECAST_FUZZ_SEED to try another); every call is bounded by its target timeout."""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from loadgen.client import Endpoint, StreamingCall
from scenarios.plan import RequestSpec
from scenarios.records import RequestRecord, parse_record, read_records
from surgecast.validity import BROKEN
from tests.conftest import LENIENT, run_cli, scenario_dict, write_scenario
from tests.hostile_cases import CASES, FAMILIES, Expect
from tests.hostile_target import HostileTarget

SEED = int(os.environ.get("SURGECAST_FUZZ_SEED", "26"))
TIMEOUT_S = 1.0  # the target timeout of a client call: an endless answer ends here
SLOW_S = 20.0  # that of one whose answer ends (or is cut off at a bound) by itself
RUN_TIMEOUT_S = 2.0  # a run's, where a case never ends (else SLOW_S: CI's loaded machine took
# over 2 s to stream the huge family's 8 MiB answers, and they read as timeouts)
TRACEBACK = re.compile(r"Traceback \(most recent call last\):\n")  # (a target's words: one line)
RAW_TAG = re.compile(r"(?<!\\)<[A-Za-z/!?]")  # Markdown would render it as HTML


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileTarget]:
    with HostileTarget(seed=SEED) as target:
        yield target


def _call(url: str, model: str, n: int = 0) -> tuple[RequestRecord, float]:
    """One call; the target timeout short where the case never ends, else ample (a loaded
    machine must not turn a bounded read into a timeout)."""
    timeout = TIMEOUT_S if CASES[model].expect.status == "timeout" else SLOW_S
    spec = RequestSpec(f"r{n}", 0.0, 5, 5, prompt="hello there")
    began = time.monotonic()
    call = StreamingCall(Endpoint(url, model=model, timeout_s=timeout), spec, time.monotonic)
    return call.run(), time.monotonic() - began


def _check(rec: RequestRecord, expect: Expect) -> None:
    assert (rec.status, rec.error_kind, rec.http_status) == (
        expect.status,
        expect.kind,
        expect.http,
    ), rec.error_detail
    if expect.tokens is not None:
        assert rec.token_source == expect.tokens
    if expect.max_bytes is not None:  # read up to its bound, then stopped
        assert (rec.response_bytes or 0) <= expect.max_bytes
    assert parse_record(rec.to_json().encode()) == rec  # a record a run can read back
    said = rec.error_detail or ""
    assert len(said) <= 200 and not RAW_TAG.search(said)
    assert said.isprintable(), said  # no control characters, no terminal escapes


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_misbehaviour_is_one_record_of_its_kind(hostile: HostileTarget, name: str) -> None:
    rec, took = _call(hostile.url, name)
    _check(rec, CASES[name].expect)
    assert took < SLOW_S  # never a hang: the timeout bounds every wait


def test_fuzz_every_case_in_a_seeded_order_at_once(hostile: HostileTarget) -> None:
    """Every case twice, and a seeded draw more, in a seeded order, eight at a time: what one
    answer does never leaks into another's record."""
    rng = random.Random(SEED)
    names = [*sorted(CASES) * 2, *rng.choices(sorted(CASES), k=40)]
    rng.shuffle(names)
    began = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda a: _call(hostile.url, a[1], a[0]), enumerate(names)))
    for name, (rec, _) in zip(names, done, strict=True):
        _check(rec, CASES[name].expect)
    assert time.monotonic() - began < 60.0


@pytest.mark.parametrize(
    ("name", "kind", "bound"),
    [
        ("huge_json_200", "response_too_large", (8 << 20) + (1 << 17)),
        ("huge_error_page", "http_500", 1 << 17),
        ("html_200", "protocol", None),
    ],
)
def test_a_whole_answer_is_bounded_too(
    hostile: HostileTarget, name: str, kind: str, bound: int | None
) -> None:
    """Not streamed (target.stream false): a 100 MB JSON answer is read to the bound, kept no
    further, and fails; an HTML page is not a completion."""
    spec = RequestSpec("r", 0.0, 5, 5, prompt="hello there")
    endpoint = Endpoint(hostile.url, model=name, timeout_s=SLOW_S, stream=False)
    rec = StreamingCall(endpoint, spec, time.monotonic).run()
    assert (rec.status, rec.error_kind) == ("error", kind), rec.error_detail
    assert bound is None or (rec.response_bytes or 0) <= bound
    assert rec.error_detail and rec.error_detail.isprintable()
    assert not RAW_TAG.search(rec.error_detail)


def _expected_exit(family: str) -> int:
    """No case of the family succeeds: exit 3, the run invalid (no request succeeded). Every
    case succeeds: 0. Some do: a valid run whose failed requests (over 5% of them) miss its
    p95 SLOs, 99; none of its errors a broken connection, which could read as a target that
    died partway (invalid)."""
    expects = [CASES[n].expect for n in FAMILIES[family]]
    ok = sum(e.status == "ok" for e in expects)
    if not ok:
        return 3
    assert not {e.kind for e in expects} & BROKEN
    return 0 if ok == len(expects) else 99


def _scenario(tmp_path: Path, model: str) -> Path:
    data = scenario_dict(
        traffic={"rate": 12, "duration_s": 1, "seed": SEED, **LENIENT},
        slos={"ttft": "p(95) < 60000", "e2e": ["p(95) < 60000"]},
    )
    endless = any(CASES[n].expect.status == "timeout" for n in FAMILIES[model])
    timeout = RUN_TIMEOUT_S if endless else SLOW_S
    data["target"] = {"api": "chat", "timeout_s": timeout, "model": model}
    data["workload"]["output_tokens"] = {"dist": "uniform", "low": 5, "high": 20}
    return write_scenario(tmp_path / "s.yaml", data)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_run_against_each_family(hostile: HostileTarget, family: str, tmp_path: Path) -> None:
    """`surgecast run` on a target answering with the family's cases in turn: one record a
    planned request, each of the kind its case calls for; the verdict and exit code right."""
    out = tmp_path / "run"
    began = time.monotonic()
    result = run_cli(
        "run", str(_scenario(tmp_path, family)), "--target", hostile.url, "--out", str(out),
        "-q", timeout=120,
    )  # fmt: skip
    took = time.monotonic() - began
    said = result.stdout + result.stderr
    assert not TRACEBACK.search(said) and "\x1b" not in said, result.stderr[-3000:]
    assert result.returncode == _expected_exit(family), result.stderr[-3000:]
    if result.returncode == 3:
        assert "no request succeeded" in result.stderr
    records = read_records(out / "requests.jsonl")
    planned = json.loads((out / "run.json").read_text())["planned_requests"]
    assert planned >= len(FAMILIES[family])  # every case had its turn
    assert len(records) == len({r.id for r in records}) == planned
    served = [s for s in hostile.served(family) if s.max_tokens != 1]  # not the sizing probes
    assert len(served) == planned
    want = Counter(_outcome(CASES[s.case].expect) for s in served)
    assert Counter((r.status, r.error_kind, r.http_status) for r in records) == want
    bounds: dict[tuple[str, str | None, int | None], int] = {}
    for e in (CASES[n].expect for n in FAMILIES[family] if CASES[n].expect.max_bytes):
        bounds[_outcome(e)] = max(bounds.get(_outcome(e), 0), e.max_bytes or 0)
    for r in records:  # each read stopped at its bound
        limit = bounds.get((r.status, r.error_kind, r.http_status))
        assert limit is None or (r.response_bytes or 0) <= limit
    _assert_plain_reports(out)
    assert took < 90


def _outcome(expect: Expect) -> tuple[str, str | None, int | None]:
    return expect.status, expect.kind, expect.http


def _assert_plain_reports(out: Path) -> None:
    """summary.md: no raw HTML, every table row as many cells as its header; index.html: no
    markup of the target's."""
    summary = (out / "summary.md").read_text()
    assert not RAW_TAG.search(summary), RAW_TAG.search(summary)
    rows = [line for line in summary.splitlines() if line.startswith("|")]
    for line in rows:
        assert line.endswith("|") and line.count("|") == _header_pipes(summary, line)
    page = (out / "index.html").read_text()
    assert "<script>alert" not in page and "<h1>502" not in page and "\x1b" not in page


def _header_pipes(summary: str, row: str) -> int:
    """The number of pipes in the header of the table `row` is in."""
    lines = summary.splitlines()
    i = lines.index(row)
    while i > 0 and lines[i - 1].startswith("|"):
        i -= 1
    return lines[i].count("|")


def test_a_session_run_against_events_of_the_wrong_shape(tmp_path: Path) -> None:
    """Multi-turn users carry each answer's text into their next request: an answer whose
    content was a number once passed as ok, and joining the history crashed the user's
    greenlet (a traceback, the session's later turns never sent nor recorded)."""
    data = yaml.safe_load(_scenario(tmp_path, "shapes").read_text())
    data["session"] = {
        "turns": {"dist": "constant", "value": 3},
        "think_time": {"dist": "constant", "value": 0.05},
    }
    out = tmp_path / "run"
    with HostileTarget(seed=SEED) as hostile:  # its own: its log holds this run's requests only
        result = run_cli(
            "run", str(write_scenario(tmp_path / "s.yaml", data)), "--target", hostile.url,
            "--out", str(out), "-q", timeout=120,
        )  # fmt: skip
    said = result.stdout + result.stderr
    assert not TRACEBACK.search(said), result.stderr[-3000:]
    assert result.returncode == _expected_exit("shapes"), result.stderr[-3000:]
    records = read_records(out / "requests.jsonl")
    run = json.loads((out / "run.json").read_text())
    served = [s for s in hostile.served("shapes") if s.max_tokens != 1]
    assert len(records) == len(served)  # a user's turns after a failed one are not sent:
    assert len(records) + run.get("turns_not_sent", 0) == run["planned_requests"]
    want = Counter(_outcome(CASES[s.case].expect) for s in served)
    assert Counter((r.status, r.error_kind, r.http_status) for r in records) == want
