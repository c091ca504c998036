""".github/workflows/perf-gate.yml's shell steps, run as written with `bash -e` (GitHub's default
shell) against the built-in reference target.

What the test substitutes, and nothing else: the job's env (SCENARIO: a copy of
scenarios/chatbot.yaml with the case's SLOs and lenient timing limits for a shared machine;
DURATION: 2 s), GITHUB_STEP_SUMMARY (a file), the two checkouts (base/ and head/: folders of
symlinks to this project's files) and the install line `python -m venv .venv && pip install ...`,
which becomes a no-op beside a .venv/bin/surgecast that runs this interpreter's surgecast.

The three cases' workflows run at once (each step waits mostly on its runs' traffic and answers,
one at a time), each in a folder of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import LENIENT, ROOT, write_scenario

WORKFLOW = ROOT / ".github" / "workflows" / "perf-gate.yml"
INSTALL = "python -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e ."
SKIPPED = "true  # install skipped by the test: .venv/bin/surgecast runs its interpreter"


def _checkout(path: Path) -> None:
    """A stand-in for actions/checkout: the project's files as symlinks, and a .venv whose
    surgecast is this interpreter's."""
    path.mkdir()
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and entry.name != "reports":
            (path / entry.name).symlink_to(entry)
    script = path / ".venv" / "bin" / "surgecast"
    script.parent.mkdir(parents=True)
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m surgecast "$@"\n')
    script.chmod(0o755)


def _run_workflow(tmp: Path, scenario: Path) -> list[tuple[str, int, str]]:
    """Each `run:` step of the gate job in order, as GitHub runs it (`bash -e`, in its
    working-directory, the job's env); stops after the first step that fails, as GitHub does
    (the steps left are `if: always()` actions, not scripts). (name, exit code, output) each."""
    job: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())["jobs"]["gate"]
    assert set(job["env"]) == {"SCENARIO", "DURATION"}
    env = {
        **os.environ,
        "SCENARIO": str(scenario),
        "DURATION": "2",
        "GITHUB_STEP_SUMMARY": str(tmp / "step-summary.md"),
    }
    _checkout(tmp / "base")
    _checkout(tmp / "head")
    done: list[tuple[str, int, str]] = []
    for step in job["steps"]:
        if "run" not in step:
            continue
        script: str = step["run"]
        assert script.count(INSTALL) == 1, step["name"]
        path = tmp / f"step-{len(done)}.sh"
        path.write_text(script.replace(INSTALL, SKIPPED))
        result = subprocess.run(
            ["bash", "-e", str(path)],
            cwd=tmp / step["working-directory"],
            env=env,
            capture_output=True,
            text=True,
            timeout=280,
            check=False,
        )
        done.append((step["name"], result.returncode, result.stdout + result.stderr))
        if result.returncode:
            break
    return done


def _scenario(tmp: Path, **changes: Any) -> Path:
    data = yaml.safe_load((ROOT / "scenarios" / "chatbot.yaml").read_text())
    data["traffic"].update(LENIENT)
    data.update(changes)
    return write_scenario(tmp / "gated.yaml", data)


def _failures(junit: Path) -> dict[str, bool]:
    return {
        str(c.get("name")): c.find("failure") is not None
        for c in ET.parse(junit).getroot().iter("testcase")
    }


Steps = list[tuple[str, int, str]]

# each case's scenario, from its folder
CASES: dict[str, Callable[[Path], Path]] = {
    "missed": lambda tmp: _scenario(tmp, slos={"ttft": "p(95) < 1", "error_rate": "rate < 0.01"}),
    "passing": lambda tmp: _scenario(
        tmp, regressions={m: "p(95) regress < 200%" for m in ("ttft", "e2e", "itl")}
    ),
    "bad": lambda tmp: _scenario(tmp, unknown_section={"x": 1}),
}


@pytest.fixture(scope="module")
def workflows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Steps]]:
    """Every case's workflow, run at once: case -> (its folder, its steps)."""
    folders = {case: tmp_path_factory.mktemp(case) for case in CASES}
    with ThreadPoolExecutor(len(CASES)) as pool:
        steps = {
            case: pool.submit(_run_workflow, folders[case], make(folders[case]))
            for case, make in CASES.items()
        }
        return {case: (folders[case], done.result()) for case, done in steps.items()}


def test_runs_that_miss_an_slo_still_reach_the_gate(
    workflows: dict[str, tuple[Path, Steps]],
) -> None:
    """Every run misses `ttft: p(95) < 1`: each exits 99, and the gate still judges all six,
    writes junit.xml and gate.md, and its 99 fails the job."""
    tmp_path, steps = workflows["missed"]
    assert len(steps) == 2, steps[-1][2][-3000:]
    (_, base_rc, base_out), (_, cand_rc, cand_out) = steps
    assert base_rc == 0, base_out[-3000:]
    assert cand_rc == 99, cand_out[-3000:]
    assert "baseline run 3 missed an SLO (exit 99)" in base_out
    assert "candidate run 3 missed an SLO (exit 99)" in cand_out and "::error" not in cand_out
    for side in ("baseline", "candidate"):
        for i in (1, 2, 3):
            assert (tmp_path / f"{side}-{i}" / "summary.json").exists(), f"{side}-{i}"
    failures = _failures(tmp_path / "gate" / "junit.xml")
    assert failures["ttft: p(95) < 1"] and not failures["error_rate: rate < 0.01"]
    assert "FAIL" in (tmp_path / "gate" / "gate.md").read_text()
    assert "surgecast gate: FAIL" in (tmp_path / "step-summary.md").read_text()


def test_passing_runs_pass_the_gate(workflows: dict[str, tuple[Path, Steps]]) -> None:
    """The same plan on both sides, loose budgets (this test is about the workflow, not the
    statistics of a noisy machine): the gate passes and the job with it."""
    tmp_path, steps = workflows["passing"]
    assert [rc for _, rc, _ in steps] == [0, 0], steps[-1][2][-3000:]
    assert "::warning" not in steps[0][2] + steps[1][2]  # no run was flagged
    assert "::error" not in steps[0][2] + steps[1][2]
    failures = _failures(tmp_path / "gate" / "junit.xml")
    assert "ttft: p(95) regress < 200%" in failures and not any(failures.values())
    assert "surgecast gate: PASS" in (tmp_path / "gate" / "gate.md").read_text()


def test_bad_input_is_flagged_and_the_gate_exits_2(
    workflows: dict[str, tuple[Path, Steps]],
) -> None:
    """A scenario the runs refuse (exit 2) shows as an error annotation per run, and the gate's
    own 2 fails the job."""
    tmp_path, steps = workflows["bad"]
    assert len(steps) == 2, steps[-1][2][-3000:]
    (_, base_rc, base_out), (_, cand_rc, cand_out) = steps
    assert base_rc == 0 and "::error title=perf-gate::baseline run 1 exited 2" in base_out
    assert cand_rc == 2 and "::error title=perf-gate::candidate run 3 exited 2" in cand_out
    assert not (tmp_path / "gate" / "junit.xml").exists()
