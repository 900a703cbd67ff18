"""The prediction API over real HTTP on the session stack's Ray Serve (HAProxy ingress), models from
the real MLflow registry, predictions logged to the real raw database, metrics read back from the
real Prometheus.

The module deploys the Serve app with its own registered-model name, so its versions and alias never
touch the registry's main model that the training tests check; the stack's app is restored after.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import psutil
import psycopg2
import pytest
import requests
import yaml

from bench.common import CLIENT_NICENESS
from cluster import prometheus, ray_head, serve
from dashboard.data import CHARTS, INGRESS_5XX
from serve_app.app import BULK_NICENESS, prediction_ids
from serve_app.model import RegistryLoader, large_requests_loader
from serve_app.prediction_log import PredictionLog
from serve_app.priority import RAY_WORKER_NICENESS, STARTING_NICENESS
from serve_app.schemas import LARGE_BODY_BYTES
from tasador import registry
from tasador.promotion import load_model
from tasador.retry import poll
from tasador.schema import FEATURES
from tests.conftest import module_data
from tests.serving import (
    first_listing,
    haproxy_requests,
    listings,
    register_ridge,
    serving_model,
    set_production,
    until_every_replica,
    wait_for_version,
)

REPO = Path(__file__).resolve().parents[1]
settings = module_data()  # this module's own databases, model and experiment

GROUP = 55


@pytest.fixture(scope="module")
def serving(settings):
    with serving_model(settings, "tasador-serve-test", GROUP) as ctx:
        yield ctx


def test_predictions_match_the_registry_model_and_name_the_version(serving):
    s, ds = serving["s"], serving["ds"]
    frame = ds.frame[ds.test].head(50)
    resp = requests.post(f"{s.serve}/predict", json={"listings": listings(frame)}, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_name"] == "tasador-serve-test" and body["model_version"] == serving["v1"]
    direct = load_model(s, serving["v1"]).predict(frame[list(FEATURES)])
    assert np.allclose(body["prices"], direct, rtol=1e-6)

    one = requests.post(f"{s.serve}/predict", json=listings(frame.head(1))[0], timeout=30).json()
    assert len(one["prices"]) == 1 and one["prices"][0] == pytest.approx(direct[0], rel=1e-6)


def _logged(raw, marker: float, count: int) -> list[tuple]:
    """The logged rows of this broker id, once there are ``count`` of them (within 10 s)."""
    def rows() -> list[tuple]:
        with raw.cursor() as cur:
            cur.execute("SELECT prediction_id::text, model_name, model_version, predicted_price, state FROM "
                        "predictions WHERE brokered_by = %s ORDER BY predicted_price", (str(marker),))
            return cur.fetchall()

    return poll(rows, lambda got: len(got) >= count, 10, f"{count} logged rows of broker {marker}", every_s=0.2)


def test_predictions_are_logged_to_raw_with_their_ids_and_version(serving, raw):
    s, ds = serving["s"], serving["ds"]
    marker = 424242.0  # a broker id no batch has: finds this test's rows
    listing = {**first_listing(ds), "brokered_by": marker}
    resp = requests.post(f"{s.serve}/predict", json={"listings": [listing] * 3}, timeout=30).json()
    rows = _logged(raw, marker, 3)
    assert len(rows) == 3 and {r[0] for r in rows} == set(resp["prediction_ids"])
    assert {r[1:3] for r in rows} == {("tasador-serve-test", resp["model_version"])}
    assert rows[0][3] == pytest.approx(resp["prices"][0]) and rows[0][4] == listing["state"]


def test_a_retried_request_with_an_idempotency_key_gets_the_same_ids_and_is_logged_once(serving, raw):
    s, ds = serving["s"], serving["ds"]
    marker = 424243.0
    listing = {**first_listing(ds), "brokered_by": marker}
    headers = {"Idempotency-Key": f"retry-{time.time_ns()}"}
    answers = [requests.post(f"{s.serve}/predict", json={"listings": [listing] * 2}, headers=headers,
                             timeout=30).json() for _ in range(4)]  # over both replicas
    assert len({tuple(a["prediction_ids"]) for a in answers}) == 1
    until_every_replica(s, lambda health: health["prediction_log"]["backlog"] == 0, "has written its log")
    rows = _logged(raw, marker, 2)
    assert sorted(r[0] for r in rows) == sorted(answers[0]["prediction_ids"])
    bad = requests.post(f"{s.serve}/predict", json=listing, headers={"Idempotency-Key": "x" * 300}, timeout=30)
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["detail"]


def test_model_health_and_docs(serving):
    s = serving["s"]
    model = requests.get(f"{s.serve}/model", timeout=10).json()
    assert model["version"] == serving["v1"] and model["family"] == "ridge"
    assert model["metrics"]["rmse"] > 0 and model["batch_ids"] == serving["ds"].batch_ids
    health = requests.get(f"{s.serve}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.json()["problems"]
    docs = requests.get(f"{s.serve}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger-ui" in docs.text and "/openapi.json" in docs.text
    schema = requests.get(f"{s.serve}/openapi.json", timeout=10).json()
    assert set(schema["paths"]) == {"/predict", "/explain", "/model", "/health", "/admin/reload"}
    assert "requestBody" in schema["paths"]["/predict"]["post"]
    # PriceApi routes without FastAPI (serve_app/app.py PRICE_ROUTES): FastAPI's answers off the table
    missing = requests.get(f"{s.serve}/nowhere", timeout=10)
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    wrong = requests.get(f"{s.serve}/predict", timeout=10)
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST", wrong.text
    head = requests.head(f"{s.serve}/health", timeout=10)
    assert head.status_code == 200 and head.content == b""


def test_explain_gives_each_feature_a_contribution_that_adds_up(serving):
    """One listing is explained by the ingress replica's own model, more than ``EXPLAIN_HERE_ROWS`` by
    the explainer deployment: both add up to the price /predict answers, and agree with each other."""
    from serve_app.app import EXPLAIN_HERE_ROWS

    s, ds = serving["s"], serving["ds"]
    several = listings(ds.frame[ds.test].head(EXPLAIN_HERE_ROWS + 1))
    listing = several[0]
    body = requests.post(f"{s.serve}/explain", json=listing, timeout=30).json()
    explanation = body["explanations"][0]
    assert set(explanation["contributions"]) == set(FEATURES)
    total = explanation["base_price"] * math.exp(sum(explanation["contributions"].values()))
    assert total == pytest.approx(explanation["price"], rel=1e-4)
    price = requests.post(f"{s.serve}/predict", json=listing, timeout=30).json()["prices"][0]
    assert explanation["price"] == pytest.approx(price, rel=1e-4)
    by_explainer = requests.post(f"{s.serve}/explain", json={"listings": several}, timeout=30).json()
    assert len(by_explainer["explanations"]) == len(several)
    assert by_explainer["explanations"][0]["contributions"] == pytest.approx(explanation["contributions"], abs=1e-6)
    assert by_explainer["model_version"] == body["model_version"]


def test_past_every_replicas_slots_and_the_queue_a_request_is_refused_at_once_with_retry_after(serving):
    """HAProxy's admission (cluster/haproxy-rewrite-config): requests whose bodies never come hold every
    replica's slots and then the queue; the next request is refused by HAProxy, before Python, with
    503, Retry-After and a JSON detail; once they go, requests are priced again."""
    import socket

    s, ds = serving["s"], serving["ds"]
    listing = first_listing(ds, held_out=True)
    host, port = s.serve.rsplit("//", 1)[1].rsplit(":", 1)
    stalled = []
    try:
        for _ in range(3 * s.serve_replica_maxconn + s.serve_queue_max):  # up to 3 replicas' slots, then queued
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{")  # the rest of the body never comes
            stalled.append(sock)
        started = time.monotonic()
        refused = requests.post(f"{s.serve}/predict", json=listing, timeout=30)
        waited = time.monotonic() - started
    finally:
        for sock in stalled:
            sock.close()
    assert refused.status_code == 503 and refused.headers.get("Retry-After") == "1", refused.text
    assert "overloaded" in refused.json()["detail"]
    # the refusal has a length, so HAProxy need not close the connection to end it (without one, every
    # refused request was a new connection and an overload left ~12,600 sockets in TIME_WAIT). It still
    # closes one whose body had not arrived when it refused (requests sends the body after the
    # headers), so the connection itself is not asserted here; bench.serve counts TIME_WAIT.
    assert refused.headers.get("Content-Length") == str(len(refused.content))
    assert waited < 1 + s.serve_queue_timeout_ms / 1000, waited  # refused, not left waiting for a slot
    deadline = time.monotonic() + 10  # HAProxy frees the slots as it sees the clients gone
    while (status := requests.post(f"{s.serve}/predict", json=listing, timeout=30).status_code) != 200:
        assert time.monotonic() < deadline, status
        time.sleep(0.1)



def test_haproxy_runs_the_threads_and_the_server_timeout_the_stack_gives_it(serving):
    """``serve_haproxy_threads`` reaches the config Ray writes (through ``RAY_SERVE_HAPROXY_NBTHREAD``),
    and so does a wait for a replica's answer longer than Serve's own request timeout."""
    s = serving["s"]
    configs = list(ray_head.haproxy_dir(s).rglob("haproxy.cfg"))
    assert configs
    config_yaml = yaml.safe_load((REPO / "serve_app" / "config.yaml").read_text())
    assert config_yaml["http_options"]["request_timeout_s"] < ray_head.HAPROXY_SERVER_TIMEOUT_S
    for config in configs:
        text = config.read_text()
        assert re.search(rf"^\s*nbthread {s.serve_haproxy_threads}\s*$", text, re.M), config
        assert re.findall(r"^\s*timeout server (\S+)$", text, re.M) == [f"{ray_head.HAPROXY_SERVER_TIMEOUT_S}s"]


def test_a_client_that_sends_half_its_headers_gets_a_408_and_is_let_go(serving):
    """Slowloris: half a request's headers, then nothing. HAProxy answers 408 after its header timeout and
    closes the connection (it held such a connection for Ray's client timeout, an hour: 4,096 of them, its
    maxconn, would shut the ingress); a whole request on another connection is answered meanwhile."""
    s, ds = serving["s"], serving["ds"]
    wait = ray_head.HAPROXY_REQUEST_HEADER_TIMEOUT_S
    address = urllib.parse.urlsplit(s.serve)
    with socket.create_connection((address.hostname, address.port), timeout=wait + 10) as slow:
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: tasador\r\nContent-Type: application/json\r\n")
        started = time.monotonic()
        one = first_listing(ds, held_out=True)
        assert requests.post(f"{s.serve}/predict", json=one, timeout=30).status_code == 200
        answer = b""
        while chunk := slow.recv(4096):  # until HAProxy closes it (a socket timeout fails the test)
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ") and b"complete request in time" in answer, answer[:300]
    assert wait - 1 <= waited <= wait + 3, waited


BAD = [
    ("missing status", lambda ok: {k: v for k, v in ok.items() if k != "status"}, "status"),
    ("text in a number", lambda ok: {**ok, "bed": "three"}, "bed"),
    ("negative size", lambda ok: {**ok, "house_size": -5}, "house_size"),
    ("unknown state", lambda ok: {**ok, "state": "Atlantis"}, "state"),
    ("bad date", lambda ok: {**ok, "prev_sold_date": "last spring"}, "prev_sold_date"),
    ("one bad listing in a list", lambda ok: {"listings": [ok, {**ok, "bath": -1}]}, "listings.1.bath"),
    ("empty list", lambda ok: {"listings": []}, "listings"),
]


@pytest.mark.parametrize("name,make,field", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_422_naming_the_field(serving, name, make, field):
    s, ds = serving["s"], serving["ds"]
    ok = {**first_listing(ds), "state": "Vermont", "status": "for_sale"}
    resp = requests.post(f"{s.serve}/predict", json=make(ok), timeout=30)
    assert resp.status_code == 422, resp.text
    assert field in resp.json()["detail"]


@pytest.mark.parametrize("body,words", [
    (b"", "empty"), (b"{not json", "not JSON"), (b"[1, 2]", "JSON list"),
    (b'{"status": "for_sale", "state": "Vermont", "bed": NaN}', "bed"),
])
def test_malformed_bodies_get_a_422_and_the_replica_keeps_serving(serving, body, words):
    s, ds = serving["s"], serving["ds"]
    resp = requests.post(f"{s.serve}/predict", data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert resp.status_code == 422 and words in resp.json()["detail"]
    assert requests.post(f"{s.serve}/predict", json=first_listing(ds), timeout=30).status_code == 200


def test_an_oversized_list_is_refused(serving):
    s, ds = serving["s"], serving["ds"]
    one = first_listing(ds)
    resp = requests.post(f"{s.serve}/predict", json={"listings": [one] * (s.serve_max_listings + 1)}, timeout=60)
    assert resp.status_code == 422 and "at most" in resp.json()["detail"]


def test_a_large_request_is_priced_by_the_bulk_deployment_like_a_small_one(serving, raw):
    """Over 32 kB the body goes to BulkPricer (a process of its own): the same prices, one id each,
    every listing logged. HAProxy sends a body whose length it is told straight to the bulk
    application; a chunked one reaches the ingress, which hands it over."""
    s, ds = serving["s"], serving["ds"]
    marker = 424244.0
    frame = ds.frame[ds.test].head(20)
    small = [{**row, "brokered_by": marker} for row in listings(frame)]
    large = (small * 100)[:2000]
    assert len(json.dumps({"listings": large})) > LARGE_BODY_BYTES
    one_by_one = requests.post(f"{s.serve}/predict", json={"listings": small}, timeout=30).json()["prices"]
    before = haproxy_requests(s)
    body = requests.post(f"{s.serve}/predict", json={"listings": large}, timeout=60).json()
    routed = haproxy_requests(s)
    chunked = requests.post(f"{s.serve}/predict", data=iter([json.dumps({"listings": large}).encode()]),
                            headers={"Content-Type": "application/json"}, timeout=60).json()
    after = haproxy_requests(s)
    assert body["prices"] == chunked["prices"] == (one_by_one * 100)[:2000]
    assert len(set(body["prediction_ids"]) | set(chunked["prediction_ids"])) == 4000
    assert routed["http-tasador-bulk"] == before["http-tasador-bulk"] + 1
    assert routed["http-tasador"] == before["http-tasador"]
    assert after["http-tasador"] == routed["http-tasador"] + 1
    assert after["http-tasador-bulk"] == routed["http-tasador-bulk"]
    assert len(_logged(raw, marker, 4020)) == 4020


def test_replicas_start_at_the_default_priority_and_serve_at_theirs(serving):
    """A replica started at niceness 0 (a replacement gets the CPU to start: serve_app/priority.py), then
    serves with every thread at its own: BulkPricer at 19 (a single listing must not wait for the CPU
    behind a 10,000-listing request), PriceApi at Ray's worker niceness."""
    apps = serve.applications(serving["s"])

    def threads(app: str, deployment: str) -> list[int]:
        (replica,) = apps[app]["deployments"][deployment]["replicas"][:1]
        return [os.getpriority(os.PRIO_PROCESS, t.id) for t in psutil.Process(int(replica["pid"])).threads()]

    bulk = threads("tasador-bulk", "BulkPricer")
    assert len(bulk) > 5 and set(bulk) == {BULK_NICENESS}, bulk
    assert set(threads("tasador", "PriceApi")) == {RAY_WORKER_NICENESS}
    started = {h["replica"]["pid"]: h["replica"]["started_at_niceness"] for h in
               (requests.get(f"{serving['s'].serve}/health", timeout=10).json() for _ in range(8))}
    assert set(started.values()) == {STARTING_NICENESS}, started


