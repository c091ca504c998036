"""One bad field in a run folder's records, through every command that reads run folders: each
is refused (over 5% of lines bad: exit 2 naming the file and its lines) or the line skipped with
a warning, never a traceback. Issue 26, findings 4 and 5: integers over 64 bits and nulls or
lists in fields that were not checked crashed calibrate, gate and compare."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import pytest

from scenarios.records import iter_records, parse_record
from scenarios.runfiles import MAX_LINE_BYTES
from surgecast.cli.main import main
from tests.fuzz_runner import argv
from tests.fuzz_runner import run as run_command

OLD = Path(__file__).parent / "data" / "run-8a52588"
HOSTILE = [  # (field, value)
    ("attempt", 10**30),
    ("session", 2**64),
    ("http_status", 99999),
    ("schedule_lag_s", None),  # allowed: null is "not measured"
    ("schedule_lag_s", [1.0]),
    ("connect_s", "fast"),
    ("response_bytes", -1),
    ("chunk_times", [0.1, 10**400]),
    ("chunk_times", [0.1, None]),
    ("start", 1e300),
    ("first_token", {"t": 1}),
    ("retried", None),  # fields with a default have no null (the 10,000-folder fuzz: TypeError)
    ("attempt", None),
    ("persona", None),
    ("chunk_times", None),
]


def _corrupt(tmp: Path, field: str, value: object, every: bool) -> Path:
    """A copy of the old run folder with `field` set to `value` in every record, or in one of
    the records (its 17, three times over: one bad line is then under the 5% that refuse)."""
    run = Path(shutil.copytree(OLD, tmp / "run"))
    lines = (run / "requests.jsonl").read_text().splitlines()
    lines = [line.replace('"id":"', f'"id":"{n}-', 1) for n in range(3) for line in lines]
    text = json.dumps(value) if not isinstance(value, int) or value < 10**300 else str(value)
    out = []
    for i, line in enumerate(lines):
        if every or i == 1:
            d = json.loads(line)
            d[field] = "__X__"
            line = json.dumps(d).replace('"__X__"', text)
        out.append(line)
    (run / "requests.jsonl").write_text("\n".join(out) + "\n")
    return run


@pytest.mark.parametrize("every", [True, False], ids=["every-line", "one-line"])
@pytest.mark.parametrize(("field", "value"), HOSTILE, ids=[f"{f}={v!r}"[:40] for f, v in HOSTILE])
def test_every_reader_refuses_or_skips_cleanly(
    tmp_path: Path, field: str, value: object, every: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process (a traceback would fail the test as an exception), through main()."""
    run = _corrupt(tmp_path, field, value, every)
    allowed = field == "schedule_lag_s" and value is None
    commands = [
        ("calibrate", str(run), "-o", str(tmp_path / "cal.json"), "--no-backtest"),
        ("compare", str(run), str(run), "--out", str(tmp_path / "cmp"), "--resamples", "200"),
        ("gate", "--baseline", str(run), "--candidate", str(run), "--out", str(tmp_path / "g")),
        ("report", str(run)),
    ]
    for args in commands:
        code = main(list(args))
        stderr = capsys.readouterr().err
        if allowed:
            assert code == 0, (args[0], stderr[-2000:])
        elif every:  # all lines bad: the file is refused, naming it and its lines
            assert code == 2, (args[0], stderr[-2000:])
            assert "requests.jsonl: line" in stderr and field in stderr
        else:  # one line bad: skipped, said, the rest used
            assert code == 0, (args[0], stderr[-2000:])
            assert "line 2: not a request record" in stderr and "skipped" in stderr


