"""The in-process bound for 1,000-listing requests (issue 17): the served model's own ``predict`` on the
same rows, no HTTP, no Ray, one OpenMP thread per process and one process per core.

``bench.serve`` runs one of these per core at once (``bound_rows_per_s``) and compares Serve's
1,000-listing rows/s with the sum. Run alone:
``python -m bench.model_bound MODEL.pkl ROWS.pkl SECONDS`` prints this process's rows/s.
"""

import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def rows_per_s(model, frame, seconds: float) -> float:
    """Predict ``frame`` again and again for ``seconds`` (after one warm-up call): rows a second."""
    model.predict(frame)
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.predict(frame)
        calls += 1
    return calls * len(frame) / (time.perf_counter() - started)


def bound_rows_per_s(model, frame, seconds: float, processes: int | None = None) -> float:
    """``processes`` (default: one per core) of this module at once, each pricing ``frame`` with
    ``model``: their rows a second, summed."""
    processes = processes or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="tasador-bound-") as tmp:
        model_path, rows_path = Path(tmp, "model.pkl"), Path(tmp, "rows.pkl")
        model_path.write_bytes(pickle.dumps(model))
        rows_path.write_bytes(pickle.dumps(frame))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        workers = [subprocess.Popen([sys.executable, "-m", "bench.model_bound", str(model_path), str(rows_path),
                                     str(seconds)], stdout=subprocess.PIPE, text=True, env=env)
                   for _ in range(processes)]
        outputs = [w.communicate(timeout=seconds + 120)[0] for w in workers]
    if any(w.returncode for w in workers):
        raise RuntimeError(f"a bound process failed: exit codes {[w.returncode for w in workers]}")
    return round(sum(float(out.strip().splitlines()[-1]) for out in outputs))


if __name__ == "__main__":
    model_file, rows_file, secs = sys.argv[1:4]
    print(rows_per_s(pickle.loads(Path(model_file).read_bytes()), pickle.loads(Path(rows_file).read_bytes()),
                     float(secs)))
