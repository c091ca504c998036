"""Every catalog scenario plans, names no file outside the project, and runs `surgecast run
--duration 5` against the reference target from a clean copy of the project (the files git
tracks or would track, nothing beside them) on the project's own query sets; the scenarios with
corpora run again on the public corpora under ../shared/data (`--corpus-dir`) when present.

The runs start together (they mostly wait on think times and answers) and each has LENIENT
timing written into the copy's scenario: a busy 2-core machine must not make one invalid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from scenarios import CATALOG
from scenarios.corpora import CORPUS_DIR_ENV, named_corpora, resolve_path
from scenarios.plan import build_plan
from scenarios.records import read_records
from scenarios.spec import load_scenario
from tests.conftest import LENIENT, ROOT
from tests.corpus_sets import DATA, needs_data

SCENARIOS = sorted(p.name for p in CATALOG.glob("*.yaml"))
WITH_CORPORA = [
    n for n in SCENARIOS if any(s.in_corpus_dir for s in named_corpora(load_scenario(CATALOG / n)))
]
DURATION = 5
RUNS = [pytest.param(n, "shipped", id=f"{n}-shipped") for n in SCENARIOS] + [
    pytest.param(n, "real", id=f"{n}-real", marks=needs_data) for n in WITH_CORPORA
]


def _paths(value: Any) -> Iterator[str]:
    """Every file a scenario's dump names (`path` fields), public corpora (in_corpus_dir) aside."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "path" and isinstance(item, str):
                yield item
            elif key != "in_corpus_dir":
                yield from _paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from _paths(item)


@pytest.mark.parametrize("name", SCENARIOS)
def test_catalog_scenario_plans_and_names_only_its_own_files(name: str) -> None:
    scenario = load_scenario(CATALOG / name)
    assert build_plan(scenario), "the full plan is empty"
    assert build_plan(scenario, duration_s=DURATION), f"nothing to send in {DURATION} s"
    for path in _paths(scenario.model_dump(mode="json")):
        full = resolve_path(path, CATALOG)
        assert full.is_file() and full.is_relative_to(ROOT), path
    assert WITH_CORPORA == ["rag-assistant.yaml", "summariser.yaml", "support-chatbot.yaml"]


def _clean_env(copy: Path) -> dict[str, str]:
    """This environment without a corpus folder, importing the copy's code."""
    env = {k: v for k, v in os.environ.items() if k != CORPUS_DIR_ENV}
    return {**env, "PYTHONPATH": str(copy)}


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's files as a fresh clone has them, alone in a folder; its scenarios LENIENT."""
    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout: no list of the project's files to copy")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    copy = tmp_path_factory.mktemp("clone") / "surgecast"
    for rel in filter(None, listed.split(b"\0")):
        src = ROOT / os.fsdecode(rel)
        if src.is_file():  # tracked but deleted here: absent from the copy too
            (copy / os.fsdecode(rel)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy / os.fsdecode(rel))
    assert os.listdir(copy.parent) == ["surgecast"]  # no ../shared beside it
    lenient = "".join(f"  {k}: {v}\n" for k, v in LENIENT.items())
    for path in (copy / "scenarios").glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert text.count("\ntraffic:\n") == 1, path.name
        path.write_text(text.replace("\ntraffic:\n", "\ntraffic:\n" + lenient), encoding="utf-8")
    code = "import loadgen, scenarios, simulator, surgecast, targets as t; print(*(m.__file__ "
    code += "for m in (loadgen, scenarios, simulator, surgecast, t)), sep='\\n')"
    probe = subprocess.run(
        [sys.executable, "-c", code], cwd=copy, env=_clean_env(copy), capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr
    assert all(Path(f).is_relative_to(copy) for f in probe.stdout.split()), probe.stdout
    return copy


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    out: Path
    logs: tuple[IO[bytes], IO[bytes]]

    def result(self, timeout: float = 300) -> tuple[int, str, str]:
        """Exit code, stdout and stderr, once it ends."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"still running after {timeout:g} s: {self.proc.args!r}")
        for log in self.logs:
            log.close()
        stdout, stderr = ((self.out.parent / f"{self.out.name}.{k}").read_text() for k in "oe")
        return rc, stdout, stderr


@pytest.fixture(scope="module")
def catalog_runs(clean_copy: Path) -> Iterator[dict[tuple[str, str], Run]]:
    """Every run of RUNS, started at once from the copy: (scenario, corpora) -> Run."""
    runs: dict[tuple[str, str], Run] = {}
    for name, corpora in [(n, "shipped") for n in SCENARIOS] + [
        (n, "real") for n in WITH_CORPORA if DATA is not None
    ]:
        out = clean_copy.parent / f"{name}-{corpora}"
        args = ["run", f"scenarios/{name}", "--duration", str(DURATION), "--out", str(out)]
        args += ["-q", "--no-report"] + (["--corpus-dir", str(DATA)] if corpora == "real" else [])
        logs = (open(f"{out}.o", "wb"), open(f"{out}.e", "wb"))  # noqa: SIM115 - closed by Run
        proc = subprocess.Popen(
            [sys.executable, "-m", "surgecast", *args],
            cwd=clean_copy,
            env=_clean_env(clean_copy),
            stdout=logs[0],
            stderr=logs[1],
        )
        runs[name, corpora] = Run(proc, out, logs)
    yield runs
    for run in runs.values():  # a test that failed early, or was deselected, left its run
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        for log in run.logs:
            log.close()


@pytest.mark.parametrize(("name", "corpora"), RUNS)
def test_catalog_scenario_runs_from_a_clean_copy(
    name: str, corpora: str, clean_copy: Path, catalog_runs: dict[tuple[str, str], Run]
) -> None:
    run = catalog_runs[name, corpora]
    rc, stdout, stderr = run.result()
    assert rc in (0, 99), stderr[-2000:]  # 99: an SLO missed, the run valid
    records = read_records(run.out / "requests.jsonl")
    assert records and any(r.status == "ok" for r in records)
    scenario = load_scenario(clean_copy / "scenarios" / name)
    personas = {p.name for p in scenario.mix()}
    assert {r.persona for r in records} <= personas
    if len(personas) > 1:
        assert "| persona" in stdout  # the per-persona breakdown
    read = {
        Path(line.removeprefix("text: ").rsplit(" (", 1)[0])
        for line in stderr.splitlines()
        if line.startswith("text: ")
    }
    specs = named_corpora(scenario)
    if corpora == "real":
        assert DATA is not None
        want = {DATA.resolve() / s.in_corpus_dir.path for s in specs if s.in_corpus_dir}
    else:
        want = {resolve_path(s.path, clean_copy / "scenarios") for s in specs}
        assert all(p.is_relative_to(clean_copy / "scenarios" / "data") for p in read)
        for text in (stdout, stderr, (run.out / "run.json").read_text(encoding="utf-8")):
            assert "shared/data" not in text
    assert read == want and bool(read) == (name in WITH_CORPORA)
