"""Every priced listing goes to the raw database's ``predictions`` table, off the request path.

A request only appends its columns to an in-memory buffer (no per-row work, no I/O). A thread writes
what is buffered every ``prediction_log_flush_s`` with one COPY. If the database is down, rows stay
buffered (up to ``prediction_log_max_rows``) and are written when it is back; beyond that bound new
rows are dropped and counted, and serving goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import deque

from tasador import db
from tasador.schema import FEATURES
from tasador.settings import Settings

log = logging.getLogger("ray.serve")


def _text(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, dt.date) else str(value)


class PredictionLog:
    def __init__(self, settings: Settings, on_logged=None, on_lost=None):
        self.url = settings.raw_db
        self.max_rows = settings.prediction_log_max_rows
        self.flush_s = settings.prediction_log_flush_s
        self.on_logged, self.on_lost = on_logged or (lambda n: None), on_lost or (lambda n: None)
        self.chunks: deque = deque()
        self.pending = 0
        self.logged = 0
        self.lost = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._conn = None
        threading.Thread(target=self._run, name="prediction-log", daemon=True).start()

    def add(self, columns: dict[str, list], model_name: str, version: str, prices: list[float]) -> None:
        """Called on the request path: O(1), never blocks on the database."""
        n = len(prices)
        with self._lock:
            if self.pending + n > self.max_rows:
                self.lost += n
                self.on_lost(n)
                return
            self.chunks.append((dt.datetime.now(dt.UTC), model_name, version, prices, columns))
            self.pending += n

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.flush_s):
            self.flush()

    def flush(self) -> int:
        with self._lock:
            chunks, self.chunks = list(self.chunks), deque()
        if not chunks:
            return 0
        rows = [(at, name, version, price, *(_text(columns[f][i]) for f in FEATURES))
                for at, name, version, prices, columns in chunks for i, price in enumerate(prices)]
        try:
            if self._conn is None or self._conn.closed:
                self._conn = db.connect(self.url, attempts=1)
            with self._conn, self._conn.cursor() as cur:
                db.copy_in(cur, "predictions", db.PREDICTION_COLUMNS, rows)
        except Exception as exc:  # database down or restarting: keep the rows for the next flush
            self.last_error = f"{type(exc).__name__}: {exc}".strip()
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            with self._lock:
                self.chunks.extendleft(reversed(chunks))
            log.warning("prediction log: %d rows waiting for the raw database (%s)", self.pending, self.last_error)
            return 0
        with self._lock:
            self.pending -= len(rows)
            self.logged += len(rows)
        self.last_error = None
        self.on_logged(len(rows))
        return len(rows)

    def status(self) -> dict:
        return {"pending": self.pending, "logged": self.logged, "lost": self.lost, "last_error": self.last_error}
