"""A run folder written before the code was reorganised (commit 8a52588) still reads: its
documents against their contracts, and through the commands that take a run folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from surgecast.calibration import calibrate_runs
from surgecast.contracts import read_backtest, read_calibration, read_forecast, read_summary
from surgecast.predict import backtest_run
from surgecast.rundir import RunFolder
from tests.conftest import run_cli

OLD = Path(__file__).parent / "data" / "run-8a52588"


@pytest.fixture
def old(tmp_path: Path) -> RunFolder:
    """A copy: the commands write into the folder."""
    return RunFolder(Path(shutil.copytree(OLD, tmp_path / "run")))


def test_its_documents_read_against_the_contracts(old: RunFolder) -> None:
    meta = old.meta()
    assert meta.status == "finished" and meta.validity is not None and meta.validity.valid
    records = old.records()
    assert len(records) == meta.planned_requests and all(r.status == "ok" for r in records)
    assert read_summary(old.summary).requests == len(records)
    calibration = read_calibration(old.calibration)
    assert calibration.runs == [meta.run_id]
    assert read_backtest(old.backtest).rows
    points = read_forecast(old.forecast)
    assert [p.scale for p in points] == [1.0, 10.0] and all(p.best for p in points)


def test_it_calibrates_and_back_tests_as_before(old: RunFolder) -> None:
    before = read_calibration(old.calibration)
    again = calibrate_runs([old])
    assert again.engine.max_num_seqs == before.engine.max_num_seqs
    assert again.fit.values == pytest.approx(before.fit.values, rel=1e-6, abs=1e-9)
    rows = backtest_run(old, again)
    assert {r.metric for r in rows} >= {"ttft", "e2e", "throughput"}


def test_the_commands_that_read_a_run_folder_take_it(old: RunFolder, tmp_path: Path) -> None:
    report = run_cli("report", str(old.path))
    assert report.returncode == 0, report.stderr
    assert old.html.exists() and "Capacity forecast" in old.html.read_text()
    compare = run_cli("compare", str(old.path), str(old.path), "--out", str(tmp_path / "c"))
    assert compare.returncode == 0, compare.stderr
    gate = run_cli(
        "gate", "--baseline", str(old.path), "--candidate", str(old.path), "--out", str(tmp_path)
    )
    assert gate.returncode == 0, gate.stderr
    assert (tmp_path / "junit.xml").exists()


def test_report_replaces_a_link_planted_in_the_folder_never_writes_through_it(
    old: RunFolder, tmp_path: Path
) -> None:
    """Issue 26, finding 8: `report` wrote index.html and summary.md through symlinks planted
    in the run folder, overwriting the files they pointed to."""
    victims = {name: tmp_path / f"victim-{name}" for name in ("index.html", "summary.md")}
    for name, victim in victims.items():
        victim.write_text("precious\n")
        (old.path / name).unlink(missing_ok=True)
        (old.path / name).symlink_to(victim)
    assert run_cli("report", str(old.path)).returncode == 0
    for name, victim in victims.items():
        assert victim.read_text() == "precious\n"  # untouched
        assert (
            not (old.path / name).is_symlink() and "<html" in (old.path / "index.html").read_text()
        )
