"""JUnit XML as pytest writes it (`--junitxml`): one testsuite of testcases, failures inside."""

from __future__ import annotations

import platform
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from surgecast.files import write_whole


@dataclass(frozen=True)
class Case:
    classname: str  # e.g. surgecast.gate.regressions
    name: str
    failure: str | None = None  # the failure's one-line message; None: passed
    details: str = ""  # the failure's body
    time_s: float = 0.0


def junit_xml(suite: str, cases: Sequence[Case], time_s: float = 0.0) -> str:
    """The document, with a testsuites root as pytest's junit_family=xunit2 writes it."""
    root = ET.Element("testsuites", name=suite)
    failures = sum(c.failure is not None for c in cases)
    node = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        errors="0",
        failures=str(failures),
        skipped="0",
        tests=str(len(cases)),
        time=f"{time_s:.3f}",
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        hostname=platform.node(),
    )
    for c in cases:
        case = ET.SubElement(
            node, "testcase", classname=c.classname, name=c.name, time=f"{c.time_s:.3f}"
        )
        if c.failure is not None:
            ET.SubElement(case, "failure", message=c.failure).text = c.details or c.failure
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


def write_junit(path: Path, suite: str, cases: Sequence[Case], time_s: float = 0.0) -> Path:
    return write_whole(path, junit_xml(suite, cases, time_s) + "\n")