def test_admin_reload_needs_the_token(serving):
    s = serving["s"]
    assert requests.post(f"{s.serve}/admin/reload", timeout=10).status_code == 401
    assert requests.post(f"{s.serve}/admin/reload", headers={"Authorization": "Bearer wrong"},
                         timeout=10).status_code == 401
    ok = requests.post(f"{s.serve}/admin/reload", headers={"Authorization": f"Bearer {serve.admin_token(s)}"},
                       timeout=30)
    assert ok.status_code == 200 and ok.json()["version"] == serving["v1"]


def test_hot_swap_under_concurrent_load_fails_nothing(serving):
    """Eight clients send requests while the alias moves to a new version: every request succeeds,
    every answer names a version, and the new one answers within 5 s of the alias moving."""
    s, ds = serving["s"], serving["ds"]
    v2 = register_ridge(s, ds, serving["arrays"], serving["features"], alpha=50.0)
    listing = first_listing(ds, held_out=True)
    results, stop = [], threading.Event()

    def client():
        # the clients share the machine with the replicas they measure (bench.common): below them, they
        # do not starve a replica's version load
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CLIENT_NICENESS)
        with requests.Session() as session:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    resp = session.post(f"{s.serve}/predict", json=listing, timeout=30)
                    version = resp.json().get("model_version") if resp.ok else None
                    results.append((started, time.monotonic() - started, resp.status_code, version))
                except requests.RequestException as exc:
                    results.append((started, time.monotonic() - started, type(exc).__name__, None))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        moved = time.monotonic()
        # as a promotion moves it: the alias, then serving asked to follow (the replica that answers has v2)
        assert registry.move_production_alias(s, registry.mlflow_client(s), v2)["version"] == v2
        time.sleep(7)
        # each replica's load of v2, for the message of a failure below
        loads = {h["replica"]["pid"]: h.get("model_load_seconds")
                 for h in (requests.get(f"{s.serve}/health", timeout=10).json() for _ in range(6)) if h.get("replica")}
    finally:
        stop.set()
        for t in threads:
            t.join()
        set_production(s, serving["v1"])
        wait_for_version(s, serving["v1"])
    failed = [r for r in results if r[2] != 200]
    assert not failed, failed[:5]
    assert {r[3] for r in results} == {serving["v1"], v2}
    first_new = min(r[0] + r[1] for r in results if r[3] == v2)
    assert first_new - moved < 5.0, f"v{v2} first answered {first_new - moved:.2f} s after the move; {loads}"
    # every replica follows the alias on its own: every request sent 5 s after the move gets the new one
    late = [r for r in results if r[0] > moved + 5.0]
    assert late and all(r[3] == v2 for r in late)
    assert len(results) > 50


