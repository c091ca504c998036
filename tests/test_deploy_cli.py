"""`surgecast catalog` and `surgecast memory` as a user meets them: the hand-worked figures of
tests/test_memory.py through the command line, bad names and flags refused with exit 2 and the
names that would do, a reader that leaves early (`| head`) ending the command quietly."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from surgecast.cli.main import main
from tests.conftest import ROOT, cli_help


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_help_names_every_flag() -> None:
    text = cli_help("memory")
    for flag in ("--weights", "--kv-cache", "--tp", "--context", "--catalog", "--json"):
        assert flag in text
    assert "--sources" in cli_help("catalog")


def test_catalog_lists_gpus_models_and_formats_with_sources() -> None:
    code, out, _ = _run("catalog", "--sources")
    assert code == 0
    for name in ("H100-SXM-80GB", "MI300X-192GB", "Llama-3.1-70B", "Mixtral-8x7B", "int4"):
        assert f"| {name}" in out
    assert "https://" in out


def test_memory_json_carries_the_hand_worked_70b_figures() -> None:
    code, out, _ = _run("memory", "Llama-3.1-70B", "H100", "--tp", "1,2", "--json")
    assert code == 0
    one, two = json.loads(out)
    assert not one["fits"] and "does not fit" in one["why"] and one["blocks"] == 0
    assert two["fits"] and two["blocks"] == 1618 and two["kv_tokens"] == 1618 * 16
    assert two["max_batch_at_4096"] == 1618 // 256


def test_names_and_aliases_are_found_in_any_case() -> None:
    code, out, _ = _run("memory", "llama-3.1-70b", "h100-80gb", "--tp", "1", "--weights", "int4")
    assert code == 0 and "| yes" in out  # names and aliases in any case, printed as the catalog's
    assert "| Llama-3.1-70B x H100-SXM-80GB x w:int4 x kv:bf16 x tp1 |" in out


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["memory", "Llama-9", "H100"], "unknown model 'Llama-9'; the catalog has: "),
        (["memory", "Llama-3.1-8B", "H1000"], "unknown gpu 'H1000'"),
        (["memory", "Llama-3.1-8B", "H100", "--weights", "fp3"], "--weights: unknown"),
        (["memory", "Llama-3.1-8B", "H100", "--tp", "1,,2"], "--tp: a comma-separated list"),
        (["memory", "Llama-3.1-8B", "H100", "--tp", "0"], "--tp: "),
    ],
)
def test_bad_names_and_flags_exit_2_naming_what_would_do(argv: list[str], said: str) -> None:
    code, _, err = _run(*argv)
    assert code == 2 and said in err, err


def test_a_bad_catalog_file_is_refused_with_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "mine.yaml"
    bad.write_text("gpus:\n  X1:\n    memory_gib: -3\n    vendor: acme\n", encoding="utf-8")
    code, _, err = _run("catalog", "--catalog", str(bad))
    assert code == 2 and "invalid catalog" in err
    assert f"{bad}: line 3: gpus.X1.memory_gib" in err and "gpus.X1.memory_bandwidth_gbs" in err


def test_a_reader_that_leaves_early_ends_the_command_quietly() -> None:
    """`surgecast catalog | head -1`: exit 141 as a shell shows SIGPIPE, no traceback. The
    reader is gone before the first write (a reader leaving after it races the writes)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "surgecast", "catalog", "--sources"],
            cwd=ROOT,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr, proc.stderr


def test_ctrl_c_while_the_command_line_is_parsed_is_an_interrupt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CI failure of the 2026-12-07 submission: a Ctrl-C landing in argparse on a slow
    machine escaped as a traceback; now it exits 130 like any other."""

    def interrupted(self: argparse.ArgumentParser, *a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", interrupted)
    code, _, err = _run("catalog")
    assert code == 130 and "interrupted" in err
