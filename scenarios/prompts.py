"""Prompt text rendered to a requested number of characters, from words, corpora or templates.

The plan decides each prompt's length in tokens; the load generator turns tokens into characters
with a chars-per-token ratio it learns from the server's `usage` (`estimate_chars_per_token`), and
asks a `TextSource` for that many characters. Every source renders exactly `n_chars` characters
(system plus user message): text is cut at a word boundary and topped up with filler words of
the exact missing length, so the size holds whatever the corpus.

`prefix_text(key, n)` gives the text of a shared prefix block (a trace's hash_id); a RAG prompt's
system prompt is such a block, reported in `Prompt.shared` so engines' prefix caches can hit.

In a scenario (corpus paths relative to the scenario file's folder, then the cwd):

    text: {type: rag, corpus: {path: data/banking77/train.csv, format: csv},
           passages: {path: data/sonnet.txt, format: text}, system_prompts: 4}
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from scenarios.base import Strict
from scenarios.corpora import CorpusSpec, load_corpus
from scenarios.text import make_prompt


@dataclass(frozen=True, slots=True)
class Prompt:
    """A rendered prompt. `shared`: (key, text) segments the prompt starts with that other
    requests share byte for byte (in order; each text is where the prompt begins)."""

    system: str
    user: str
    shared: tuple[tuple[int, str], ...] = ()

    @property
    def n_chars(self) -> int:
        return len(self.system) + len(self.user)


# Filler words by length: the exact top-up after a cut at a word boundary.
_FILL = (
    "",
    "a",
    "an",
    "the",
    "also",
    "there",
    "within",
    "however",
    "together",
    "therefore",
    "throughout",
    "furthermore",
    "particularly",
)
_WS = re.compile(r"\s")

_PROSE = (  # noqa: SIM905 - a word list reads best as text; about English's mix of lengths
    "the of and to in is that for it as with was on be by this are from at or an have not which "
    "but all were when there can more their has would been if will one into what other its "
    "the of and to a in is it you that he was for on are as with his they at be this from I have "
    "or by one had not but what all were we when your can said there use an each which she do how "
    "their if will up other about out many then them these so some her would make like him into "
    "time has look two more write go see number no way could people my than first water been "
    "system service customer account network request response latency capacity market report "
    "policy history research season council company process result change between through "
    "during before under around against among within without however because although while "
    "important different available possible several various particular especially generally "
    "analysis evidence material approach quality surface pressure distance language river "
    "mountain village harbour garden morning evening summer winter north south ancient modern"
).split()

_INSTRUCTIONS = (
    "Summarise the following document in three bullet points.",
    "Please write a short summary of the text below for a busy executive.",
    "TL;DR the following, keep it under 100 words:",
    "Read the document below and list its main claims, then summarise them in one paragraph.",
    "Give me a concise summary of this text and note anything that seems inconsistent.",
    "Summarize:",
)
_CODE_QUESTIONS = (
    "Why does this code raise an exception? Please fix it.",
    "Can you review this Python module and suggest improvements?",
    "Refactor the following code to be more readable and add type hints.",
    "I get the error below when I run this. What is wrong?",
    "Write unit tests for the functions in this file.",
    "Explain what this code does, step by step.",
)
_IDENT = (  # noqa: SIM905
    "user order item cache batch queue token request result value count total index key name "
    "path config client session record buffer limit retry timeout payload status event"
).split()
_VERBS = "get load parse build update compute fetch merge check send read write".split()  # noqa: SIM905
_ERRORS = ("KeyError", "ValueError", "TypeError", "IndexError", "AttributeError", "RuntimeError")


def fit_chars(text: str, n: int) -> str:
    """`text` cut at a word boundary and topped up with filler words to exactly `n` characters."""
    if n <= 0:
        return ""
    if len(text) > n:
        cut = max((m.start() for m in _WS.finditer(text, 0, n + 1)), default=-1)
        text = text[:cut].rstrip() if cut >= n // 2 else text[:n]
    parts = [text]
    d = n - len(text)
    while d > 0:
        if d == n:  # nothing yet: no leading space
            w = _FILL[min(d, len(_FILL) - 1)]
        elif d == 1:
            w = "."
        else:
            w = " " + _FILL[min(d - 1, len(_FILL) - 1)]
        parts.append(w)
        d -= len(w)
    return "".join(parts)


def prose(rng: np.random.Generator, n_chars: int) -> str:
    """Document-like sentences of exactly `n_chars` characters."""
    if n_chars <= 0:
        return ""
    sentences: list[str] = []
    size = 0
    while size <= n_chars:
        k = int(rng.integers(6, 19))
        words = [_PROSE[int(i)] for i in rng.integers(len(_PROSE), size=k)]
        s = " ".join(words).capitalize() + ("?" if rng.random() < 0.1 else ".")
        if k > 9:  # a clause
            s = s.replace(" ", ", ", 1) if rng.random() < 0.5 else s
        sentences.append(s)
        size += len(s) + 1
    return fit_chars(" ".join(sentences), n_chars)


def _zigzag(key: int) -> int:
    """A non-negative seed for any int key, distinct for distinct keys."""
    return 2 * key if key >= 0 else -2 * key - 1


def prefix_text(key: int, n_chars: int) -> str:
    """Text of the shared prefix block `key`: same key and size give the same bytes, different
    keys different text (for n_chars >= 20). Ends in a space, so blocks concatenate cleanly."""
    if n_chars <= 0:
        return ""
    body = prose(np.random.default_rng(_zigzag(key)), max(n_chars - 1, 0))
    return (body + " ")[:n_chars] if n_chars > 1 else body[:1] or "x"


def shared_key(kind: str, index: int) -> int:
    """A stable 63-bit key for shared segment `index` of source `kind` (not Python's hash)."""
    digest = hashlib.blake2b(f"{kind}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _texts(spec: CorpusSpec, base_dir: Path | None) -> tuple[str, ...]:
    return load_corpus(spec, base_dir).texts


def _run_of_texts(rng: np.random.Generator, texts: Sequence[str], n_chars: int, sep: str) -> str:
    """Consecutive texts from a random start (wrapping), about `n_chars` long: a coherent paste."""
    i = int(rng.integers(len(texts)))
    parts: list[str] = []
    size = 0
    while size < n_chars:
        t = texts[i % len(texts)]
        parts.append(t)
        size += len(t) + len(sep)
        i += 1
    return sep.join(parts)


class WordsSource(Strict):
    """Random words from the reference target's vocabulary (`scenarios.text.make_prompt`)."""

    type: Literal["words"] = "words"

    def render(
        self, rng: np.random.Generator, n_chars: int, base_dir: Path | None = None
    ) -> Prompt:
        del base_dir
        text = ""
        while len(text) < n_chars:
            text += (" " if text else "") + make_prompt(rng, n_chars // 4 + 2)
        return Prompt("", fit_chars(text, n_chars))


class CorpusSource(Strict):
    """User queries drawn at random from a corpus, one per line, until the size is reached.

    With `pad: true` (the default) the plan's size wins: queries are concatenated, and a query
    longer than the size is cut at a word boundary. With `pad: false` each prompt is one whole
    query, whatever `n_chars` says (the served `usage` then tells its real size).
    """

    type: Literal["corpus"] = "corpus"
    corpus: CorpusSpec
    pad: bool = True

    def render(
        self, rng: np.random.Generator, n_chars: int, base_dir: Path | None = None
    ) -> Prompt:
        texts = _texts(self.corpus, base_dir)
        if not self.pad:
            return Prompt("", texts[int(rng.integers(len(texts)))])
        parts: list[str] = []
        size = 0
        while size < n_chars:
            for i in rng.integers(len(texts), size=8):
                parts.append(texts[int(i)])
                size += len(texts[int(i)]) + 1
        return Prompt("", fit_chars("\n".join(parts), n_chars))


class RagSource(Strict):
    """A shared system prompt, retrieved passages, then the question.

    The system prompt is one of `system_prompts` (chosen per request); the same index always
    renders the same bytes and is reported in `Prompt.shared` under `shared_key("rag", index)`.
    When `n_chars < 2 * system_chars` the system prompt is cut to `n_chars // 2` characters, still
    a prefix of its full text. Passages come from `passages` (runs of consecutive texts) or, when
    it is None, generated prose; questions from `corpus` or generated.
    """

    type: Literal["rag"] = "rag"
    corpus: CorpusSpec | None = None
    passages: CorpusSpec | None = None
    system_prompts: int = Field(default=4, ge=1)
    system_chars: int = Field(default=1200, ge=0)
    passages_per_query: int = Field(default=4, ge=1)

    def system_prompt(self, index: int) -> str:
        """The full text of system prompt `index`."""
        head = (
            f"You are support assistant {index + 1}. Answer the user's question using only the "
            "documents provided. Cite documents by their number, say so when they do not contain "
            "the answer, and keep answers short. Background: "
        )
        return fit_chars(
            head + prefix_text(shared_key("rag", index), self.system_chars), self.system_chars
        )

    def system_index(self, seed: int) -> int:
        """Which system prompt a request with this text seed uses (the plan knows it too)."""
        return seed % self.system_prompts

    def system_tokens(self, prompt_tokens: int) -> int:
        """About how many of a prompt's tokens its system prompt takes (4 characters a token:
        the plan's estimate, before a server's own ratio is known)."""
        return min(round(self.system_chars / 4), prompt_tokens // 2)

    def render(
        self,
        rng: np.random.Generator,
        n_chars: int,
        base_dir: Path | None = None,
        system_index: int | None = None,
    ) -> Prompt:
        index = int(rng.integers(self.system_prompts)) if system_index is None else system_index
        system = self.system_prompt(index)[: min(self.system_chars, n_chars // 2)]
        budget = n_chars - len(system)
        if self.corpus is not None:
            texts = _texts(self.corpus, base_dir)
            question = texts[int(rng.integers(len(texts)))]
        else:
            question = prose(rng, int(rng.integers(40, 120))).rstrip(".,") + "?"
        q_block = "\n\nQuestion: " + fit_chars(question, min(len(question), budget // 3))
        doc_budget = budget - len(q_block)
        k = min(self.passages_per_query, max(doc_budget // 60, 0))
        docs: list[str] = []
        for j in range(k):
            head = f"[{j + 1}] " if j == 0 else f"\n\n[{j + 1}] "
            size = doc_budget // k + (doc_budget % k if j == k - 1 else 0) - len(head)
            if self.passages is not None:
                body = _run_of_texts(rng, _texts(self.passages, base_dir), size, " ")
            else:
                body = prose(rng, size)
            docs.append(head + fit_chars(body, size))
        user = fit_chars("".join(docs) + q_block, budget) if docs else fit_chars(question, budget)
        shared = ((shared_key("rag", index), system),) if system else ()
        return Prompt(system, user, shared)


class SummariseSource(Strict):
    """An instruction, then a long pasted document: consecutive corpus texts or generated prose."""

    type: Literal["summarise"] = "summarise"
    corpus: CorpusSpec | None = None

    def render(
        self, rng: np.random.Generator, n_chars: int, base_dir: Path | None = None
    ) -> Prompt:
        instruction = _INSTRUCTIONS[int(rng.integers(len(_INSTRUCTIONS)))] + "\n\n"
        size = n_chars - len(instruction)
        if size < 20:
            return Prompt("", fit_chars(instruction.strip(), n_chars))
        if self.corpus is not None:
            doc = _run_of_texts(rng, _texts(self.corpus, base_dir), size, "\n")
        else:
            doc = prose(rng, size)
        return Prompt("", instruction + fit_chars(doc, size))


def code_snippet(rng: np.random.Generator, n_chars: int) -> str:
    """Python-like code (functions, a class, sometimes a traceback) of about `n_chars` or more."""
    lines: list[str] = []
    size = 0

    def ident() -> str:
        return "_".join(_IDENT[int(i)] for i in rng.integers(len(_IDENT), size=2))

    kind = int(rng.integers(3))
    while size < n_chars:
        kind = (kind + 1) % 3  # cycle, so long snippets mix kinds evenly
        fn = f"{_VERBS[int(rng.integers(len(_VERBS)))]}_{ident()}"
        a, b = ident(), ident()
        if kind == 0:
            block = [
                f"def {fn}({a}: dict, {b}: int = {int(rng.integers(1, 100))}) -> list:",
                f'    """Return the {a.replace("_", " ")} for each {b.replace("_", " ")}."""',
                "    out = []",
                f"    for i, item in enumerate({a}.values()):",
                f"        if i >= {b}:",
                "            break",
                f"        out.append(item.get('{ident()}', {int(rng.integers(10))}))",
                "    return out",
            ]
        elif kind == 1:
            cls = "".join(w.capitalize() for w in ident().split("_"))
            block = [
                f"class {cls}:",
                f"    def __init__(self, {a}, {b}=None):",
                f"        self.{a} = {a}",
                f"        self.{b} = {b} or {{}}",
                "",
                f"    def {fn}(self, key):",
                f"        return self.{b}[key] + len(self.{a})",
            ]
        else:
            err = _ERRORS[int(rng.integers(len(_ERRORS)))]
            block = [
                "Traceback (most recent call last):",
                f'  File "app/{a}.py", line {int(rng.integers(10, 400))}, in {fn}',
                f"    return self.{b}[key] + len(self.{a})",
                f'  File "app/{b}.py", line {int(rng.integers(10, 400))}, in __getitem__',
                f"    raise {err}(key)",
                f"{err}: '{ident()}'",
            ]
        lines.extend([*block, ""])
        size += sum(len(s) + 1 for s in block) + 1
    return "\n".join(lines)


class CodeSource(Strict):
    """A code question plus a generated Python snippet (and stack traces) in a fenced block."""

    type: Literal["code"] = "code"

    def render(
        self, rng: np.random.Generator, n_chars: int, base_dir: Path | None = None
    ) -> Prompt:
        del base_dir
        question = _CODE_QUESTIONS[int(rng.integers(len(_CODE_QUESTIONS)))]
        head, tail = question + "\n\n```python\n", "\n```"
        size = n_chars - len(head) - len(tail)
        if size < 20:
            return Prompt("", fit_chars(question, n_chars))
        return Prompt("", head + _fit_code(code_snippet(rng, size), size) + tail)


def _fit_code(code: str, n: int) -> str:
    """`code` cut at a line end, topped up with a comment line, to exactly `n` characters."""
    cut = code.rfind("\n", 0, n + 1)
    code = code[:cut] if cut >= n // 2 else code[:n]
    d = n - len(code)
    if d >= 4:
        return code + "\n# " + fit_chars("", d - 3)
    return code + " " * d


TextSource = Annotated[
    WordsSource | CorpusSource | RagSource | SummariseSource | CodeSource,
    Field(discriminator="type"),
]


CHARS_PER_TOKEN = (0.5, 16.0)  # any tokenizer's range: byte-level CJK to long English words


class UninformativeUsage(ValueError):
    """The served token counts do not follow the prompts' lengths (a proxy or mock that fixes
    `usage`): no characters-per-token ratio can be learned from them."""


def estimate_chars_per_token(
    prompt_chars: Sequence[float], served_tokens: Sequence[float]
) -> tuple[float, float]:
    """Fit `served_tokens ~ a + chars / cpt` by least squares; returns `(cpt, a)` with `a >= 0`.

    `a` is the server's fixed per-request overhead (chat template, BOS). With one sample, equal
    sizes, or a fit with a negative intercept or a ratio no tokenizer has (outside
    CHARS_PER_TOKEN), the line goes through the origin instead; when that ratio is no
    tokenizer's either, UninformativeUsage.
    """
    x = np.asarray(prompt_chars, dtype=float)
    y = np.asarray(served_tokens, dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"need equal, non-empty samples; got {x.size} and {y.size}")
    if np.any(x < 0) or np.any(y <= 0) or not np.any(x > 0):
        raise ValueError("characters must be >= 0 (some > 0) and tokens > 0")
    low, high = CHARS_PER_TOKEN
    if x.size >= 2 and np.ptp(x) > 0:
        slope, a = np.polyfit(x, y, 1)
        if a >= 0 and low * slope <= 1.0 <= high * slope:
            return float(1.0 / slope), float(a)
    cpt = float(np.dot(x, x) / np.dot(x, y))
    if not low <= cpt <= high:
        raise UninformativeUsage(
            f"served prompt tokens do not follow the prompts' lengths: {cpt:.3g} characters per "
            f"token, outside any tokenizer's {low:g}-{high:g}"
        )
    return cpt, 0.0
