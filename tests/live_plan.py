"""Send a scenario's plan through `loadgen.runner.LoadRun` alone and write its records:
`python -m tests.live_plan SCENARIO BASE_URL RECORDS`.

No preflight and no sizing probes (they would take draws from a target's injected faults), and
each new message's text is fixed to exactly its planned tokens as the reference target counts
them. A process of its own: importing Locust patches the standard library through gevent.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from scenarios.plan import RequestSpec, build_plan
from scenarios.spec import load_scenario
from scenarios.text import make_prompt


def with_text(plan: list[RequestSpec]) -> list[RequestSpec]:
    """Each request's new message as fixed text of its planned tokens (the history a follow-up
    carries is the client's own, as in any run)."""
    return [
        dataclasses.replace(
            s,
            prompt=make_prompt(
                np.random.default_rng(s.text_seed), s.message_tokens or s.prompt_tokens
            ),
        )
        for s in plan
    ]


def main(scenario_file: str, base_url: str, records: str) -> None:
    from loadgen.client import Endpoint
    from loadgen.runner import LoadRun
    from scenarios.records import RecordWriter

    scenario = load_scenario(scenario_file)
    endpoint = Endpoint.from_target(scenario.target, base_url, None)
    with open(records, "w", encoding="utf-8") as out:
        LoadRun(with_text(build_plan(scenario)), endpoint, RecordWriter(out), progress=None).run()


if __name__ == "__main__":
    main(*sys.argv[1:4])
