"""Airflow's components as one process for the stack: ``python -m cluster.airflow_components``.

What ``airflow standalone`` runs, with two differences:
- The scheduler starts without its log server (``--skip-serve-logs``). Airflow binds it to every
  interface (``airflow.utils.serve_logs`` passes ``host=""`` to uvicorn; no setting changes it), and on
  one machine it serves nothing: the API server reads the task logs from the local log folder.
- No triggerer. It runs only deferred tasks, and the retraining DAG defers none (each task waits for
  its Ray job in its own worker); idle, it queried the metadata database every second for triggers
  that never come (0.008 core of an idle stack, and a database session of its own: issue 18). A DAG
  that defers (a deferrable sensor, ``DeadlineAlert`` callbacks) needs it back:
  ``("triggerer", "--skip-serve-logs")`` in ``COMPONENTS``.
``standalone`` takes no options for its components, hence this runner.

The components share this process's environment and output. When any of them exits, or this process
gets SIGTERM/SIGINT, the others are stopped and this process exits (``tasador down`` stops it by PID,
like ``airflow standalone``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

AIRFLOW = Path(sys.executable).parent / "airflow"
COMPONENTS = (("api-server",), ("scheduler", "--skip-serve-logs"), ("dag-processor",))
STOP_GRACE_S = 20.0


def main() -> int:
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    running = [subprocess.Popen([str(AIRFLOW), *args]) for args in COMPONENTS]
    exited = None
    while not stopping and exited is None:
        exited = next((p for p in running if p.poll() is not None), None)
        time.sleep(0.5)
    if exited is not None:
        print(f"airflow {exited.args[1]} exited with {exited.returncode}: stopping the others", flush=True)
    for proc in running:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return 0 if exited is None else 1


if __name__ == "__main__":
    sys.exit(main())
