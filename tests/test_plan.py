"""The plan: personas, sessions, closed users, trace prefixes, sizing and determinism."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from loadgen.sizing import SizedPrompts
from scenarios.plan import RequestSpec, build_plan
from scenarios.plan_tokens import shareable_prompt_share
from scenarios.spec import Scenario, load_scenario, parse_scenario
from tests.conftest import run_cli, scenario_dict, write_scenario


def _scenario(**overrides: Any) -> Scenario:
    return parse_scenario(scenario_dict(**overrides))


def _sessions(**session: Any) -> Scenario:
    return _scenario(traffic={"rate": 5, "duration_s": 60, "seed": 2}, session=session)


def test_one_seed_one_plan_and_another_seed_another() -> None:
    s = _sessions(
        turns={"dist": "uniform", "low": 1, "high": 4},
        think_time={"dist": "exponential", "mean": 2},
        regenerate=0.2,
    )
    assert build_plan(s) == build_plan(s)
    assert build_plan(s, seed=3) != build_plan(s)


def test_personas_share_arrivals_by_weight() -> None:
    s = _scenario(
        traffic={"rate": 20, "duration_s": 200, "seed": 1},
        personas=[{"name": "a", "weight": 3}, {"name": "b", "weight": 1}],
    )
    counts = Counter(spec.persona for spec in build_plan(s))
    n = counts["a"] + counts["b"]
    # a binomial share of 3/4: within 4 standard deviations
    assert abs(counts["a"] - 0.75 * n) < 4 * np.sqrt(n * 0.75 * 0.25)


def test_a_persona_with_its_own_arrival_keeps_it() -> None:
    s = _scenario(
        traffic={"rate": 5, "duration_s": 100, "seed": 1},
        personas=[
            {"name": "shared"},
            {"name": "own", "arrival": {"type": "constant-arrival-rate", "rate": 2}},
        ],
    )
    own = sorted(spec.arrival for spec in build_plan(s) if spec.persona == "own")
    assert len(own) == 200 and np.allclose(np.diff(own), 0.5)


def test_session_turns_chain_with_growing_history() -> None:
    plan = build_plan(
        _sessions(
            turns={"dist": "constant", "value": 4},
            think_time={"dist": "constant", "value": 1.5},
        )
    )
    by_id = {s.id: s for s in plan}
    follow_ups = [s for s in plan if s.after is not None]
    assert len(follow_ups) == 3 * len([s for s in plan if s.after is None])
    for s in follow_ups:
        before = by_id[s.after]  # type: ignore[index]
        assert (s.session, s.turn) == (before.session, before.turn + 1)
        assert s.think_s == 1.5 and s.arrival == pytest.approx(before.arrival + 1.5)
        # the history: the previous prompt and its answer, then the new message
        assert s.prompt_tokens == before.prompt_tokens + before.max_tokens + s.message_tokens
        assert s.prefix[: len(before.prefix)] == before.prefix
        assert sum(t for _, t in s.prefix) == before.prompt_tokens + before.max_tokens


def test_regenerate_resends_the_same_prompt() -> None:
    plan = build_plan(_sessions(turns={"dist": "constant", "value": 3}, regenerate=0.5))
    by_id = {s.id: s for s in plan}
    redos = [s for s in plan if s.regenerate]
    assert len(redos) > 0.3 * len(plan) / 3
    for s in redos:
        before = by_id[s.after]  # type: ignore[index]
        assert (s.prompt_tokens, s.prefix, s.turn) == (
            before.prompt_tokens,
            before.prefix,
            before.turn,
        )


def test_closed_users_chain_until_the_window_closes() -> None:
    s = _scenario(
        traffic={
            "arrival": {
                "type": "closed-users",
                "users": 4,
                "think_time": {"dist": "constant", "value": 2},
            },
            "duration_s": 30,
            "seed": 1,
        }
    )
    plan = build_plan(s)
    starts = [spec for spec in plan if spec.after is None]
    assert len(starts) == 4  # one chain per user
    assert all(spec.not_after == 30 for spec in plan)
    # enough turns for each user to keep cycling all window long, even with instant answers
    # (a chain's estimated arrivals count think times only), and not wildly more
    last_by_user: dict[int, float] = {}
    by_id = {spec.id: spec for spec in plan}
    for spec in plan:
        first = spec
        while first.after is not None:
            first = by_id[first.after]
        last_by_user[first.session] = max(last_by_user.get(first.session, 0.0), spec.arrival)
    assert len(last_by_user) == 4 and min(last_by_user.values()) >= 30
    assert len(plan) < 4 * 30 / 2 * 4


def test_scaling_the_rate_keeps_each_personas_length_sequence() -> None:
    """Lengths come from their own stream in session order: x3 traffic draws the same first
    lengths, only more of them."""
    s = _scenario(traffic={"rate": 5, "duration_s": 60, "seed": 4})
    base, scaled = build_plan(s), build_plan(s, rate_scale=3.0)
    n = len(base)
    assert len(scaled) > 2 * n
    assert [(x.prompt_tokens, x.max_tokens) for x in scaled[:n]] == [
        (x.prompt_tokens, x.max_tokens) for x in base
    ]
    assert [x.arrival for x in scaled[:n]] != [x.arrival for x in base]


def _mooncake(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _replaying(tmp_path: Path, rows: list[dict[str, Any]]) -> Scenario:
    """A scenario that replays these Mooncake rows (their lengths and hash_ids)."""
    trace = _mooncake(tmp_path / "t.jsonl", rows)
    data = scenario_dict(
        traffic={
            "arrival": {"type": "trace", "path": trace.name, "format": "mooncake"},
            "duration_s": 0.3,
        }
    )
    data.pop("workload")
    return load_scenario(write_scenario(tmp_path / "s.yaml", data))


def test_shared_hash_ids_give_byte_identical_prompt_prefixes(tmp_path: Path) -> None:
    s = _replaying(
        tmp_path,
        [
            {"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2, 3]},
            {"timestamp": 100, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2, 4]},
            {"timestamp": 200, "input_length": 1100, "output_length": 5, "hash_ids": [7, 2, 3]},
        ],
    )
    plan = build_plan(s)
    assert [spec.prefix[:2] for spec in plan] == [((1, 512), (2, 512))] * 2 + [((7, 512), (2, 512))]
    prompts = SizedPrompts(s, s.base_dir)
    a, b, c = (prompts.messages(spec)[-1]["content"] for spec in plan)
    two_blocks = len(a) * 1024 // 1100  # about the first two blocks' characters
    assert a[:two_blocks] == b[:two_blocks]  # ids 1, 2 shared
    assert a[: two_blocks // 4] != c[: two_blocks // 4]  # different first id: nothing shared
    assert a != b


def test_sizing_learns_a_tokenizer_it_does_not_know() -> None:
    """A made-up tokenizer (a token per 3 characters plus a 20-token template): after a few
    observed requests the rendered prompts land within 5% of their planned tokens."""
    s = _scenario(traffic={"rate": 5, "duration_s": 30, "seed": 1})
    prompts = SizedPrompts(s)

    def served(messages: list[dict[str, str]]) -> int:
        return 20 + sum(len(m["content"]) for m in messages) // 3

    from scenarios.records import RequestRecord

    plan = build_plan(s)
    errors = []
    for i, spec in enumerate(plan):
        messages = prompts.messages(spec)
        tokens = served(messages)
        record = RequestRecord(spec.id, 0, 0, prompt_tokens=tokens, token_source="usage")
        prompts.observe(sum(len(m["content"]) for m in messages), record)
        if i >= 5:
            errors.append(abs(tokens / spec.prompt_tokens - 1))
    assert np.median(errors) < 0.05 and np.percentile(errors, 90) < 0.10
    assert prompts.chars_per_token == pytest.approx(3.0, rel=0.05)


def test_trace_lengths_keep_their_joint_distribution(tmp_path: Path) -> None:
    rows = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:00:{i // 10:02d}.{i % 10}000000,{100 + 10 * i},{5 + i}\n"
        for i in range(200)
    )
    (tmp_path / "t.csv").write_text(rows, encoding="utf-8")
    data = scenario_dict(traffic={"rate": 20, "duration_s": 50, "seed": 3})
    data["workload"] = {"lengths": {"path": "t.csv", "format": "azure-llm"}}
    plan = build_plan(load_scenario(write_scenario(tmp_path / "s.yaml", data)))
    prompt = np.array([s.prompt_tokens for s in plan])
    output = np.array([s.max_tokens for s in plan])
    assert np.all((prompt - 100) / 10 + 5 == output)  # every pair is a real row
    assert stats.spearmanr(prompt, output).statistic > 0.99


def test_a_bad_trace_is_exit_2_naming_file_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00.0,12x,5\n"
        "2023-11-16 18:00:01.0,10,-1\n",
        encoding="utf-8",
    )
    data = scenario_dict(
        traffic={
            "arrival": {"type": "trace", "path": "t.csv", "format": "azure-llm"},
            "duration_s": 5,
        }
    )
    path = write_scenario(tmp_path / "s.yaml", data)
    result = run_cli("plan", str(path), timeout=60)
    assert result.returncode == 2
    assert "t.csv: line 2, column ContextTokens" in result.stderr
    assert "line 3, column GeneratedTokens" in result.stderr
    assert "Traceback" not in result.stderr


def _ids(plan: list[RequestSpec]) -> list[str]:
    return [s.id for s in plan]


def test_ids_are_in_arrival_order() -> None:
    plan = build_plan(_sessions(turns={"dist": "constant", "value": 2}))
    assert _ids(plan) == [f"r{i:06d}" for i in range(len(plan))]
    assert [s.arrival for s in plan] == sorted(s.arrival for s in plan)


def test_a_partial_block_is_a_prefix_of_the_whole_block() -> None:
    """Two trace rows sharing a hash id in a partial last block share its first bytes."""
    from loadgen.sizing import block_text

    whole, part, other = block_text(42, 2048), block_text(42, 700), block_text(43, 700)
    assert len(whole) == 2048 and len(part) == 700
    assert whole.startswith(part) and not whole.startswith(other)


def test_a_bad_corpus_is_exit_2_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "q.csv").write_text("question,label\nhow do I pay?,billing\n", encoding="utf-8")
    data = scenario_dict(traffic={"rate": 2, "duration_s": 5})
    data["workload"]["text"] = {
        "type": "corpus",
        "corpus": {"path": "q.csv", "format": "csv", "text_field": "text"},
    }
    path = write_scenario(tmp_path / "s.yaml", data)
    out = tmp_path / "run"
    result = run_cli("run", str(path), "--out", str(out), timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "q.csv" in result.stderr and "columns found: question, label" in result.stderr
    assert not out.exists()  # no run folder, no target started


def test_rag_system_prompts_are_shared_prefixes_in_the_plan() -> None:
    """The plan picks each conversation's system prompt, so the simulator's prefix cache sees
    what a real engine's would; the text sent opens with exactly that system prompt."""
    from scenarios.prompts import RagSource, shared_key

    data = scenario_dict(traffic={"rate": 5, "duration_s": 20, "seed": 7})
    data["workload"]["prompt_tokens"] = {"dist": "constant", "value": 1200}
    data["workload"]["text"] = {"type": "rag", "system_prompts": 3, "system_chars": 800}
    s = parse_scenario(data)
    rag = s.workload.text
    assert isinstance(rag, RagSource)
    plan = build_plan(s)
    heads = Counter(spec.prefix[0] for spec in plan)
    assert set(heads) == {(shared_key("rag", i), 200) for i in range(3)}  # 800 chars / 4
    prompts = SizedPrompts(s)
    for spec in plan[:10]:
        system = prompts.messages(spec)[0]
        index = rag.system_index(spec.text_seed)
        assert spec.prefix[0][0] == shared_key("rag", index)
        assert system == {"role": "system", "content": rag.system_prompt(index)}


