"""Memory in GiB against hand-worked numbers, and the catalog's files refused with file, line and
field when they are wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios.deployment_spec import Deployment
from simulator.deploy.catalog import SHIPPED, CatalogError, load_catalog, read_catalog_file
from simulator.deploy.memory import GIB, engine_config, load_seconds, memory_plan
from simulator.engine.core import EngineConfig

CATALOG = load_catalog()
BUDGET_H100 = 79.65 * 0.9 * GIB  # memory_gib x gpu_memory_utilization
EMBEDDINGS_70B = 128256 * 8192 * 2  # vocab x hidden, input and output: 2,101,346,304


def test_kv_bytes_per_token_and_a_smaller_kv_format() -> None:
    def per_token(model: str, kv: str = "bf16") -> int:
        plan = memory_plan(Deployment(model=model, gpu="H100", kv_cache=kv), CATALOG)
        return plan.kv_bytes_per_token

    assert per_token("Llama-3.1-8B") == 128 * 1024  # 2 x 32 layers x 8 heads x 128 x 2 B
    assert per_token("Llama-3.1-70B") == 320 * 1024  # 2 x 80 x 8 x 128 x 2
    assert per_token("Qwen2.5-7B") == 56 * 1024  # 2 x 28 x 4 x 128 x 2
    assert per_token("Llama-3.1-70B", "fp8") == 160 * 1024


def test_a_70b_model_needs_two_h100s_at_bf16() -> None:
    one = memory_plan(Deployment(model="Llama-3.1-70B", gpu="H100"), CATALOG)
    assert not one.fits and one.blocks == 0
    assert "does not fit: weights 131.4 + activations 1.7 + overhead 1.0" in one.why
    assert "over the 71.7 GiB of 79.65 GiB x gpu_memory_utilization 0.9" in one.why
    two = memory_plan(Deployment(model="Llama-3.1-70B", gpu="H100", tensor_parallel=2), CATALOG)
    # weights: 70.55e9 x 2 B / 2 GPUs = 70,550,000,000 B per GPU (the embeddings are 16-bit
    # anyway); activations: 8,192 tokens x (2 x 8,192 + 3 x 28,672 / 2) x 2 B + 256 seqs x
    # 128,256 x 4 B = 1,104,412,672 B; overhead 1 GiB. KV: 71.685 GiB - those = 4,243,028,157 B;
    # a block holds 4 of the 8 KV heads on each GPU: 16 x 2 x 80 x 4 x 128 x 2 B = 2,621,440 B
    assert two.fits and two.weights_gib * GIB == pytest.approx(70.55e9)
    assert two.activations_gib * GIB == pytest.approx(1_104_412_672)
    assert two.block_bytes == 2_621_440 and two.blocks == 1618  # 4,243,028,157 / 2,621,440
    assert two.kv_tokens == 1618 * 16 and two.max_context == 25_888  # under the model's 131,072
    assert two.max_batch(4096) == 1618 // 256  # 256 blocks a sequence of 4,096 tokens


def test_int4_weights_fit_the_70b_model_on_one_h100() -> None:
    plan = memory_plan(Deployment(model="Llama-3.1-70B", gpu="H100", weights="int4"), CATALOG)
    # (70.55e9 - 2,101,346,304) x 0.5 B + 2,101,346,304 x 2 B (embeddings stay 16-bit)
    # = 38,427,019,456 B; activations 8,192 x (2 x 8,192 + 3 x 28,672) x 2 + 256 x 128,256 x 4
    # = 1,809,055,744 B; KV = 71.685 GiB - weights - activations - 1 GiB = 35,661,365,629 B
    # in blocks of 16 x 327,680 B = 5,242,880 B
    assert plan.weights_gib * GIB == pytest.approx(
        (70.55e9 - EMBEDDINGS_70B) * 0.5 + EMBEDDINGS_70B * 2
    )
    assert plan.kv_cache_gib * GIB == pytest.approx(35_661_365_629, abs=1)
    assert plan.fits and plan.blocks == 6801
    assert plan.max_batch(512) == 6801 // 32


def test_the_batch_is_capped_by_max_num_seqs_and_heads_must_split_evenly() -> None:
    small = memory_plan(Deployment(model="Llama-3.1-8B", gpu="H100", max_num_seqs=8), CATALOG)
    assert small.max_batch(100) == 8
    odd = memory_plan(Deployment(model="Qwen2.5-7B", gpu="H100", tensor_parallel=8), CATALOG)
    assert not odd.fits and "does not divide the model's 28 attention heads" in odd.why


def test_kv_heads_are_replicated_past_their_count() -> None:
    """Qwen2.5-7B has 4 KV heads: at tensor parallelism 4 each GPU holds one; at 2, two."""
    blocks = {
        tp: memory_plan(
            Deployment(model="Qwen2.5-72B", gpu="H100", tensor_parallel=tp, weights="int4"), CATALOG
        ).block_bytes
        for tp in (1, 2, 4, 8)
    }
    per_head = 16 * 2 * 80 * 128 * 2  # a block's bytes for one KV head
    assert blocks == {1: 8 * per_head, 2: 4 * per_head, 4: 2 * per_head, 8: per_head}


def test_given_kv_space_is_used_as_is_and_feeds_the_engine() -> None:
    """vLLM on CPU takes its KV space outright (VLLM_CPU_KVCACHE_SPACE)."""
    d = Deployment(model="Llama-3.2-1B", gpu="L4", kv_cache_gib=2.0, block_size=128)
    plan = memory_plan(d, CATALOG)
    per_block = 128 * 2 * 16 * 8 * 64 * 2  # 128 tokens x K,V x 16 layers x 8 heads x 64 x 2 B
    assert plan.blocks == 2 * GIB // per_block == 512
    engine = engine_config(plan, EngineConfig())
    assert (engine.kv_cache_tokens, engine.block_size, engine.max_num_seqs) == (65536, 128, 256)


def test_load_seconds_split_over_the_gpus() -> None:
    d = Deployment(model="Llama-3.1-70B", gpu="A100", tensor_parallel=2)
    assert load_seconds(d, CATALOG) == pytest.approx(70.55e9 * 2 / 2 / 16e9)


def test_old_profile_names_still_name_the_same_hardware() -> None:
    assert CATALOG.gpu("H100-80GB") is CATALOG.gpu("H100-SXM-80GB")
    assert CATALOG.model("Llama-3-8B").max_context == 8192
    with pytest.raises(KeyError, match="unknown gpu 'H1000'; the catalog has: A10-24GB"):
        CATALOG.gpu("H1000")


def test_every_shipped_entry_has_a_source_and_validates() -> None:
    shipped = read_catalog_file(SHIPPED)
    assert len(shipped.gpus) >= 10 and len(shipped.models) >= 10
    assert all(g.source for g in shipped.gpus.values())
    assert all(m.source for m in shipped.models.values())
    assert any(m.experts > 1 for m in shipped.models.values())  # a mixture-of-experts model
    assert {g.vendor for g in shipped.gpus.values()} == {"nvidia", "amd"}


def test_a_users_catalog_adds_and_replaces_entries(tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text(
        "gpus:\n"
        "  H100-SXM-80GB: {vendor: nvidia, memory_gib: 79.65, memory_bandwidth_gbs: 3350,\n"
        "    tflops: {bf16: 989}, interconnect_gbs: 450, load_bandwidth_gbs: 32,\n"
        "    price_per_hour_usd: 1.9, source: our contract}\n"
    )
    catalog = load_catalog([mine])
    assert catalog.gpu("H100-SXM-80GB").price_per_hour_usd == 1.9
    assert catalog.model("Llama-3.1-8B").layers == 32  # the rest stays


def test_bad_catalog_files_name_file_line_and_field_all_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "gpus:\n"
        "  mine:\n"
        "    vendor: nvidia\n"
        "    memory_gib: -80\n"  # line 4
        "    memory_bandwidth_gbs: 3350\n"
        "    tflops: {bf16: 989}\n"
        "    interconnect_gbs: 450\n"
        "    load_bandwidth_gbs: 32\n"
        "    price_per_hour_usd: 2\n"
        "    colour: green\n"  # line 10
        "models:\n"
        "  tiny:\n"  # line 12: source and most fields missing
        "    parameters: 1e9\n"
        "    layers: 2\n"
    )
    other = tmp_path / "other.yaml"
    other.write_text("gpus: [1, 2]\n")
    with pytest.raises(CatalogError) as caught:
        load_catalog([bad, other])
    problems = caught.value.problems
    assert (
        f"{bad}: line 4: gpus.mine.memory_gib: Input should be greater than 0, got -80" in problems
    )
    assert f"{bad}: line 10: gpus.mine.colour: unknown field (got 'green')" in problems
    assert f"{bad}: line 2: gpus.mine.source: required field is missing" in problems
    assert f"{bad}: line 12: models.tiny.hidden_size: required field is missing" in problems
    assert any(p.startswith(f"{other}: line 1: gpus: ") for p in problems)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpus: {a: {b: 1}}\ngpus: {}\n", "line 2, column 1: duplicate key 'gpus'"),
        ("models: [", "not a YAML catalog"),
        ("- 1\n", "a catalog is a mapping of number_formats, gpus and models"),
        ("number_formats: {q3: {bytes: 0, compute: bf16}}\n", "line 1: number_formats.q3.bytes"),
    ],
)
def test_more_bad_catalogs(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=message):
        read_catalog_file(path)


def test_a_model_must_hold_together(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n  m:\n    parameters: 1e6\n    layers: 2\n    hidden_size: 4096\n"
        "    attention_heads: 32\n    kv_heads: 5\n    head_dim: 128\n"
        "    intermediate_size: 100\n    vocab_size: 32000\n    max_context: 4096\n"
        "    experts: 8\n    experts_per_token: 2\n    source: x\n"
    )
    with pytest.raises(CatalogError, match=r"line 2: models\.m: kv_heads: must divide"):
        read_catalog_file(path)
