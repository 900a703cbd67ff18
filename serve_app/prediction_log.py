"""Every priced listing goes to the raw database's ``predictions`` table, off the request path.

A request only appends its columns and prediction ids to an in-memory buffer (no per-row work, no
I/O). A thread writes what is buffered every ``prediction_log_flush_s``: one COPY into a temporary
table, then one ``INSERT ... ON CONFLICT (prediction_id) DO NOTHING``, in one transaction. A chunk
sent again (its commit succeeded but the acknowledgement was lost; a client retried with the same
``Idempotency-Key``) is therefore written once.

If the database is down, rows stay buffered (up to ``prediction_log_max_rows``) and are written when
it is back; beyond that bound new rows are dropped and counted, and serving goes on. ``close()``
(a replica's graceful stop) writes everything buffered before the replica exits; a SIGKILL loses
at most what arrived since the last flush, i.e. one flush interval of rows while the database is up.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import deque

import psycopg2
from psycopg2 import sql

from tasador import db
from tasador.schema import FEATURES
from tasador.settings import Settings

log = logging.getLogger("ray.serve")
PROBE_S = 5.0  # how often an idle log checks that the database answers
# what a row can do wrong: text the database refuses (NUL) or that cannot even be encoded (a lone surrogate)
REFUSED = (psycopg2.DataError, UnicodeError)


def columns_of(chunks: list) -> list[list]:
    """The buffered chunks as the ``predictions`` columns (``db.PREDICTION_COLUMNS``), column by column.
    Values are written as the CSV writer renders them: ``str()`` of the validated value (a float as
    ``3.0``, a date as ``2015-06-30``), None as NULL; the chunk's time is made text once, not per row."""
    columns: list[list] = [[] for _ in db.PREDICTION_COLUMNS]
    for ids, at, name, version, prices, features in chunks:
        n = len(prices)
        for column, values in zip(columns, (ids, [str(at)] * n, [name] * n, [version] * n, prices,
                                            *(features[f] for f in FEATURES)), strict=True):
            column.extend(values)
    return columns


def _tell(callback, n: int) -> None:
    """Report ``n`` rows to a counter (a metric): only a positive count (Ray's counters refuse 0: a
    chunk of duplicates writes 0 new rows), and a failing counter never fails the write it reports."""
    if n > 0:
        try:
            callback(n)
        except Exception:
            log.exception("prediction log: reporting %d rows failed", n)