def test_a_version_that_fails_to_load_never_replaces_the_working_one(serving):
    s = serving["s"]
    client = registry.mlflow_client(s)
    run_id = client.get_model_version(s.model_name, serving["v1"]).run_id
    broken = client.create_model_version(s.model_name, source=f"runs:/{run_id}/no-model-here", run_id=run_id,
                                         tags={"family": "ridge"}).version
    set_production(s, broken)
    try:
        health = until_every_replica(s, lambda h: (h.get("last_error") or {}).get("version") == broken,
                                     f"has tried and refused v{broken}")
        assert health["status"] == "degraded" and health["last_error"]["version"] == broken
        assert health["model_version"] == serving["v1"]
        resp = requests.post(f"{s.serve}/predict", json=first_listing(serving["ds"]), timeout=30)
        assert resp.status_code == 200 and resp.json()["model_version"] == serving["v1"]
    finally:
        set_production(s, serving["v1"])
    until_every_replica(s, lambda h: h["status"] == "ok", "is ok with the alias back on the working version")


def test_a_version_is_downloaded_once_per_node_then_loaded_from_the_nodes_copy(serving, tmp_path):
    """A replica that replaces a killed one skips the download: while the registry's artifacts are
    hidden, a loader with the node's copy loads the version, one without it cannot."""
    s = serving["s"].replace(state_dir=str(tmp_path / "node"),  # another node's disk, the same identity
                             mlflow_credentials_file=str(serving["s"].mlflow_credentials_path))
    first = RegistryLoader(s).load(serving["v1"])
    copies = [c for c in (tmp_path / "node" / "model-cache").iterdir() if not c.name.startswith(".")]  # not .locks
    assert len(copies) == 1 and (copies[0] / "MLmodel").is_file(), copies
    artifacts = Path(serving["s"].mlflow_artifacts_destination.removeprefix("file://"))
    hidden = artifacts.with_name(artifacts.name + ".hidden")
    artifacts.rename(hidden)
    try:
        second = large_requests_loader(s).load(serving["v1"])  # the bulk pricer's and the explainer's
        with pytest.raises(Exception):  # noqa: B017 - whichever error MLflow raises for a missing artifact
            RegistryLoader(s.replace(state_dir=str(tmp_path / "other-node"))).load(serving["v1"])
            # (its identity's file is the same: s names it explicitly)
    finally:
        hidden.rename(artifacts)
    frame = serving["ds"].frame[list(FEATURES)].head(50)
    assert np.allclose(first.model.predict(frame), second.model.predict(frame))
    # trees are compiled for small requests only where they are priced (a Ridge has none either way)
    assert "not a tree booster" in first.info["compiled"]["why"]
    assert second.info["compiled"] == {"compiled": False,
                                       "why": "this deployment prices large requests only: XGBoost"}


