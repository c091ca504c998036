"""Telemetry beside a load run: the target's Prometheus metrics and, where there is one, the GPU.

Plain Python (urllib, pynvml), so it runs under gevent in the load process and anywhere else.
Each sample is one JSON line in telemetry.jsonl: {"t": seconds from run start, "source": ...}.
"""

from __future__ import annotations

import json
import math
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from loadgen.fetch import fetch
from scenarios.redact import Redactor
from scenarios.runfiles import MAX_LINE_BYTES, UnreadableFile, lines, open_regular

if TYPE_CHECKING:
    from scenarios.spec import Telemetry

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


MAX_VALUE = 1e100  # no gauge or time of a run comes near it


def parse_prometheus(text: str) -> dict[str, float]:
    """Samples of a Prometheus text exposition, keyed by name with its labels (`a{b="c"}`)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            try:
                value = float(m[3])
            except ValueError:
                continue
            if not math.isnan(value):
                out[m[1] + (m[2] or "")] = value
    return out


def metrics_url_for(base_url: str) -> str:
    """Where OpenAI-compatible servers (vLLM, llama.cpp, ours) serve /metrics: the API's root."""
    root = base_url.rstrip("/").removesuffix("/v1")
    return root + "/metrics"


Keep = Callable[[dict[str, float]], dict[str, float]]  # which Prometheus samples to record


def samplers_for(
    spec: Telemetry, base_url: str, keep: Keep | None = None, api_key: str | None = None
) -> list[Sampler]:
    """What the scenario's telemetry section samples beside a run against `base_url`; the
    target's `api_key` goes with its own /metrics only, never to another metrics_url."""
    samplers: list[Sampler] = []
    if spec.prometheus:
        own = spec.metrics_url is None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key and own else None
        url = spec.metrics_url or metrics_url_for(base_url)
        redact = Redactor(api_key)  # a target's label values or errors may echo the key
        samplers.append(PrometheusSampler(url, keep=keep, headers=headers, redact=redact))
    if spec.gpu:
        samplers.append(NvmlSampler())
    return samplers


class PrometheusSampler:
    """Scrapes one /metrics endpoint; after a failure it reports why once and stops trying."""

    source = "prometheus"

    def __init__(
        self,
        url: str,
        timeout_s: float = 2.0,
        keep: Keep | None = None,
        headers: dict[str, str] | None = None,
        redact: Callable[[str], str] = str,
    ):
        self.url = url
        self.headers = headers
        self.redact = redact
        self._names: dict[str, str] = {}  # series names as redacted (the same every scrape)
        self.timeout_s = timeout_s
        self.keep = keep  # which samples to record (engine_metrics.kept_series); None: all
        self.error: str | None = None

    def sample(self) -> dict[str, Any] | None:
        if self.error:
            return None
        try:
            body = fetch(self.url, self.timeout_s, self.headers)
            metrics = parse_prometheus(body.decode("utf-8", "replace"))
            kept = self.keep(metrics) if self.keep else metrics
            return {"metrics": {self._name(k): v for k, v in kept.items()}}
        except (urllib.error.URLError, OSError, ValueError) as e:
            self.error = f"{self.url}: {self.redact(str(e))}"
            return {"error": self.error}

    def _name(self, series: str) -> str:
        if series not in self._names:
            if len(self._names) >= 10_000:  # a target naming new series every scrape
                self._names.clear()
            self._names[series] = self.redact(series)
        return self._names[series]


