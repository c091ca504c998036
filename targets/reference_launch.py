"""Start the reference target (the engine model served over HTTP) as a child process on a free
loopback port, and stop it; `ReferenceLauncher` is the same behind a run's `Launcher`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any, ClassVar

from scenarios.spec import ReferenceTargetSpec, Scenario, TargetFaults
from simulator.engine.core import EngineConfig, engine_from_spec
from targets.errors import TargetError
from targets.launcher import ExternalTarget, Launcher, Say

TARGET_KEY_ENV = "SURGECAST_TARGET_API_KEY"  # the key the reference target wants, if any


class TargetStartError(TargetError):
    pass


class ReferenceTargetProcess:
    """Context manager: `with ReferenceTargetProcess(config) as base_url: ...`.

    The child prints its URL once listening; entering also waits out the cold start (/health).
    """

    def __init__(
        self,
        config: EngineConfig,
        model: str = "surgecast-reference",
        host: str = "127.0.0.1",
        start_timeout_s: float = 60.0,
        faults: TargetFaults | None = None,
        stream_interval: int = 1,
        api_key: str | None = None,
        debug: bool = False,
        body_timeout_s: float | None = None,
        header_timeout_s: float | None = None,
    ):
        self.config = config
        self.body_timeout_s = body_timeout_s
        self.header_timeout_s = header_timeout_s
        self.faults = faults
        self.stream_interval = stream_interval
        self.api_key = api_key  # passed in the environment: never on a command line
        self.debug = debug
        self.model = model
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> str:
        cmd = [
            sys.executable,
            "-m",
            "surgecast",
            "serve",
            "--host",
            self.host,
            "--port",
            "0",
            "--model",
            self.model,
            "--engine-json",
            json.dumps(self.config.to_dict()),
            "--exit-with-parent",
        ]
        if self.stream_interval > 1:
            cmd += ["--stream-interval", str(self.stream_interval)]
        if self.faults is not None and self.faults.any:
            cmd += ["--faults-json", self.faults.model_dump_json()]
        if self.debug:
            cmd.append("--debug")
        if self.body_timeout_s is not None:
            cmd += ["--body-timeout", f"{self.body_timeout_s:g}"]
        if self.header_timeout_s is not None:
            cmd += ["--header-timeout", f"{self.header_timeout_s:g}"]
        env = {k: v for k, v in os.environ.items() if k != TARGET_KEY_ENV}
        if self.api_key:
            env[TARGET_KEY_ENV] = self.api_key
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a terminal's Ctrl-C reaches surgecast, which drains first
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on " not in line:
            self.__exit__(None, None, None)
            raise TargetStartError(f"reference target did not start (it printed {line!r})")
        self.base_url = line.rsplit("listening on ", 1)[1].strip()
        self._wait_ready()
        return self.base_url

    def exit_code(self) -> int | None:
        """None while it runs (or before it started)."""
        return None if self.proc is None else self.proc.poll()

    def _wait_ready(self) -> None:
        health = self.base_url.removesuffix("/v1") + "/health"
        deadline = time.monotonic() + self.start_timeout_s + self.config.cold_start_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(health, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.__exit__(None, None, None)
        raise TargetStartError(f"reference target at {self.base_url} never became healthy")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is None:
            return
        if self.proc.stdin:
            self.proc.stdin.close()  # the target exits on its own when its stdin closes
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe:
                pipe.close()
        self.proc = None


class ReferenceLauncher(Launcher):
    """The reference target a scenario's `reference_target` section describes."""

    kind: ClassVar[str] = "reference"

    def __init__(self, spec: ReferenceTargetSpec):
        self.config = engine_from_spec(spec)
        self.spec = spec
        self.process: ReferenceTargetProcess | None = None

    def start(self, model: str, say: Say) -> None:
        spec = self.spec
        self.process = ReferenceTargetProcess(
            self.config, model=model, faults=spec.faults, stream_interval=spec.stream_interval
        )
        self.base_url = self.process.__enter__()
        say(self._describe())

    def stop(self) -> None:
        if self.process is not None:
            self.process.__exit__(None, None, None)

    def alive(self) -> bool:
        return self.process is not None and self.process.exit_code() is None

    def death(self, when: str = "died during the run") -> str | None:
        code = None if self.process is None else self.process.exit_code()
        return None if code is None else f"the reference target {when} (exit code {code})"

    def facts(self) -> dict[str, Any]:
        return {"engine": self.config.to_dict()}

    def _describe(self) -> str:
        return f"reference target up at {self.base_url}"


def url_or_reference(url: str | None, scenario: Scenario) -> Launcher:
    """A URL (given, else the scenario's target.base_url), else the scenario's reference target."""
    url = url or scenario.target.base_url
    return ExternalTarget(url) if url else ReferenceLauncher(scenario.reference_target)