@pytest.mark.skipif(prometheus.binary() is None, reason="Debian's prometheus package is not installed")
def test_prometheus_scrapes_the_serve_metrics(serving):
    s = serving["s"]
    one = first_listing(serving["ds"])

    def send(count: int) -> None:
        for _ in range(count):
            requests.post(f"{s.serve}/predict", json=one, timeout=30)

    send(5)
    wanted = {"ray_tasador_requests_total", "ray_tasador_request_latency_ms_bucket", "ray_tasador_model_version",
              "ray_tasador_model_rmse", "ray_tasador_batches_total", "ray_tasador_batch_rows_total",
              "ray_tasador_predictions_logged_total",  # (a counter appears at its first increment)
              # Serve's ingress, from HAProxy's own exporter (cluster/prometheus.py): answered and refused
              'haproxy_frontend_http_responses_total{proxy="http_frontend",code="2xx"} > 0',
              # Serve's request counter, reported with its per-request histograms (which are not recorded)
              "ray_serve_deployment_request_counter_total"}

    def scraped() -> dict:  # each series now (the version gauge moves with the swaps of earlier tests)
        found = {name: _instant(s, name) for name in wanted}
        return {"missing": sorted(n for n, series in found.items() if not series),
                "versions": {r["value"][1] for r in found["ray_tasador_model_version"]}}

    # every replica reports the version it serves
    poll(scraped, lambda got: got == {"missing": [], "versions": {serving["v1"]}}, 90,
         f"every metric scraped, every replica at version {serving['v1']}", every_s=3)
    # Serve's per-request histograms are not recorded by the replicas (serve_app.metrics.PER_REQUEST_SERVE_HISTOGRAMS):
    # requests they answer add nothing to them. (Some series exist: Ray's own code records them where no Tasador
    # code runs, in Serve's fallback proxy, for HAProxy's checks and for a request sent while no replica was up,
    # and in a replica before its constructor ran; a clean-clone run saw one GET answered 503 there.)
    serve_counted = ('sum({__name__=~"ray_serve_(deployment_processing|http_request)_latency_ms_count",'
                     ' route!~"/-/.*"}) or vector(0)')
    priced = 'sum(ray_tasador_requests_total{route="/predict"})'
    before = {q: _total(s, q) for q in (serve_counted, priced)}
    send(20)
    # Serve's histograms, if recorded, would reach Prometheus by the same report and scrape as Tasador's counter
    poll(lambda: _total(s, priced), lambda n: n >= before[priced] + 20, 90, "the 20 requests counted", every_s=3)
    assert _total(s, serve_counted) == before[serve_counted]
    # the Monitoring chart's "lost" line: 0 while predictions are logged and none was ever lost
    lost = poll(lambda: _instant(s, CHARTS["prediction log (rows/s)"].lines["lost"]), bool, 60,
                "the lost line's series", every_s=3)
    assert [float(r["value"][1]) for r in lost] == [0.0]
    # the errors chart's ingress line (HAProxy's exporter): a series, 0 while nothing was refused
    ingress = poll(lambda: _instant(s, CHARTS["errors by kind (req/s)"].lines[INGRESS_5XX]), bool, 60,
                   "the ingress 5xx line's series", every_s=3)
    assert len(ingress) == 1 and float(ingress[0]["value"][1]) >= 0
    # the latency histogram (serve_app.metrics.LatencyHistogram): the requests above in /predict's +Inf
    # bucket and in its count alike, and the Dash app's p99 line a number of milliseconds
    def totals() -> set[float]:
        return {sum(float(r["value"][1]) for r in _instant(s, q)) for q in (
            'ray_tasador_request_latency_ms_bucket{route="/predict",le="+Inf"}',
            'ray_tasador_request_latency_ms_count{route="/predict"}')}

    poll(totals, lambda got: len(got) == 1 and min(got) >= 5, 60, "the +Inf bucket equal to the count", every_s=3)
    # a rate needs an increase after the series' first scrape: more requests now that it is scraped
    send(5)
    p99_query = CHARTS["/predict latency (ms)"].lines["p99"].replace("[1m]", "[10m]")
    p99 = poll(lambda: _instant(s, p99_query), lambda got: got and not math.isnan(float(got[0]["value"][1])), 60,
               "a p99 from the histogram", every_s=3)
    assert 0 < float(p99[0]["value"][1]) <= 5000, p99


