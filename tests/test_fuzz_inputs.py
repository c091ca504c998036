"""Every input path gives a clear error, never a traceback or a hang (issue 10, item 1).

Property-based fuzzing (hypothesis, a fixed example budget, derandomized so CI is
deterministic) of the scenario loader, the records reader, and the trace and corpus loaders:
each mutated input either loads or raises the loader's documented error, within a time bound.
Then named regressions for the cases a probe found, some through the CLI.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scenarios.corpora import CorpusError, CorpusSpec, load_corpus, parse_corpus
from scenarios.plan import build_plan
from scenarios.plan_budget import PlanTooLarge
from scenarios.records import RecordsError, RequestRecord, read_records
from scenarios.spec import MAX_NODES, ScenarioError, load_scenario
from scenarios.trace_errors import TraceError
from scenarios.trace_load import load_trace
from scenarios.trace_types import TraceColumns
from surgecast.cli import main
from surgecast.rundir import RunFolder
from tests.conftest import ROOT, run_cli, run_json

SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
PER_EXAMPLE_S = 5.0  # a generous bound on a shared machine; a hang is far longer
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Hang(BaseException):  # BaseException: no loader's `except Exception` swallows it
    pass


@contextmanager
def within(seconds: float = PER_EXAMPLE_S) -> Iterator[None]:
    """Raise Hang in the block after `seconds`; restores pytest-timeout's alarm after."""

    def hang(signum: int, frame: object) -> None:
        raise Hang(f"took over {seconds} s")

    old_handler = signal.signal(signal.SIGALRM, hang)
    old_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            left = old_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


# ---------------------------------------------------------------- mutations

BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
).encode()

FRAGMENTS = [
    b"&a [1, 2]",
    b"*a",
    b"? [1, 2]\n: x\n",
    b"? {a: 1}\n: x\n",
    b"9" * 5000,
    b"-" + b"9" * 30,
    b".nan",
    b"-.inf",
    b"1.0e400",
    b"[" * 300,
    b"{a: " * 100,
    b"\xff\xfe\x00",
    b"\t",
    b"!!binary aGVsbG8=",
    b"!!python/object/apply:os.system ['true']",
    b"<<: *a",
    b"!!set {a, b}",
    b"2001-12-14t21:59:43.10-05:00",
    b"~",
    b"*h",
    b"{x: *h}",
    b"[*g, *g]",
    b"'" + b"x" * 10_000 + b"'",
    b"\n- - - -\n",
    b": : :",
    b"%YAML 1.1\n---\n",
    b"--- a\n--- b\n",
    BOMB,
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], fragments: list[bytes]) -> bytes:
    """A seed file with 1-4 edits, mostly structure-aware so the loader gets past parsing: a
    line's value replaced by a fragment, a line inserted with a fragment as its value (same
    indentation), the alias bomb's anchors put first; else a byte changed, a fragment or
    random bytes inserted anywhere, or a span deleted."""
    data = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 4))):
        lines = data.split(b"\n")
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        frag = draw(st.sampled_from(fragments))
        op = draw(st.sampled_from(["value"] * 3 + ["line"] * 2 + ["bomb", "byte", "insert", "cut"]))
        if op == "value" and b": " in line:
            lines[i] = line[: line.index(b": ") + 2] + frag
        elif op == "line":
            indent = line[: len(line) - len(line.lstrip(b" "))]
            key = draw(st.sampled_from([b"rate", b"extra_body", b"seed", b"x", b"? [k]"]))
            lines.insert(i, indent + key + b": " + frag)
        elif op == "bomb":
            lines.insert(0, BOMB.rstrip(b"\n"))
        elif op == "byte" and line:
            j = draw(st.integers(0, len(line) - 1))
            lines[i] = line[:j] + bytes([draw(st.integers(0, 255))]) + line[j + 1 :]
        elif op == "insert":
            j = draw(st.integers(0, len(line)))
            lines[i] = line[:j] + draw(st.just(frag) | st.binary(max_size=16)) + line[j:]
        elif op == "cut":
            del lines[i : i + draw(st.integers(1, 3))]
            lines = lines or [b""]
        data = b"\n".join(lines)
    return data


_names = count()


def _write(folder: Path, data: bytes, suffix: str) -> Path:
    """A fresh file per example: the trace and corpus caches key on path, mtime and size."""
    path = folder / f"f{next(_names)}{suffix}"
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _clear(problems: list[str]) -> None:
    """Each problem is one readable line, not a dump of the input."""
    assert problems
    for p in problems:
        assert "Traceback" not in p
        assert len(p) < 600, p[:300]


