"""A tiny random-weight llama-architecture GGUF model, written locally (nothing is downloaded).

Its matrices are stored as f16 (the default), q8_0 or q4_0 (llama.cpp's 8- and 4-bit block
formats, quantised here by the gguf package); norms stay f32.

The tokenizer is GPT-2 style byte-level BPE over printable ASCII only (plus tab, newline, carriage
return), so every token decodes to valid UTF-8 on its own: one token, one streamed chunk. Input
characters outside that alphabet are dropped by llama.cpp's tokenizer. A chatml chat template makes
`/v1/chat/completions` work. The control tokens can never be sampled: a constant residual
dimension gives them a logit far below every other token's.
"""

from __future__ import annotations

import os
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from targets.cache import cache_root

FORMAT_VERSION = 1  # bump when the file's layout or tokenizer changes: the cache name includes it
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


WEIGHTS = ("f16", "q8_0", "q4_0")  # the weight types `write_model` emits


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    context: int = 8192


SHAPES = {
    # fast on CPU; the client is the bottleneck
    "tiny": ModelShape("tiny", layers=2, hidden=256, heads=4, kv_heads=2, ffn=768),
    # about 100 M parameters: compute-bound on CPU, behaves like a GPU deployment (calibration)
    "small": ModelShape("small", layers=8, hidden=1024, heads=16, kv_heads=4, ffn=2816),
    # narrower (about 50 M parameters) and a 2-layer probe: other shapes for benchmarks/transfer
    "narrow": ModelShape("narrow", layers=8, hidden=768, heads=12, kv_heads=4, ffn=2048),
    "probe": ModelShape("probe", layers=2, hidden=1536, heads=24, kv_heads=8, ffn=4096),
}


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte-to-unicode table (printable bytes map to themselves, others shifted)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def vocabulary() -> tuple[list[str], list[str]]:
    """(tokens, merges): specials, the ASCII alphabet, then letter pairs and space-letter."""
    enc = _byte_chars()
    alphabet = [enc[ord(c)] for c in string.printable if c not in "\x0b\x0c"]
    space = enc[ord(" ")]
    letters = string.ascii_lowercase
    pairs = [(space, a) for a in letters] + [(a, b) for a in letters for b in letters]
    merges = [f"{a} {b}" for a, b in pairs]
    return [*SPECIALS, *alphabet, *(a + b for a, b in pairs)], merges


def write_model(path: Path, shape: ModelShape, seed: int = 0, weights: str = "f16") -> None:
    """Write the model to `path` (not atomically; see `ensure_model`), its matrices as
    `weights` (one of WEIGHTS): the same random values whatever the type."""
    import gguf  # optional dependency: only needed to write the model

    tokens, merges = vocabulary()
    w = gguf.GGUFWriter(str(path), "llama")
    _add_metadata(w, shape, tokens, merges, weights)
    _add_tensors(w, shape, len(tokens), np.random.default_rng(seed), weights)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _add_metadata(
    w: Any, shape: ModelShape, tokens: list[str], merges: list[str], weights: str
) -> None:
    """The architecture's hyperparameters, the tokenizer and the chat template."""
    import gguf

    n_vocab = len(tokens)
    w.add_name(f"surgecast-{shape.name}-random")
    w.add_context_length(shape.context)
    w.add_embedding_length(shape.hidden)
    w.add_block_count(shape.layers)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(shape.hidden // shape.heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType[f"MOSTLY_{weights.upper()}"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(
        [gguf.TokenType.CONTROL] * len(SPECIALS)
        + [gguf.TokenType.NORMAL] * (n_vocab - len(SPECIALS))
    )
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(SPECIALS.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)


def _put(w: Any, name: str, tensor: np.ndarray, weights: str) -> None:
    """One tensor: a matrix as `weights`, a vector (a norm) as it is."""
    import gguf

    if tensor.ndim < 2 or weights == "f16":
        w.add_tensor(name, tensor)
        return
    qtype = gguf.GGMLQuantizationType[weights.upper()]
    w.add_tensor(name, gguf.quants.quantize(tensor.astype(np.float32), qtype), raw_dtype=qtype)


def _add_tensors(
    w: Any, shape: ModelShape, n_vocab: int, rng: np.random.Generator, weights: str
) -> None:
    """Random weights (drawn in a fixed order from `rng`), control tokens never sampled."""
    d = shape.hidden
    kv = shape.kv_heads * (d // shape.heads)

    def rand(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) * 0.02).astype(np.float16)

    # Residual dimension 0 holds a constant: embeddings set it, no layer writes to it. The output
    # row of each control token reads it with a large negative weight, so they are never sampled.
    embd = rand(n_vocab, d)
    embd[:, 0] = 0.05
    out = rand(n_vocab, d)
    out[:, 0] = 0
    out[: len(SPECIALS), 0] = -50.0
    ones = np.ones(d, dtype=np.float32)
    _put(w, "token_embd.weight", embd, weights)
    _put(w, "output_norm.weight", ones, weights)
    _put(w, "output.weight", out, weights)
    for i in range(shape.layers):
        attn_out, ffn_down = rand(d, d), rand(d, shape.ffn)
        attn_out[0, :] = 0
        ffn_down[0, :] = 0
        for name, tensor in (
            ("attn_norm.weight", ones),
            ("attn_q.weight", rand(d, d)),
            ("attn_k.weight", rand(kv, d)),
            ("attn_v.weight", rand(kv, d)),
            ("attn_output.weight", attn_out),
            ("ffn_norm.weight", ones),
            ("ffn_gate.weight", rand(shape.ffn, d)),
            ("ffn_up.weight", rand(shape.ffn, d)),
            ("ffn_down.weight", ffn_down),
        ):
            _put(w, f"blk.{i}.{name}", tensor, weights)


def ensure_model(
    size: str = "tiny", seed: int = 0, cache: Path | None = None, weights: str = "f16"
) -> Path:
    """The cached model file, written first if missing (atomically: temp file, then rename)."""
    if size not in SHAPES:
        raise ValueError(f"model size: expected one of {', '.join(SHAPES)}, got {size!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights: expected one of {', '.join(WEIGHTS)}, got {weights!r}")
    folder = (cache or cache_root()) / "models"
    typed = "" if weights == "f16" else f"-{weights}"  # f16 keeps its older name
    path = folder / f"random-llama-{size}{typed}-seed{seed}-v{FORMAT_VERSION}.gguf"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write_model(Path(tmp), SHAPES[size], seed, weights)
        os.replace(tmp, path)  # two writers produce the same bytes: the last rename wins
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
