"""A live run as named steps: plan, start the target, probe it, send, summarise, judge.

`run_load` reads top to bottom as those steps. Each step's work lives in the package that owns
it (the plan and its text in `loadgen.job`, the target in `targets`, the summary in `scenarios`,
the verdict in `surgecast.validity`); this module passes what one step made to the next and keeps
run.json up to date, so a run stopped at any point says how far it got.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from loadgen.client import Endpoint, MissingModel, TargetRefused, TargetUnreachable
from loadgen.job import LoadJob
from loadgen.send import ScaleOut, Sent
from loadgen.sizing import KEPT_TEXTS
from scenarios.metrics import Summary, summarize_run
from scenarios.plan import RequestSpec
from scenarios.spec import Scenario
from surgecast.console import Say, say_stderr
from surgecast.contracts import write_summary
from surgecast.interrupts import honour_pending, signal_of
from surgecast.planview import messiness_table
from surgecast.rundir import RunFolder, writer
from surgecast.validity import invalid_reasons
from targets.engine_metrics import kept_series
from targets.errors import TargetError
from targets.launcher import Launcher

HOLD_ENV = "SURGECAST_TEST_HOLD"  # a step's name: the run waits in it (for the signal tests)
NOT_STARTED = (TargetUnreachable, TargetRefused, MissingModel, TargetError)
# run.json's `step` in words, for a run stopped in it
STEP_WORDS = {
    "target": "while the target started: nothing was sent",
    "probe": "while probing the target: nothing was sent",
    "send": "in the send step: the plan was not all sent",
    "summarise": "while summarising: every request was sent and its record kept, but the run "
    "was not judged (`surgecast report` summarises the records)",
}


@dataclass(frozen=True)
class RunOutcome:
    folder: RunFolder
    summary: Summary
    reasons: list[str]  # why the run is invalid; empty when valid
    interrupted: int | None = None  # the exit code of the signal that stopped it (130, 143)

    @property
    def valid(self) -> bool:
        return not self.reasons


def run_load(
    scenario: Scenario,
    scenario_file: str,
    launcher: Launcher,
    *,
    out: str | Path | None = None,
    plan: Sequence[RequestSpec] | None = None,
    scale: ScaleOut | None = None,
    progress: bool = True,
    say: Say = say_stderr,
    fresh_prompts: bool = False,
) -> RunOutcome:
    """Send the scenario's plan (or `plan`, when given) to the target `launcher` starts (or
    finds); with `scale`, from several generator processes. Bad traces, corpora, sizes and a
    missing API key fail before any folder is made."""
    job = LoadJob.prepare(scenario, scenario_file, plan, scale, fresh_prompts)  # plan
    launcher.check()
    folder = begin_run(job, launcher, scenario_file, out)
    for line in [*job.notes, job.headline(folder.path.name)]:
        say(line)
    try:
        hold("target")
        with launcher.started(scenario.target.model, say) as live:  # start the target
            enter(folder, "probe", target=target_section(job, live))
            endpoint = probe_target(job, live, folder, say)
            enter(folder, "send")
            sent = send_plan(job, endpoint, folder, progress, scale)
            death = live.death()
        enter(folder, "summarise")
        return judge_run(job, folder, sent, [death] if death else [], say)
    except NOT_STARTED as e:
        folder.end("not started", [str(e)])
        raise
    except KeyboardInterrupt as e:
        name = signal.Signals(signal_of(e)).name
        step = folder.meta().step
        words = STEP_WORDS.get(step or "", "while it ended: the records written are kept")
        folder.end("interrupted", [f"interrupted by {name} {words}"])
        raise


def enter(folder: RunFolder, step: str, **fields: object) -> None:
    """Note in run.json the step the run begins (a signal Python dropped stops it here)."""
    honour_pending()
    folder.update_meta(step=step, **fields)
    hold(step)


def hold(step: str) -> None:
    """With SURGECAST_TEST_HOLD naming `step`, wait in it until a signal stops the run: the
    signal tests stop each step there, whatever the machine's speed."""
    while os.environ.get(HOLD_ENV) == step:
        time.sleep(0.05)
        honour_pending()