class NvmlSampler:
    """Utilisation, memory, power, temperature and clocks of every visible GPU through pynvml.

    A reading a GPU does not support (power on some boards, clocks under virtualisation) is left
    out of that GPU's sample instead of failing the whole sample.
    """

    source = "nvml"

    def __init__(self) -> None:
        self.error: str | None = None
        self._nvml: Any = None
        self._handles: list[Any] = []
        self.devices: list[dict[str, str]] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.devices = [
                {
                    "name": _text(pynvml.nvmlDeviceGetName(h)),
                    "uuid": _text(pynvml.nvmlDeviceGetUUID(h)),
                }
                for h in self._handles
            ]
        except Exception as e:  # NVMLError_LibraryNotFound and friends: no GPU here
            self.error = f"NVML unavailable: {e}"

    @property
    def available(self) -> bool:
        return self.error is None

    def sample(self) -> dict[str, Any] | None:
        if not self.available:
            return None
        return {"gpus": [self._gpu(i, h) for i, h in enumerate(self._handles)]}

    def _gpu(self, index: int, handle: Any) -> dict[str, Any]:
        nv = self._nvml
        readings: dict[str, Callable[[], Any]] = {
            "gpu_util_pct": lambda: float(nv.nvmlDeviceGetUtilizationRates(handle).gpu),
            "mem_util_pct": lambda: float(nv.nvmlDeviceGetUtilizationRates(handle).memory),
            "mem_used_bytes": lambda: int(nv.nvmlDeviceGetMemoryInfo(handle).used),
            "mem_total_bytes": lambda: int(nv.nvmlDeviceGetMemoryInfo(handle).total),
            "power_w": lambda: nv.nvmlDeviceGetPowerUsage(handle) / 1000.0,
            "temperature_c": lambda: float(
                nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)
            ),
            "sm_clock_mhz": lambda: float(nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM)),
        }
        gpu: dict[str, Any] = {"index": index}
        for name, read in readings.items():
            try:
                gpu[name] = read()
            except nv.NVMLError:
                continue  # not supported on this GPU or driver
        return gpu

    def close(self) -> None:
        if self.available:
            self._nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


Sampler = PrometheusSampler | NvmlSampler


class TelemetryRecorder:
    """Takes one sample of every source on `tick(now)` and appends it (flushed) to `stream`."""

    def __init__(self, samplers: list[Sampler], stream: IO[str]):
        self.samplers = samplers
        self.stream = stream

    def tick(self, now: float) -> None:
        for s in self.samplers:
            data = s.sample()
            if data is not None:
                line = {"t": round(now, 4), "source": s.source, **data}
                self.stream.write(json.dumps(line, separators=(",", ":")) + "\n")
                self.stream.flush()

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.samplers if s.error]

    def close(self) -> None:
        for s in self.samplers:
            if isinstance(s, NvmlSampler):
                s.close()


def read_telemetry(path: str | Path) -> list[dict[str, Any]]:
    """The samples of a telemetry.jsonl; none when the run wrote no file. A line that is not
    a JSON object is skipped with a warning on stderr naming it."""
    try:
        f = open_regular(path)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise UnreadableFile(f"{path}: cannot read file: {e.strerror or e}") from None
    except UnreadableFile as e:
        raise UnreadableFile(f"{path}: {e}") from None
    out: list[dict[str, Any]] = []
    with f:
        for n, line in enumerate(lines(f), 1):
            if line is not None and not line.strip():
                continue
            sample = _sample(line)
            if isinstance(sample, dict):
                out.append(sample)
            else:
                what = sample if isinstance(sample, Exception) else type(sample).__name__
                print(
                    f"warning: {path}: line {n}: not a telemetry sample ({what}); skipped",
                    file=sys.stderr,
                )
    return out


def _sample(line: bytes | None) -> Any:
    """A line's JSON, or the exception that says why it is not JSON."""
    if line is None:
        return ValueError(f"longer than {MAX_LINE_BYTES >> 20} MiB")
    try:
        sample = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, too deep, too long
        return e
    try:
        huge = _beyond_float(sample)
    except RecursionError as e:
        return e
    return ValueError(f"a number beyond +-{MAX_VALUE:g}") if huge else sample


def _beyond_float(v: Any) -> bool:
    """Some number in `v` (a JSON value) is beyond MAX_VALUE: an integer too large for a float,
    or a float a plot's axis overflows on (1e308: matplotlib's ticks raised OverflowError)."""
    if isinstance(v, dict):
        return any(_beyond_float(x) for x in v.values())
    if isinstance(v, list):
        return any(_beyond_float(x) for x in v)
    return isinstance(v, int | float) and not isinstance(v, bool) and abs(v) > MAX_VALUE
