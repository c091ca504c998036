"""The packages' layering, read from the source: each imports only the packages below it, so
the pure parts (scenarios, simulator) never pull in a server, Locust or gevent."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

# each package and the project packages it may import (itself aside)
BELOW = {
    "scenarios": set(),
    "loadgen": {"scenarios"},
    "simulator": {"scenarios"},
    "targets": {"scenarios", "loadgen", "simulator"},
    "surgecast": {"scenarios", "loadgen", "simulator", "targets"},
}
# the simulator's rooms, in order: each imports only those before it
ROOMS = ("engine", "deploy", "replay", "fit", "forecast")


def _imports(path: Path) -> list[str]:
    """The project modules a file imports (at any depth: lazy imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [m for m in found if m.split(".")[0] in BELOW]


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(BELOW))
def test_no_import_runs_backward(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _files(package)
        for module in _imports(path)
        if (top := module.split(".")[0]) != package and top not in BELOW[package]
    ]
    assert not wrong


def test_the_simulators_rooms_import_only_those_before_them() -> None:
    wrong = []
    for i, room in enumerate(ROOMS):
        for path in sorted((ROOT / "simulator" / room).glob("*.py")):
            for module in _imports(path):
                parts = module.split(".")
                if parts[0] == "simulator" and len(parts) > 1 and parts[1] in ROOMS[i + 1 :]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong


def test_the_pure_packages_load_no_server_locust_or_gevent() -> None:
    modules = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in ("scenarios", "simulator")
        for p in _files(package)
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted({'aiohttp', 'gevent', 'locust'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"