# ---------------------------------------------------------------- fuzz: scenario loader


@FUZZ
@given(data=mutated([p.read_bytes() for p in SCENARIOS], FRAGMENTS))
def test_fuzz_scenario_loader(data: bytes, fuzz_dir: Path) -> None:
    path = _write(fuzz_dir, data, ".yaml")
    with within():
        try:
            load_scenario(path)
        except ScenarioError as e:
            assert e.path == str(path)
            _clear(e.problems)


@settings(FUZZ, max_examples=100)
@given(data=mutated([p.read_bytes() for p in SCENARIOS], FRAGMENTS))
def test_fuzz_plan_command(data: bytes, fuzz_dir: Path) -> None:
    """Past loading too: fleet checks, the plan, prompt sources; exit 0 or 2, nothing raised."""
    traces = fuzz_dir / "traces"
    if not traces.exists():
        traces.symlink_to(ROOT / "scenarios/traces")  # the scenarios' relative trace paths
    path = _write(fuzz_dir, data, ".yaml")
    err = io.StringIO()
    with within(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["plan", str(path)])
    assert code in (0, 2), err.getvalue()[-2000:]


# ---------------------------------------------------------------- fuzz: records reader


def _record(i: int) -> RequestRecord:
    t = float(i)
    return RequestRecord(
        id=f"r{i:06d}",
        intended_start=t,
        start=t + 0.001,
        first_token=t + 0.05,
        end=t + 0.2,
        chunk_times=[t + 0.05, t + 0.1, t + 0.15, t + 0.2],
        prompt_tokens=100,
        output_tokens=4,
    )


RECORDS = "".join(_record(i).to_json() + "\n" for i in range(30)).encode()
RECORD_FRAGMENTS = [
    b"null",
    b"42",
    b"[]",
    b'"x"',
    b"NaN",
    b"-Infinity",
    b"9" * 5000,
    b"[" * 100_000,
    b"\xff",
    b'{"id": 1}',
    b"{",
    b"\n",
    b'"chunk_times": "abc", ',
    b'"status": "weird", ',
    b'"prompt_tokens": -3, ',
    b'"start": null, ',
    b'"end": 1e999, ',
    b'"chunk_tokens": [1.5], ',
]


@FUZZ
@given(data=mutated([RECORDS], RECORD_FRAGMENTS))
def test_fuzz_records_reader(data: bytes, fuzz_dir: Path) -> None:
    path = _write(fuzz_dir, data, ".jsonl")
    warnings: list[str] = []
    with within():
        try:
            records = read_records(path, warn=warnings.append)
        except RecordsError as e:
            assert str(path) in str(e) and "line " in str(e)
            return
    for w in warnings:
        assert str(path) in w and "line " in w
    for r in records:  # what is read is usable: finite times, lists of numbers
        assert isinstance(r.id, str)
        assert math.isfinite(r.start) and math.isfinite(r.intended_start)
        assert all(math.isfinite(t) for t in r.chunk_times)


# ---------------------------------------------------------------- fuzz: trace and corpus loaders

AZURE = (ROOT / "scenarios/traces/AzureLLMInferenceTrace_code.csv").read_bytes()[:3000]
JSONL_TRACE = "".join(
    json.dumps({"t": 0.5 * i, "in": 100 + i, "out": 20}) + "\n" for i in range(40)
).encode()
CSV_TRACE = b"t,in,out\n" + b"".join(b"%d,%d,20\n" % (i, 100 + i) for i in range(40))
TRACE_FRAGMENTS = [*RECORD_FRAGMENTS, b",,,", b'"', b"\r", b"2023-13-45 99:99:99", b"-1"]
COLUMNS = TraceColumns(timestamp="t", prompt_tokens="in", output_tokens="out")
TRACE_SEEDS = {"azure-llm": AZURE, "jsonl": JSONL_TRACE, "csv": CSV_TRACE, "requests": RECORDS}


@FUZZ
@given(
    fmt=st.sampled_from(sorted(TRACE_SEEDS)),
    edits=st.data(),
)
def test_fuzz_trace_loaders(fmt: str, edits: st.DataObject, fuzz_dir: Path) -> None:
    data = edits.draw(mutated([TRACE_SEEDS[fmt]], TRACE_FRAGMENTS))
    path = _write(fuzz_dir, data, ".jsonl" if fmt in ("jsonl", "requests") else ".csv")
    columns = COLUMNS if fmt in ("csv", "jsonl") else None
    with within():
        try:
            load_trace(path, fmt, columns)  # type: ignore[arg-type]
        except TraceError as e:
            _clear(e.problems)


