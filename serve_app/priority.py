"""A Serve replica's CPU priority: it starts at the default priority and serves at Ray's.

Ray lowers a worker's main thread to ``worker_niceness`` (15) as the worker starts. A replica that
replaces a killed one then gets the CPU for its start-up (Ray Serve, scikit-learn and MLflow imported,
the model loaded: ~7 s of CPU) on equal terms with the surviving replica and the load generator taking
over its traffic, and on the 2-core machine it took 10-13 s to serve again (the bound is 10 s). The
Serve applications set Ray's own ``RAY_worker_niceness`` to 0 in their runtime environment
(serve_app/config.yaml; every core worker reads it as it starts), so a replica starts at the priority of
the raylet that spawned it, and its constructor ends with ``serve_at``: every thread (the main thread,
the loop that runs the deployment's code, Ray's gRPC and I/O threads) at the niceness it serves at.
Lowering a priority needs no privilege: this works in a pod too."""

from __future__ import annotations

import contextlib
import os

RAY_WORKER_NICENESS = 15  # Ray's default worker_niceness: what the pricing replicas serve at
STARTING_NICENESS = 0  # RAY_worker_niceness of the Serve applications' runtime environment (config.yaml)


def serve_at(niceness: int = RAY_WORKER_NICENESS) -> None:
    """The end of a replica's start: every thread of this process at ``niceness``."""
    renice(niceness)


def renice(niceness: int, pid: int | None = None) -> None:
    """Every thread of process ``pid`` (default: this one) at ``niceness`` (Linux keeps a niceness per
    thread). Threads started later inherit it from the thread that starts them."""
    with contextlib.suppress(FileNotFoundError):  # the process has ended
        for tid in os.listdir(f"/proc/{pid or 'self'}/task"):
            # raising a priority needs CAP_SYS_NICE; a thread may have ended
            with contextlib.suppress(PermissionError, ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
