"""One live run's sending, from plan to records: the requests and their text, the key to send
them with, the target's probe, and the send itself (`loadgen.send`).

A `LoadJob` is made before anything starts, so a bad trace, corpus or size, or a missing API key,
fails before a run folder exists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from loadgen.client import Endpoint, preflight, read_api_key
from loadgen.send import Outputs, ScaleOut, Sent, generator_lines, send
from loadgen.sizing import ProbeResult, SizedPrompts, run_salt
from loadgen.telemetry import Keep, samplers_for
from scenarios.corpora import corpus_lines, scrub_lines
from scenarios.metrics import Summary
from scenarios.plan import RequestSpec, build_plan, uncached
from scenarios.plan_tokens import token_warnings
from scenarios.spec import Scenario


@dataclass(frozen=True)
class LoadJob:
    scenario: Scenario
    plan: list[RequestSpec]
    given: bool  # a plan handed to the run (a staircase), not drawn from the traffic
    prompts: SizedPrompts
    api_key: str | None
    salt: str  # begins every conversation, new each run ("": target.salt_prompts off)
    notes: list[str]  # the corpora read, what the privacy settings do to the text kept

    @classmethod
    def prepare(
        cls,
        scenario: Scenario,
        scenario_file: str,
        plan: Sequence[RequestSpec] | None = None,
        scale: ScaleOut | None = None,
        fresh_prompts: bool = False,
    ) -> LoadJob:
        """The requests (the scenario's plan, or `plan`), their text and the API key;
        `fresh_prompts`: none a target may have cached (the scenario's plan, its text made
        unique, for measuring an engine)."""
        api_key = read_api_key(scenario.target)
        if scale is not None and scale.distributed and plan is not None:
            raise ValueError("a plan given to the run is sent by one process (no scale-out)")
        requests = list(plan) if plan is not None else build_plan(scenario)
        if fresh_prompts:
            requests = uncached(requests, f"s{scenario.traffic.seed}")
        salt = run_salt() if scenario.target.salt_prompts else ""
        base_dir = scenario.base_dir or Path(scenario_file).parent
        prompts = SizedPrompts(scenario, base_dir, salt)
        notes = [f"text: {line}" for line in corpus_lines(scenario, base_dir)]
        notes += [f"privacy: {line}" for line in scrub_lines(scenario, base_dir)]
        return cls(scenario, requests, plan is not None, prompts, api_key, salt, notes)

    def headline(self, run_id: str) -> str:
        traffic = self.scenario.traffic
        if self.given:
            last = max((s.arrival for s in self.plan), default=0.0)
            what = f"{last:.3g} s, a plan given to the run (not the scenario's traffic)"
        else:
            what = f"{traffic.duration_s:g} s, {traffic.describe()} (seed {traffic.seed})"
        return f"run {run_id}: {len(self.plan)} requests planned over {what}"

    def connect(
        self, base_url: str, required: dict[str, Any], say: Callable[[str], None]
    ) -> tuple[Endpoint, ProbeResult]:
        """The target answers and serves the model (`preflight`), and a few requests of known
        sizes teach the prompts its tokenizer (what they taught is said); `required`: body
        fields the target needs."""
        endpoint = Endpoint.from_target(self.scenario.target, base_url, self.api_key, required)
        preflight(endpoint)
        probes = self.prompts.probe(endpoint)
        say(probes.describe())
        return endpoint, probes

    def send(
        self,
        endpoint: Endpoint,
        records: IO[str],
        telemetry: IO[str],
        keep: Keep | None = None,
        *,
        progress: bool = True,
        scale: ScaleOut | None = None,
        records_path: Path | None = None,
    ) -> Sent:
        """The plan through Locust; records and telemetry (Prometheus samples `keep` picks)
        appended to their files as they come (`records_path` names the records' file: local
        worker processes write theirs beside it)."""
        spec = self.scenario.telemetry
        samplers = samplers_for(spec, endpoint.base_url, keep, endpoint.api_key)
        outputs = Outputs(records, telemetry, samplers, records_path)
        return send(
            self.plan,
            self.scenario,
            endpoint,
            self.prompts,
            outputs,
            progress=progress,
            scale=scale,
        )

    def afterwards(self, sent: Sent, summary: Summary) -> tuple[list[str], list[str]]:
        """What to say of the sending (lateness, CPU, turns not sent), and the warnings the
        served tokens give against the plan."""
        said = generator_lines(sent.generator, sent.skipped)
        warnings = token_warnings(summary, self.plan, self.prompts.common_prefix_tokens)
        return said, warnings