def _instant(s, query: str) -> list[dict]:
    return requests.get(f"{s.prometheus}/api/v1/query", params={"query": query}, timeout=10).json()["data"]["result"]


def _total(s, query: str) -> float:
    """The value of a query that sums to one series."""
    (series,) = _instant(s, query)
    return float(series["value"][1])


def test_the_grafana_dashboard_queries_metrics_the_running_app_exports(serving):
    """Every ray_tasador_* metric of kuberay/grafana/tasador.json is on the Ray nodes' metrics endpoints
    (found as Prometheus finds them: Ray's service-discovery file)."""
    from tests.test_kuberay import dashboard_metrics

    s = serving["s"]
    for _ in range(3):  # its own predictions: counters appear at their first increment, whatever ran before
        requests.post(f"{s.serve}/predict", json=first_listing(serving["ds"]), timeout=30)
    only_after_a_loss = {"ray_tasador_predictions_lost_total"}
    wanted = dashboard_metrics() - only_after_a_loss

    def not_exported() -> set[str]:
        text = prometheus.endpoints_text(s)
        return wanted - {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                         if line.startswith("ray_tasador_")}

    # Ray's agents export every few seconds; the log flushes every second
    poll(not_exported, lambda missing: not missing, 90, "every dashboard metric on the endpoints", every_s=2)


