"""The error a target surgecast starts raises when it cannot be built, started or kept up."""


class TargetError(RuntimeError):
    """A target could not be built, started or kept running: the run is invalid (exit 3)."""
