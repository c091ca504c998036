"""Trace loading and replay: real Azure traces (when present) and small synthetic files."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError
from scipy import stats

from scenarios.records import RequestRecord, write_records
from scenarios.spec import Arrival
from scenarios.trace_errors import MAX_LISTED_PROBLEMS, TraceError
from scenarios.trace_load import load_trace
from scenarios.trace_types import TopFunctions, TraceColumns
from scenarios.traces import TraceLengths, TraceReplay, block_prefix
from scenarios.traffic import OnOffArrival

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"  # ../shared/data
AZURE_CODE = DATA / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"
AZURE_CONV = DATA / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
FUNCTIONS = DATA / "azure-functions" / "azure2019_500func_8h" / "invocations.csv"


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"shared trace data not on this machine: {path} is absent")
    return path


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def replay(path: Path, format: str = "azure-llm", **kw: Any) -> TraceReplay:
    return TraceReplay.model_validate({"type": "trace", "path": str(path), "format": format, **kw})


def idc(times: np.ndarray, window: float = 1.0) -> float:
    """Index of dispersion (variance / mean) of counts in windows of `window` seconds."""
    counts = np.bincount((times // window).astype(int))
    return float(counts.var() / counts.mean())


def write_csv(path: Path, rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def write_jsonl(path: Path, objs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return path


def azure_rows(n: int, seed: int = 0) -> list[list[Any]]:
    """A small Azure-format trace: bursty times, correlated lengths."""
    g = rng(seed)
    t = np.cumsum(g.exponential(0.5, n))
    rows: list[list[Any]] = [["TIMESTAMP", "ContextTokens", "GeneratedTokens"]]
    for x in t:
        whole = int(x)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1_700_000_000 + whole))
        prompt = int(g.integers(10, 4000))
        rows.append([f"{stamp}.{round((x - whole) * 1e7):07d}", prompt, prompt // 10 + 1])
    return rows


@pytest.fixture
def azure_small(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "azure.csv", azure_rows(400))


# ---------------------------------------------------------------- real Azure traces


def test_azure_conv_loads_fast_and_right() -> None:
    path = need(AZURE_CONV)
    t0 = time.perf_counter()
    tr = load_trace(path, "azure-llm", max_bytes=10**8)  # distinct cache key: a real parse
    elapsed = time.perf_counter() - t0
    assert len(tr) == 19366 and elapsed < 2.0  # about 0.35 s on a shared 2-core machine
    assert tr.timestamps[0] == 0.0 and np.all(np.diff(tr.timestamps) >= 0)
    # first rows 18:15:46.6805900 and 18:15:50.9951690; the span as the data README gives it
    assert tr.timestamps[1] == pytest.approx(4.314579, abs=1e-6)
    assert tr.timestamps[-1] == pytest.approx(3501.72, abs=0.01)
    assert tr.prompt_tokens is not None and tr.output_tokens is not None
    assert (tr.prompt_tokens[0], tr.output_tokens[0]) == (374, 44)
    assert np.median(tr.prompt_tokens) == pytest.approx(1020, abs=5)
    assert np.median(tr.output_tokens) == pytest.approx(129, abs=2)
    assert load_trace(path, "azure-llm") is load_trace(path, "azure-llm")  # cached


def test_replay_at_time_scale_1_reproduces_the_trace_statistics() -> None:
    """A window that starts mid-trace and loops past its end keeps the gap and length laws."""
    path = need(AZURE_CONV)
    tr = load_trace(path, "azure-llm")
    plan = replay(path, start_s=1200).plan(rng(1), 3000.0)
    assert plan.times.size == pytest.approx(3000 * len(tr) / tr.period, rel=0.1)
    assert stats.ks_2samp(np.diff(plan.times), np.diff(tr.timestamps)).pvalue > 0.01
    assert tr.prompt_tokens is not None and plan.prompt_tokens is not None
    assert stats.ks_2samp(plan.prompt_tokens, tr.prompt_tokens).pvalue > 0.01
    # the rows are the trace's rows, in the trace's order, from start_s on
    i0 = int(np.searchsorted(tr.timestamps, 1200))
    np.testing.assert_allclose(plan.times[:50], tr.timestamps[i0 : i0 + 50] - 1200)
    np.testing.assert_array_equal(plan.rows[:50], np.arange(i0, i0 + 50))


def test_rate_scale_keeps_bursts_and_time_scale_compresses_them() -> None:
    """On the bursty Azure code trace, doubling by superposed offset copies doubles the count
    and keeps the per-second index of dispersion; halving time doubles the rate too but
    compresses bursts, so the index of dispersion becomes the one of 2 s windows (much larger)."""
    path = need(AZURE_CODE)
    tr = load_trace(path, "azure-llm")
    period, n = tr.period, len(tr)
    original = idc(tr.timestamps)
    assert original > 10  # bursty: Poisson would be 1
    for seed in range(3):
        doubled = replay(path).plan(rng(seed), period, rate_scale=2.0)
        assert doubled.times.size == 2 * n  # every row twice over one period
        assert idc(doubled.times) == pytest.approx(original, rel=0.3)
        compressed = replay(path, time_scale=0.5).plan(rng(seed), period / 2)
        assert compressed.times.size == n  # n requests in half the time: rate doubled
        assert idc(compressed.times) > 1.6 * original
    # burst timescale: the gap CV of a naive compression equals the original's exactly, while
    # the superposition keeps within-burst gaps: its median gap stays close to the original's
    gaps = np.diff(tr.timestamps)
    sup_gaps = np.diff(replay(path).plan(rng(0), period, rate_scale=2.0).times)
    assert np.median(sup_gaps) == pytest.approx(np.median(gaps), rel=0.3)


def test_trace_lengths_keep_rank_correlation() -> None:
    path = need(AZURE_CONV)
    tr = load_trace(path, "azure-llm")
    source = stats.spearmanr(tr.prompt_tokens, tr.output_tokens).statistic
    lengths = TraceLengths(path=str(path), format="azure-llm")
    prompt, output = lengths.sample(rng(3), 20000)
    assert abs(stats.spearmanr(prompt, output).statistic - source) < 0.05
    assert stats.ks_2samp(output, tr.output_tokens).pvalue > 0.01
    assert tr.prompt_tokens is not None and tr.output_tokens is not None
    # whole rows: every sampled pair is a row of the trace (independent columns would not be)
    pairs = set(zip(tr.prompt_tokens.tolist(), tr.output_tokens.tolist(), strict=True))
    assert all(pair in pairs for pair in zip(prompt.tolist(), output.tolist(), strict=True))


def test_trace_lengths_keep_a_strong_correlation(azure_small: Path) -> None:
    """The synthetic trace's output is prompt // 10 + 1: rank correlation 1, kept exactly."""
    prompt, output = TraceLengths(path=str(azure_small), format="azure-llm").sample(rng(), 5000)
    assert stats.spearmanr(prompt, output).statistic > 0.999
    np.testing.assert_array_equal(output, prompt // 10 + 1)


def test_azure_functions_keep_per_minute_counts() -> None:
    path = need(FUNCTIONS)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    counts = np.array([[int(x) for x in r[4:]] for r in rows[1:]])
    per_minute = counts.sum(axis=0)
    first = int(np.flatnonzero(per_minute)[0])
    tr = load_trace(path, "azure-functions", seed=5)
    got = np.bincount((tr.timestamps // 60).astype(int), minlength=per_minute.size - first)
    np.testing.assert_array_equal(got, per_minute[first:])
    # uniform positions inside each minute
    assert stats.kstest((tr.timestamps % 60) / 60, "uniform").pvalue > 0.01
    top = counts.sum(axis=1).argsort()[::-1][:3]
    tr3 = load_trace(path, "azure-functions", functions=TopFunctions(top=3))
    assert len(tr3) == counts[top].sum()
    prefix = rows[1][2][:8]
    one = load_trace(path, "azure-functions", functions=(prefix,))
    assert len(one) == counts[0].sum()
    plan = replay(path, "azure-functions", lengths="workload").plan(rng(2), 600.0)
    assert plan.prompt_tokens is None and plan.times.size > 0


# ---------------------------------------------------------------- synthetic traces


def test_fractional_and_sub_one_rate_scales(azure_small: Path) -> None:
    tr = load_trace(azure_small, "azure-llm")
    n, period = len(tr), tr.period
    r = replay(azure_small)
    for k in (0.3, 1.0, 2.5, 4.0):
        sizes = [r.plan(rng(s), period, rate_scale=k).times.size for s in range(20)]
        frac = k - int(k)
        sd = np.sqrt(n * frac * (1 - frac) / 20)  # Bernoulli thinning of one copy
        assert abs(np.mean(sizes) - k * n) <= 4 * sd + 1e-9
    # the model's own rate_scale multiplies the call's
    assert replay(azure_small, rate_scale=2).plan(rng(), period, 1.5).times.size == 3 * n
    assert replay(azure_small, rate_scale=2).mean_rate(period) == pytest.approx(2 * n / period)


def test_plan_contract_sorted_deterministic_and_loops(azure_small: Path) -> None:
    tr = load_trace(azure_small, "azure-llm")
    r = replay(azure_small)
    a = r.plan(rng(7), 3 * tr.period, rate_scale=1.5)
    assert np.all(np.diff(a.times) >= 0) and a.times[0] >= 0 and a.times[-1] < 3 * tr.period
    b = r.plan(rng(7), 3 * tr.period, rate_scale=1.5)
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.rows, b.rows)
    c = r.plan(rng(8), 3 * tr.period, rate_scale=1.5)
    assert a.times.size != c.times.size or not np.array_equal(a.times, c.times)
    looped = r.plan(rng(), 3 * tr.period)
    assert looped.times.size == 3 * len(tr)  # the trace plays three times
    np.testing.assert_allclose(looped.times[len(tr)], tr.period)
    assert tr.prompt_tokens is not None and looped.prompt_tokens is not None
    np.testing.assert_array_equal(looped.prompt_tokens, np.tile(tr.prompt_tokens, 3))
    workload = replay(azure_small, lengths="workload").plan(rng(), 10.0)
    assert workload.prompt_tokens is None and workload.output_tokens is None


def test_relative_paths_resolve_against_base_dir_then_cwd(
    azure_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = replay(Path("azure.csv"))
    assert r.plan(rng(), 20.0, base_dir=tmp_path).times.size > 0
    monkeypatch.chdir(tmp_path)
    assert r.resolve(tmp_path / "elsewhere") == Path("azure.csv")
    assert r.plan(rng(), 20.0, base_dir=tmp_path / "elsewhere").times.size > 0


def test_cache_notices_a_rewritten_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", azure_rows(10))
    first = load_trace(path, "azure-llm")
    write_csv(path, azure_rows(20))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert len(load_trace(path, "azure-llm")) == 20 and len(first) == 10


def test_mooncake_hash_ids_come_through(tmp_path: Path) -> None:
    objs = [
        {"timestamp": 0, "input_length": 1200, "output_length": 30, "hash_ids": [1, 2, 3]},
        {"timestamp": 250, "input_length": 600, "output_length": 5, "hash_ids": [1, 4]},
        {"timestamp": 1500, "input_length": 100, "output_length": 9, "hash_ids": [7]},
    ]
    path = write_jsonl(tmp_path / "mooncake.jsonl", objs)
    tr = load_trace(path, "mooncake")
    np.testing.assert_allclose(tr.timestamps, [0, 0.25, 1.5])
    assert tr.hash_ids == ((1, 2, 3), (1, 4), (7,))
    plan = replay(path, "mooncake").plan(rng(), 2 * tr.period, rate_scale=1.0)
    # the second lap is other users: no block is shared across the trace's conversations (1
    # is shared by two rows, but only one goes on past it), so every id moves (by 7, the range)
    assert plan.hash_ids == [(1, 2, 3), (1, 4), (7,), (8, 9, 10), (8, 11), (14,)]
    assert plan.prompt_tokens is not None and list(plan.prompt_tokens) == [1200, 600, 100] * 2
    assert block_prefix((1, 2, 3), 1200, 512) == ((1, 512), (2, 512), (3, 176))
    assert block_prefix((1, 4), 600) == ((1, 512), (4, 88))


def test_burstgpt_filters(tmp_path: Path) -> None:
    header = ["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"]
    rows: list[list[Any]] = [
        [5, "ChatGPT", 100, 20, 120, "Conversation log"],
        [7, "GPT-4", 300, 50, 350, "API log"],
        [9, "ChatGPT", 80, 0, 80, "API log"],
        [12, "GPT-4", 90, 10, 100, "Conversation log"],
    ]
    path = write_csv(tmp_path / "burst.csv", [header, *rows])
    tr = load_trace(path, "burstgpt")
    np.testing.assert_allclose(tr.timestamps, [0, 2, 4, 7])
    gpt4 = load_trace(path, "burstgpt", models=["gpt-4"])
    np.testing.assert_allclose(gpt4.timestamps, [0, 5])
    assert gpt4.prompt_tokens is not None and list(gpt4.prompt_tokens) == [300, 90]
    api = load_trace(path, "burstgpt", models=["ChatGPT"], log_types=["API log"])
    assert len(api) == 1
    with pytest.raises(TraceError, match="no data rows"):
        load_trace(path, "burstgpt", models=["claude"])


@pytest.mark.parametrize(
    ("unit", "values", "expected"),
    [
        ("s", ["10", "10.5", "12"], [0, 0.5, 2]),
        ("ms", ["1000", "1500", "4000"], [0, 0.5, 3]),
        ("us", ["5", "1000005", "3000005"], [0, 1, 3]),
        ("iso", ["2024-01-01T23:59:59.5Z", "2024-01-02 00:00:00.25", "2024-01-02T01:00:02+01:00"],
         [0, 0.75, 2.5]),
    ],
)  # fmt: skip
def test_generic_csv_units(
    tmp_path: Path, unit: str, values: list[str], expected: list[float]
) -> None:
    rows = [["t", "in", "out", "blocks"]] + [[v, 10, 5, "[1, 2]"] for v in values]
    path = write_csv(tmp_path / "g.csv", rows)
    cols = TraceColumns(
        timestamp="t",
        prompt_tokens="in",
        output_tokens="out",
        hash_ids="blocks",
        timestamp_unit=unit,
    )
    tr = load_trace(path, "csv", cols)
    np.testing.assert_allclose(tr.timestamps, expected)
    assert tr.hash_ids == ((1, 2),) * 3


def test_generic_jsonl_and_iso(tmp_path: Path) -> None:
    objs = [
        {"when": "2024-01-01 23:59:59.5", "p": 3, "o": 4},
        {"when": "2024-01-02T00:00:00.25Z", "p": 5, "o": 6},
        {"when": "2024-01-02T01:00:01+01:00", "p": 7, "o": 8},
    ]
    path = write_jsonl(tmp_path / "g.jsonl", objs)
    cols = TraceColumns(
        timestamp="when", prompt_tokens="p", output_tokens="o", timestamp_unit="iso"
    )
    tr = load_trace(path, "jsonl", cols)
    np.testing.assert_allclose(tr.timestamps, [0, 0.75, 1.5])
    assert tr.output_tokens is not None and list(tr.output_tokens) == [4, 6, 8]
    times_only = load_trace(path, "jsonl", TraceColumns(timestamp="when", timestamp_unit="iso"))
    assert times_only.prompt_tokens is None


def test_previous_run_requests_replay(tmp_path: Path) -> None:
    """requests.jsonl is written in finish order: sorted on load; a failed request's missing
    usage takes the median; a torn last line (killed writer) is skipped."""
    recs = [
        RequestRecord(id="r1", intended_start=2.0, start=2.0, prompt_tokens=10, output_tokens=4),
        RequestRecord(id="r0", intended_start=0.5, start=0.5, prompt_tokens=30, output_tokens=8),
        RequestRecord(id="r2", intended_start=3.0, start=3.0, status="error"),
        RequestRecord(id="r3", intended_start=4.0, start=4.0, prompt_tokens=50, output_tokens=6),
    ]
    path = tmp_path / "requests.jsonl"
    write_records(path, recs)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "r4", "intended_st')
    tr = load_trace(path, "requests")
    np.testing.assert_allclose(tr.timestamps, [0, 1.5, 2.5, 3.5])
    assert tr.prompt_tokens is not None and tr.output_tokens is not None
    assert list(tr.prompt_tokens) == [30, 10, 30, 50]
    assert list(tr.output_tokens) == [8, 4, 6, 6]


# ---------------------------------------------------------------- bad traces


def trace_error(path: Path, format: str = "azure-llm", **kw: Any) -> list[str]:
    with pytest.raises(TraceError) as info:
        load_trace(path, format, **kw)  # type: ignore[arg-type]
    assert info.value.path == str(path)
    return info.value.problems


def test_missing_and_empty_files(tmp_path: Path) -> None:
    (problem,) = trace_error(tmp_path / "nope.csv")
    assert problem.startswith(f"{tmp_path / 'nope.csv'}: cannot read file")
    (tmp_path / "empty.csv").write_text("\n\n", encoding="utf-8")
    assert trace_error(tmp_path / "empty.csv") == [f"{tmp_path / 'empty.csv'}: file is empty"]
    write_csv(tmp_path / "header.csv", [["TIMESTAMP", "ContextTokens", "GeneratedTokens"]])
    assert "no data rows" in trace_error(tmp_path / "header.csv")[0]


def test_missing_column_names_the_columns_found(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "trace.csv", [["TIMESTAMP", "Context", "Generated"], ["x", 1, 2]])
    problems = trace_error(path)
    assert len(problems) == 2
    assert problems[0] == (
        f"{path}: line 1, column 'ContextTokens': missing column "
        "(found 'TIMESTAMP', 'Context', 'Generated')"
    )
    assert "column 'GeneratedTokens'" in problems[1]


def test_every_bad_cell_reported_at_once(tmp_path: Path) -> None:
    rows = azure_rows(20)
    rows[14][0], rows[15][0] = rows[15][0], rows[14][0]  # out of order, besides bad cells
    rows[3][1] = "abc"
    rows[5][2] = -4
    rows[8][0] = "yesterday"
    rows[9][1] = "12.5"
    rows[11] = rows[11][:2]
    path = write_csv(tmp_path / "trace.csv", rows)
    problems = trace_error(path)
    assert problems == [
        f"{path}: line 4, column ContextTokens: not a number, got 'abc'",
        f"{path}: line 6, column GeneratedTokens: must be >= 0, got '-4'",
        f"{path}: line 9, column TIMESTAMP: not a date-time like 2023-11-16 18:15:46.680, "
        "got 'yesterday'",
        f"{path}: line 10, column ContextTokens: not a whole number, got '12.5'",
        f"{path}: line 12: expected 3 fields, got 2",
        f"{path}: line 16, column TIMESTAMP: timestamps go backwards (line 15 is later); "
        "1 such place(s): sort the trace by time first",
    ]


def test_negative_timestamps_and_json_errors(tmp_path: Path) -> None:
    lines = [
        json.dumps({"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}),
        json.dumps({"timestamp": -3, "input_length": 5, "output_length": 1, "hash_ids": [1]}),
        '{"timestamp": 9, "input_length": 5,,}',
        json.dumps({"timestamp": 10, "output_length": 1, "hash_ids": ["a"]}),
        "[1, 2]",
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    problems = trace_error(path, "mooncake")
    assert problems[0] == f"{path}: line 2, column timestamp: negative timestamp, got -3"
    assert problems[1].startswith(f"{path}: line 3: not valid JSON: Expecting property name")
    assert problems[2].startswith(f"{path}: line 4, column input_length: missing (found ")
    assert problems[3] == f"{path}: line 4, column hash_ids: not a list of integers, got ['a']"
    assert problems[4] == f"{path}: line 5: not a JSON object, got list"
    assert len(problems) == 5


def test_unsorted_trace_is_refused_naming_the_line(tmp_path: Path) -> None:
    rows = azure_rows(10)
    rows[6], rows[7] = rows[7], rows[6]
    path = write_csv(tmp_path / "trace.csv", rows)
    (problem,) = trace_error(path)
    assert problem.startswith(
        f"{path}: line 8, column TIMESTAMP: timestamps go backwards (line 7 is later)"
    )
    assert "sort the trace" in problem


def test_problem_list_is_capped(tmp_path: Path) -> None:
    rows = azure_rows(50)
    for r in rows[1:]:
        r[2] = "?"
    problems = trace_error(write_csv(tmp_path / "trace.csv", rows))
    assert len(problems) == MAX_LISTED_PROBLEMS + 1
    assert problems[-1] == "... and 30 more"


def test_encoding_and_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    data = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1,2 café\n"
    path.write_bytes(data.encode("latin-1"))
    offset = data.index("é")
    (problem,) = trace_error(path)
    assert problem == f"{path}: not UTF-8 text: byte 0xe9 at byte offset {offset} (line 2)"
    big = write_csv(tmp_path / "big.csv", azure_rows(100))
    (problem,) = trace_error(big, max_bytes=1000)
    assert "over the limit of 1,000 bytes (MAX_TRACE_BYTES)" in problem


def test_scenario_model_validation() -> None:
    with pytest.raises(ValidationError, match="columns: required for format 'csv'"):
        TraceReplay(type="trace", path="t.csv", format="csv")
    with pytest.raises(ValidationError, match="columns: only for formats csv and jsonl"):
        replay(Path("t.csv"), columns={"timestamp": "t"})
    with pytest.raises(ValidationError, match="use lengths: workload"):
        replay(Path("f.csv"), "azure-functions")
    with pytest.raises(ValidationError, match="functions: only for format azure-functions"):
        replay(Path("t.csv"), functions={"top": 3})
    with pytest.raises(ValidationError, match="greater than 0"):
        replay(Path("t.csv"), time_scale=0)
    with pytest.raises(ValidationError, match="extra"):
        replay(Path("t.csv"), speed=2)
    with pytest.raises(ValidationError, match="no prompt and output token counts"):
        TraceLengths(path="t.csv", format="csv", columns=TraceColumns(timestamp="t"))


def test_synthetic_bursty_trace_keeps_its_bursts(tmp_path: Path) -> None:
    """The burst-keeping property on a trace made here: an on-off process (bursts of 3 s)."""
    on_off = OnOffArrival(type="on-off", rate_on=40, mean_on_s=3, mean_off_s=30)
    times = on_off.plan(rng(9), 4000.0)
    rows = [["t", "p", "o"]] + [[f"{x:.6f}", 10, 10] for x in times]
    path = write_csv(tmp_path / "bursty.csv", rows)
    cols = {"timestamp": "t", "prompt_tokens": "p", "output_tokens": "o"}
    tr = load_trace(path, "csv", TraceColumns(**cols))
    original = idc(tr.timestamps)
    doubled = replay(path, "csv", columns=cols).plan(rng(1), tr.period, rate_scale=2.0)
    compressed = replay(path, "csv", columns=cols, time_scale=0.5).plan(rng(1), tr.period / 2)
    assert doubled.times.size == compressed.times.size * 2 == 2 * len(tr)
    assert idc(doubled.times) == pytest.approx(original, rel=0.2)
    assert idc(compressed.times) > 1.5 * original


def test_azure_functions_synthetic(tmp_path: Path) -> None:
    header = ["HashOwner", "HashApp", "HashFunction", "Trigger", "480", "481", "482", "483"]
    rows: list[list[Any]] = [
        header,
        ["o1", "a1", "f1aaaa", "http", 0, 0, 0, 0],
        ["o2", "a2", "f2bbbb", "timer", 0, 5, 0, 2],
        ["o3", "a3", "f3cccc", "http", 0, 1, 9, 1],
    ]
    path = write_csv(tmp_path / "invocations.csv", rows)
    tr = load_trace(path, "azure-functions", seed=1)
    # counted from the first minute with an invocation (481); the last minute is kept
    np.testing.assert_array_equal(np.bincount((tr.timestamps // 60).astype(int)), [6, 9, 3])
    assert tr.period == 180.0
    assert len(load_trace(path, "azure-functions", functions=TopFunctions(top=1))) == 11
    assert len(load_trace(path, "azure-functions", functions=("f2", "f1"))) == 7
    with pytest.raises(TraceError, match="no HashFunction starts with"):
        load_trace(path, "azure-functions", functions=("zz",))
    a = replay(path, "azure-functions", lengths="workload").plan(rng(4), 180.0)
    b = replay(path, "azure-functions", lengths="workload").plan(rng(5), 180.0)
    assert a.times.size == b.times.size == 18 and not np.array_equal(a.times, b.times)
    rows[2][5] = "x"
    rows[3][6] = -1
    problems = trace_error(write_csv(tmp_path / "bad.csv", rows), "azure-functions")
    assert problems == [
        f"{tmp_path / 'bad.csv'}: line 3, column 481 (6): not a number, got 'x'",
        f"{tmp_path / 'bad.csv'}: line 4, column 482 (7): must be >= 0, got '-1'",
    ]


def test_non_finite_timestamps_are_refused(tmp_path: Path) -> None:
    rows: list[list[Any]] = [["t", "p", "o"], ["0", 1, 1], ["nan", 1, 1], ["inf", 1, 1]]
    path = write_csv(tmp_path / "g.csv", rows)
    problems = trace_error(path, "csv", columns=TraceColumns(timestamp="t"))
    assert problems == [
        f"{path}: line 3, column t: not a finite number, got 'nan'",
        f"{path}: line 4, column t: not a finite number, got 'inf'",
    ]


def test_missing_relative_trace_names_both_places(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"no such file under .* nor under the current directory"):
        replay(Path("absent.csv")).plan(rng(), 10.0, base_dir=tmp_path)


def test_tiny_rate_scale_still_guards_the_rows_read(azure_small: Path) -> None:
    with pytest.raises(ValueError, match="MAX_PLANNED_REQUESTS"):
        replay(azure_small).plan(rng(), 1e7, rate_scale=1e-6)


def test_trace_replay_joins_the_arrival_union_and_round_trips() -> None:
    """The scenario schema can discriminate TraceReplay beside the arrival processes by `type`."""
    adapter: TypeAdapter[Any] = TypeAdapter(Arrival)
    spec = {
        "type": "trace",
        "path": "invocations.csv",
        "format": "azure-functions",
        "lengths": "workload",
        "functions": {"top": 3},
        "rate_scale": 2,
    }
    r = adapter.validate_python(spec)
    assert isinstance(r, TraceReplay) and r.functions == TopFunctions(top=3)
    assert adapter.validate_json(adapter.dump_json(r)) == r
    assert not isinstance(adapter.validate_python({"type": "poisson", "rate": 1}), TraceReplay)