def test_the_prediction_log_keeps_rows_while_the_database_is_down_and_counts_what_it_drops(settings):
    """A real connection refused (a closed port), then the real database: nothing pending is lost."""
    down = settings.replace(raw_db_url=f"postgresql://tasador@127.0.0.1:{_closed_port()}/raw_data",
                            prediction_log_max_rows=5, prediction_log_flush_s=3600)
    log = PredictionLog(down)
    columns = {f: [None, None] for f in FEATURES} | {"state": ["Vermont"] * 2, "status": ["sold"] * 2,
                                                     "brokered_by": [777001.0] * 2}
    for n in range(3):
        log.add(prediction_ids(2, f"keeps-rows-{n}"), columns, "m", "1", [1.0 + n, 2.0 + n])
    # the third was over the bound of 5: dropped and counted
    assert log.flush() == 0 and log.pending == 4 and log.lost == 2 and log.last_error
    assert log.status()["database"] == "unreachable" and log.status()["backlog"] == 4
    log.url = settings.raw_db  # the database is back
    assert log.flush() == 4 and log.pending == 0 and log.logged == 4
    assert log.status()["database"] == "ok"
    assert _count(settings, 777001.0) == 4
    log.close()


def test_a_chunk_sent_again_is_written_once_and_close_writes_the_backlog(settings):
    """The acknowledgement of a COPY lost after its commit: the chunk is sent again (the same prediction
    ids) and skipped. A graceful close writes what is buffered without waiting for the next flush.
    The counters are as strict as Ray's (a count must be positive): a chunk of duplicates writes 0
    new rows, which once made the log re-queue it for ever."""
    counted = []

    def ray_like_counter(n):
        if n <= 0:
            raise ValueError(f"value must be >0, got {n}")
        counted.append(n)

    log = PredictionLog(settings.replace(prediction_log_flush_s=3600), on_logged=ray_like_counter)
    columns = {f: [None] * 3 for f in FEATURES} | {"state": ["Vermont"] * 3, "status": ["sold"] * 3,
                                                   "brokered_by": [777002.0] * 3}
    ids = prediction_ids(3, "sent-again")
    log.add(ids, columns, "m", "1", [1.0, 2.0, 3.0])
    assert log.flush() == 3
    log.add(ids, columns, "m", "1", [1.0, 2.0, 3.0])  # the same chunk again
    assert log.flush() == 0 and log.duplicates == 3 and log.pending == 0 and not log.chunks
    assert log.status()["database"] == "ok" and log.last_error is None
    log.add(prediction_ids(3, None), columns, "m", "1", [4.0, 5.0, 6.0])
    assert log.close() == 0 and log.logged == 6 and counted == [3, 3]
    assert _count(settings, 777002.0) == 6


