"""The Prometheus series surgecast reads, by what they measure, under each engine's own name.

Names as the engines export them (seen on vLLM 0.32 CPU, llama.cpp's llama-server with
`--metrics`, and the reference target). Counters carry Prometheus' `_total` suffix. Telemetry keeps
only these series of a known engine (vLLM's /metrics holds hundreds of histogram buckets).
"""

from __future__ import annotations

SERIES: dict[str, tuple[str, ...]] = {
    "running": (
        "surgecast_num_requests_running",
        "vllm:num_requests_running",
        "llamacpp:requests_processing",
    ),
    "waiting": (
        "surgecast_num_requests_waiting",
        "vllm:num_requests_waiting",
        "llamacpp:requests_deferred",
    ),
    "kv_cache_usage": (
        "surgecast_kv_cache_usage_ratio",
        "vllm:kv_cache_usage_perc",  # a fraction despite its name
        "vllm:gpu_cache_usage_perc",  # its name before vLLM 0.10
    ),
    "prefix_cache_queries": ("vllm:prefix_cache_queries_total",),  # prompt tokens looked up
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total",),  # of them, found in the cache
    "prompt_tokens_cached": (
        "vllm:prompt_tokens_cached_total",
        "llamacpp:prompt_tokens_cached_total",
    ),
    "preemptions": ("vllm:num_preemptions_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total", "llamacpp:prompt_tokens_total"),
    "generation_tokens": ("vllm:generation_tokens_total", "llamacpp:tokens_predicted_total"),
    "success": ("surgecast_request_success_total", "vllm:request_success_total"),
}
KNOWN = frozenset(name for names in SERIES.values() for name in names)


def _name(key: str) -> str:
    """`vllm:x{a="b"}` -> `vllm:x`."""
    return key.split("{", 1)[0]


def kept_series(metrics: dict[str, float]) -> dict[str, float]:
    """The samples of the series in SERIES (and all of ours); everything of an unknown engine."""
    kept = {k: v for k, v in metrics.items() if _name(k) in KNOWN or k.startswith("surgecast_")}
    return kept if kept else metrics


def series_value(metrics: dict[str, float], what: str) -> tuple[str, float] | None:
    """(engine's name, value summed over label sets) of the first of SERIES[what] present."""
    for name in SERIES[what]:
        values = [v for k, v in metrics.items() if _name(k) == name]
        if values:
            return name, float(sum(values))
    return None
