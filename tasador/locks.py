"""One writer per (group, day): every pipeline step holds a PostgreSQL advisory lock for its whole run,
and a promotion also holds its model's lock (the alias is shared by every group and day).

The lock lives in a session on the raw database (the one every deployment has), so a crashed step
releases it with its connection; the step may run its own raw-database work on that session.
``lock_timeout`` bounds the wait: a second writer waits up to ``step_lock_timeout_s`` and then fails
naming the step that holds the lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from tasador import db
from tasador.settings import Settings

NAMESPACE = 0x7A5AD0  # the first key of pg_advisory_lock(int, int): Tasador's pipeline locks


class StepLocked(RuntimeError):
    """Another writer holds the (group, day) lock longer than the lock timeout."""


def pipeline(group: int, day: str) -> str:
    """The lock of one (group, day) pipeline: every step that writes its data holds it."""
    return f"pipeline {group}/{day}"


def model(name: str) -> str:
    """The lock of a registered model's alias: promotions of any (group, day) take turns."""
    return f"model {name}"


@contextmanager
def writer_lock(settings: Settings, name: str, step: str) -> Iterator[psycopg2.extensions.connection]:
    """Hold the lock ``name`` while the block runs; raise ``StepLocked`` after the timeout. Yields the lock's
    session (autocommit, the raw database): a step may run its raw-database work on it, through
    ``db.transaction(session)``, rather than open connections of its own."""
    conn = db.connect(settings.raw_db)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('application_name', %s, false)", (f"tasador {step} {name}"[:63],))
            cur.execute("SELECT set_config('lock_timeout', %s, false)",
                        (f"{max(1, int(settings.step_lock_timeout_s * 1000))}ms",))
            try:
                cur.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (NAMESPACE, name))
            except psycopg2.errors.LockNotAvailable:
                raise StepLocked(f"{step}: another writer holds the lock '{name}' "
                                 f"after {settings.step_lock_timeout_s:g}s ({holders(settings, name) or 'unknown'});"
                                 " run again when it has finished") from None
            # the session's other statements wait for a table lock as any of ours does (db.connect's)
            cur.execute("SELECT set_config('lock_timeout', %s, false)", (f"{db.LOCK_TIMEOUT_MS}ms",))
        yield conn
    finally:
        conn.close()  # ends the session: the lock goes with it


def holders(settings: Settings, name: str) -> str:
    """Who holds the lock ``name``: the application name, PID and start of each holder."""
    with db.transaction(settings.raw_db) as cur:
        cur.execute("SELECT a.application_name, a.pid, a.backend_start FROM pg_locks l"
                    " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
                    " AND l.classid = %s AND l.objid = (hashtext(%s)::bigint & 4294967295)::text::oid",
                    (NAMESPACE, name))
        return "; ".join(f"'{app}' (backend pid {pid}, since {start:%H:%M:%S})" for app, pid, start in cur.fetchall())
