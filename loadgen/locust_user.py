"""surgecast's LLM user for plain Locust (`locust -f locustfile.py`, web UI included).

A locustfile needs two lines beyond its imports:

    from loadgen.locust_user import LLMUser

    class Chat(LLMUser):
        scenario_file = "scenarios/chatbot.yaml"

Run it with Locust's own flags (`locust -f locustfile.py --host http://127.0.0.1:8000/v1`).
Each request takes its text and lengths from the scenario's plan and goes through surgecast's
streaming client. Locust's statistics get, per request, a row for the API call itself (its time
is E2E) and rows `TTFT`, `ITL` (the request's mean gap between tokens) and `output tokens`
(whose "size" column is the answer's token count, so its size x RPS is output tokens/s): the web
UI shows them live beside Locust's own. Failures carry surgecast's error kind.

Pacing is open-loop per user: each user starts a request every Exp(users / rate) seconds from its
previous start (the scenario's rate shared among however many users run), so a slow answer does
not delay the next while users outnumber the requests in flight. `surgecast run` remains the
exact path: one dispatcher sending every planned request at its planned time, records and report.
`records_file` (or $SURGECAST_RECORDS) appends each request's surgecast record as JSON lines.
$SURGECAST_CORPUS_DIR, as for `surgecast run`, makes corpora with `in_corpus_dir` read from it.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
from gevent import GreenletExit
from locust import User, task

from loadgen.client import Endpoint, StreamingCall, read_api_key
from loadgen.sizing import SizedPrompts
from scenarios.corpora import env_corpus_dir
from scenarios.plan import RequestSpec, build_plan
from scenarios.records import RecordWriter, RequestRecord
from scenarios.scrub import PromptStore
from scenarios.spec import Scenario, load_scenario


class _Shared:
    """What every user of one class shares: the scenario, its plan (cycled), the prompts."""

    def __init__(self, scenario_file: str, host: str | None, records_file: str):
        self.scenario: Scenario = load_scenario(scenario_file, env_corpus_dir())
        base_dir = self.scenario.base_dir or Path(scenario_file).parent
        self.prompts = SizedPrompts(self.scenario, base_dir)
        plan = [s for s in build_plan(self.scenario) if s.after is None]  # single turns
        self.specs: Iterator[RequestSpec] = itertools.cycle(plan)
        self.rate = len(plan) / self.scenario.traffic.duration_s
        self.endpoint = Endpoint.from_target(
            self.scenario.target, host, read_api_key(self.scenario.target)
        )
        # this process's key for hashing stored prompts (Locust's own workers each have one)
        self.store_prompts = PromptStore(self.scenario.privacy.store_prompts)
        self.lock = threading.Lock()
        # one writer for every user, open for the process's life: each record a flushed line
        stream = open(records_file, "a", encoding="utf-8") if records_file else None  # noqa: SIM115
        self.writer = RecordWriter(stream) if stream else None

    def next_spec(self) -> RequestSpec:
        with self.lock:
            return next(self.specs)


class LLMUser(User):
    """A Locust user that sends the scenario's requests through surgecast's client."""

    abstract = True
    scenario_file: ClassVar[str] = os.environ.get("SURGECAST_SCENARIO", "")
    records_file: ClassVar[str] = os.environ.get("SURGECAST_RECORDS", "")
    shared: ClassVar[_Shared]  # set by the class's first user to start

    def on_start(self) -> None:
        cls = type(self)
        if "shared" not in cls.__dict__:
            if not cls.scenario_file:
                raise ValueError(
                    f"{cls.__name__}: set scenario_file (or $SURGECAST_SCENARIO) to a scenario"
                )
            cls.shared = _Shared(cls.scenario_file, self.host, cls.records_file)
        self.rng = np.random.default_rng()
        self.next_start = time.monotonic()

    def wait_time(self) -> float:
        runner = self.environment.runner
        users = max(runner.user_count if runner is not None else 1, 1)
        self.next_start += float(self.rng.exponential(users / self.shared.rate))
        return max(0.0, self.next_start - time.monotonic())

    @task
    def ask(self) -> None:
        shared = self.shared
        spec = shared.next_spec()
        call = StreamingCall(
            shared.endpoint,
            spec,
            time.monotonic,
            shared.store_prompts,
            messages=shared.prompts.messages(spec, measured=False),
        )
        try:
            record = call.run()
        except GreenletExit:  # Locust stopped the user mid-request: recorded as cancelled
            call.cancel()
            if shared.writer is not None:
                shared.writer.write(call.record)
            raise
        if shared.writer is not None:
            shared.writer.write(record)
        self._report(record, shared.endpoint.path)

    def _report(self, r: RequestRecord, path: str) -> None:
        fire = self.environment.events.request.fire
        failure = None if r.status == "ok" else RuntimeError(r.error_kind or r.status)
        e2e = ((r.end or r.start) - r.start) * 1000.0
        fire(
            request_type="POST",
            name=path,
            response_time=e2e,
            response_length=r.output_tokens or 0,
            exception=failure,
            context={},
        )
        if failure is not None or r.ttft is None:
            return
        fire(
            request_type="LLM",
            name="TTFT",
            response_time=r.ttft * 1000.0,
            response_length=0,
            exception=None,
            context={},
        )
        if len(r.chunk_times) > 1:
            gaps = np.diff(r.chunk_times)
            fire(
                request_type="LLM",
                name="ITL",
                response_time=float(gaps.mean()) * 1000.0,
                response_length=0,
                exception=None,
                context={},
            )
        fire(
            request_type="LLM",
            name="output tokens",
            response_time=e2e,
            response_length=r.output_tokens or 0,
            exception=None,
            context={},
        )
