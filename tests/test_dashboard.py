"""The Dash app in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright; no
browser download) against the real stack: Serve over HTTP, the MLflow registry, PostgreSQL and
Prometheus. The app runs as ``tasador up`` runs it, following this module's registered-model name.

TASADOR_SCREENSHOTS=docs/screenshots writes a screenshot of each page there (README links them).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from cluster import processes
from tasador import history, ray_jobs, registry
from tasador.promotion import promote
from tasador.retry import poll
from tests.conftest import module_data
from tests.serving import first_listing, register_ridge, serving_model, set_production, wait_for_version

settings = module_data()  # this module's own databases, model and experiment

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
GROUP = 44


@pytest.fixture(scope="module")
def app(settings):
    with serving_model(settings, "tasador-dash-test", GROUP) as ctx:
        s = ctx["s"].replace(dash_port=processes.free_port())
        ctx["s"] = s
        worse = register_ridge(s, ctx["ds"], ctx["arrays"], ctx["features"], alpha=1e9)
        ctx["rejected"] = promote(s, worse)
        for job in ("jobs.ingest", "jobs.process", "jobs.decide"):  # a batch judged against production's data
            assert ray_jobs.run(s, job, ["--group", str(GROUP), "--day", "Monday"]).status == "SUCCEEDED"
        pid = processes.spawn([sys.executable, "-m", "dashboard.app"], s.state_path / "logs" / "dash-test.log",
                              env=s.as_env())
        url = f"http://127.0.0.1:{s.dash_port}"
        try:
            processes.wait_http(f"{url}/health", 60, pid=pid)
            yield {**ctx, "url": url}
        finally:
            processes.stop_pid(pid)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield page
    page.close()


def screenshot(page, name: str) -> None:
    target = os.environ.get("TASADOR_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def test_predict_form_gives_a_price_with_its_version_and_contributions(app, page):
    page.goto(app["url"] + "/")
    page.fill("#in-bed", "4")
    page.click("#predict-button")
    page.wait_for_selector("#price", timeout=30_000)
    assert page.inner_text("#price").startswith("$")
    assert page.inner_text("#model-version") == app["v1"]
    assert page.inner_text("#model-name") == "tasador-dash-test"
    page.wait_for_selector("#contributions g.trace", timeout=30_000)
    assert "Bedrooms" in page.inner_text("#contributions") and "base price" in page.inner_text("#contributions")
    screenshot(page, "predict")
    prediction_id = page.inner_text("#prediction-id")
    page.click("#lineage-link")

    def lineage_problem() -> str | None:
        """None once the page walks the lineage, else what it says instead (then it is loaded anew)."""
        page.wait_for_selector("#lineage-walk, #lineage-error", timeout=30_000)
        if page.locator("#lineage-walk").count():
            return None
        problem = page.inner_text("#lineage-error")
        page.goto(f"{app['url']}/lineage?id={prediction_id}")
        return problem

    poll(lineage_problem, lambda problem: problem is None, 30,
         "the lineage of the prediction just made (the log writes within its flush interval)", every_s=1)
    assert f"version {app['v1']} of tasador-dash-test" in page.inner_text("#lineage-version")
    page.wait_for_selector("#lineage-raw-rows .ag-row", timeout=30_000)
    assert str(app["batch_id"]) in page.inner_text("#lineage-batches")
    assert "Ridge" in page.inner_text("#lineage-trigger")
    screenshot(page, "lineage")


def test_predict_form_shows_the_validation_message_naming_the_field(app, page):
    page.goto(app["url"] + "/")
    page.fill("#in-house_size", "5")
    page.click("#predict-button")
    page.wait_for_selector("#predict-error", timeout=30_000)
    assert "house_size" in page.inner_text("#predict-error")


def test_models_page_lists_versions_with_their_reasons(app, page):
    page.goto(app["url"] + "/models")
    page.wait_for_selector("#versions-table", timeout=30_000)
    text = page.inner_text("#versions-table")
    assert "★ production" in text and "rejected" in text
    assert app["rejected"]["reason"][:40] in text
    page.wait_for_selector("#versions-table .ag-row", timeout=30_000)
    assert page.locator("#versions-table .ag-center-cols-container .ag-row").count() == 2
    page.wait_for_selector("#metrics-chart g.trace", timeout=30_000)
    screenshot(page, "models")


def test_monitoring_page_shows_serve_metrics_after_some_requests(app, page):
    """Requests for as long as it takes Ray to export and Prometheus to scrape twice (a rate needs two
    samples); the page then plots the request rate and latency of /predict."""
    s = app["s"]
    one = first_listing(app["ds"])
    stop = threading.Event()

    def load():
        with requests.Session() as session:
            while not stop.is_set():
                assert session.post(f"{s.serve}/predict", json=one, timeout=30).ok
                time.sleep(0.1)

    sender = threading.Thread(target=load, daemon=True)
    sender.start()
    try:
        page.goto(app["url"] + "/monitoring")

        def unplotted() -> str | None:
            """None once both series have data, else the page's text (then it is loaded anew: what
            Prometheus has scraped by then)."""
            page.wait_for_selector("#monitoring-graphs, #monitoring-message", timeout=30_000)
            if page.locator("#series-0.has-data").count() and page.locator("#series-1.has-data").count():
                return None
            text = page.inner_text("#page")[:2000]
            page.reload()
            return text

        poll(unplotted, lambda text: text is None, 120, "the request rate and latency of /predict plotted",
             every_s=5)
    finally:
        stop.set()
        sender.join()
    assert page.locator("#series-0.has-data").count() == 1, page.inner_text("#page")[:2000]
    assert page.locator("#series-1.has-data").count() == 1  # latency
    assert "request rate" in page.inner_text("#series-0") and "p99" in page.inner_text("#series-1")
    assert f"v{app['v1']}" in page.inner_text("#health-cards")
    screenshot(page, "monitoring")


def test_data_page_shows_batches_and_the_drift_of_one(app, page):
    page.goto(app["url"] + "/data")
    page.wait_for_selector("#batches-table .ag-row", timeout=30_000)
    assert page.locator("#batches-table .ag-center-cols-container .ag-row").count() >= 1
    page.wait_for_selector("#drift-table .ag-row", timeout=30_000)
    drift = page.inner_text("#drift-table")
    assert "price" in drift and "state" in drift
    assert len(page.inner_text("#drift-reason")) > 20  # the decision in words
    page.wait_for_selector("#drift-statistics g.trace", timeout=30_000)
    page.wait_for_selector("#drift-distribution g.trace", timeout=30_000)  # batch against reference
    assert "the batch against the reference" in page.inner_text("#drift-distribution")
    screenshot(page, "data")


def test_the_app_imports_nothing_from_serve_app_or_jobs():
    import ast

    for path in Path(__file__).resolve().parent.parent.joinpath("dashboard").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("serve_app", "jobs") for n in names), (path, names)


def test_models_page_timeline_answers_what_served_when_and_rolls_back_with_the_admin_token(app, page):
    s, v1 = app["s"], app["v1"]
    worse = app["rejected"]["version"]
    set_production(s, worse)  # as if the poor version had served before...
    assert promote(s, v1)["status"] == "promoted"  # ...and v1 replaced it: a recorded move
    wait_for_version(s, v1)
    page.goto(app["url"] + "/models")
    page.wait_for_selector("#production-timeline g.trace", state="attached", timeout=30_000)
    assert "promotion" in page.inner_text("#production-timeline")
    page.fill("#rollback-reason", "v1 misprices condos (a test)")
    page.fill("#rollback-token", "not-the-token")
    page.click("#rollback-button")
    page.wait_for_selector("#rollback-error", timeout=30_000)
    assert "admin token is wrong" in page.inner_text("#rollback-error")
    assert registry.production(s).version == v1
    page.fill("#rollback-token", s.serve_admin_token_path.read_text().strip())
    page.click("#rollback-button")
    page.wait_for_selector("#rollback-done", timeout=30_000)
    assert registry.production(s).version == worse
    moves = history.moves(s)
    assert (moves[-1]["kind"], moves[-1]["version"], moves[-1]["reason"]) == (
        "rollback", worse, "v1 misprices condos (a test)")
    wait_for_version(s, worse)
    page.goto(app["url"] + "/models")
    page.wait_for_selector("#production-timeline g.trace", state="attached", timeout=30_000)
    assert "rollback" in page.inner_text("#production-timeline")
    between = moves[-2]["moved_at"] + (moves[-1]["moved_at"] - moves[-2]["moved_at"]) / 2
    page.fill("#served-at", between.isoformat())
    page.press("#served-at", "Enter")
    page.wait_for_function("document.querySelector('#served-at-answer').innerText.length > 0", timeout=30_000)
    assert page.inner_text("#served-at-answer").startswith(f"v{v1} served at")
    screenshot(page, "models")
    assert promote(s, v1)["status"] == "promoted"  # back, recorded as a promotion
    wait_for_version(s, v1)
