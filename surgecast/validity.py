"""The judge step of a live run: why its numbers cannot be trusted, if they cannot.

A run is invalid when the generator could not keep its plan (its loop late where that spoiled the
times, its CPU saturated, requests dropped or sent late), when the plan was empty, when the target
failed every request or stopped answering partway, or when a distributed run lost a worker.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scenarios.metrics import Summary
from scenarios.records import DROPPED, GENERATOR_FAILED
from scenarios.spec import Scenario, Traffic
from scenarios.table import RequestTable

UNREACHABLE = {"connection_refused", "connection_error"}
BROKEN = UNREACHABLE | {"connection_reset", "stream_reset"}
# of content chunks read with the one before them: each merge spoils two gaps (its own, 0, and
# the one before, doubled), so p99 ITL holds below this
MERGED_LIMIT = 0.0025
# how the reasons that blame the generator itself (its loop, CPU, lateness, its own sends) begin,
# not the target: such a run says nothing of the target's speed (`spoiled_by_generator`)
GENERATOR_SPOILED = (
    "generator overloaded",
    "generator saturated",
    "generator fell behind",
    "the generator failed",
    "distributed run failed",
)


def invalid_reasons(
    scenario: Scenario,
    table: RequestTable,
    summary: Summary,
    planned: int,
    generator: dict[str, Any] | None = None,
) -> list[str]:
    """Why a run cannot be trusted: the generator could not keep its plan (loop lag, CPU,
    drops, lateness), the plan was empty, or the target failed every request."""
    traffic = scenario.traffic
    reasons = _generator_reasons(traffic, generator) if generator else []
    if planned == 0:
        reasons.append("the plan is empty: the arrival rate x traffic.duration_s is too small")
    failed = int(_kind_in(table, {GENERATOR_FAILED}).sum())
    if failed:
        detail = dict(table.examples).get(GENERATOR_FAILED)
        reasons.append(
            f"the generator failed {failed} of its own sends (a surgecast error, not the "
            f"target's{': ' + detail if detail else ''}): those requests were never sent"
        )
    if summary.dropped:
        reasons.append(
            f"generator dropped {summary.dropped} planned requests at its in-flight cap "
            "(max_in_flight): they were never sent"
        )
    if summary.lateness_p99_ms > traffic.max_lateness_ms:
        reasons.append(
            f"generator fell behind: p99 send lateness {summary.lateness_p99_ms:.0f} ms "
            f"> traffic.max_lateness_ms {traffic.max_lateness_ms:g}"
        )
    target = _target_reason(table)
    return reasons + ([target] if target else [])


def spoiled_by_generator(reasons: list[str]) -> bool:
    """Some reason blames the generator itself: the run's times are void, whatever the target
    did (a dropped request at the in-flight cap is not one: a slow target fills the cap)."""
    return any(r.startswith(GENERATOR_SPOILED) for r in reasons)


def _generator_reasons(traffic: Traffic, generator: dict[str, Any]) -> list[str]:
    """A failed distributed run, a late loop, a saturated process or host."""
    reasons = []
    if generator.get("failure"):
        reasons.append(f"distributed run failed: {generator['failure']}")
    late = _late_loop(generator, traffic.max_loop_lag_ms)
    if late:
        reasons.append(late)
    cpu = generator["cpu"]["mean"]
    if cpu > traffic.max_generator_cpu:
        reasons.append(
            f"generator saturated: it used {cpu:.0%} of a core on average > "
            f"traffic.max_generator_cpu {traffic.max_generator_cpu:.0%} (split the load: "
            "a lower rate per process)"
        )
    for host in generator.get("hosts", []):
        share = host["cpu"] / host["cores"]
        if share > traffic.max_generator_cpu:
            reasons.append(
                f"generator saturated: on {host['host']} its {host['processes']} workers (and "
                "the master, if it runs there) used "
                f"{host['cpu']:.2f} of the {host['cores']} cores they may run on ({share:.0%}) "
                f"> traffic.max_generator_cpu {traffic.max_generator_cpu:.0%} (give them more "
                "cores, or spread them over more hosts)"
            )
    return reasons


def _late_loop(generator: dict[str, Any], max_lag_ms: float) -> str | None:
    """Why the generator's lateness spoiled its times, if it did: its loop (in any of its
    processes) woke or read later than `max_lag_ms` at p99, and the times carry it (reads the
    kernel did not stamp) or it merged chunks (more than MERGED_LIMIT of them read in one
    receive with the chunk before, their gaps lost). Kernel-stamped chunks far enough apart
    not to merge keep their times however late the loop reads them."""
    for lag in [w["loop_lag"] for w in generator.get("workers", [])] or [generator["loop_lag"]]:
        if lag["p99_ms"] <= max_lag_ms:
            continue
        said = (
            f"generator overloaded: its event loop woke or read {lag['p99_ms']:.1f} ms late at "
            f"p99 > traffic.max_loop_lag_ms {max_lag_ms:g}"
        )
        if lag.get("unstamped_reads", 0) or "chunks" not in lag:
            return f"{said}, and its reads were not stamped by the kernel: each time carries it"
        merged = lag["merged"] / max(lag["chunks"], 1)
        if merged > MERGED_LIMIT:
            return (
                f"{said}, and {merged:.2%} of the content chunks were read in one receive "
                "with the chunk before them: their gaps (ITL, and TTFT where the first two "
                "came together) are lost"
            )
    return None


def _target_reason(table: RequestTable) -> str | None:
    """Every request failed to connect, none succeeded, or the target died partway."""
    if not len(table):
        return None
    if bool(_kind_in(table, UNREACHABLE).all()):
        return "target unreachable: every request failed to connect"
    if not table.ok.any():
        counts = np.bincount(table.error_kind[table.error_kind >= 0], minlength=len(table.kinds))
        kind = table.kinds[int(counts.argmax())] if counts.any() else "unknown"
        detail = dict(table.examples).get(kind)
        return f"no request succeeded: {int(counts.max(initial=0))} x {kind}" + (
            f" ({detail})" if detail else ""
        )
    return target_died(table)


def _kind_in(table: RequestTable, kinds: set[str]) -> np.ndarray:
    """Rows whose error kind is one of `kinds`."""
    codes = [i for i, name in enumerate(table.kinds) if name in kinds]
    return np.isin(table.error_kind, codes)


def target_died(table: RequestTable) -> str | None:
    """Why the run looks like its target died: after some successes, every request from some
    point on (at least 5, and 5% of all) found no server or had its connection cut."""
    sent = np.flatnonzero(~_kind_in(table, {DROPPED, "cancelled"}))
    sent = sent[np.argsort(table.start[sent], kind="stable")]  # in the order they were sent
    ok = table.ok[sent]
    if not ok.any():
        return None
    last_ok = int(np.flatnonzero(ok)[-1])
    tail = sent[last_ok + 1 :]
    if len(tail) < max(5, 0.05 * len(sent)) or not _kind_in(table, BROKEN)[tail].all():
        return None
    return (
        f"the target stopped answering {table.start[tail[0]]:.1f} s into the run: the last "
        f"{len(tail)} requests found no server or were cut off (did it crash? its log may say)"
    )
