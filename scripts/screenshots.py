"""Screenshots of the running stack's Dash app for docs/screenshots (README's "The web app").

    .venv/bin/python scripts/screenshots.py [OUT_DIR]     (default docs/screenshots)

Run it after ``bash scripts/demo.sh`` (a full-scale run) with the stack still up: it prices one
listing on the Predict page, follows its lineage, and photographs every page in Debian's headless
Chromium. Before the Monitoring page it sends ``TRAFFIC_S`` seconds of predictions to the local API
(about ``TRAFFIC_RPS`` a second, one in ten of them invalid) so that the charts have something to show;
apart from those it only reads.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import requests
from playwright.sync_api import sync_playwright

from tasador.schema import STATES
from tasador.settings import Settings

WAIT_MS = 60_000
PAGES = {  # page -> what must be drawn before the picture is taken
    "models": "#production-timeline g.trace",
    "data": "#drift-distribution g.trace",
    "monitoring": "#series-2.has-data",  # latency and errors by kind drawn
}
TRAFFIC_S, TRAFFIC_RPS = 90, 5


def traffic(api: str) -> int:
    """Predictions for the Monitoring page: varied listings, every tenth one invalid (a negative size).
    Bounded in count and time, to the local API only. The number answered 200."""
    rng, answered = random.Random(7), 0
    states = sorted(STATES)
    with requests.Session() as http:
        for i in range(TRAFFIC_S * TRAFFIC_RPS):
            listing = {"status": rng.choice(["for_sale", "sold"]), "state": rng.choice(states),
                       "bed": rng.randint(1, 6), "bath": rng.randint(1, 4), "house_size": rng.randint(600, 4000),
                       "acre_lot": round(rng.uniform(0.05, 2), 2)}
            if i % 10 == 9:
                listing["house_size"] = -1
            answered += http.post(f"{api}/predict", json=listing, timeout=30).status_code == 200
            time.sleep(1 / TRAFFIC_RPS)
    return answered


def main(out: Path) -> None:
    settings = Settings.load()
    url = f"http://127.0.0.1:{settings.dash_port}"
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url + "/")
        page.click("#predict-button")
        page.wait_for_selector("#contributions g.trace", timeout=WAIT_MS)
        page.screenshot(path=str(out / "predict.png"), full_page=True)
        prediction_id = page.inner_text("#prediction-id")
        for _ in range(30):  # the prediction log writes within its flush interval
            page.goto(f"{url}/lineage?id={prediction_id}")
            page.wait_for_selector("#lineage-walk, #lineage-error", timeout=WAIT_MS)
            if page.locator("#lineage-walk").count():
                break
            page.wait_for_timeout(1000)
        page.wait_for_selector("#lineage-raw-rows .ag-row", timeout=WAIT_MS)
        page.screenshot(path=str(out / "lineage.png"), full_page=True)
        print(f"traffic for the Monitoring page: {traffic(settings.serve)} predictions answered", flush=True)
        for name, drawn in PAGES.items():
            page.goto(f"{url}/{name}")
            page.wait_for_selector(drawn, state="attached", timeout=WAIT_MS)  # a trace may be empty
            page.wait_for_timeout(1500)  # Plotly's transitions settle: nothing to poll for
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)
        browser.close()
    print(f"screenshots of {url} in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots"))