def test_a_run_salt_begins_each_conversation_and_keeps_shared_prefixes_shared(
    tmp_path: Path,
) -> None:
    """Two runs with different salts share no prompt prefix; within a run, requests that share
    prefix blocks still share their bytes (the salt is the same for all of them)."""
    s = _replaying(
        tmp_path,
        [
            {"timestamp": 0, "input_length": 1100, "output_length": 10, "hash_ids": [1, 2, 3]},
            {"timestamp": 100, "input_length": 1100, "output_length": 10, "hash_ids": [1, 2, 4]},
        ],
    )
    plan = build_plan(s)
    one, two = SizedPrompts(s, s.base_dir, "aaaaaa"), SizedPrompts(s, s.base_dir, "bbbbbb")
    a1, b1 = (one.messages(spec)[0]["content"] for spec in plan[:2])
    a2 = two.messages(plan[0])[0]["content"]
    assert a1.startswith("[aaaaaa] ") and a2.startswith("[bbbbbb] ")
    assert a1[9:] == a2[9:]  # the same text after the salt
    assert a1[: len(a1) // 2] == b1[: len(b1) // 2]  # blocks 1 and 2 still shared in a run


def test_shareable_share_counts_prefix_chains_sent_before() -> None:
    a = RequestSpec(id="a", arrival=0, prompt_tokens=100, max_tokens=1, prefix=((1, 40),))
    b = RequestSpec(id="b", arrival=1, prompt_tokens=100, max_tokens=1, prefix=((1, 40), (2, 30)))
    c = RequestSpec(id="c", arrival=2, prompt_tokens=100, max_tokens=1, prefix=((2, 30),))
    d = RequestSpec(id="d", arrival=3, prompt_tokens=100, max_tokens=1, prefix=((1, 40), (2, 30)))
    # b reuses a's block 1; c's block 2 starts a new chain; d reuses b's whole chain
    assert shareable_prompt_share([d, c, b, a]) == pytest.approx((40 + 70) / 400)


def test_staircase_holds_every_batch_size_from_full_to_one() -> None:
    """4 slots, 40 steps a size: answers of 40, 80, 120 and 160 tokens sent together, so the
    batch is 4, 3, 2, then 1 for 40 steps each; a 32-slot batch holds a subset of sizes."""
    from surgecast.sweep import stair_sizes, staircase

    scenario = parse_scenario(scenario_dict())
    stairs = staircase(scenario, 4)
    assert sorted(s.max_tokens for s in stairs) == [40, 80, 120, 160]
    assert all(s.arrival < 0.01 and s.after is None for s in stairs)
    assert len({s.id for s in stairs}) == 4
    assert stair_sizes(32) == [32, 24, 16, 12, 8, 6, 4, 3, 2, 1]
    big = staircase(scenario, 32)
    assert len(big) == 32
    tokens = sorted(s.max_tokens for s in big)
    # in flight after step t: those longer than t; at each hold's middle, the size it holds
    held = [sum(n > 40 * k + 20 for n in tokens) for k in range(10)]
    assert held == stair_sizes(32)


def test_an_uncached_plan_repeats_no_prompt_and_keeps_the_traffic() -> None:
    """The sweep's levels and staircase: no shared prefix, every rendered prompt drawn from its
    own seed, a fixed prompt made unique; arrivals and lengths untouched."""
    from dataclasses import replace

    from scenarios.plan import uncached

    plan = build_plan(parse_scenario(scenario_dict()))
    fixed = [replace(s, prompt="the same question", prefix=((7, 20),)) for s in plan[:3]]
    fresh = uncached([*fixed, *plan], "t1")
    assert [(s.arrival, s.prompt_tokens, s.max_tokens) for s in fresh] == [
        (s.arrival, s.prompt_tokens, s.max_tokens) for s in [*fixed, *plan]
    ]
    assert all(s.prefix == () for s in fresh)
    assert len({s.prompt for s in fresh[:3]}) == 3
    assert len({s.text_seed for s in fresh[3:]}) == len(plan)
    again = uncached(plan, "t2")  # another plan's tag: other seeds
    assert not {s.text_seed for s in again} & {s.text_seed for s in fresh}
