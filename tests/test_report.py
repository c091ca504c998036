"""The report: the verdict first, tables from data, and the page checked in a real browser."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from surgecast.report import render
from surgecast.rundir import RunFolder
from tests.conftest import run_cli


def _faster_copy(run: Path, to: Path, factor: float) -> Path:
    """The run folder copied with every request's latencies multiplied by `factor`: a
    baseline whose speed is known."""
    shutil.copytree(run, to)
    lines = []
    for line in (run / "requests.jsonl").read_text().splitlines():
        r = json.loads(line)
        start = r["start"]
        for name in ("first_token", "end"):
            if r.get(name) is not None:
                r[name] = start + (r[name] - start) * factor
        r["chunk_times"] = [start + (t - start) * factor for t in r.get("chunk_times") or []]
        lines.append(json.dumps(r))
    (to / "requests.jsonl").write_text("\n".join(lines) + "\n")
    return to


def test_the_verdict_comes_first_and_names_a_regression(
    pipeline_run: tuple[Path, str], tmp_path: Path
) -> None:
    """Against a baseline whose latencies were 30% shorter, the verdict calls the run a
    regression in TTFT and E2E; against itself, no regression."""
    run, _ = pipeline_run
    candidate = tmp_path / "candidate"
    shutil.copytree(run, candidate)
    faster = _faster_copy(run, tmp_path / "faster", 0.7)
    render(RunFolder(candidate), RunFolder(faster))
    summary = (candidate / "summary.md").read_text()
    verdict = summary.split("## ")[1]
    assert verdict.startswith("Verdict") and "**Valid run.**" in verdict
    assert "**Regression against" in verdict
    assert "ttft p95" in verdict and "e2e p50" in verdict
    page = (candidate / "index.html").read_text()
    assert page.index('id="verdict"') < page.index("<img")  # before any figure
    assert "Against the baseline" in page and "<table>" in page and "| ---" not in page

    same = run_cli("report", str(candidate), "--baseline", str(candidate))
    assert same.returncode == 0, same.stderr
    assert "**No regression against" in (candidate / "summary.md").read_text()
    missing = run_cli("report", str(candidate), "--baseline", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "nothing" in missing.stderr


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip(
        "no Chromium on this machine: install it (Debian: apt-get install chromium) to open "
        "the report in a real browser"
    )


def test_the_report_loads_in_a_real_browser_with_every_figure_visible(
    pipeline_run: tuple[Path, str],
) -> None:
    """Headless Chromium opens index.html: no console error, no script error, every figure
    decoded and on screen with a size, and the verdict visible above them."""
    chromium = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    run, _ = pipeline_run
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((run / "index.html").as_uri(), wait_until="load")
            verdict = page.locator("#verdict")
            assert verdict.is_visible() and "Valid run." in verdict.inner_text()
            images = page.locator("figure img")
            assert images.count() == 3  # latency, over time, forecast
            where = "e => e.getBoundingClientRect().top + window.scrollY"  # in the page
            top = verdict.evaluate(where)
            for i in range(images.count()):
                image = images.nth(i)
                image.scroll_into_view_if_needed()
                assert image.is_visible()
                assert image.evaluate("i => i.complete && i.naturalWidth > 0")
                box = image.bounding_box()
                assert box is not None and box["width"] > 200 and box["height"] > 150
                assert image.evaluate(where) > top
            assert page.locator("table").count() >= 5
        finally:
            browser.close()
    assert errors == []


def test_a_targets_error_words_are_shown_as_text_never_rendered(tmp_path: Path) -> None:
    """Issue 26: a hostile error page's raw HTML (a script, tags, a pipe, line breaks) reached
    summary.md as markup a Markdown viewer renders, and broke its table. A run folder may still
    hold such words (an older client kept them): summary.md escapes what would open HTML and
    keeps each row one line; index.html escapes them."""
    run = Path(shutil.copytree(Path(__file__).parent / "data" / "run-8a52588", tmp_path / "run"))
    hostile = "<html><script>alert(1)</script><b>bad</b> gateway | upstream\nnext <!-- x --></html>"
    lines = []
    for i, line in enumerate((run / "requests.jsonl").read_text().splitlines()):
        r = json.loads(line)
        if i < 3:
            r.update(status="error", error_kind="http_502", http_status=502, error_detail=hostile)
            r.update(first_token=None, chunk_times=[], output_tokens=None)
        lines.append(json.dumps(r))
    (run / "requests.jsonl").write_text("\n".join(lines) + "\n")
    meta = json.loads((run / "run.json").read_text())
    meta["validity"] = {"valid": False, "reasons": [f"the target said: {hostile}"]}
    (run / "run.json").write_text(json.dumps(meta))
    render(RunFolder(run))
    summary = (run / "summary.md").read_text()
    assert not re.search(r"(?<!\\)<[A-Za-z/!?]", summary)
    assert "\\<script>alert(1)\\</script>" in summary  # shown as written, on one line
    table = [line for line in summary.splitlines() if "http_502" in line and "|" in line]
    assert table and all(line.count("|") == 4 for line in table)  # three cells, no more
    page = (run / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
