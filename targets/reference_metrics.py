"""The reference target's /metrics: its engine's gauges and its counters, in Prometheus text."""

from __future__ import annotations

from targets.live_engine import LiveEngine


def metrics_text(live: LiveEngine, counters: dict[str, int]) -> str:
    """Every gauge and counter with its HELP and TYPE lines, names prefixed `surgecast_`."""
    eng = live.engine
    rows = [
        ("num_requests_running", "gauge", "Sequences in the running batch.", len(eng.running)),
        ("num_requests_waiting", "gauge", "Sequences waiting for admission.", len(eng.waiting)),
        (
            "kv_cache_usage_ratio",
            "gauge",
            "Fraction of KV-cache tokens reserved.",
            eng.kv_used / eng.config.kv_cache_tokens,
        ),
        (
            "prompt_tokens_total",
            "counter",
            "Prompt tokens admitted.",
            counters["prompt_tokens"],
        ),
        (
            "generation_tokens_total",
            "counter",
            "Tokens generated.",
            counters["generation_tokens"],
        ),
        ("request_success_total", "counter", "Requests completed.", counters["success"]),
        (
            "request_aborted_total",
            "counter",
            "Requests the client abandoned.",
            counters["aborted"],
        ),
        ("engine_steps_total", "counter", "Engine steps run.", live.steps),
        ("engine_busy_seconds_total", "counter", "Seconds spent stepping.", live.busy_s),
    ]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [
            f"# HELP surgecast_{name} {help_text}",
            f"# TYPE surgecast_{name} {kind}",
            f"surgecast_{name} {value}",
        ]
    return "\n".join(lines) + "\n"