@pytest.mark.parametrize("name", ["requests.jsonl", "simulated.jsonl", "telemetry.jsonl"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder"])
def test_a_file_that_is_not_a_file_is_refused_without_waiting(
    tmp_path: Path, name: str, kind: str
) -> None:
    """A pipe (reading one waits for a writer: calibrate and report hung on simulated.jsonl),
    a link to a device (endless) or a folder in a record file's place: every command ends
    (a forked child, killed at 60 s: a hang) with exit 2 naming the file, or passes over an
    optional file with a warning naming it; calibrate replaces simulated.jsonl, never writes
    through it."""
    run = _corrupt(tmp_path, "attempt", 0, every=False)
    target = run / name
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dev-zero":
        target.symlink_to("/dev/zero")
    else:
        target.mkdir()
    for args in (
        argv("calibrate", run, run, tmp_path, False),
        argv("report", run, run, tmp_path, False),
        argv("gate", run, OLD, tmp_path, True),
    ):
        outcome = run_command(args, limit_s=60)
        assert not outcome.hung and outcome.clean, (args[0], outcome.traceback)
        if outcome.code == 2 or (name == "telemetry.jsonl" and args[0] == "report"):
            assert str(target) in outcome.stderr, (args[0], outcome.stderr)
        if name == "requests.jsonl":
            assert outcome.code == 2, (args[0], outcome.stderr)
    if name == "simulated.jsonl" and kind != "folder":  # the back-test wrote a new file there
        assert target.is_file() and not target.is_symlink()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder"])
def test_a_sent_marks_file_that_is_not_a_file_leaves_the_merge_undone(
    tmp_path: Path, kind: str
) -> None:
    """A worker's marks (sent-w0.jsonl) that are a pipe, a device or a folder: report says the
    worker's records were not merged, naming the file, and reports them unmerged."""
    run = Path(shutil.copytree(OLD, tmp_path / "run"))
    first = (run / "requests.jsonl").read_text().splitlines()[0]
    (run / "requests-w0.jsonl").write_text(first.replace('"id":"', '"id":"w0-', 1) + "\n")
    marks = run / "sent-w0.jsonl"
    if kind == "fifo":
        os.mkfifo(marks)
    elif kind == "dev-zero":
        marks.symlink_to("/dev/zero")
    else:
        marks.mkdir()
    outcome = run_command(argv("report", run, run, tmp_path, False), limit_s=60)
    assert not outcome.hung and outcome.clean and outcome.code == 0, outcome.stderr[-2000:]
    assert "worker records not merged" in outcome.stderr and str(marks) in outcome.stderr


def test_a_line_over_the_limit_is_skipped_unread(tmp_path: Path) -> None:
    """A record line longer than MAX_LINE_BYTES is a bad line, read past in pieces: the
    reader's memory stays within twice the limit (a line's bytes and the reader's buffer; it
    held the whole line, 48 MiB here, and its copies)."""
    run = _corrupt(tmp_path, "attempt", 0, every=False)
    lines = (run / "requests.jsonl").read_bytes().splitlines(keepends=True)
    lines.insert(5, b'{"id": "' + b"x" * (3 * MAX_LINE_BYTES) + b'"}\n')
    (run / "requests.jsonl").write_bytes(b"".join(lines))
    warned: list[str] = []
    tracemalloc.start()
    try:
        records = list(iter_records(run / "requests.jsonl", warned.append))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(records) == len(lines) - 1
    assert warned == [
        f"{run / 'requests.jsonl'}: line 6: not a request record: longer than "
        f"{MAX_LINE_BYTES >> 20} MiB (skipped)"
    ]
    assert peak < 2 * MAX_LINE_BYTES + (4 << 20)


def test_a_null_chunk_token_count_is_a_bad_line(tmp_path: Path) -> None:
    """chunk_tokens [null] passed the record check and calibrate raised TypeError."""
    line = json.loads((OLD / "requests.jsonl").read_text().splitlines()[0])
    line["chunk_tokens"] = [None]
    with pytest.raises(ValueError, match=r"chunk_tokens: \[0\] required"):
        parse_record(json.dumps(line).encode())


def test_a_folder_where_a_document_is_written_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """report rewrites summary.json: a folder there raised IsADirectoryError."""
    run = _corrupt(tmp_path, "attempt", 0, every=False)
    (run / "summary.json").unlink()
    (run / "summary.json").mkdir()
    assert main(["report", str(run)]) == 2
    assert f"{run / 'summary.json'} is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["metric", "t", "1e308"])
def test_a_number_beyond_a_floats_range_is_a_skipped_telemetry_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """A 400-digit integer as a metric or as a sample's time raised OverflowError in report
    (found by the run-folder fuzz)."""
    run = _corrupt(tmp_path, "attempt", 0, every=False)
    lines = (run / "telemetry.jsonl").read_text().splitlines()
    sample = json.loads(lines[1])
    if where == "t":
        sample["t"] = "__X__"
    else:
        sample["metrics"]["surgecast_num_requests_running"] = "__X__"
    huge = "1e308" if where == "1e308" else "1" + "0" * 400  # 1e308: matplotlib's axis overflowed
    lines[1] = json.dumps(sample).replace('"__X__"', huge)
    (run / "telemetry.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["report", str(run)]) == 0
    err = capsys.readouterr().err
    assert (
        f"{run / 'telemetry.jsonl'}: line 2: not a telemetry sample (a number beyond +-1e+100"
        in err
    )


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [("engine", "block_size", 0), ("limits", "max_num_seqs", "8"), ("limits", "block_size", 0)],
)
def test_a_targets_unservable_limits_in_run_json_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, field: str, value: object
) -> None:
    """run.json's engine block_size 0 passed its reader and raised pydantic's ValidationError
    when calibrate wrote the calibration (the 10,000-folder fuzz); a declared limit that is no
    whole number would have raised in int()."""
    run = _corrupt(tmp_path, "attempt", 0, every=False)
    meta = json.loads((run / "run.json").read_text())
    meta["target"].setdefault(section, {})
    meta["target"][section] = {**(meta["target"][section] or {}), field: value}
    (run / "run.json").write_text(json.dumps(meta))
    assert main(["calibrate", str(run), "-o", str(tmp_path / "cal.json")]) == 2
    err = capsys.readouterr().err
    assert "run.json" in err and field in err and "at least 1" in err
    assert not (tmp_path / "cal.json").exists()


def test_a_linked_records_file_is_never_cut_by_the_recovery(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A one-process run's marks (sent.jsonl) make the merge cut requests.jsonl's torn last
    line and append lost records to it: never through a link planted in its place."""
    from scenarios.records import SentMark

    run = Path(shutil.copytree(OLD, tmp_path / "run"))
    elsewhere = tmp_path / "elsewhere.jsonl"
    before = (run / "requests.jsonl").read_text() + '{"id": "torn'
    elsewhere.write_text(before)
    (run / "requests.jsonl").unlink()
    (run / "requests.jsonl").symlink_to(elsewhere)
    (run / "sent.jsonl").write_text(SentMark("lost-1", 0, 1.0, 1.0).to_json() + "\n")
    assert main(["report", str(run)]) in (0, 2)
    capsys.readouterr()
    assert elsewhere.read_text() == before
