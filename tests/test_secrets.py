"""A key planted in the environment, in a URL and in a corpus is found nowhere a run writes.

Issue 26, finding 6: redaction matched only the exact key, so a target echoing it cut short,
in capitals, base64 or hex got it stored in records, run.json, the reports and the console. Here
a loopback target echoes the key it is sent in every form it can (error bodies, the status
line's reason, model names, Prometheus labels), the corpus pastes it into prompts kept in full,
and every byte of output is searched for any stretch of those forms.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from scenarios.redact import Redactor
from tests.conftest import loopback_server, run_cli, scenario_dict, write_scenario

KEY = "sk-live-4Qz9T7pLmW2xR8vB"
ENV = "SECRETS_TEST_KEY"


def _forms(key: str) -> dict[str, str]:
    """What a careless or hostile target might make of the key it was sent."""
    return {
        "whole": key,
        "cut short": key[:-4],
        "prefix dropped": key[3:],
        "capitals": key.upper(),
        "base64": base64.b64encode(key.encode()).decode(),
        "base64 of a header": base64.b64encode(f"Bearer {key}".encode()).decode(),
        "url-safe base64": base64.urlsafe_b64encode(f"xx{key}".encode()).decode(),
        "hex": key.encode().hex(),
    }


def _stretches(key: str, width: int = 10) -> set[str]:
    """Every `width`-character stretch of the forms, lower-cased, from their middles (a base64
    form's ends depend on the bytes around the key)."""
    out = set()
    for form in _forms(key).values():
        middle = form[4:-4].lower()
        out |= {middle[i : i + width] for i in range(len(middle) - width + 1)}
    return out


def _echo(handler: BaseHTTPRequestHandler, status: int, body: bytes, kind: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", kind)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _Echoing(BaseHTTPRequestHandler):
    """Serves every other request, refuses the rest quoting the key in all its forms."""

    calls = 0
    lock = threading.Lock()

    def _key(self) -> str:
        return self.headers.get("Authorization", "").removeprefix("Bearer ")

    def do_GET(self) -> None:
        key = self._key()
        said = " ".join(_forms(key).values())
        if not key.startswith("sk-live"):  # the reason phrase quotes what was sent
            self.send_response(401, f"unknown key {key[:-2]}")
            self.end_headers()
        elif self.path.endswith("/models"):
            models = [{"id": "echo-model"}, {"id": f"tenant-{key.upper()}"}]
            _echo(self, 200, json.dumps({"data": models}).encode(), "application/json")
        else:  # Prometheus, with the key in its labels
            labels = ",".join(
                f'{k.replace(" ", "_").replace("-", "_")}="{v}"' for k, v in _forms(key).items()
            )
            text = f"echo_requests_total{{{labels}}} 1\n# {said}\n"
            _echo(self, 200, text.encode(), "text/plain; version=0.0.4")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).calls += 1
            refuse = self.calls % 2 == 0
        key = self._key()
        if refuse:
            said = "invalid key " + " or ".join(_forms(key).values())
            body = json.dumps({"error": {"message": said}}).encode()
            _echo(self, 400, body, "application/json")
            return
        chunk = {"choices": [{"index": 0, "delta": {"content": f"your key is {key} "}}]}
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1}}
        events = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in (chunk, done, usage))
        _echo(self, 200, events + b"data: [DONE]\n\n", "text/event-stream")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def echoing() -> Iterator[str]:
    with loopback_server(_Echoing) as url:
        yield url


def _scenario(tmp_path: Path, corpus: str, model: str = "echo-model") -> Path:
    data = scenario_dict(
        traffic={"rate": 6, "duration_s": 2, "seed": 3},
        privacy={"store_prompts": "full"},
    )
    data["target"].update(model=model, api_key_env=ENV)
    data["workload"]["text"] = {"type": "corpus", "corpus": {"path": corpus, "format": "text"}}
    return write_scenario(tmp_path / f"{model}.yaml", data)


def _leaks(texts: list[str]) -> list[str]:
    stretches = _stretches(KEY)
    return [s for text in texts for s in stretches if s in text.lower()]


def _outputs(result: object, *folders: Path) -> list[str]:
    texts = [result.stdout, result.stderr]  # type: ignore[attr-defined]
    for folder in folders:
        texts += [p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()]
    return texts


def test_the_forms_searched_for_are_what_a_redactor_must_catch() -> None:
    """The search is independent of the redactor: it looks for stretches of each form."""
    redact = Redactor(KEY)
    for name, form in _forms(KEY).items():
        assert _leaks([form]), name
        assert not _leaks([redact(f"the key: {form}.")]), name
    ordinary = "maximum context length is 4096 tokens; see sk-docs for keys"
    assert redact(ordinary) == ordinary


def test_a_key_echoed_in_every_form_is_in_no_output(tmp_path: Path, echoing: str) -> None:
    corpus = tmp_path / "pasted.txt"
    corpus.write_text(
        "".join(f"my key is {form}, why is it refused?\n" for form in _forms(KEY).values())
    )
    env = {**os.environ, ENV: KEY}
    out = tmp_path / "run"
    result = run_cli(
        "run",
        str(_scenario(tmp_path, str(corpus))),
        "--target",
        echoing,
        "--out",
        str(out),
        env=env,
        timeout=180,
    )
    assert result.returncode in (0, 99), result.stderr[-3000:]
    records = (out / "requests.jsonl").read_text()
    assert "invalid key ***" in records and "my key is ***, why" in records
    assert "echo_requests_total" in (out / "telemetry.jsonl").read_text()
    assert (out / "index.html").is_file() and (out / "summary.md").is_file()
    assert not _leaks(_outputs(result, out))


def test_a_key_in_a_model_list_a_refusal_or_a_url_is_in_no_output(
    tmp_path: Path, echoing: str
) -> None:
    corpus = tmp_path / "plain.txt"
    corpus.write_text("where is my parcel?\n")
    env = {**os.environ, ENV: KEY}
    missing = run_cli(
        "run",
        str(_scenario(tmp_path, str(corpus), "other-model")),
        "--target",
        echoing,
        "--out",
        str(tmp_path / "a"),
        env=env,
    )
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert "serves: echo-model, ***" in missing.stderr
    wrong = run_cli(
        "run",
        str(_scenario(tmp_path, str(corpus))),
        "--target",
        echoing,
        "--out",
        str(tmp_path / "b"),
        env={**os.environ, ENV: KEY.replace("live", "test")},
    )
    assert wrong.returncode == 3 and "HTTP 401" in wrong.stderr, wrong.stderr[-2000:]
    host = echoing.removeprefix("http://")
    in_url = run_cli(
        "run",
        str(_scenario(tmp_path, str(corpus))),
        "--target",
        f"http://user:{KEY}@{host}",
        "--out",
        str(tmp_path / "c"),
        env=env,
    )
    assert in_url.returncode == 2, in_url.stderr[-2000:]
    environ = run_cli(
        "run",
        str(_scenario(tmp_path, "/proc/self/environ")),
        "--target",
        echoing,
        "--out",
        str(tmp_path / "d"),
        env=env,
    )
    assert environ.returncode == 2 and "never a scenario's data" in environ.stderr
    results = (missing, wrong, in_url, environ)
    assert not _leaks([t for r in results for t in _outputs(r, tmp_path)])
