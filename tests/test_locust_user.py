"""surgecast's LLM user under plain Locust (`locust -f`, headless here): its rows in Locust's
own statistics agree with the reference target's log of what it served."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, scenario_dict, write_scenario

LOCUSTFILE = """
from loadgen.locust_user import LLMUser


class Chat(LLMUser):
    scenario_file = {scenario!r}
    records_file = {records!r}
"""


def test_a_plain_locustfile_runs_the_llm_user(tmp_path: Path, target_url: str) -> None:
    debug = target_url.removesuffix("/v1") + "/debug/requests"
    with urllib.request.urlopen(debug, timeout=5) as r:
        before = {d["id"] for d in json.load(r)}
    scenario = write_scenario(
        tmp_path / "s.yaml", scenario_dict(traffic={"rate": 6, "duration_s": 10, "seed": 5})
    )
    records = tmp_path / "records.jsonl"
    locustfile = tmp_path / "locustfile.py"
    locustfile.write_text(LOCUSTFILE.format(scenario=str(scenario), records=str(records)))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(locustfile),
            "--headless",
            "-u",
            "3",
            "-r",
            "3",
            "-t",
            "6s",
            "--host",
            target_url,
            "--json-file",  # written after the users stop: every finished request is in it
            str(tmp_path / "stats"),
            "--only-summary",
            "--exit-code-on-error",
            "1",
            "--stop-timeout",  # users finish the request in hand: every request is counted
            "20",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads((tmp_path / "stats.json").read_text())}
    calls = rows["/v1/chat/completions"]["num_requests"]
    assert calls >= 10 and rows["/v1/chat/completions"]["num_failures"] == 0
    for name in ("TTFT", "ITL", "output tokens"):  # live beside Locust's own rows
        assert rows[name]["num_requests"] == calls, name
    # every request the target served has its record, finished
    with urllib.request.urlopen(debug, timeout=5) as r:
        served = {d["id"]: d for d in json.load(r) if d["id"] not in before}
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    finished = [r for r in lines if r["status"] == "ok"]
    assert len(finished) == len(lines) == len(served)
    assert calls == len(finished)  # Locust counted each request once, as the target served it
    assert {r["response_id"] for r in finished} <= set(served)
    tokens = sum(r["output_tokens"] for r in finished)
    assert tokens == sum(served[r["response_id"]]["output_tokens"] for r in finished)
    mean_tokens = rows["output tokens"]["total_content_length"] / calls
    assert 10 <= mean_tokens <= 40  # the scenario's answers: 10-40 tokens
