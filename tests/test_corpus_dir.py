"""A corpus folder (`--corpus-dir`, `$SURGECAST_CORPUS_DIR`) switches corpora that name an
`in_corpus_dir` file to that file under it; the flag wins over the variable; a bad folder or
file is exit 2 naming it; a scenario without such a corpus is left as it is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from scenarios.corpora import (
    CORPUS_DIR_ENV,
    CorpusError,
    CorpusSpec,
    env_corpus_dir,
    load_corpus,
    named_corpora,
    with_corpus_dir,
)
from scenarios.spec import load_scenario, parse_scenario
from tests.conftest import run_cli, scenario_dict, write_scenario

OWN, PUBLIC = "our own question about a card", "a public corpus question about a transfer"


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    """A scenario whose queries are own.txt beside it, or public/queries.csv under a corpus
    folder; and that folder."""
    (tmp_path / "own.txt").write_text(OWN + "\n", encoding="utf-8")
    public = tmp_path / "public"
    (public / "set").mkdir(parents=True)
    (public / "set" / "queries.csv").write_text(f"q,label\n{PUBLIC},x\n", encoding="utf-8")
    workload = scenario_dict()["workload"]
    corpus: dict[str, Any] = {"path": "own.txt", "format": "text"}
    corpus["in_corpus_dir"] = {"path": "set/queries.csv", "format": "csv", "text_field": "q"}
    workload["text"] = {"type": "rag", "corpus": corpus, "passages": {**corpus}}
    return write_scenario(tmp_path / "s.yaml", scenario_dict(workload=workload)), public


def _texts(path: Path, corpus_dir: Path | None = None) -> set[str]:
    scenario = load_scenario(path, corpus_dir)
    assert scenario.base_dir == path.parent
    return {t for s in named_corpora(scenario) for t in load_corpus(s, scenario.base_dir).texts}


def test_a_corpus_folder_switches_only_corpora_that_name_a_file_in_it(tmp_path: Path) -> None:
    path, public = _setup(tmp_path)
    assert _texts(path) == {OWN}
    assert _texts(path, public) == {PUBLIC}
    switched = load_scenario(path, public)
    (spec,) = named_corpora(switched)  # questions and passages: the same file
    assert spec == CorpusSpec(
        path=str(public.resolve() / "set/queries.csv"), format="csv", text_field="q"
    )
    # what run.json keeps and workers rebuild: the file read, not the choice
    again = parse_scenario(switched.model_dump(mode="json"), base_dir=tmp_path)
    assert named_corpora(again) == [spec]
    plain = parse_scenario(scenario_dict(), base_dir=tmp_path)
    assert with_corpus_dir(plain, public) is plain


def test_a_missing_folder_or_file_names_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, public = _setup(tmp_path)
    with pytest.raises(CorpusError, match=r"nowhere: not a folder \(given by --corpus-dir\)"):
        load_scenario(path, tmp_path / "nowhere", "--corpus-dir")
    (public / "set" / "queries.csv").unlink()
    with pytest.raises(CorpusError, match=r"cannot read file .*tried .*public/set/queries\.csv"):
        _texts(path, public)
    monkeypatch.setenv(CORPUS_DIR_ENV, " ")
    assert env_corpus_dir() is None
    monkeypatch.setenv(CORPUS_DIR_ENV, str(public))
    assert env_corpus_dir() == public


def test_the_flag_and_the_variable_on_the_command_line(tmp_path: Path) -> None:
    path, public = _setup(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != CORPUS_DIR_ENV}

    def plan(*flags: str, **extra: str) -> tuple[int, str, str]:
        args = ("plan", str(path), "--samples", "1", *flags)
        r = run_cli(*args, timeout=60, env={**env, **extra}, cwd=tmp_path)
        return r.returncode, r.stdout, r.stderr

    rc, out, _ = plan()
    assert rc == 0 and OWN in out and PUBLIC not in out
    rc, out, _ = plan(**{CORPUS_DIR_ENV: str(public)})
    assert rc == 0 and PUBLIC in out and OWN not in out
    rc, out, _ = plan("--corpus-dir", "public", **{CORPUS_DIR_ENV: str(tmp_path / "nowhere")})
    assert rc == 0 and PUBLIC in out  # the flag wins, relative to the working directory
    rc, _, err = plan("--corpus-dir", "nowhere")
    assert rc == 2 and "nowhere: not a folder (given by --corpus-dir)" in err
    rc, _, err = plan(**{CORPUS_DIR_ENV: str(tmp_path)})  # a folder without the file
    assert rc == 2 and f"tried {tmp_path}/set/queries.csv" in err
    chatbot = write_scenario(tmp_path / "plain.yaml", scenario_dict())
    r = run_cli("plan", str(chatbot), "--corpus-dir", "public", timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 0
    assert "--corpus-dir: no corpus of" in r.stderr and "public is not read" in r.stderr
