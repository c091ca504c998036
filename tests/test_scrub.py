"""The scrubber on known identifiers, with no false alarm on the shared real corpora; what a
record keeps of a prompt under each privacy setting."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scenarios.corpora import CorpusSpec, load_corpus, parse_corpus, scrub_lines
from scenarios.scrub import PromptStore, card_ok, iban_ok, scrub
from scenarios.spec import Privacy, parse_scenario
from tests.conftest import LENIENT, run_cli, scenario_dict, write_scenario
from tests.corpus_sets import FILES, Counted

KNOWN = [  # (text, what it becomes, kinds found)
    ("mail me at jane.doe+bank@example.co.uk today", "mail me at [EMAIL] today", ["email"]),
    ("call +44 20 7946 0958 or (555) 123-4567", "call [PHONE] or [PHONE]", ["phone", "phone"]),
    ("my number is 555-123-4567.", "my number is [PHONE].", ["phone"]),
    ("ring 06-12 34 56 78 after six", "ring [PHONE] after six", ["phone"]),
    ("card 4111 1111 1111 1111 exp 12/29", "card [CARD] exp 12/29", ["card"]),
    ("amex 378282246310005 please", "amex [CARD] please", ["card"]),
    ("pay to GB82 WEST 1234 5698 7654 32 now", "pay to [IBAN] now", ["iban"]),
    ("IBAN DE89370400440532013000", "IBAN [IBAN]", ["iban"]),
]
LEFT_ALONE = [
    "card 4111 1111 1111 1112 is not valid",  # Luhn fails
    "order 113542617735902 has not arrived",  # no card network's prefix
    "GB82 WEST 1234 5698 7654 33 is a typo",  # mod 97 fails
    "I need 2,500 dollars by 12/05/2024 for 3 nights",
    "version 1.2.3, room 101, 1234 5678",
    "email support at the help desk",
]


@pytest.mark.parametrize(("text", "clean", "kinds"), KNOWN)
def test_known_identifiers_are_replaced_and_counted(
    text: str, clean: str, kinds: list[str]
) -> None:
    found: Counter[str] = Counter()
    assert scrub(text, found) == clean
    assert found == Counter(kinds)


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_lookalikes_are_left_alone(text: str) -> None:
    found: Counter[str] = Counter()
    assert scrub(text, found) == text and not found


def test_checks_of_cards_and_ibans() -> None:
    assert card_ok("5555 5555 5555 4444") and not card_ok("5555 5555 5555 4445")
    assert iban_ok("FR1420041010050500013M02606") and not iban_ok("FR1420041010050500013M02607")


@pytest.mark.parametrize("case", FILES)
def test_no_false_alarm_on_the_catalog_corpora(case: Counted) -> None:
    """The project's own sets and the public corpora hold no personal data (order numbers and
    dates, yes): the scrubber changes none of their texts but bitext's two example addresses."""
    for spec in case.specs:
        corpus = load_corpus(spec)
        assert corpus.scrubbed == case.scrubbed, spec.path
        raw = load_corpus(spec.model_copy(update={"scrub": False}))
        assert len(corpus.texts) == len(raw.texts) > 50
        changed = sum(a != b for a, b in zip(raw.texts, corpus.texts, strict=True))
        assert changed == sum(n for _, n in case.scrubbed)


def test_an_imported_corpus_is_scrubbed_and_the_run_says_how_much(tmp_path: Path) -> None:
    data = b"text\nmy card is 4111111111111111\nwrite to a@b.io or c@d.io\nhello\n"
    spec = CorpusSpec(path="q.csv", format="csv")
    corpus = parse_corpus(data, spec, "q.csv")
    assert corpus.texts == ("my card is [CARD]", "write to [EMAIL] or [EMAIL]", "hello")
    assert corpus.scrubbed == (("card", 1), ("email", 2))
    kept = parse_corpus(data, CorpusSpec(path="q.csv", format="csv", scrub=False), "q.csv")
    assert kept.texts[0] == "my card is 4111111111111111"

    (tmp_path / "q.csv").write_bytes(data)
    workload = scenario_dict()["workload"]
    workload["text"] = {"type": "corpus", "corpus": {"path": "q.csv", "format": "csv"}}
    scenario = parse_scenario(scenario_dict(workload=workload))
    assert scrub_lines(scenario, tmp_path) == [
        "q.csv: replaced 1 card number, 2 e-mail addresses by placeholders "
        "(scrub: false keeps them)"
    ]


