"""The scrubber on known identifiers, with no false alarm on the shared real corpora; what a
record keeps of a prompt under each privacy setting."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from scenarios.corpora import CorpusSpec, load_corpus, parse_corpus, scrub_lines
from scenarios.scrub import card_ok, iban_ok, scrub, stored_prompt
from scenarios.spec import Privacy, parse_scenario
from tests.conftest import scenario_dict
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
    hashed = stored_prompt("hello", "hashed")
    assert hashed is not None and hashed.startswith("sha256:") and "hello" not in hashed
    assert hashed == stored_prompt("hello", "hashed") != stored_prompt("hello!", "hashed")
    assert stored_prompt("hello", "none") is None and stored_prompt("hello", "full") == "hello"
