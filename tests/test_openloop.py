"""bench.openloop, the benchmarks' open-loop load generator, against a real HTTP server on loopback:
requests go out at the rate asked, evenly, whatever the earlier ones are doing (the property hey's
paced workers lack); every answer is counted with its status and Retry-After; latency counts from
when a request was due."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import ThreadingHTTPServer

import pytest

from bench import openloop
from bench.json_http import JsonHandler


class Handler(JsonHandler):
    def do_POST(self):  # noqa: N802 (the http.server API)
        self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        with server.lock:
            n = len(server.arrivals)
            server.arrivals.append(time.perf_counter())
        if n % 10 == 0:
            time.sleep(0.15)  # a slow answer: the requests due meanwhile still go out on time
        if n % 4 == 3:
            self.send_json(503, b'{"detail": "busy"}', {"Retry-After": "1", "Connection": "close"})
        else:
            self.send_json(200, b'{"price": 1}')


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.arrivals, httpd.lock = [], threading.Lock()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_requests_go_out_evenly_at_the_rate_and_every_answer_is_counted(server):
    rate, seconds = 200, 1.0
    url = f"http://127.0.0.1:{server.server_address[1]}/predict"
    out = asyncio.run(openloop.run(url, b'{"bed": 3}', rate, seconds))

    total = int(rate * seconds)
    assert out["unanswered"] == 0 and len(out["requests"]) == total == len(server.arrivals)
    dues = sorted(due for due, *_ in out["requests"])
    assert dues == pytest.approx([i / rate for i in range(total)], abs=1e-5)
    statuses = [status for _, _, status, _ in out["requests"]]
    assert statuses.count(503) == total // 4 and statuses.count(200) == total - total // 4
    assert all(retry_after == (status == 503) for _, _, status, retry_after in out["requests"])
    # open loop: while every tenth request is held 150 ms, the others still arrive on schedule, so no
    # gap between arrivals comes near the hold (a closed loop over few connections would stall)
    gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:], strict=False)]
    assert max(gaps) < 0.05
    slow = [latency for _, latency, _, _ in out["requests"] if latency >= 0.15]
    assert len(slow) >= total // 10  # the held ones, timed from when they were due
    assert out["connections"] > 1 and out["lag_p99_ms"] < 50


def test_a_refused_connection_counts_as_failed_not_as_missing():
    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as probe:
        port = probe.server_address[1]  # bound, then closed: nothing listens there
    out = asyncio.run(openloop.run(f"http://127.0.0.1:{port}/predict", b"{}", 50, 0.2))
    assert out["unanswered"] == 0 and len(out["requests"]) == 10
    assert {status for _, _, status, _ in out["requests"]} == {0}
