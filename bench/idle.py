"""Where an idle machine's CPU goes (issue 18's ``idle_cores``): every process's CPU time over a window,
from psutil, in cores (CPU seconds per second), the busiest first.

    .venv/bin/python -m bench.idle [SECONDS]      (default 60; run it with the stack up and nothing else)

The last line carries ``idle_cores`` (every process on the machine, the sandbox's own included) and
``stack_cores``, the part whose command line names a component of the stack (``STACK_WORDS``).
"""

from __future__ import annotations

import json
import sys
import time

import psutil

STACK_WORDS = ("ray", "mlflow", "postgres", "airflow", "prometheus", "haproxy", "dashboard", "data_api", "raylet",
               "gcs_server", "uvicorn", "gunicorn", "tasador")


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every process's (name and command line, user + system CPU seconds so far)."""
    seen = {}
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is None:
            continue
        label = " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])[:120]
        seen[proc.pid] = (label, times.user + times.system)
    return seen


def measure(seconds: float) -> dict:
    before, started = cpu_seconds(), time.monotonic()
    time.sleep(seconds)  # the measurement is a window of wall time: nothing to poll for
    after, elapsed = cpu_seconds(), time.monotonic() - started
    used = {pid: (label, cpu - before.get(pid, (label, 0.0))[1]) for pid, (label, cpu) in after.items()}
    busiest = sorted(used.values(), key=lambda x: -x[1])
    for label, cpu in busiest[:20]:
        print(f"{cpu / elapsed:6.3f} cores  {label}")
    total = sum(cpu for _, cpu in busiest) / elapsed
    stack = sum(cpu for label, cpu in busiest if any(w in label.lower() for w in STACK_WORDS)) / elapsed
    return {"idle_cores": round(total, 3), "stack_cores": round(stack, 3), "window_s": round(elapsed, 1)}


if __name__ == "__main__":
    print(json.dumps(measure(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0)))
