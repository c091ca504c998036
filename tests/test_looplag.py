"""The generator's self-checks: the loop-lag histogram against samples with known quantiles,
its CPU share against known clocks, and the verdicts they give."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from loadgen.cpu import CpuUse
from loadgen.looplag import LoopLag
from loadgen.wire import receive_stamped, stamp_receives
from scenarios.metrics import summarize
from scenarios.spec import parse_scenario
from scenarios.table import RequestTable
from surgecast.validity import invalid_reasons
from tests.conftest import scenario_dict


def test_quantiles_come_from_their_bins_never_below_the_truth() -> None:
    lag = LoopLag(lambda: 0.0)
    for x in np.random.default_rng(0).uniform(0.001, 0.002, 990):
        lag.add(float(x))
    for _ in range(10):
        lag.add(0.1)
    assert lag.samples == 1000
    true_p50 = 0.0015
    assert true_p50 <= lag.quantile(0.5) <= true_p50 * 1.03  # one bin is about 3% wide
    assert 0.002 <= lag.quantile(0.99) <= 0.002 * 1.03  # the 990th value is under 2 ms
    assert lag.quantile(0.995) == pytest.approx(0.1)  # capped at the largest seen
    s = lag.summary()
    assert (s["samples"], s["max_ms"]) == (1000, pytest.approx(100.0))


def test_no_samples_reads_zero() -> None:
    assert LoopLag(lambda: 0.0).quantile(0.99) == 0.0


def test_cpu_share_per_interval_from_the_clocks() -> None:
    """Wall 0 -> 1 -> 3 -> 3.05 s; CPU 0 -> 0.25 -> 2.15 s: a quarter of a core, then 95%;
    the last 50 ms is too short an interval to count."""
    wall, cpu = iter([0.0, 1.0, 3.0, 3.05]), iter([0.0, 0.25, 2.15, 2.2])
    use = CpuUse(lambda: next(wall), lambda: next(cpu))
    for _ in range(3):
        use.sample()
    assert use.shares == [pytest.approx(0.25), pytest.approx(0.95)]
    s = use.summary()
    assert (s["samples"], s["mean"], s["max"]) == (2, pytest.approx(0.6), pytest.approx(0.95))


def test_a_saturated_generator_makes_the_run_invalid() -> None:
    scenario = parse_scenario(scenario_dict())
    summary = summarize([])
    quiet = {"loop_lag": {"p99_ms": 1.0}, "cpu": {"mean": 0.5}}
    busy = {"loop_lag": {"p99_ms": 1.0}, "cpu": {"mean": 0.95}}
    assert not [
        r
        for r in invalid_reasons(scenario, RequestTable.of([]), summary, 1, quiet)
        if "saturated" in r
    ]
    reasons = invalid_reasons(scenario, RequestTable.of([]), summary, 1, busy)
    assert any("generator saturated: it used 95% of a core" in r for r in reasons)


def test_processes_sharing_a_hosts_cores_make_the_run_invalid_when_they_fill_them() -> None:
    """Three processes each at 60% of a core (under the 75% limit alone): on 2 cores they fill
    90% of the host, on 4 cores 45%."""
    scenario = parse_scenario(scenario_dict())
    summary = summarize([])

    def saturated(cores: int) -> list[str]:
        host = {"host": "gen-1", "processes": 3, "cpu": 1.8, "cores": cores}
        generator = {"loop_lag": {"p99_ms": 1.0}, "cpu": {"mean": 0.6}, "hosts": [host]}
        reasons = invalid_reasons(scenario, RequestTable.of([]), summary, 1, generator)
        return [r for r in reasons if "saturated" in r]

    assert saturated(4) == []
    (reason,) = saturated(2)
    assert "on gen-1 its 3 workers" in reason
    assert "used 1.80 of the 2 cores they may run on (90%)" in reason


def _lag(p99_ms: float, chunks: int = 1000, merged: int = 0, unstamped: int = 0) -> dict:
    return {
        "p99_ms": p99_ms, "chunks": chunks, "merged": merged, "unstamped_reads": unstamped
    }  # fmt: skip


@pytest.mark.parametrize(
    ("lag", "said"),
    [
        (_lag(4.0, merged=100, unstamped=5), None),  # within the limit: nothing spoiled
        (_lag(8.0), None),  # late, but every chunk read alone and stamped by the kernel
        (_lag(8.0, merged=2), None),  # 0.2% merged: 0.4% of gaps spoiled, p99 ITL holds
        (_lag(8.0, merged=3), "0.30% of the content chunks were read in one receive"),
        (_lag(8.0, unstamped=1), "its reads were not stamped by the kernel"),
    ],
)
def test_a_late_loop_is_judged_by_what_it_spoiled(lag: dict, said: str | None) -> None:
    scenario = parse_scenario(scenario_dict(traffic={"rate": 5, "duration_s": 3, "seed": 1,
                                                     "max_loop_lag_ms": 5}))  # fmt: skip
    generator = {"loop_lag": lag, "cpu": {"mean": 0.1}}
    reasons = invalid_reasons(scenario, RequestTable.of([]), summarize([]), 1, generator)
    late = [r for r in reasons if "overloaded" in r]
    if said is None:
        assert late == []
    else:
        (reason,) = late
        assert "8.0 ms late at p99 > traffic.max_loop_lag_ms 5" in reason and said in reason


def test_the_worst_worker_decides() -> None:
    """Of two workers, the one that merged chunks makes the run invalid, whichever is later."""
    scenario = parse_scenario(scenario_dict())
    workers = [
        {"loop_lag": _lag(9.0), "cpu": {"mean": 0.1}},
        {"loop_lag": _lag(6.0, merged=50), "cpu": {"mean": 0.1}},
    ]
    generator = {**workers[0], "workers": workers}
    reasons = invalid_reasons(scenario, RequestTable.of([]), summarize([]), 1, generator)
    assert any("6.0 ms late" in r and "5.00% of the content chunks" in r for r in reasons)


def test_a_close_is_no_unstamped_read() -> None:
    """A close (a receive of nothing) carries no kernel stamp: a server closing a pooled
    connection is not a read the loop failed to time (it counted as one, and a run reading its
    chunks alone was judged unstamped)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        assert stamp_receives(client)
        peer, _ = server.accept()
        peer.sendall(b"x")
        peer.close()
        with client:
            data, _ = receive_stamped(client)  # (stamped once the kernel's timestamping is on:
            assert data == b"x"  # it enables it a moment after the first socket asks)
            closing, none = receive_stamped(client)
            assert closing == b"" and none is None
    lag = LoopLag(time.monotonic)
    lag.read(0.0, 1)
    lag.read(none, 0, closed=not closing)
    assert lag.summary()["unstamped_reads"] == 0 and lag.chunks == 1
    lag.read(None, 1)
    assert lag.summary()["unstamped_reads"] == 1
