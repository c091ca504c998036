"""Misbehaving servers and bad command-line input: recorded or refused clearly, never a crash."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from loadgen.client import Endpoint, StreamingCall
from scenarios.plan import RequestSpec
from tests.conftest import run_cli, scenario_dict, write_scenario

# What the fake server streams, by the model name the client asks for.
STREAMS = {
    "not-an-object": b"data: 123\n\n",
    "cut-off": b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n',
    "error-event": b'data: {"error":{"message":"overloaded, try later"}}\n\n',
    # a whole answer whose usage says 7 prompt tokens whatever the prompt (a proxy or mock)
    "fixed-usage": b'data: {"id":"x","choices":[{"index":0,"delta":{"content":"ok"}}]}\n\n'
    b'data: {"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
    b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":1}}\n\n'
    b"data: [DONE]\n\n",
}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["model"] == "quoting":  # refuses, quoting the prompt, as many servers do
            said = {"error": {"message": f"prompt rejected: {body['messages'][-1]['content']}"}}
            answer = json.dumps(said).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(STREAMS[body["model"]])  # then close without finishing

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def bad_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        ("not-an-object", "protocol"),
        ("cut-off", "incomplete_stream"),
        ("error-event", "stream_error"),
    ],
)
def test_broken_streams_are_errors_not_successes(bad_server: str, model: str, kind: str) -> None:
    spec = RequestSpec("r", 0.0, 5, 5, prompt="hello there")
    rec = StreamingCall(Endpoint(bad_server, model=model, timeout_s=5), spec, lambda: 0.0).run()
    assert (rec.status, rec.error_kind) == ("error", kind)


def test_rejected_everywhere_makes_the_run_invalid_with_the_servers_reason(
    tmp_path: Path, target_url: str
) -> None:
    data = scenario_dict(traffic={"rate": 5, "duration_s": 1, "seed": 1})
    data["workload"]["output_tokens"] = {"dist": "constant", "value": 5000}  # > its KV cache
    path = write_scenario(tmp_path / "s.yaml", data)
    result = run_cli("run", str(path), "--target", target_url, "--out", str(tmp_path / "run"), "-q")
    assert result.returncode == 3
    assert "no request succeeded" in result.stderr and "http_400" in result.stderr
    assert "maximum context length" in result.stdout  # the error table's example


def test_a_model_the_target_does_not_serve_is_refused_before_the_run(
    tmp_path: Path, target_url: str
) -> None:
    data = scenario_dict(traffic={"rate": 5, "duration_s": 1, "seed": 1})
    data["target"]["model"] = "llama-3"
    path = write_scenario(tmp_path / "s.yaml", data)
    out = tmp_path / "run"
    result = run_cli("run", str(path), "--target", target_url, "--out", str(out), "-q")
    assert result.returncode == 2
    assert "does not serve model 'llama-3'; it serves: surgecast-reference" in result.stderr
    assert not (out / "requests.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "S", "--target", "http://127.0.0.1:99999/v1"], "port must be between"),
        (["run", "S", "--target", "127.0.0.1:8000"], "http:// or https:// URL"),
        (["forecast", "S", "--calibration", "c.json", "--scales", "10,nan"], "finite"),
        (["simulate", "S", "--calibration", "c.json", "--scale", "inf"], "finite"),
        (["simulate", "S", "--calibration", "c.json", "--replicas", "0"], "whole number >= 1"),
        (["serve", "--port", "99999"], "port 0-65535"),
        (
            ["serve", "--faults-json", '{"reject_429": 3, "bogus": 1}'],
            "reject_429: Input should be less than or equal to 1, got 3; bogus: unknown field",
        ),
        (["serve", "--faults-json", "{reject"], "--faults-json: not valid JSON"),
    ],
)
def test_bad_flags_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    scenario = write_scenario(tmp_path / "s.yaml", scenario_dict())
    result = run_cli(*[str(scenario) if a == "S" else a for a in args], timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_folders_exit_2(tmp_path: Path) -> None:
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    calibrate = run_cli("calibrate", str(not_a_run), "-o", str(tmp_path / "c.json"))
    assert calibrate.returncode == 2 and f"is {not_a_run} a run folder?" in calibrate.stderr
    no_dir = run_cli("calibrate", str(not_a_run), "-o", str(tmp_path / "nope" / "c.json"))
    assert no_dir.returncode == 2 and "does not exist" in no_dir.stderr
    (not_a_run / "run.json").write_text("{}")
    (not_a_run / "requests.jsonl").write_text("")
    report = run_cli("report", str(not_a_run))
    assert report.returncode == 2 and "not a readable run folder" in report.stderr
    assert "Traceback" not in calibrate.stderr + no_dir.stderr + report.stderr


def test_an_existing_run_folder_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"run_id": "earlier"}')
    path = write_scenario(tmp_path / "s.yaml", scenario_dict())
    result = run_cli("run", str(path), "--out", str(out), timeout=60)
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert json.loads((out / "run.json").read_text()) == {"run_id": "earlier"}


def test_usage_that_ignores_the_prompt_leaves_sizing_at_its_estimate(
    tmp_path: Path, bad_server: str
) -> None:
    """Every request served with the same prompt tokens: no ratio can be learned (once this
    sent the estimate to infinity and the run died of an OverflowError); the run goes on with
    the default ratio and says why."""
    data = scenario_dict(traffic={"rate": 5, "duration_s": 1, "seed": 1})
    data["target"]["model"] = "fixed-usage"
    path = write_scenario(tmp_path / "s.yaml", data)
    out = tmp_path / "run"
    result = run_cli("run", str(path), "--target", bad_server, "--out", str(out), "-q")
    assert result.returncode in (0, 99), result.stderr[-2000:]
    assert "usage does not follow the prompts' lengths" in result.stderr
    sizing = json.loads((out / "run.json").read_text())["sizing"]
    assert sizing["learned"] == 0 and sizing["chars_per_token"] == 4.0


def test_a_target_quoting_the_prompt_leaves_it_nowhere(tmp_path: Path, bad_server: str) -> None:
    """Issue 26, finding 11: with store_prompts none, the prompt a target quotes in its error
    reached every record's error_detail, run.json's reasons, summary.md, index.html and the
    console. It is now masked wherever a target's words are kept."""
    corpus = tmp_path / "q.csv"
    corpus.write_text("text\nzebra quokka fizzbuzz wombat query one\n")
    data = scenario_dict(
        traffic={"rate": 5, "duration_s": 1, "seed": 1}, privacy={"store_prompts": "none"}
    )
    data["target"]["model"] = "quoting"
    data["workload"]["text"] = {"type": "corpus", "corpus": {"path": str(corpus), "format": "csv"}}
    path = write_scenario(tmp_path / "s.yaml", data)
    out = tmp_path / "run"
    result = run_cli("run", str(path), "--target", bad_server, "--out", str(out))
    assert result.returncode == 3, result.stderr[-2000:]  # no request succeeded
    said = [result.stdout, result.stderr, *(f.read_text() for f in out.iterdir())]
    assert not [s for s in said if "quokka" in s]
    assert "prompt rejected: [prompt]" in (out / "requests.jsonl").read_text()


@pytest.mark.parametrize(
    "url", ["http://me:hunter2secret@127.0.0.1:9/v1", "http://127.0.0.1:9/v1?api-key=hunter2secret"]
)
def test_a_credential_in_a_target_url_is_refused_never_echoed(tmp_path: Path, url: str) -> None:
    """Issue 26, finding 6: a key in the URL's query or its user:pass@ was written to run.json,
    index.html, summary.md and telemetry.jsonl. Refused where it is given, flag or scenario,
    without repeating it."""
    data = scenario_dict()
    path = write_scenario(tmp_path / "s.yaml", data)
    result = run_cli("run", str(path), "--target", url, "--out", str(tmp_path / "a"))
    data["target"]["base_url"] = url
    in_file = write_scenario(tmp_path / "t.yaml", data)
    result2 = run_cli("run", str(in_file), "--out", str(tmp_path / "b"))
    for r in (result, result2):
        assert r.returncode == 2 and "carries a credential" in r.stderr, r.stderr[-2000:]
        assert "hunter2secret" not in r.stderr + r.stdout
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