def test_prompts_are_kept_as_the_privacy_setting_says() -> None:
    assert Privacy().store_prompts == "hashed"  # the default
    assert Privacy.model_validate({"store_prompts": True}).store_prompts == "full"
    assert Privacy.model_validate({"store_prompts": False}).store_prompts == "none"
    store, other = PromptStore("hashed"), PromptStore("hashed")  # two runs' keys
    hashed = store.keep("hello")
    assert hashed is not None and hashed.startswith("hmac-sha256:") and "hello" not in hashed
    assert hashed == store.keep("hello") != store.keep("hello!")
    assert hashed != other.keep("hello")
    assert "key" not in repr(store) and store.key.hex() not in repr(store)
    assert PromptStore("none").keep("hello") is None and PromptStore("full").keep("hi") == "hi"
    assert PromptStore("hashed").keep(None) is None


def _hashed_run(url: str, tmp: Path, name: str, mode: str, *flags: str) -> dict[str, str]:
    """A real run whose prompts are short common queries (tmp/q.txt; salt off: the same text
    every run), kept as `mode` says: each record's kept prompt by request id."""
    workload = {
        "prompt_tokens": {"dist": "constant", "value": 5},
        "output_tokens": {"dist": "constant", "value": 3},
        "text": {"type": "corpus", "corpus": {"path": "q.txt", "format": "text"}, "pad": False},
    }
    data = scenario_dict(
        target={"api": "chat", "timeout_s": 20, "salt_prompts": False},
        traffic={"rate": 10, "duration_s": 2, "seed": 3, **LENIENT},
        workload=workload,
        privacy={"store_prompts": mode},
    )
    path = write_scenario(tmp / f"{name}.yaml", data)
    out = tmp / name
    args = ("run", str(path), "--target", url, "--out", str(out), "-q", "--no-report", *flags)
    result = run_cli(*args, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "requests.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" for r in rows)
    return {r["id"]: r["prompt"] for r in rows}


def test_hashed_prompts_are_keyed_per_run_and_shared_by_its_workers(
    target_url: str, tmp_path: Path
) -> None:
    """Equal prompts hash alike within a run, over two worker processes too; the same prompt
    hashes otherwise in another run; no hash is the plain SHA-256 a dictionary would find, and
    the key is in no file of the run."""
    (tmp_path / "q.txt").write_text("what is my balance\nreset my password\ncancel my card\n")
    runs = [("full", "full"), ("two", "hashed", "--processes", "2"), ("one", "hashed")]
    with ThreadPoolExecutor(len(runs)) as pool:  # the three runs at once: light traffic
        texts, two, one = pool.map(lambda run: _hashed_run(target_url, tmp_path, *run), runs)
    assert set(texts) == set(two) == set(one) and len(texts) >= 10
    assert len(set(texts.values())) == 3  # each query asked several times
    for run in (two, one):
        by_text: dict[str, set[str]] = {}
        for rid, kept in run.items():
            assert kept.startswith("hmac-sha256:")
            by_text.setdefault(texts[rid], set()).add(kept)
        assert all(len(kept) == 1 for kept in by_text.values())  # equal prompts: one hash
        assert len(set(run.values())) == 3  # and different prompts, different hashes
    assert not set(two.values()) & set(one.values())  # another run: other hashes
    guesses = {hashlib.sha256(t.encode()).hexdigest() for t in texts.values()}
    assert not any(kept.split(":", 1)[1] in guesses for kept in (*two.values(), *one.values()))
    written = "".join(p.read_text() for p in (tmp_path / "two").iterdir() if p.is_file())
    assert "prompt_key" not in written
