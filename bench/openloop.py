"""An open-loop load generator: POST one body at a fixed rate, request *i* sent at ``i / rate`` seconds
whatever the earlier ones are doing, over as many keep-alive connections as that takes.

Why not hey, which ``bench.serve`` used for paced load: hey paces each worker with its own ticker, and
all the tickers start together, so ``-c 256 -q 20`` sends 256 requests at once every 50 ms, not 5,120
spread over each second. Under that load HAProxy's stats showed the replicas' slots full, then empty
with nothing queued, within one second, the machine 26% idle while half the offered requests were
refused: "4x the sustainable rate" measured a burst, not a rate. wrk2 and vegeta (open-loop, constant
rate) are not packaged for Debian; this is the part of them the benchmarks need, on asyncio's
protocols (uvloop when installed: about 15 us of CPU a request, measured in ``docs/benchmarks.md``).

Each request's latency counts from when it was due, not when it was sent, so a generator that falls
behind shows as latency, never as a lower rate (no coordinated omission); ``lag_p99_ms`` says how far
behind sending fell. Run alone::

    python -m bench.openloop URL BODY_FILE RATE SECONDS > results.json

prints one JSON object: ``requests`` as ``[due_offset_s, latency_s, status, retry_after]`` (status 0: the
connection failed or closed before an answer), ``lag_p99_ms`` and ``connections``.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import sys
import time
from urllib.parse import urlsplit

TICK_S = 0.001
MAX_CONNECTIONS = 2000  # past this, a due request waits for a connection (its wait counts in its latency)


def header(head: bytes, name: bytes) -> bytes | None:
    """A header's value in a lower-cased response head (status line and headers, no blank line)."""
    at = head.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    end = head.find(b"\r\n", start)
    return head[start:end if end >= 0 else None].strip()


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time: enough of HTTP to read a status line,
    ``Content-Length``, ``Retry-After`` and ``Connection: close``."""

    def __init__(self, pool: Pool):
        self.pool, self.transport, self.buffer, self.pending = pool, None, bytearray(), None

    def connection_made(self, transport):
        self.transport = transport

    def send(self, request: bytes, due: float) -> None:
        self.pending = due
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.pending is None:
            return
        head = bytes(self.buffer[:end]).lower()
        length = int(header(head, b"content-length") or 0)
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[:end + 4 + length]
        due, self.pending = self.pending, None
        self.pool.done(self, due, int(head[9:12]), header(head, b"retry-after") is not None,
                       header(head, b"connection") == b"close")

    def connection_lost(self, exc) -> None:
        if self.pending is not None:
            due, self.pending = self.pending, None
            self.pool.done(self, due, 0, False, True)
        self.pool.lost(self)


class Pool:
    def __init__(self, host: str, port: int, request: bytes, started: float):
        self.host, self.port, self.request, self.started = host, port, request, started
        self.idle: collections.deque[Connection] = collections.deque()
        self.open = 0
        self.waiting: collections.deque[float] = collections.deque()  # due times with no connection yet
        self.results: list[list] = []
        self.opened = 0
        self.connecting: set[asyncio.Task] = set()

    def done(self, conn: Connection, due: float, status: int, retry_after: bool, closing: bool) -> None:
        now = time.perf_counter()
        self.results.append([round(due - self.started, 6), round(now - due, 6), status, retry_after])
        if closing:
            conn.transport.close()
            return
        if self.waiting:
            conn.send(self.request, self.waiting.popleft())
        else:
            self.idle.append(conn)

    def lost(self, conn: Connection) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting:  # a request due while every connection was busy: on a new one
            self.send(self.waiting.popleft())

    def send(self, due: float) -> None:
        if self.idle:
            self.idle.pop().send(self.request, due)
        elif self.open < MAX_CONNECTIONS:
            self.open += 1
            self.opened += 1
            task = asyncio.ensure_future(self.connect(due))
            self.connecting.add(task)
            task.add_done_callback(self.connecting.discard)
        else:
            self.waiting.append(due)

    async def connect(self, due: float) -> None:
        try:
            _, conn = await asyncio.get_running_loop().create_connection(lambda: Connection(self), self.host, self.port)
        except OSError:
            self.open -= 1
            self.results.append([round(due - self.started, 6), round(time.perf_counter() - due, 6), 0, False])
            return
        conn.send(self.request, due)


async def run(url: str, body: bytes, rate: float, seconds: float) -> dict:
    parts = urlsplit(url)
    request = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    started = time.perf_counter()
    pool = Pool(parts.hostname, parts.port or 80, request, started)
    total, sent, lags = int(rate * seconds), 0, []
    while sent < total:
        now = time.perf_counter()
        while sent < total and started + sent / rate <= now:
            due = started + sent / rate
            lags.append(now - due)
            pool.send(due)
            sent += 1
        # at least a millisecond: the loop's timers have that resolution, a shorter sleep only spins;
        # so requests due within the same millisecond go together
        await asyncio.sleep(max(TICK_S, started + sent / rate - time.perf_counter()))
    deadline = time.perf_counter() + 35  # past Serve's request timeout: every request answered or failed
    while len(pool.results) < total and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    lags.sort()
    return {"requests": pool.results, "unanswered": total - len(pool.results), "connections": pool.opened,
            "lag_p99_ms": round(lags[int(0.99 * (len(lags) - 1))] * 1000, 2) if lags else None,
            "offered_req_s": rate}


def main() -> None:
    url, body_file, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    with open(body_file, "rb") as f:
        body = f.read()
    # no cyclic garbage collection: the results (a small list per request, 100,000 and more) survive
    # every collection, and the full ones walked them all, holding the loop tens of ms as they grew
    # (the send lag's p99 was 49 ms at 7,344 requests a second); nothing here makes reference cycles
    gc.disable()
    try:
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run
    json.dump(run_loop(run(url, body, rate, seconds)), sys.stdout)


if __name__ == "__main__":
    main()
