"""Deterministic fault injection: named points in the pipeline where a fault test makes the process
die (SIGKILL, no cleanup, as the OOM killer or a lost node would) or stop and wait for the test.

A point does nothing unless the settings name it (``TASADOR_FAULT_POINT``): in production it costs
one string comparison. It fires once per ``fault_dir`` (a marker file created with O_EXCL), so a
re-run, a retried Tune trial or an Airflow retry of the same step passes the point the second time.

Actions (``TASADOR_FAULT_ACTION``):
- ``kill``: SIGKILL this process;
- ``wait``: create ``<fault_dir>/<point>.reached`` and block until ``<fault_dir>/<point>.release``
  exists (the test kills PostgreSQL there, say, then releases);
- ``raise``: raise ``InjectedFault`` (a task that fails mid-job while its Ray job goes on).

Every point is listed in ``POINTS``; a setting that names another is refused at once.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from tasador.settings import Settings

log = logging.getLogger(__name__)

POINTS = (
    "ingest.after_fetch",  # the API served (and counted) the batch; nothing stored yet
    "ingest.after_copy",  # the batch's rows are COPYed, the transaction not committed
    "process.after_copy",  # clean rows and rejects COPYed, not committed
    "decide.before_record",  # drift computed, the decision not written
    "train.trial_step",  # inside a Tune trial (a Ray worker), after its first report
    "train.before_register",  # the best model chosen, no version registered yet
    "train.before_log_model",  # the best trial's run resumed to log the model into; nothing logged yet
    "train.after_register",  # the version is registered, the decisions do not say so yet
    "promote.before_alias",  # the verdict is recorded, the alias not moved
    "promote.after_alias",  # the alias moved, the tags and the outcome not written
    "airflow.after_submit",  # an Airflow task submitted its Ray job and then fails
)


class InjectedFault(RuntimeError):
    """Raised at a fault point whose action is ``raise``."""


def point(name: str, settings: Settings | None = None) -> None:
    """Fire the fault configured for ``name``, if any (once per fault dir)."""
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r}")
    configured = settings.fault_point if settings else os.environ.get("TASADOR_FAULT_POINT", "")
    if not configured:
        return
    settings = settings or Settings.load()
    if configured not in POINTS:
        raise ValueError(f"TASADOR_FAULT_POINT={configured!r} is not a fault point; known: {', '.join(POINTS)}")
    if configured != name or not settings.fault_dir:
        return
    folder = Path(settings.fault_dir)
    try:
        fd = os.open(folder / f"{name}.fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return  # fired once already: the re-run passes
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    action = settings.fault_action
    log.warning("fault point %s: %s (pid %d)", name, action, os.getpid())
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # SIGKILL is delivered before this returns
    elif action == "wait":
        (folder / f"{name}.reached").write_text(str(os.getpid()))
        while not (folder / f"{name}.release").exists():
            time.sleep(0.05)
    elif action == "raise":
        raise InjectedFault(f"injected fault at {name}")
    else:
        raise ValueError(f"TASADOR_FAULT_ACTION={action!r}: expected kill, wait or raise")
