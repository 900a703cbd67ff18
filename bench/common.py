"""What the benchmarks share: a private stack in a temporary dir, timing, peak memory, the JSON line."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from cluster import processes, ray_head, stack
from tasador.settings import Settings

# Load generators share this machine's 2 cores with the stack they measure (in production clients are
# elsewhere): they run at the niceness Ray gives its workers (the replicas, and HAProxy under Serve's
# proxy), so that they do not outrank what they measure.
CLIENT_NICENESS = 15


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--quick", action="store_true", help="a small run (10%% of the data) to check it works")
    return p


@contextmanager
def private_stack(scale: float, only: tuple[str, ...] | None = None) -> Iterator[Settings]:
    """A stack of its own, thrown away after; when the run fails, its logs are kept first."""
    with tempfile.TemporaryDirectory(prefix="tasador-bench-") as tmp:
        settings = stack.isolated_settings(os.path.join(tmp, "state"), data_api_scale=scale, airflow_server=False)
        try:
            stack.up(settings, only=only)
            yield settings
        except BaseException:
            traceback.print_exc()  # now: a lost GCS may end the process before Python would print it
            print(f"bench: the run failed; the stack's logs are kept in {keep_logs(settings)}", file=sys.stderr)
            raise
        finally:
            stack.down(settings, discard=True)


def keep_logs(settings: Settings) -> Path:
    """Copy the stack's logs and Ray's session logs out of a stack about to be discarded."""
    kept = Path(tempfile.gettempdir()) / f"tasador-bench-logs-{time.strftime('%Y%m%d-%H%M%S')}"
    for source, name in ((settings.state_path / "logs", "stack"),
                         (ray_head.temp_dir(settings) / "session_latest" / "logs", "ray")):
        if source.is_dir():
            shutil.copytree(source, kept / name, ignore_dangling_symlinks=True, dirs_exist_ok=True)
    return kept


@contextmanager
def timer() -> Iterator[dict]:
    out = {}
    start = time.perf_counter()
    yield out
    out["s"] = time.perf_counter() - start


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of a process (VmHWM), in MiB: read from /proc, as psutil reports only
    the current one."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


class Sampler:
    """Calls ``sample()`` in a thread every ``every_s`` seconds from the start of the ``with`` block to its end."""

    def __init__(self, every_s: float):
        self.every_s, self._stop = every_s, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.every_s):
                return

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


class TreeMemory(Sampler):
    """Samples the summed memory of a process tree (and this process) every ``every_s``: resident (RSS),
    or with ``proportional`` each process's PSS, shared pages (Ray's object store) split among the
    processes that map them, so that the sum counts them once. ``first_mb`` and ``peak_mb``."""

    def __init__(self, root_pid: int, every_s: float = 0.5, proportional: bool = False):
        super().__init__(every_s=every_s)
        self.root, self.proportional, self.first_mb, self.peak_mb = root_pid, proportional, None, 0.0

    def sample(self) -> None:
        total = 0
        for pid in [self.root, os.getpid(), *processes.descendants(self.root)]:
            try:
                process = psutil.Process(pid)
                total += process.memory_full_info().pss if self.proportional else process.memory_info().rss
            except psutil.Error:
                continue
        if self.first_mb is None:
            self.first_mb = total / 2**20
        self.peak_mb = max(self.peak_mb, total / 2**20)


def report(result: dict) -> None:
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


def held_out_listings(ds, count: int | None = None) -> list[dict]:
    """The first ``count`` (default all) held-out rows of a training dataset as /predict listings: the
    model's features, a missing value as None (JSON null)."""
    from tasador.schema import FEATURES

    frame = ds.frame[ds.test][list(FEATURES)].head(count) if count else ds.frame[ds.test][list(FEATURES)]
    return frame.astype(object).where(frame.notna(), None).to_dict("records")
