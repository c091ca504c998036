"""What one seed's simulation needs in memory, so a fleet too large for the machine (or for a
Dask worker's memory limit) is refused before it starts, instead of the system killing it.

The figures are peak resident memory measured on the fast core over scenarios/chatbot.yaml's
traffic (`python benchmarks/seed_memory.py`, 2-core machine): 480k requests at 500 replicas
took 691 MiB, 960k at 1,000 took 1,201 MiB, and 10,000 replicas instead of 500 added 13 MiB;
where ITL is judged, the 33.6 million token times of the 480k requests took 3.4 GiB more
(106 B a token; 114 B at 960k requests: the times, their gaps and the summary's copies). The
interpreter, numpy and the compiled core take about 190 MiB. The reference core needs less.
"""

from __future__ import annotations

from pathlib import Path

GIB = 1 << 30
BASE_BYTES = 190 << 20
REQUEST_BYTES = 1200
TOKEN_BYTES = 120  # a token's time and what is made of it, where ITL is judged (measured 106-114)
REPLICA_BYTES = 2048
PLAN_BYTES = 340  # a planned request kept for the next fleet size (tracemalloc: 331 B)


class FleetTooLarge(ValueError):
    """A simulation that would not fit in the memory that runs it."""


def seed_bytes(requests: float, replicas: int, tokens: float = 0.0) -> int:
    """Peak memory of one simulated run of `requests` over `replicas`, recording `tokens`."""
    return int(
        BASE_BYTES + requests * REQUEST_BYTES + tokens * TOKEN_BYTES + replicas * REPLICA_BYTES
    )


def plan_bytes(requests: float) -> int:
    """A seed's planned requests, kept between fleet sizes."""
    return int(requests * PLAN_BYTES)


def available_bytes() -> int | None:
    """Memory the kernel could give now (Linux's MemAvailable; None where unknown)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def check(requests: float, replicas: int, tokens: float, room: int | None, where: str) -> None:
    """Raise FleetTooLarge when a seed would need more than `room` bytes (None: unknown)."""
    need = seed_bytes(requests, replicas, tokens)
    if room is None or need <= room:
        return
    raise FleetTooLarge(
        f"a simulated run of {requests:,.0f} requests over {replicas:,} replicas needs about "
        f"{need / GIB:.1f} GiB, and {where} has {room / GIB:.1f} GiB: shorten "
        "forecast.duration_s, forecast lower scales, use fewer local workers "
        "(forecast.workers), or run it on a Dask cluster with more memory per worker "
        "(--scheduler)"
    )
