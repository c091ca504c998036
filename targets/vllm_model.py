"""A tiny Llama-style model directory for vLLM, written locally (nothing is downloaded).

Config only: vLLM serves it with `--load-format dummy` (random weights). The tokenizer is the GGUF
model's (`targets.gguf_model.vocabulary`): GPT-2 byte-level BPE over printable ASCII, written as
`tokenizer.json` directly, so both engines split text the same way and every token decodes to valid
UTF-8 on its own (one token, one streamed chunk). Random weights can sample the control tokens, so
none is special to the tokenizer (not even as its eos or pad token, which vLLM's detokenizer would
skip): each decodes to its own text instead of an empty chunk. vLLM stops at EOS by the config's
eos_token_id.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from targets.cache import cache_root
from targets.gguf_model import CHAT_TEMPLATE, SHAPES, SPECIALS, ModelShape, vocabulary

FORMAT_VERSION = 2  # bump when the directory's files change: the cache name includes it
EOS = "<|im_end|>"


def config_json(shape: ModelShape, vocab_size: int) -> dict[str, Any]:
    """Hugging Face `config.json` of a Llama model of this shape."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.ffn,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.hidden // shape.heads,
        "max_position_embeddings": shape.context,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "vocab_size": vocab_size,
        "bos_token_id": SPECIALS.index("<|endoftext|>"),
        "eos_token_id": SPECIALS.index(EOS),
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


def tokenizer_json() -> dict[str, Any]:
    """A `tokenizers` byte-level BPE with the GGUF model's vocabulary and merges."""
    tokens, merges = vocabulary()
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": False,  # random weights sample them: decode them as text, not ""
        }
        for i, t in enumerate(SPECIALS)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": {"type": "ByteLevel", **byte_level},
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ") for m in merges],
        },
    }


def tokenizer_config(shape: ModelShape) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": shape.context,
        "chat_template": CHAT_TEMPLATE,
    }


def write_model_dir(path: Path, shape: ModelShape) -> None:
    """Write the model's files into the existing directory `path`."""
    vocab_size = len(vocabulary()[0])
    files = {
        "config.json": config_json(shape, vocab_size),
        "tokenizer.json": tokenizer_json(),
        "tokenizer_config.json": tokenizer_config(shape),
        "generation_config.json": {
            "eos_token_id": SPECIALS.index(EOS),
            "pad_token_id": SPECIALS.index("<|endoftext|>"),
            "do_sample": True,
            "temperature": 1.0,
        },
    }
    for name, content in files.items():
        (path / name).write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")


def ensure_model_dir(size: str = "tiny", cache: Path | None = None) -> Path:
    """The cached model directory, written first if missing (atomically: temp dir, then rename)."""
    if size not in SHAPES:
        raise ValueError(f"model size: expected one of {', '.join(SHAPES)}, got {size!r}")
    folder = (cache or cache_root()) / "models"
    path = folder / f"random-llama-{size}-hf-v{FORMAT_VERSION}"
    if (path / "config.json").exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=path.name, suffix=".tmp"))
    try:
        write_model_dir(tmp, SHAPES[size])
        try:
            os.replace(tmp, path)
        except OSError:  # another writer renamed first: theirs has the same files
            if not (path / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
