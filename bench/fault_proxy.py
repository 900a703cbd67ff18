"""A real HTTP proxy in front of the data API that injects the faults a real network and a real API
produce. The API behind it is the real one, and it counts every batch it serves, so a fault injected
*after* forwarding the request is a batch the API believes delivered:

- ``cut``: the response starts (status, full Content-Length) and the connection closes mid-body;
- ``stall``: nothing comes back until the client's read timeout has passed;
- ``error``: the API's answer is replaced by a 503;
- ``garbage``: the API's answer is replaced by a 200 whose body is not a batch;
- ``refuse``: the request is answered 503 *without* reaching the API (``fail_first``).

``faults`` maps the 1-based index of a ``GET /data`` request to the fault it gets; other requests
(and ``/restart_data_generation``) pass through unchanged. ``position`` follows the API's counter
(the last batch it served since its last restart): every batch up to it must end up stored.
"""

from __future__ import annotations

import re
import threading
from http.server import ThreadingHTTPServer

import requests

from bench.json_http import JsonHandler

MODES = ("cut", "stall", "error", "garbage")
BATCH_NUMBER = re.compile(rb'"batch_number":\s*(\d+)')


class FaultProxy:
    def __init__(self, upstream: str, faults: dict[int, str] | None = None, fail_first: int = 0,
                 fail_status: int = 500, body: bytes | None = None, stall_s: float = 5.0):
        self.upstream, self.faults = upstream, dict(faults or {})
        self.fail_first, self.fail_status, self.body, self.stall_s = fail_first, fail_status, body, stall_s
        self.requests = 0  # every request
        self.data_requests = 0  # GET /data only
        self.injected: list[tuple[int, str]] = []
        self.position = 0  # the API's counter as seen through the proxy: its last batch since a restart
        self._closing = threading.Event()
        proxy = self

        class Handler(JsonHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                proxy.requests += 1
                mode = None
                if self.path.startswith("/data"):
                    proxy.data_requests += 1
                    mode = proxy.faults.get(proxy.data_requests)
                if proxy.requests <= proxy.fail_first:
                    return self.send_json(proxy.fail_status, b'{"detail": "injected failure"}')
                upstream = requests.get(proxy.upstream + self.path, timeout=120)  # the API serves (and counts)
                if self.path.startswith("/data"):
                    proxy._count(upstream)
                elif self.path.startswith("/restart_data_generation") and upstream.ok:
                    proxy.position = 0
                if mode:
                    proxy.injected.append((proxy.data_requests, mode))
                if mode == "cut":
                    self.send_response(upstream.status_code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(upstream.content)))
                    self.end_headers()
                    self.wfile.write(upstream.content[: len(upstream.content) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                if mode == "stall":
                    proxy._closing.wait(proxy.stall_s)
                    self.close_connection = True
                    return None
                if mode == "error":
                    return self.send_json(503, b'{"detail": "injected 503 after the API served the batch"}')
                if mode == "garbage" or proxy.body is not None:
                    return self.send_json(200, proxy.body if proxy.body is not None else b'{"batch_number": "x", "dat')
                return self.send_json(upstream.status_code, upstream.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _count(self, upstream: requests.Response) -> None:
        found = BATCH_NUMBER.search(upstream.content[:300]) if upstream.status_code == 200 else None
        if found:
            self.position = int(found.group(1))

    def close(self):
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