CORPUS_SEEDS = {
    "text": b"how do I reset my password\nwhere is my order\n",
    "csv": b'text,id\nhello there,1\n"quoted, text",2\n',
    "json": json.dumps([{"text": "a question"}, {"text": "another"}]).encode(),
    "sharegpt": json.dumps(
        [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    ).encode(),
    "openai-jsonl": json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode() + b"\n",
}


@FUZZ
@given(fmt=st.sampled_from(sorted(CORPUS_SEEDS)), edits=st.data())
def test_fuzz_corpus_parser(fmt: str, edits: st.DataObject) -> None:
    data = edits.draw(mutated([CORPUS_SEEDS[fmt]], TRACE_FRAGMENTS))
    spec = CorpusSpec(path="corpus", format=fmt)
    with within():
        try:
            parse_corpus(data, spec, "corpus")
        except CorpusError as e:
            _clear(e.problems)


# ---------------------------------------------------------------- regressions: scenarios


def _chatbot() -> str:
    return (ROOT / "scenarios/chatbot.yaml").read_text(encoding="utf-8")


def _refused(tmp_path: Path, text: str | bytes) -> list[str]:
    path = tmp_path / "s.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with within(), pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.path == str(path)
    _clear(info.value.problems)
    return info.value.problems


def test_alias_bomb_at_top_level_is_refused_naming_its_line(tmp_path: Path) -> None:
    (problem,) = _refused(tmp_path, BOMB + b"i: [*h, *h]\n")
    assert f"more than {MAX_NODES:,} values" in problem and "aliases" in problem
    assert problem.startswith("line ")


def test_alias_bomb_under_extra_body_is_refused(tmp_path: Path) -> None:
    text = BOMB.decode() + _chatbot().replace("target:\n", "target:\n  extra_body: {x: *h}\n", 1)
    (problem,) = _refused(tmp_path, text)
    assert "aliases" in problem


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    (problem,) = _refused(tmp_path, "a: &a [1, *a]\n")
    assert "alias refers to the value that contains it" in problem


@pytest.mark.parametrize("nest", ["[" * 5000 + "]" * 5000, "{a: " * 100 + "1" + "}" * 100])
def test_deep_nesting_is_refused(tmp_path: Path, nest: str) -> None:
    (problem,) = _refused(tmp_path, f"name: x\nextra: {nest}\n")
    assert problem.startswith("line 2, column ")
    assert "nest" in problem


def test_non_utf8_names_line_column_and_byte_offset(tmp_path: Path) -> None:
    (problem,) = _refused(tmp_path, b"name: x\ndescription: caf\xe9\n")
    assert problem == "line 2, column 17: not UTF-8 (byte 0xe9 at byte offset 24)"


def test_complex_mapping_keys_are_refused_with_line_and_column(tmp_path: Path) -> None:
    problems = _refused(tmp_path, "? [1, 2]\n: x\n? {a: 1}\n: y\nname: z\n")
    assert problems == [
        "line 1, column 3: a list as a mapping key; keys must be plain names",
        "line 3, column 3: a mapping as a mapping key; keys must be plain names",
    ]


def test_huge_integer_and_non_finite_numbers_are_refused_all_at_once(tmp_path: Path) -> None:
    text = _chatbot().replace("seed: 6", "seed: " + "9" * 5000).replace("rate: 4.0", "rate: .nan")
    problems = _refused(tmp_path, text)
    assert len(problems) == 2
    assert any("traffic.seed: integer with 5000 digits is out of range" in p for p in problems)
    assert any("traffic.rate: '.nan' is not a finite number" in p for p in problems)


def test_oversized_scenario_file_is_refused_before_parsing(tmp_path: Path) -> None:
    (problem,) = _refused(tmp_path, "# " + "x" * 300_000 + "\nname: x\n")
    assert "over the limit" in problem


def test_long_values_are_cut_in_messages(tmp_path: Path) -> None:
    (problem,) = _refused(tmp_path, _chatbot() + f"unknown_field: {'y' * 50_000}\n")
    assert problem.startswith("unknown_field: unknown field")
    assert len(problem) < 200


def test_alias_bomb_and_huge_plan_through_the_cli(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_bytes(BOMB + b"i: [*h, *h]\n")
    huge = tmp_path / "huge.yaml"
    huge.write_text(
        _chatbot()
        .replace("rate: 4.0", "rate: 100000")
        .replace("duration_s: 30\n", "duration_s: 86400\n", 1)
    )
    assert yaml.safe_load(huge.read_text())["traffic"]["duration_s"] == 86400
    for path, expect in ((bomb, "aliases"), (huge, "MAX_PLANNED_REQUESTS")):
        result = run_cli("plan", str(path), timeout=60)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert str(path) in result.stderr or expect == "MAX_PLANNED_REQUESTS"
        assert expect in result.stderr


# ---------------------------------------------------------------- regressions: run folders


def _run_folder(path: Path, records: list[RequestRecord], stream: bool = True) -> RunFolder:
    folder = RunFolder(path)
    folder.create()
    scenario = yaml.safe_load(_chatbot())
    scenario["target"]["stream"] = stream
    folder.write_meta(run_json(path.name, scenario))
    folder.requests.write_text("".join(r.to_json() + "\n" for r in records), encoding="utf-8")
    return folder


def _with_line(folder: RunFolder, n: int, line: str) -> None:
    lines = folder.requests.read_text(encoding="utf-8").splitlines()
    lines[n - 1] = line
    folder.requests.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_bad_record_lines_are_skipped_with_a_warning_or_refused(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path / "run", [_record(i) for i in range(40)])
    _with_line(folder, 7, "null")
    _with_line(folder, 9, json.dumps({**json.loads(_record(8).to_json()), "start": float("nan")}))
    warnings: list[str] = []
    records = read_records(folder.requests, warn=warnings.append)
    assert len(records) == 38
    assert [w.split(": not")[0] for w in warnings] == [
        f"{folder.requests}: line 7",
        f"{folder.requests}: line 9",
    ]
    assert "start: must be a finite number, got nan" in warnings[1]
    for n in (2, 3, 4):  # 5 of 40 lines: over the 5% a file may lose
        _with_line(folder, n, "garbage")
    with pytest.raises(RecordsError, match=r"5 of 40 lines are bad .*\n.*line 2: not a request"):
        read_records(folder.requests)


def test_nan_is_written_as_null(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.write_json(tmp_path / "x.json", {"overhead_s": float("nan"), "v": [1.0, math.inf]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"overhead_s": None, "v": [1.0, None]}


def _cli_error(*args: str, code: int = 2) -> str:
    result = run_cli(*args, timeout=120)
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return result.stderr


def test_calibrate_on_corrupted_and_non_streamed_run_folders(tmp_path: Path) -> None:
    out = str(tmp_path / "cal.json")
    empty = _run_folder(tmp_path / "empty", [_record(i) for i in range(20)])
    empty.run_json.write_text("")
    garbage = _run_folder(tmp_path / "garbage", [_record(i) for i in range(20)])
    for n in (3, 5):
        _with_line(garbage, n, "{not json")
    off = _run_folder(tmp_path / "off", [_record(i) for i in range(20)], stream=False)
    unchunked = _run_folder(
        tmp_path / "unchunked",
        [RequestRecord(id=f"r{i}", intended_start=i, start=i, end=i + 1.0) for i in range(20)],
    )
    err = _cli_error("calibrate", str(empty.path), "-o", out)
    assert f"{empty.run_json}: empty; the file is corrupt" in err
    err = _cli_error("calibrate", str(garbage.path), "-o", out)
    assert f"{garbage.requests}: line 3: not a request record" in err
    for folder in (off, unchunked):  # readable, but no fit can come of them: exit 3
        err = _cli_error("calibrate", str(folder.path), "-o", out, code=3)
        assert "calibration needs streamed responses (rerun with streaming on" in err
        assert err.startswith("calibration unusable: ")
    assert not Path(out).exists()


def _noisy_record(
    i: int, rng: np.random.Generator, chunks: int, noise_s: float = 0.02
) -> RequestRecord:
    """One request at a time: 20 ms steps plus exponential noise of mean `noise_s`."""
    t = 10.0 * i
    times = list(t + 0.05 + np.cumsum(0.02 + rng.exponential(noise_s, chunks)))
    return RequestRecord(
        id=f"r{i:06d}",
        intended_start=t,
        start=t,
        first_token=times[0],
        end=times[-1],
        chunk_times=times,
        prompt_tokens=100,
        output_tokens=chunks,
    )


def test_calibrate_refuses_an_unusable_fit_with_exit_3(tmp_path: Path) -> None:
    """Too few timed steps, or step times that are mostly noise: the fit is refused with its
    reason and no calibration file, where a clean run of the same shape is accepted."""
    out = tmp_path / "cal.json"
    rng = np.random.default_rng(5)
    short = _run_folder(tmp_path / "short", [_noisy_record(i, rng, 5) for i in range(4)])
    err = _cli_error("calibrate", str(short.path), "-o", str(out), "--no-backtest", code=3)
    assert "calibration unusable: only 16 engine steps were timed (at least 50" in err
    noisy_records = [_noisy_record(i, rng, 30, noise_s=0.06) for i in range(20)]
    noisy = _run_folder(tmp_path / "noisy", noisy_records)
    err = _cli_error("calibrate", str(noisy.path), "-o", str(out), "--no-backtest", code=3)
    assert "the step-cost model explains little: R^2" in err
    assert "no calibration written" in err and not out.exists()
    clean = [_noisy_record(i, rng, 30, noise_s=0.0005) for i in range(20)]
    ok = run_cli("calibrate", str(_run_folder(tmp_path / "clean", clean).path), "-o", str(out))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(out.read_text())["parameters"]["base_s"]["value"] > 0.015


def test_report_on_corrupted_run_folders(tmp_path: Path) -> None:
    bad_meta = _run_folder(tmp_path / "meta", [_record(i) for i in range(20)])
    bad_meta.run_json.write_text("[1, 2]")
    err = _cli_error("report", str(bad_meta.path))
    assert f"{bad_meta.run_json}: a JSON object expected, got list" in err
    one_bad = _run_folder(tmp_path / "one", [_record(i) for i in range(40)])
    _with_line(one_bad, 5, "42")
    one_bad.forecast.write_text('{"schema": "surgecast.forecast/1", "points": 3}')
    result = run_cli("report", str(one_bad.path), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"{one_bad.requests}: line 5: not a request record: not a JSON object" in result.stderr
    assert f"{one_bad.forecast}: points: Input should be a valid array" in result.stderr
    assert "its section is left out" in result.stderr


def test_a_plan_of_huge_sessions_is_refused_before_it_is_built(tmp_path: Path) -> None:
    path = tmp_path / "turns.yaml"
    path.write_text(
        _chatbot().replace("slos:", "session:\n  turns: {dist: constant, value: 10000000}\nslos:")
    )
    expected = r"sessions: planned turns: about 1\.2\d*e\+09 arrivals"
    with within(), pytest.raises(PlanTooLarge, match=expected):
        build_plan(load_scenario(path))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"schema": "surgecast.calibration/1", "drift": NaN}', "not JSON (Out of range float"),
        ("[" * 100_000, "not readable JSON (maximum recursion depth"),
        ('{"engine": {}}', "no `schema`: written by an older surgecast"),
        ('{"schema": "surgecast.calibration/1", "drift": 0}', "8 problems: engine: Field req"),
    ],
)
def test_forecast_refuses_a_corrupt_calibration_file(tmp_path: Path, text: str, why: str) -> None:
    cal = tmp_path / "cal.json"
    cal.write_text(text)
    err = _cli_error("forecast", str(ROOT / "scenarios/chatbot.yaml"), "--calibration", str(cal))
    assert f"not a usable calibration file: {cal}: {why}" in err


def test_a_device_named_as_a_scenario_is_refused_without_reading_it_all() -> None:
    with within(), pytest.raises(ScenarioError, match="a system or process file"):
        load_scenario("/dev/zero")


@pytest.mark.parametrize("kind", ["scenario", "trace", "corpus"])
def test_a_fifo_named_as_a_data_file_is_refused_not_waited_on(tmp_path: Path, kind: str) -> None:
    """Issue 26, finding 8: a FIFO as the scenario, trace or corpus path hung the command."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with within():
        if kind == "scenario":
            with pytest.raises(ScenarioError, match="not a regular file"):
                load_scenario(fifo)
        elif kind == "trace":
            with pytest.raises(TraceError, match="not a regular file"):
                load_trace(fifo, "azure-llm")
        else:
            with pytest.raises(CorpusError, match="not a regular file"):
                load_corpus(CorpusSpec(path=str(fifo), format="text"))


@pytest.mark.parametrize("path", ["/proc/self/environ", "/etc/shadow", "~/.ssh/id_rsa"])
def test_private_files_are_never_a_corpus(path: str, tmp_path: Path) -> None:
    """Issue 26, finding 6: /proc/self/environ as a corpus sent the process's environment, the
    API key in it, to the target in every prompt; /etc/shadow was taken too."""
    if path.startswith("~"):  # a stand-in under a fake home: the rule is the path's
        private = tmp_path / ".ssh" / "id_rsa"
        private.parent.mkdir()
        private.write_text("key\n")
        path = str(private)
    with pytest.raises(CorpusError, match="never a scenario's data"):
        load_corpus(CorpusSpec(path=path, format="text"))
