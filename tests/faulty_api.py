"""A real HTTP proxy in front of the data API that injects faults: the first N requests fail with a
given status, or every answer is replaced by a fixed body. Used where a test needs the API to
misbehave; the API behind it is the real one."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class FaultyApi:
    def __init__(self, upstream: str, fail_first: int = 0, fail_status: int = 500, body: bytes | None = None):
        self.upstream, self.fail_first, self.fail_status, self.body = upstream, fail_first, fail_status, body
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                proxy.requests += 1
                if proxy.requests <= proxy.fail_first:
                    self._send(proxy.fail_status, b'{"detail": "injected failure"}')
                elif proxy.body is not None:
                    self._send(200, proxy.body)
                else:
                    upstream = requests.get(proxy.upstream + self.path, timeout=60)
                    self._send(upstream.status_code, upstream.content)

            def _send(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
