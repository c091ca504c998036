"""The largest plan surgecast builds: a plan expected to hold more requests is refused before
it is built (`PlanTooLarge`, a bad input rather than a crash)."""

from __future__ import annotations

MAX_PLANNED_REQUESTS = 5_000_000  # plan() refuses windows expected to hold more arrivals


class PlanTooLarge(ValueError):
    """A plan that would hold more than MAX_PLANNED_REQUESTS requests (refused before it is
    built: a bad input, not a crash)."""


def check_budget(expected: float, what: str = "plan") -> None:
    """PlanTooLarge when a plan is expected to hold more than MAX_PLANNED_REQUESTS arrivals."""
    if not expected <= MAX_PLANNED_REQUESTS:
        raise PlanTooLarge(
            f"{what}: about {expected:.3g} arrivals expected, more than "
            f"MAX_PLANNED_REQUESTS ({MAX_PLANNED_REQUESTS:,}); shorten the window or lower the rate"
        )