def write_report(folder: RunFolder, render: Callable[[RunFolder], tuple[str, str]]) -> str:
    """The report step: `render` writes index.html and summary.md; its path. A signal while it
    works leaves run.json "interrupted" (the verdict stays: the run itself is whole)."""
    try:
        hold("report")
        html, _ = render(folder)
        honour_pending()
    except KeyboardInterrupt as e:
        name = signal.Signals(signal_of(e)).name
        note = (
            f"interrupted by {name} while writing the report: every request was sent and "
            f"judged; `surgecast report {folder.path}` writes it"
        )
        warnings = [*folder.meta().warnings, note]
        folder.update_meta(status="interrupted", step="report", warnings=warnings)
        raise
    return html


def begin_run(
    job: LoadJob, launcher: Launcher, scenario_file: str, out: str | Path | None
) -> RunFolder:
    """The run folder, with run.json saying the run is going."""
    folder = RunFolder.new(job.scenario.name, out)
    folder.begin(
        job.scenario,
        scenario_file,
        len(job.plan),
        target_section(job, launcher),
        status="running",
        step="target",
        source="measured",
        plan="given" if job.given else "scenario",
        writer=writer(),
    )
    return folder


def target_section(job: LoadJob, target: Launcher) -> dict[str, object]:
    """run.json's target: what kind, where, the run's prompt salt, what it says of itself."""
    where = {"kind": target.kind, "base_url": target.base_url or None}
    return {**where, "prompt_salt": job.salt or None, **target.facts()}


def probe_target(job: LoadJob, live: Launcher, folder: RunFolder, say: Say) -> Endpoint:
    """The probe step: the target answers, serves the model, and its tokenizer is learned."""
    endpoint, probes = job.connect(live.base_url, live.request_body(), say)
    folder.update_meta(sizing=asdict(probes))
    return endpoint


def send_plan(
    job: LoadJob, endpoint: Endpoint, folder: RunFolder, progress: bool, scale: ScaleOut | None
) -> Sent:
    """The send step: records and telemetry appended to the folder as they come."""
    with (
        open(folder.requests, "a", encoding="utf-8") as records,
        open(folder.telemetry, "a", encoding="utf-8") as telemetry,
    ):
        sent = job.send(
            endpoint,
            records,
            telemetry,
            kept_series,
            progress=progress,
            scale=scale,
            records_path=folder.requests,
        )
    merged = folder.merge_records()  # the local workers' own files, once they have all stopped
    lost, failure = merged.lost_words(), sent.generator.get("failure")
    if lost and (failure or sum(merged.lost.values())):  # a local worker died: what it had out
        sent.generator["failure"] = f"{failure}; {lost}" if failure else lost
    folder.update_meta(
        turns_not_sent=sent.skipped,
        generator=sent.generator,
        telemetry_errors=sent.telemetry_errors,
    )
    return sent


def judge_run(job: LoadJob, folder: RunFolder, sent: Sent, died: list[str], say: Say) -> RunOutcome:
    """The summarise and judge steps: the records' summary, whether the run can be trusted
    (`invalid_reasons`, the target's death, a signal), and what its tokens say."""
    table = folder.table()
    summary = summarize_run(table, job.scenario)
    write_summary(folder.summary, summary)
    said, warnings = job.afterwards(sent, summary)
    mess = messiness_table(job.prompts)
    if mess:
        first = f"each persona's first {KEPT_TEXTS} messages"
        said.append(f"messiness of the text sent ({first}):\n{mess}")
    for line in [*said, *(f"warning: {w}" for w in warnings)]:
        say(line)
    reasons = invalid_reasons(job.scenario, table, summary, len(job.plan), sent.generator)
    reasons += died
    stopped = sent.stopped
    if stopped is not None:
        reasons.insert(
            0,
            f"interrupted by {stopped.name} {stopped.at_s:.1f} s into the run: the plan was not "
            "all sent (requests still in flight then were given time to finish, then cancelled)",
        )
    status, step = ("finished", None) if stopped is None else ("interrupted", "send")
    honour_pending()  # a signal Python dropped while the run was summarised
    folder.end(status, reasons, step=step, slos_passed=summary.slos_passed, warnings=warnings)
    return RunOutcome(folder, summary, reasons, stopped.exit_code if stopped else None)
