"""``bench ui`` in a real browser: what a person sees after a real (tiny) ``bench run``.

Needs Debian's ``chromium`` (``apt-get install chromium``) and Playwright for Python (the
``ui-test`` extra, part of ``dev``); no browser download: Playwright drives the system
chromium. Skipped when either is missing, unless ``BENCH_REQUIRE_BROWSER=1`` (CI) makes that
a failure. A screenshot of each page is saved in the test's temp folder (``failure.png`` on a
failure); with ``BENCH_DOCS_SCREENSHOT=path.png`` the runs comparison is also saved there
(the README's docs/runs-comparison.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from processes import bench_command, free_port, kill_group, start, wait_healthy

METHODS = ("clip", "csp")
DATASET = "synthetic-tiny"
CHROMIUM = os.environ.get("BENCH_CHROMIUM") or shutil.which("chromium")
# A closed network and a container: no sandbox, no GPU, nothing phoning home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# MLflow's assistant panel opens itself on a first visit and covers a third of the page.
NO_ASSISTANT = """
localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
"""
WAIT_MS = 90_000

pytestmark = pytest.mark.slow


def _require(missing: str) -> None:
    if os.environ.get("BENCH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"BENCH_REQUIRE_BROWSER=1 but {missing}")
    pytest.skip(missing)


@pytest.fixture(scope="module")
def playwright_api():
    """Playwright's sync API (skips without it or without chromium)."""
    if not CHROMIUM:
        _require("no chromium on PATH (apt-get install chromium, or set BENCH_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require("Playwright is not installed (pip install -e '.[ui-test]')")
    with sync_playwright() as api:
        yield api


@pytest.fixture(scope="module")
def ui_store(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real tiny ``bench run`` (2 methods x 2 seeds) served by ``bench ui``."""
    folder = tmp_path_factory.mktemp("ui-store")
    results = folder / "results"
    run = [
        *("run", "--methods", ",".join(METHODS), "--datasets", DATASET, "--seeds", "0,1"),
        *("--epochs", "1", "--backbone", "tiny-random", "--device", "cpu"),
        *("--data-root", str(tiny_root), "--results-dir", str(results)),
    ]
    log = folder / "run.log"
    finished = subprocess.run(
        bench_command(*run), stdout=log.open("wb"), stderr=subprocess.STDOUT, check=False
    )
    assert finished.returncode == 0, log.read_text()
    port = free_port()
    ui_log = folder / "ui.log"
    bench_ui = start(
        bench_command("ui", "--results-dir", str(results), "--port", str(port)), ui_log
    )
    try:
        wait_healthy(bench_ui, port, ui_log)
        printed = re.search(rf"czsl/{DATASET}: (\S+)", ui_log.read_text())
        assert printed, ui_log.read_text()
        yield {"results": results, "url": printed.group(1), "base": f"http://127.0.0.1:{port}"}
    finally:
        bench_ui.send_signal(signal.SIGTERM)
        try:
            bench_ui.wait(timeout=60)
        finally:
            kill_group(bench_ui)


@pytest.fixture
def page(playwright_api, tmp_path: Path, request: pytest.FixtureRequest):
    """A fresh headless chromium page; a full-page screenshot on failure."""
    browser = playwright_api.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    page = browser.new_page(viewport={"width": 1600, "height": 620})
    page.add_init_script(NO_ASSISTANT)
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before:  # the call phase is reported before teardown
        page.screenshot(path=tmp_path / "failure.png", full_page=True)
    browser.close()


def _cells(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*/*/*.json"))]


def _run_ids(results: Path) -> dict[str, str]:
    """Child run name -> run id, and "parent" -> the parent run id, from the store."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"czsl/{DATASET}")
    ids = {}
    for run in client.search_runs([experiment.experiment_id]):
        role = run.data.tags.get("bench.role")
        ids["parent" if role == "parent" else run.info.run_name] = run.info.run_id
    return ids


def test_runs_table_lists_every_child_with_method_and_cw_auc(page, ui_store, tmp_path) -> None:
    results = ui_store["results"]
    cells = _cells(results)
    run_ids = _run_ids(results)
    page.goto(ui_store["url"])
    page.get_by_text(f"{len(cells)} matching runs").wait_for(timeout=WAIT_MS)
    for cell in cells:
        method, seed = cell["cell"]["method"], cell["cell"]["seed"]
        name = f"{method}|{DATASET}|s{seed}"
        run_id = run_ids[name]
        # AG Grid: the run-name column is pinned left, the others scroll in the centre.
        left = page.locator(f".ag-pinned-left-cols-container .ag-row[row-id$='{run_id}']")
        centre = page.locator(f".ag-center-cols-container .ag-row[row-id$='{run_id}']")
        assert name in left.inner_text()
        assert centre.locator("[col-id='params.`method`']").inner_text() == method
        shown = centre.locator("[col-id='metrics.`test/cw/auc`']").inner_text()
        assert float(shown) == pytest.approx(cell["metrics"]["test"]["cw"]["auc"], rel=1e-6)
    for method in METHODS:
        assert page.get_by_text(f"Group: {method}").count() == 1
    page.screenshot(path=tmp_path / "runs.png")
    docs = os.environ.get("BENCH_DOCS_SCREENSHOT")
    if docs:
        shutil.copy(tmp_path / "runs.png", docs)


def test_parent_run_page_shows_the_logged_table(page, ui_store, tmp_path) -> None:
    parent = _run_ids(ui_store["results"])["parent"]
    experiment = re.search(r"/experiments/(\d+)/", ui_store["url"]).group(1)
    page.goto(
        f"{ui_store['base']}/#/experiments/{experiment}/runs/{parent}/artifactPath/"
        f"comparison/{DATASET}.json?workflowType=machine_learning"
    )
    page.get_by_text("View as table").wait_for(timeout=WAIT_MS)
    for method in METHODS:
        page.get_by_role("cell", name=method, exact=True).wait_for(timeout=WAIT_MS)
    for header in ("seeds", "cw AUC", "ow AUC"):
        assert page.get_by_text(header, exact=True).count() >= 1
    page.screenshot(path=tmp_path / "parent.png")
