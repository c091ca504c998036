"""The step-time model against a real decode step: a synthetic transformer (numpy, float32,
random weights: attention with grouped KV heads over a KV cache, a SwiGLU MLP, a tied output
head) timed at several batch sizes on the machine at hand, beside what
simulator/deploy/steptime.py predicts for the same shape from the machine's own measured peaks
(`surgecast hardware`'s micro-benchmarks, in this process):

- `peaks`: the first-principles step at efficiency 1 (the catalog's rates alone would do this);
- `fitted`: memory efficiency read off the smallest batch and compute efficiency off the
  largest (a calibration's two regimes), the batches between predicted, held out.

    OPENBLAS_NUM_THREADS=1 python benchmarks/layer_step.py  # one thread: quieter numbers

On a GPU the same comparison needs torch; this one runs where numpy does (issue 22, item 3).
Timings are the best of --repeats (the least disturbed by other work on a shared machine).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scenarios.deployment_spec import Deployment
from simulator.deploy.catalog import Catalog, CatalogFile
from simulator.deploy.steptime import (
    Efficiency,
    Hardware,
    step_cost,
    step_work,
)
from surgecast.hardware import best_seconds, measure_cpu


@dataclass(frozen=True)
class Shape:
    layers: int = 2
    hidden: int = 2048
    heads: int = 16
    kv_heads: int = 4
    head_dim: int = 128
    ffn: int = 5632
    vocab: int = 4096

    @property
    def parameters(self) -> int:
        kv = self.kv_heads * self.head_dim
        attention = self.hidden * (self.hidden + 2 * kv) + self.hidden * self.hidden
        return self.layers * (attention + 3 * self.hidden * self.ffn) + self.vocab * self.hidden


class Layers:
    """The synthetic model's weights and a KV cache of `context` tokens for each of `batch`
    sequences; `step()` decodes one token for each."""

    def __init__(self, s: Shape, batch: int, context: int, rng: np.random.Generator):
        def w(*shape: int) -> np.ndarray:
            return rng.standard_normal(shape, dtype=np.float32) * 0.02

        kv = s.kv_heads * s.head_dim
        self.s = s
        self.layers = [
            {
                "qkv": w(s.hidden, s.hidden + 2 * kv),
                "o": w(s.hidden, s.hidden),
                "up": w(s.hidden, 2 * s.ffn),
                "down": w(s.ffn, s.hidden),
                "k": w(batch, s.kv_heads, context, s.head_dim),
                "v": w(batch, s.kv_heads, context, s.head_dim),
            }
            for _ in range(s.layers)
        ]
        self.head = w(s.vocab, s.hidden)  # tied with the input embeddings
        self.x = w(batch, s.hidden)

    def step(self) -> np.ndarray:
        """One decode step, in float32 throughout."""
        s, x = self.s, self.x
        b, group = x.shape[0], s.heads // s.kv_heads
        for layer in self.layers:
            qkv = x @ layer["qkv"]
            q = qkv[:, : s.hidden].reshape(b, s.kv_heads, group, s.head_dim)
            scores = q @ layer["k"].transpose(0, 1, 3, 2) / math.sqrt(s.head_dim)  # a float:
            # numpy 2 would widen float32 by a float64 scalar, and every matmul after it
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            attended = (scores @ layer["v"]).reshape(b, s.hidden)
            x = x + attended @ layer["o"]
            gate, up = np.split(x @ layer["up"], 2, axis=1)
            x = x + (gate / (1 + np.exp(-gate)) * up) @ layer["down"]
        logits = x @ self.head.T
        assert logits.dtype == np.float32
        return logits


def catalog_of(s: Shape) -> Catalog:
    model = {
        "parameters": s.parameters,
        "layers": s.layers,
        "hidden_size": s.hidden,
        "attention_heads": s.heads,
        "kv_heads": s.kv_heads,
        "head_dim": s.head_dim,
        "intermediate_size": s.ffn,
        "vocab_size": s.vocab,
        "max_context": 1 << 16,
        "tied_embeddings": True,
        "source": "benchmarks/layer_step.py",
    }
    gpu = {
        "vendor": "cpu",
        "memory_gib": 16,
        "memory_bandwidth_gbs": 1,
        "tflops": {"bf16": 1},
        "interconnect_gbs": 0,
        "load_bandwidth_gbs": 1,
        "price_per_hour_usd": 0,
        "source": "a placeholder: the measured peaks replace its rates",
    }
    f32 = {"bytes": 4, "compute": "bf16", "source": "numpy float32"}
    return Catalog(
        [
            CatalogFile.model_validate(
                {"number_formats": {"f32": f32}, "gpus": {"here": gpu}, "models": {"m": model}}
            )
        ]
    )


def timed_step(s: Shape, batch: int, context: int, repeats: int) -> float:
    layers = Layers(s, batch, context, np.random.default_rng(batch))
    return best_seconds(layers.step, repeats)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,2,4,8,16,32,64")
    p.add_argument("--context", type=int, default=512, help="KV tokens each sequence attends")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    shape = Shape()
    say = print
    say("measuring this machine's peaks (surgecast hardware's micro-benchmarks) ...")
    m = measure_cpu(2048, 256, a.repeats)
    hw = Hardware(m.matmul_flops, m.memory_bytes_s, 0.0)
    say(f"  {m.name}: {m.matmul_flops / 1e9:.1f} GFLOP/s, {m.memory_bytes_s / 1e9:.1f} GB/s")
    work = step_work(
        Deployment(model="m", gpu="here", weights="f32", kv_cache="f32"), catalog_of(shape)
    )
    peaks = step_cost(work, hw, Efficiency(1, 1, 1, 1, 0.0))
    measured = {}
    for b in batches:
        say(f"timing a decode step of {b} sequences x {a.context} tokens ...")
        measured[b] = timed_step(shape, b, a.context, a.repeats)
    first, last = batches[0], batches[-1]

    def ideal(f: Callable[[Efficiency], float]) -> float:
        return f(Efficiency(1, 1, 1, 1, 0.0))

    def bound(b: int, which: str, eff: Efficiency) -> float:
        cost = step_cost(work, hw, eff)
        if which == "memory":
            return cost.memory_s + cost.per_context_token_s * b * a.context
        return cost.per_token_s * b + cost.compute_per_context_token_s * b * a.context

    memory = min(ideal(lambda e: bound(first, "memory", e)) / measured[first], 1.0)
    compute = min(ideal(lambda e: bound(last, "compute", e)) / measured[last], 1.0)
    fitted = step_cost(work, hw, Efficiency(compute, memory, memory, 1, 0.0))
    rows, held_out = [], []
    for b in batches:
        t = measured[b]
        at_peak = peaks.duration(b, 0, b * a.context)
        fit = fitted.duration(b, 0, b * a.context)
        err_fit = (fit / t - 1) * 100
        if b not in (first, last):
            held_out.append(abs(err_fit))
        rows.append((b, t * 1e3, at_peak * 1e3, (at_peak / t - 1) * 100, fit * 1e3, err_fit))
    say(
        f"\nsynthetic model: {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads "
        f"({shape.kv_heads} KV), FFN {shape.ffn}, vocab {shape.vocab}: "
        f"{shape.parameters / 1e6:.0f}M float32 parameters; context {a.context}"
    )
    say(f"fitted efficiencies: memory {memory:.2f} (batch {first}), ", end="")
    say(f"compute {compute:.2f} (batch {last})\n")
    say("| batch | measured ms | peaks ms | error | fitted ms | error |")
    say("|---|---|---|---|---|---|")
    for b, t, pk, e1, fit, e2 in rows:
        mark = "" if b in (first, last) else " (held out)"
        say(f"| {b} | {t:.2f} | {pk:.2f} | {e1:+.1f}% | {fit:.2f} | {e2:+.1f}%{mark} |")
    if held_out:
        say(f"\nheld-out median |error| of the fitted model: {statistics.median(held_out):.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
