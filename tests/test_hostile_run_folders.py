"""One bad field in a run folder's records, through every command that reads run folders: each
is refused (over 5% of lines bad: exit 2 naming the file and its lines) or the line skipped with
a warning, never a traceback. Issue 26, findings 4 and 5: integers over 64 bits and nulls or
lists in fields that were not checked crashed calibrate, gate and compare."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from surgecast.cli.main import main

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
