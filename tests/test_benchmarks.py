"""Each benchmark starts as its docstring says (`python benchmarks/X.py`): a script named like
a package shadows it, since the script's folder comes first on sys.path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# gpu_telemetry.py needs torch and a GPU: it runs on a lent device machine only
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "gpu_telemetry")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_starts(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


def test_no_benchmark_shadows_a_package() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert not scripts & packages