def _count(settings, brokered_by: float) -> int:
    conn = psycopg2.connect(settings.raw_db)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM predictions WHERE brokered_by = %s", (str(brokered_by),))
        count = cur.fetchone()[0]
    conn.close()
    return count


def _closed_port() -> int:
    from cluster.processes import free_port

    return free_port()


# -- fuzzing (tests/fuzz_cases.py), last: on this module's served model, after its own tests ----------
@pytest.fixture(scope="module")
def fuzzed(serving):
    with requests.Session() as session:
        yield {**serving, "good": first_listing(serving["ds"]), "session": session}


from tests import fuzz_cases  # noqa: E402

# collected here in this order (the last one counts the cases the others sent)
test_every_route_from_the_openapi_schema = fuzz_cases.test_every_route_from_the_openapi_schema
test_listings_with_any_field_wrong = fuzz_cases.test_listings_with_any_field_wrong
test_malformed_bodies_and_content_types = fuzz_cases.test_malformed_bodies_and_content_types
test_an_oversized_body_gets_413_without_being_read = fuzz_cases.test_an_oversized_body_gets_413_without_being_read
test_a_good_listing_is_priced_after_all_of_it_and_enough_cases_ran = (
    fuzz_cases.test_a_good_listing_is_priced_after_all_of_it_and_enough_cases_ran)
