"""What a scenario will send, before sending it: per persona, the traffic, lengths and text."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from loadgen.sizing import SizedPrompts
from scenarios.plan import RequestSpec
from scenarios.plan_tokens import shareable_tokens
from scenarios.spec import Scenario
from surgecast.tables import markdown

RENDERED_PER_PERSONA = 300  # prompts rendered to measure messiness and show samples


def plan_table(scenario: Scenario, plan: Sequence[RequestSpec], duration_s: float) -> str:
    """One row per persona: sessions, requests, rate, burstiness, turns, token lengths and the
    share of its prompt tokens an ideal prefix cache could serve (prefix segments an earlier
    request of the plan sent, whoever sent it)."""
    rows = []
    shareable = shareable_tokens(plan)
    for persona in scenario.mix():
        mine = [i for i, s in enumerate(plan) if s.persona == persona.name]
        specs = [plan[i] for i in mine]
        if not specs:
            rows.append([persona.name, 0, 0, 0, "-", "-", "-", "-", "-", "-", "-"])
            continue
        openers = np.sort([s.arrival for s in specs if s.after is None])
        gaps = np.diff(openers)
        cv = float(gaps.std() / gaps.mean()) if len(gaps) > 1 and gaps.mean() > 0 else float("nan")
        cv = 0.0 if abs(cv) < 1e-9 else cv  # evenly spaced: not 1e-15 of float noise
        sessions = len({s.session for s in specs})
        prompt = np.array([s.prompt_tokens for s in specs])
        output = np.array([s.max_tokens for s in specs])
        kinds = Counter(s.text_kind for s in specs)
        closed = any(s.not_after is not None for s in specs)  # a closed loop: an upper bound
        rows.append(
            [
                persona.name,
                sessions,
                f"up to {len(specs)}" if closed else len(specs),
                "closed loop" if closed else len(specs) / duration_s,
                cv,
                sum(not s.regenerate for s in specs) / sessions,
                "/".join(f"{v:.0f}" for v in np.percentile(prompt, [50, 90, 99])),
                f"{shareable[mine].sum() / max(prompt.sum(), 1):.1%}",
                "/".join(f"{v:.0f}" for v in np.percentile(output, [50, 90, 99])),
                sum(s.regenerate for s in specs),
                ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()) if k != "normal") or "-",
            ]
        )
    return markdown(
        [
            "persona",
            "sessions",
            "requests",
            "req/s",
            "session gap CV",
            "turns/session",
            "prompt tok p50/p90/p99",
            "prompt tok shareable",
            "output tok p50/p90/p99",
            "regenerates",
            "pastes, empties",
        ],
        rows,
    )


def render_samples(
    prompts: SizedPrompts, plan: Sequence[RequestSpec], per_persona: int = RENDERED_PER_PERSONA
) -> dict[str, list[str]]:
    """Render up to `per_persona` new messages of each persona (which also measures their
    messiness in `prompts`); returns the user messages by persona."""
    out: dict[str, list[str]] = {}
    for spec in plan:
        texts = out.setdefault(spec.persona, [])
        if len(texts) < per_persona:
            texts.append(prompts.messages(spec)[-1]["content"])
    return out


def messiness_table(prompts: SizedPrompts) -> str:
    """Measured messiness beside each persona's settings (only personas that set any)."""
    rows = []
    for name, stats in sorted(prompts.messiness().items()):
        workload = prompts.personas[name].workload
        assert workload is not None
        rows += [[name, *row] for row in stats.rows(workload.messiness)]
    if not rows:
        return ""
    return markdown(["persona", "messiness", "setting", "measured"], rows)
