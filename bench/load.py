"""Concurrent load from a separate process: ``clients`` threads post the body to ``url`` (paced to
``rate`` requests a second in all, or as fast as they can) until ``seconds`` have passed or the stop
file appears, each request timed. One JSON line per request in
``out``: start (wall time), seconds, status, the version that answered and the prediction ids.

    python -m bench.load URL BODY_FILE OUT_FILE --clients 8 --seconds 30 [--rate R] [--stop-file F]

Loopback only, bounded in time. The serving fault scenarios (``bench.serving_faults``) read the file.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time
from urllib.parse import urlsplit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("url")
    p.add_argument("body_file")
    p.add_argument("out_file")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--stop-file", default=None)
    p.add_argument("--rate", type=float, default=0, help="requests per second over all clients (0: as fast as "
                                                         "they can)")
    args = p.parse_args()
    if not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        raise SystemExit("bench.load sends traffic to loopback only")
    with open(args.body_file, "rb") as f:
        body = f.read()
    deadline = time.monotonic() + args.seconds
    lock = threading.Lock()
    out = open(args.out_file, "w", buffering=1)  # noqa: SIM115 (shared by the threads, closed after them)

    interval = args.clients / args.rate if args.rate else 0.0

    target = urlsplit(args.url)

    # http.client, not requests: the client shares the 2-core machine with what it measures, and
    # requests cost it ~1 ms of CPU each (4.1 s of CPU during one 12.8 s replica replacement at 250 a
    # second, at the priority of the starting replica). One keep-alive connection per client, opened
    # again after any failure.
    def client() -> None:
        due = time.monotonic()
        conn = None
        while time.monotonic() < deadline and not (args.stop_file and os.path.exists(args.stop_file)):
            due += interval
            time.sleep(max(0.0, due - time.monotonic()))
            started, t0 = time.time(), time.perf_counter()
            try:
                conn = conn or http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                conn.request("POST", target.path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                answer = json.loads(data) if (resp.getheader("content-type") or "").startswith(
                    "application/json") else {}
                row = [started, time.perf_counter() - t0, resp.status, answer.get("model_version"),
                       answer.get("prediction_ids", [])]
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                row = [started, time.perf_counter() - t0, type(exc).__name__, None, []]
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                out.write(json.dumps(row) + "\n")
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.close()


if __name__ == "__main__":
    main()
