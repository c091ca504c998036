"""`surgecast serve --calibration FILE`: the calibrated engine served live on loopback, and a bad
calibration file refused with exit 2."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from loadgen.client import Endpoint, StreamingCall
from scenarios.plan import RequestSpec
from scenarios.text import make_prompt
from surgecast.contracts import read_calibration
from tests.conftest import LENIENT, ROOT, run_cli, scenario_dict, write_scenario

# the measured engine: steps 25 ms + 3 ms a decoding sequence, twice the default engine's 12.4 ms
# for one sequence, so the served timing tells the calibration's engine from the default
STEP = {"base_ms": 25, "per_decode_seq_ms": 3, "per_prefill_token_ms": 0.05}


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """calibration.json fitted by `surgecast calibrate` on a short run of that engine."""
    tmp = tmp_path_factory.mktemp("served-calibration")
    data = scenario_dict(traffic={"rate": 4, "duration_s": 6, "seed": 2, **LENIENT})
    data["reference_target"].update(max_num_seqs=6, kv_cache_tokens=6000, step=STEP)
    run = tmp / "run"
    result = run_cli("run", str(write_scenario(tmp / "s.yaml", data)), "--out", str(run), "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp / "calibration.json"
    result = run_cli("calibrate", str(run), "-o", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    return path


@pytest.fixture
def served(calibration: Path) -> Iterator[str]:
    """`surgecast serve --calibration` on a free loopback port: its base URL, read from the
    "listening on URL" line it prints, once /health answers."""
    cmd = [sys.executable, "-m", "surgecast", "serve", "--calibration", str(calibration)]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--exit-with-parent"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.rsplit("listening on ", 1)[1].strip()
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "never healthy"
                time.sleep(0.05)
        yield url
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()  # --exit-with-parent: it stops when its stdin closes
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=5) as r:
        text = r.read().decode()
    match = re.search(rf"^surgecast_{name} (\S+)$", text, re.M)
    assert match, name
    return float(match.group(1))


def test_serve_streams_at_the_calibrated_step_cost(calibration: Path, served: str) -> None:
    engine = read_calibration(calibration).engine
    one_seq = engine.cost.duration(1, 0, 0)  # a step decoding one sequence
    assert one_seq == pytest.approx(0.028, rel=0.1)  # the fit found the measured engine
    prompt = make_prompt(np.random.default_rng(0), 20)
    spec = RequestSpec(id="r1", arrival=0.0, prompt_tokens=20, max_tokens=60, prompt=prompt)
    call = StreamingCall(Endpoint(served), spec, time.monotonic)
    rec = call.run()
    assert rec.status == "ok", rec.error_detail
    assert len(rec.chunk_times) == 60  # one token a chunk, one chunk a step
    gaps = np.diff(rec.chunk_times)
    # alone in the batch, every decode step is the calibration's one-sequence step
    assert statistics.median(gaps) == pytest.approx(one_seq, rel=0.1, abs=0.002)
    # the server's own count agrees: 60 steps (a prefill, 59 decodes) of about that time
    steps, busy = (
        _metric(served, "engine_steps_total"),
        _metric(served, "engine_busy_seconds_total"),
    )
    assert steps == 60
    assert busy / steps == pytest.approx(one_seq, rel=0.1)


def test_a_bad_calibration_file_exits_2_naming_the_problem(
    calibration: Path, tmp_path: Path
) -> None:
    good = json.loads(calibration.read_text())
    cases = {
        "not-json.json": ("{not json", "not readable JSON"),
        "no-batch.json": (
            json.dumps({**good, "engine": {**good["engine"], "max_num_seqs": 0}}),
            "max_num_seqs must be at least 1, not 0",
        ),
        "negative.json": (
            json.dumps({**good, "engine": {**good["engine"], "cost": {"base_s": -1.0}}}),
            "cost.base_s must be finite and at least 0, not -1.0",
        ),
        "summary.json": ('{"schema": "surgecast.summary/1"}', "this surgecast reads"),
    }
    for name, (text, words) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        result = run_cli("serve", "--calibration", str(path), "--port", "0", timeout=30)
        assert result.returncode == 2, (name, result.stderr)
        assert "not a usable calibration file" in result.stderr and words in result.stderr, name
        assert "listening" not in result.stdout and "Traceback" not in result.stderr
    missing = run_cli("serve", "--calibration", str(tmp_path / "none.json"), timeout=30)
    assert missing.returncode == 2 and "calibration file not found" in missing.stderr
