"""Airflow's four components as one process for the stack: ``python -m cluster.airflow_components``.

What ``airflow standalone`` runs (API server, scheduler, DAG processor, triggerer), with one
difference: the scheduler and the triggerer start without their log servers (``--skip-serve-logs``).
Airflow binds those to every interface (``airflow.utils.serve_logs`` passes ``host=""`` to uvicorn;
no setting changes it), and on one machine they serve nothing: the API server reads the task logs
from the local log folder. ``standalone`` takes no options for its components, hence this runner.

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
COMPONENTS = (("api-server",), ("scheduler", "--skip-serve-logs"), ("dag-processor",),
              ("triggerer", "--skip-serve-logs"))
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
