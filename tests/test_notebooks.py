"""The capacity-forecast notebooks run top to bottom on a real calibrated run folder."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_and_their_outputs_are_stripped() -> None:
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        assert all(not c.get("outputs") for c in cells if c["cell_type"] == "code"), path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(
    path: Path, pipeline_run: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _ = pipeline_run
    monkeypatch.setenv("SURGECAST_RUN_DIR", str(run_dir))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    text = "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "stream"
    )
    assert f"run folder: {run_dir}" in text
    assert "| scale |" in text and "x30" in text
    assert any(
        o.output_type == "display_data"
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )  # the plot
