"""The main job's full cycle, timed (issue 18), with the figures that explain it, in one run.

    .venv/bin/python -m bench.cycle            # full scale: the data API's six batches (1,084,909 rows)
    .venv/bin/python -m bench.cycle --quick    # 10% of the data

On a private stack like ``tasador up``'s (PostgreSQL, MLflow, Ray head, data API, Serve, Prometheus, Dash,
Airflow), the DAG's schedule off so that only the demo's runs move:

- ``cycle_s``: ``tasador demo``'s path, one Airflow run per batch (``cli.demo.through_airflow``) until a
  run finds the API exhausted, from the first trigger to the last run's end. Per batch and per step from
  Airflow's task instances; ``airflow_gap_s`` is the time between one task's end and the next one's start
  (Airflow's own cost, not the Ray jobs').
- ``step_overhead_s``: a decide with nothing new, as a Ray job from submission to result (median of 5).
- ``load_all_rows_s``: every clean row loaded as training loads it (Arrow), in this process.
- ``idle_cores``: the machine's CPU over 60 s right after, the stack up and idle (``bench.idle``).
- ``process_vs_copy_ratio``: a fresh full-size batch's ``process_pending`` against the bare COPY out + in
  of the same rows (``bench.process``'s measures), the medians of three of each (three fresh batches),
  taken in turn; above 1.0 is faster than the bound.
- ``in_stack_training_ratio``: the cycle's last training (all rows, as a Ray job, the whole stack up)
  over the same training (same rows, same search, registered under a model of its own) as a Ray job
  after Serve, Dash, Prometheus and Airflow are stopped: the training stack only, as ``bench.train``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import datetime

from bench import idle
from bench import process as process_bench
from bench.common import Sampler, keep_logs, parser, report, timer
from cluster import airflow, processes, serve, stack
from tasador import ray_jobs, training
from tasador.settings import Settings

BASELINE_MODEL = "bench-cycle-training-stack"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--train-once", action="store_true", help=argparse.SUPPRESS)  # the baseline's Ray job
    args = p.parse_args()
    if args.train_once:
        return train_once(Settings.load())
    scale = 0.1 if args.quick else 1.0
    with tempfile.TemporaryDirectory(prefix="tasador-cycle-") as tmp:
        s = stack.isolated_settings(os.path.join(tmp, "state"), data_api_scale=scale, airflow_schedule="none",
                                    airflow_paused=False)
        try:
            stack.up(s)
            result = measure(s, scale)
        except BaseException:
            print(f"bench: the run failed; the stack's logs are kept in {keep_logs(s)}", flush=True)
            raise
        finally:
            stack.down(s, discard=True)
    report(result)


def measure(s: Settings, scale: float) -> dict:
    from cli import demo

    with CpuSampler() as cpu, timer() as t_cycle:
        demo.through_airflow(s)
    steps = timeline(s)
    print_timeline(steps)
    print_job_phases(s)
    last_train = [x for x in steps if x["task"] == "train" and x["state"] == "success"][-1]
    print(f"where the cores went during the last training ({last_train['run']}, {last_train['seconds']:.0f} s):")
    for label, cores in cpu.busiest(last_train["start"], last_train["end"]):
        print(f"{cores:6.3f} cores  {label}", flush=True)
    overheads = [step_overhead(s) for _ in range(5)]
    with timer() as t_load:
        rows = len(training.load_dataset(s).frame)
    idle_window = idle.measure(60)
    # three of each, medians: a single run of each moved the ratio by 0.1-0.2 between bench.cycle runs;
    # each processing run followed by a bound's, so that both meet the same background (the cycle's
    # databases settling after it, where before the bound's three came after processing's three)
    processed = [process_bench.tasador_time(s, 1, "bench-cycle-0")]
    raw_rows, batch_id, _ = processed[0]
    _, clean = process_bench.pandas_time(s, batch_id)
    bounds = [process_bench.copy_bound_time(s, batch_id, clean)]
    for run in (1, 2):
        processed.append(process_bench.tasador_time(s, 1, f"bench-cycle-{run}"))
        bounds.append(process_bench.copy_bound_time(s, batch_id, clean))
    t_process = statistics.median(t["s"] for _, _, t in processed)
    t_copy = statistics.median(t["s"] for t in bounds)
    in_stack = last_training_s(s)
    stop_all_but_training(s)
    baseline = ray_jobs.run(s.replace(model_name=BASELINE_MODEL), "bench.cycle", ["--train-once"], timeout_s=3600)
    assert baseline.status == "SUCCEEDED", baseline.logs[-3000:]
    baseline_s = job_seconds(s, baseline.job_id)
    trained = [x for x in steps if x["task"] == "train" and x["state"] == "success"]
    return {"benchmark": "cycle", "scale": scale, "rows": rows, "batches": len({x["run"] for x in steps}),
            "cycle_s": t_cycle["s"], "train_s": sum(x["seconds"] for x in trained),
            "airflow_gap_s": sum(x["gap_s"] for x in steps),
            "in_stack_training_s": in_stack, "training_stack_only_s": baseline_s,
            "in_stack_training_ratio": in_stack / baseline_s,
            "step_overhead_s": statistics.median(overheads), "step_overheads_s": overheads,
            "process_rows": raw_rows, "process_s": t_process, "copy_bound_s": t_copy,
            "process_runs_s": [t["s"] for _, _, t in processed], "copy_bound_runs_s": [t["s"] for t in bounds],
            "process_vs_copy_ratio": t_copy / t_process,
            "load_all_rows_s": t_load["s"],
            "idle_cores": idle_window["idle_cores"], "idle_stack_cores": idle_window["stack_cores"]}


def timeline(s: Settings) -> list[dict]:
    """Every task of every run, in order: its state, seconds, and the gap since the task before it ended
    (the run's start for the first)."""
    api = airflow.RestApi(s)
    out = []
    for run in airflow.runs(s):
        tasks = api.run(run["run_id"])["tasks"]
        previous_end = _time(run["start_date"])
        for task in sorted((t for t in tasks if t.get("start_date")), key=lambda t: t["start_date"]):
            start, end = _time(task["start_date"]), _time(task["end_date"] or task["start_date"])
            out.append({"run": run["run_id"], "task": task["task_id"], "state": task["state"], "start": start,
                        "end": end, "seconds": end - start, "gap_s": max(0.0, start - previous_end)})
            previous_end = end
    return out


def print_timeline(steps: list[dict]) -> None:
    for run in dict.fromkeys(x["run"] for x in steps):
        mine = [x for x in steps if x["run"] == run]
        parts = "  ".join(f"{x['task']} {x['seconds']:.1f}s (+{x['gap_s']:.1f})" for x in mine)
        print(f"{run}: {sum(x['seconds'] + x['gap_s'] for x in mine):.1f}s  {parts}", flush=True)


def print_job_phases(s: Settings) -> None:
    """Where each training's and promotion's time went: the phases their Ray jobs' results carry."""
    api = ray_jobs.JobsApi(s)
    for job in sorted(api.list(), key=lambda j: j.get("start_time") or 0):
        if any(f"jobs.{step}" in job.get("entrypoint", "") for step in ("train", "promote")):
            summary = ray_jobs.last_json(api.logs(job["submission_id"]))
            phases = "  ".join(f"{k} {v:.1f}s" for k, v in (summary.get("phases_s") or {}).items())
            print(f"{job['submission_id']}: {summary.get('status')} {summary.get('version', '')}  {phases}", flush=True)


class CpuSampler(Sampler):
    """Every process's CPU seconds every 5 s in a thread (``bench.idle.cpu_seconds``), so that a window of
    the cycle (a training) can be broken down by process afterwards."""

    def __init__(self, every_s: float = 5.0):
        super().__init__(every_s)
        self.samples = []

    def sample(self) -> None:
        self.samples.append((time.time(), idle.cpu_seconds()))

    def busiest(self, start: float, end: float, top: int = 15) -> list[tuple[str, float]]:
        """(process, cores) over [start, end], the busiest first: each process's CPU from the sample before
        the window (0 when it started later) to the last sample it was seen in (a job's driver and its
        Tune workers exit with the training, before the sample after it)."""
        window = [x for x in self.samples if start - self.every_s <= x[0] <= end + self.every_s]
        if len(window) < 2:
            return []
        first, last = window[0][1], {}
        for _, seen in window[1:]:
            last.update(seen)
        elapsed = window[-1][0] - window[0][0]
        used: dict[str, float] = {}
        for pid, (label, cpu) in last.items():
            used[label] = used.get(label, 0.0) + (cpu - first.get(pid, (label, 0.0))[1]) / elapsed
        return sorted(used.items(), key=lambda x: -x[1])[:top]


def step_overhead(s: Settings) -> float:
    """A decide with nothing new to decide, from submission to its result."""
    started = time.monotonic()
    outcome = ray_jobs.run_attached(s, "jobs.decide", ["--group", str(s.group), "--day", s.day],
                                    ray_jobs.submission_id("bench-cycle-decide", str(time.time_ns())))
    assert outcome.status == "SUCCEEDED" and outcome.summary["status"] == "nothing_to_decide", outcome.summary
    return time.monotonic() - started


def job_seconds(s: Settings, job_id: str) -> float:
    found = ray_jobs.JobsApi(s).find(job_id)
    return (found["end_time"] - found["start_time"]) / 1000


def last_training_s(s: Settings) -> float:
    """The cycle's last training Ray job (every row collected), start to end."""
    jobs = [j for j in ray_jobs.JobsApi(s).list() if (j.get("submission_id") or "").endswith(("-train-a1", "-train-a2"))
            and j["status"] == "SUCCEEDED"]
    return job_seconds(s, max(jobs, key=lambda j: j["start_time"])["submission_id"])


def stop_all_but_training(s: Settings) -> None:
    """Serve, Dash, Prometheus and Airflow stopped: what is left is ``bench.train``'s training stack."""
    serve.shutdown(s)
    registry = processes.load_registry(s.state_path)
    for name in ("airflow", "dash", "prometheus"):
        if registry.get(name, {}).get("pid"):
            processes.stop_pid(registry[name]["pid"])
            processes.forget(s.state_path, name)


def train_once(s: Settings) -> None:
    """The baseline's Ray job: ``training.train`` on every clean row, as the cycle's last training did."""
    summary = training.train(s, {"batch_id": 0, "retrain_reason": "bench.cycle: the training-stack-only baseline"})
    print(json.dumps({k: summary[k] for k in ("version", "family", "rows", "seconds")}), flush=True)


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    main()
