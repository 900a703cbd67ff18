"""The base of the small local HTTP servers that benches and tests stand in front of (or in place of) a
real service with: the data API's fault proxy, the open-loop generator's test server, a serving node's
reload endpoint. Standard library only (``http.server``): each answers a few requests on loopback."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive (as HAProxy and the services answer), JSON answers, no access log."""

    protocol_version = "HTTP/1.1"

    def send_json(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Answer ``status`` with the JSON ``body`` (and ``headers``; ``Connection: close`` ends the
        connection after it, as ``http.server`` does for that header)."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass
