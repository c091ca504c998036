"""The target flags of run, pipeline and gate (`--target URL|llama-server|vllm` and each engine's
own flags) and of `surgecast target`, turned into the one `Launcher` a run takes."""

from __future__ import annotations

import argparse

from scenarios.spec import Scenario
from surgecast.cli.args import count, url
from surgecast.cli.exits import BadInput
from targets.launcher import Launcher
from targets.reference_launch import url_or_reference

LLAMA = "llama-server"  # --target value: surgecast starts llama-server on loopback
VLLM = "vllm"  # --target value: surgecast starts vLLM (CPU, `make vllm`) on loopback
ENGINES = (LLAMA, VLLM)
VLLM_FLAGS = (
    "max_num_seqs",
    "max_num_batched_tokens",
    "kv_cache_gib",
    "max_model_len",
    "block_size",
    "stream_interval",
)


def target_url(text: str) -> str:
    return text if text in ENGINES else url(text)


def target_flag(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--target", type=target_url, help=help)


def model_size_flag(g: argparse._ActionsContainer, default: str | None) -> None:
    g.add_argument(
        "--model-size",
        choices=["tiny", "small"],
        default=default,
        help="random-weight model written locally: tiny (2 layers, hidden 256; fast) or small "
        "(8 layers, hidden 1024, ~100 M parameters; compute-bound, for calibration)"
        + ("" if default else "; with --target llama-server or vllm (default tiny)"),
    )


def llama_flags(p: argparse.ArgumentParser, standalone: bool = False) -> None:
    """Flags of the llama-server surgecast starts (defaults None in run/pipeline: see
    `launcher_for`)."""
    g = p.add_argument_group(
        "llama-server" if standalone else "llama-server (with --target llama-server)"
    )
    g.add_argument(
        "--slots",
        type=count,
        default=4 if standalone else None,
        help="parallel sequences, batched continuously (-np; 1 is a FIFO server; default 4)",
    )
    g.add_argument(
        "--ctx",
        type=count,
        default=4096 if standalone else None,
        help="KV-cache tokens in all, split evenly across the slots (-c; default 4096)",
    )
    g.add_argument(
        "--threads", type=count, default=2 if standalone else None, help="CPU threads (default 2)"
    )
    if standalone:
        model_size_flag(g, "tiny")
    g.add_argument(
        "--build",
        action="store_true",
        help="build llama-server if it is not cached (several minutes on 2 cores; "
        "or run `make llama-server` once)",
    )


def vllm_flags(p: argparse.ArgumentParser, standalone: bool = False) -> None:
    """Flags of the vLLM server surgecast starts; `--vllm-` prefixed in run/pipeline."""
    g = p.add_argument_group("vLLM" if standalone else "vLLM (with --target vllm)")
    pre = "--" if standalone else "--vllm-"

    def flag(name: str, default: int | None, text: str) -> None:
        g.add_argument(
            pre + name,
            type=count,
            default=default if standalone else None,
            help=f"{text} (default {default})" if default else text,
        )

    flag("max-num-seqs", 8, "sequences batched together (vLLM --max-num-seqs)")
    flag("max-num-batched-tokens", 2048, "tokens one step computes (--max-num-batched-tokens)")
    flag("kv-cache-gib", 1, "GiB of KV cache (VLLM_CPU_KVCACHE_SPACE)")
    flag("max-model-len", 4096, "prompt + output tokens of one request (--max-model-len)")
    flag("block-size", None, "tokens per KV block (default: vLLM's, 128 on CPU)")
    flag("stream-interval", 1, "tokens per streamed chunk (--stream-interval)")
    g.add_argument(
        pre + "no-prefix-caching",
        action="store_true",
        help="turn vLLM's automatic prefix caching off (on by default)",
    )


def engine_flags(p: argparse.ArgumentParser) -> None:
    """Every engine's flags, for commands that may start one (run, pipeline)."""
    model_size_flag(p, None)
    llama_flags(p)
    vllm_flags(p)


def launcher_for(a: argparse.Namespace, scenario: Scenario) -> Launcher:
    """The target the flags choose: llama-server or vLLM started on loopback, a URL (the flag's,
    else the scenario's), else the built-in reference target. An engine's flags without that
    engine as --target are bad input."""
    llama_given, vllm_given = _llama_flags_given(a), _vllm_flags_given(a)
    if a.target != LLAMA and llama_given:
        raise BadInput(f"{', '.join(llama_given)}: only with --target {LLAMA}")
    if a.target != VLLM and vllm_given:
        raise BadInput(f"{', '.join(vllm_given)}: only with --target {VLLM}")
    if a.target == LLAMA:
        from targets.llama_launch import LlamaLauncher, LlamaOptions

        flags = {"slots": a.slots, "ctx": a.ctx, "threads": a.threads, "model_size": a.model_size}
        kept = {k: v for k, v in flags.items() if v is not None}
        return LlamaLauncher(LlamaOptions(**kept, build=a.build))
    if a.target == VLLM:
        from targets.vllm_launch import VllmLauncher, VllmOptions

        flags = {k: getattr(a, f"vllm_{k}") for k in VLLM_FLAGS} | {"model_size": a.model_size}
        kept = {k: v for k, v in flags.items() if v is not None}
        return VllmLauncher(VllmOptions(**kept, prefix_caching=not a.vllm_no_prefix_caching))
    return url_or_reference(a.target, scenario)


def _llama_flags_given(a: argparse.Namespace) -> list[str]:
    flags = {"slots": a.slots, "ctx": a.ctx, "threads": a.threads}
    if a.target != VLLM:  # --model-size is shared with vLLM
        flags["model_size"] = a.model_size
    given = [f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None]
    return [*given, "--build"] if a.build else given


def _vllm_flags_given(a: argparse.Namespace) -> list[str]:
    given = [
        f"--vllm-{k.replace('_', '-')}" for k in VLLM_FLAGS if getattr(a, f"vllm_{k}") is not None
    ]
    return [*given, "--vllm-no-prefix-caching"] if a.vllm_no_prefix_caching else given