def write_once(cur, rows: list[tuple] | db.CsvRows) -> int:
    """Write ``rows`` (``db.PREDICTION_COLUMNS`` order) into ``predictions``; a prediction id already
    there is skipped. Returns how many rows were new."""
    columns = sql.SQL(", ").join(map(sql.Identifier, db.PREDICTION_COLUMNS))
    cur.execute("CREATE TEMP TABLE IF NOT EXISTS incoming_predictions "
                "(LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    db.copy_in(cur, "incoming_predictions", db.PREDICTION_COLUMNS, rows)
    cur.execute(sql.SQL("INSERT INTO predictions ({c}) SELECT {c} FROM incoming_predictions "
                        "ON CONFLICT (prediction_id) DO NOTHING").format(c=columns))
    return cur.rowcount


class PredictionLog:
    def __init__(self, settings: Settings, on_logged=None, on_lost=None):
        self.url = settings.raw_db
        self.max_rows = settings.prediction_log_max_rows
        self.flush_s = settings.prediction_log_flush_s
        self.on_logged, self.on_lost = on_logged or (lambda n: None), on_lost or (lambda n: None)
        self.chunks: deque = deque()
        self.pending = 0
        self.logged = 0
        self.duplicates = 0  # rows skipped because their prediction id was already written
        self.lost = 0
        self.last_error: str | None = None
        self.unreachable_since: float | None = None  # wall time of the first failed write of a streak
        self.last_written_at: float | None = None
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one writer at a time: the thread, or close()
        self._stop = threading.Event()
        self._conn = None
        self._probed_at = 0.0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def add(self, ids: list[str], columns: dict[str, list], model_name: str, version: str,
            prices: list[float]) -> None:
        """Called on the request path: O(1), never blocks on the database."""
        n = len(prices)
        with self._lock:
            if self.pending + n > self.max_rows:
                self.lost += n
                _tell(self.on_lost, n)
                return
            self.chunks.append((ids, dt.datetime.now(dt.UTC), model_name, version, prices, columns))
            self.pending += n

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def flush(self) -> int:
        """Write what is buffered now. Returns the rows written (0 when the database is down)."""
        with self._flushing:
            with self._lock:
                chunks, self.chunks = list(self.chunks), deque()
            if not chunks:
                self._probe()
                return 0
            try:
                return self._written(chunks, self._write(chunks))
            except REFUSED:
                pass  # a row the database refuses: find its chunk below, so it cannot block every row after it
            except Exception as exc:  # database down or restarting: keep the rows for the next flush
                return self._keep(chunks, exc)
            new = 0
            for i, chunk in enumerate(chunks):
                try:
                    new += self._written([chunk], self._write([chunk]))
                except REFUSED as exc:
                    self._drop(chunk, exc)
                except Exception as exc:
                    return new + self._keep(chunks[i:], exc)
            return new

    def _write(self, chunks: list) -> int:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.url, attempts=1)
        with self._conn, self._conn.cursor() as cur:
            return write_once(cur, db.CsvRows.of_columns(columns_of(chunks)))

    def _written(self, chunks: list, new: int) -> int:
        rows = sum(len(chunk[4]) for chunk in chunks)
        with self._lock:
            self.pending -= rows
            self.logged += new
            self.duplicates += rows - new
        self.last_error, self.unreachable_since, self.last_written_at = None, None, time.time()
        _tell(self.on_logged, new)
        return new

    def _keep(self, chunks: list, exc: Exception) -> int:
        self._unreachable(exc)
        with self._lock:
            self.chunks.extendleft(reversed(chunks))
        log.warning("prediction log: %d rows waiting for the raw database (%s)", self.pending, self.last_error)
        return 0

    def _drop(self, chunk: tuple, exc: Exception) -> None:
        rows = len(chunk[4])
        with self._lock:
            self.pending -= rows
            self.lost += rows
        _tell(self.on_lost, rows)
        self.last_error = f"rows refused by the database: {exc}".strip()[:500]
        log.error("prediction log: %d rows refused by the database, dropped: %s", rows, exc)

    def _unreachable(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}".strip()[:500]
        self.unreachable_since = self.unreachable_since or time.time()
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _probe(self) -> None:
        """With nothing to write, still find out now and then whether the database answers (/health)."""
        if time.time() - max(self.last_written_at or 0, self._probed_at) < PROBE_S:
            return
        self._probed_at = time.time()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = db.connect(self.url, attempts=1)
            with self._conn, self._conn.cursor() as cur:
                cur.execute("SELECT 1")
            self.last_error, self.unreachable_since = None, None
        except Exception as exc:
            self._unreachable(exc)

    def close(self, timeout_s: float = 20.0) -> int:
        """Stop the thread and write everything buffered, retrying until ``timeout_s``. Rows still
        unwritten then are counted as lost (and logged). Returns the rows left unwritten."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            if not self.flush() and self.pending:
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        left = self.pending
        if left:
            with self._lock:
                self.lost += left
                self.pending = 0
                self.chunks.clear()
            _tell(self.on_lost, left)
            log.error("prediction log: %d rows could not be written before the replica stopped (%s)",
                      left, self.last_error)
        if self._conn is not None:
            self._conn.close()
        return left

    def alive(self) -> bool:
        return self._thread.is_alive() or self._stop.is_set()

    def status(self) -> dict:
        down_for = round(time.time() - self.unreachable_since, 1) if self.unreachable_since else None
        return {"database": "unreachable" if self.unreachable_since else "ok", "unreachable_for_s": down_for,
                "backlog": self.pending, "logged": self.logged, "duplicates_skipped": self.duplicates,
                "lost": self.lost, "last_error": self.last_error, "last_written_at": self.last_written_at}
