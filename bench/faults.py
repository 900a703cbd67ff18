"""Fault injection over the real pipeline: kill, cut or freeze a real component at a named point, re-run,
then count rows, versions and decisions (``tasador.audit``).

    python -m bench.faults [--quick] [--only NAME ...]

Each scenario runs on its own (group, day) of a private stack (PostgreSQL, MLflow, Ray head, the
data API at 2% scale), every pipeline step a real Ray job. The tests in ``tests/faults/`` run the
same scenarios and assert the same accounting. Prints a table, then one JSON line: ``scenarios``,
``rows_lost``, ``rows_duplicated``, ``decisions_dropped`` (totals) and one object per scenario.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.fault_proxy import MODES, FaultProxy
from cluster import postgres, processes, stack
from tasador import audit, ray_jobs, registry
from tasador.settings import Settings

SHARED_MODEL = "faults-shared"  # has a production model: scenarios on it decide "no retrain"
SHARED_GROUP = 4000


@dataclass
class Lab:
    """One scenario's (group, day), model name and fault folder on a stack. Its jobs reach the data
    API through a proxy that injects the scenario's API faults and follows the API's counter: every
    batch up to it must be stored in the end."""
    name: str
    s: Settings
    folder: Path
    proxy: FaultProxy
    base: Settings  # the stack's own (the lab's point its jobs at the proxy; the accounting asks the API)
    api_modes: tuple = ()  # the API faults api_fault injects, in turn

    @classmethod
    def make(cls, base: Settings, name: str, workdir: Path, trains: bool, api_modes: tuple = (),
             **changes) -> Lab:
        folder = workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        model = f"faults-{name}" if trains else SHARED_MODEL
        proxy = FaultProxy(base.data_api, stall_s=6)  # the scenario sets the faults (api_fault)
        s = base.replace(group=5000 + zlib.crc32(name.encode()) % 90_000, day="Monday", model_name=model,
                         train_families=changes.pop("train_families", "ridge"), fault_dir=str(folder),
                         retrain_min_rows=1_000 if trains else 10**9, data_api_url=proxy.url,
                         data_api_timeout_s=2.0 if api_modes else base.data_api_timeout_s,
                         data_api_backoff_s=0.2, **changes)
        return cls(name, s, folder, proxy, base, api_modes)

    def args(self) -> list[str]:
        return ["--group", str(self.s.group), "--day", self.s.day]

    def job(self, module: str = "jobs.pipeline", timeout_s: float = 900, **changes) -> ray_jobs.JobOutcome:
        return ray_jobs.run(self.s.replace(**changes), module, self.args(), timeout_s=timeout_s)

    def faulted(self, point: str, action: str = "kill", **changes) -> Settings:
        return self.s.replace(fault_point=point, fault_action=action, **changes)

    def ledger_size(self) -> int:
        from tasador.ingest import stored_hashes

        return len(stored_hashes(self.s.raw_db, self.s.group, self.s.day))

    def account(self) -> dict:
        """The audit of the scenario's (group, day) against every batch the API served."""
        served = api_batches(self.base.data_api, self.s.group, self.s.day, self.proxy.position)
        return {**audit.audit(self.s, self.s.group, self.s.day, served), "served": len(served)}

    def wait_reached(self, point: str, job_id: str, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while not (self.folder / f"{point}.reached").exists():
            status = ray_jobs.JobsApi(self.s).status(job_id)
            if status in ray_jobs.TERMINAL:
                raise AssertionError(f"job {job_id} ended {status} before reaching {point}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not reach {point} in {timeout_s:.0f}s")
            time.sleep(0.1)

    def release(self, point: str) -> None:
        (self.folder / f"{point}.release").touch()

    def fired(self, point: str) -> bool:
        return (self.folder / f"{point}.fired").exists()


def api_batches(api: str, group: int, day: str, k: int) -> list[list[dict]]:
    """Batches 1..k of (group, day) as the API serves them (restarted, then read in order)."""
    session = requests.Session()
    params = {"group_number": group, "day": day}
    session.get(f"{api}/restart_data_generation", params=params, timeout=60).raise_for_status()
    out = []
    for _ in range(k):
        resp = session.get(f"{api}/data", params=params, timeout=300)
        resp.raise_for_status()
        out.append(resp.json()["data"])
    return out


def until_done(lab: Lab, max_runs: int = 4) -> tuple[int, list[str]]:
    """Re-run the pipeline job until a run succeeds; the number of runs and how each ended."""
    statuses = []
    for _ in range(max_runs):
        statuses.append(lab.job().status)
        if statuses[-1] == "SUCCEEDED":
            return len(statuses), statuses
    raise AssertionError(f"{lab.name}: no run completed after {max_runs}: {statuses}")


def ensure_shared_model(base: Settings) -> None:
    """A production version of the shared model, so that scenarios on it need no training."""
    s = base.replace(model_name=SHARED_MODEL, group=SHARED_GROUP, day="Monday", train_families="ridge")
    if registry.production(s) is None:
        outcome = ray_jobs.run(s, "jobs.pipeline", ["--group", str(s.group), "--day", s.day], timeout_s=900)
        if outcome.status != "SUCCEEDED" or registry.production(s) is None:
            raise RuntimeError(f"could not train the shared model: {outcome.logs[-3000:]}")


# --- scenarios: each returns what it injected and how long recovery took; the audit follows ---

def api_fault(lab: Lab) -> dict:
    """Batch 1 comes through; then each of the lab's API faults in turn meets the first GET /data of a
    run (batches 2, 3, ...: each fault after the API counted the batch), re-run until a run succeeds."""
    assert lab.job().status == "SUCCEEDED"
    started = time.monotonic()
    runs, statuses = 0, []
    for mode in lab.api_modes:
        lab.proxy.faults[lab.proxy.data_requests + 1] = mode
        more, ended = until_done(lab)
        runs, statuses = runs + more, statuses + ended
    assert [mode for _, mode in lab.proxy.injected] == list(lab.api_modes), lab.proxy.injected
    return {"runs_to_recover": runs, "statuses": statuses, "recover_s": time.monotonic() - started}


def kill_driver(*points: str) -> Callable[[Lab], dict]:
    """SIGKILL the driver at each of ``points`` in turn, one run each: every run after the first resumes
    what the killed one left and is killed further on; then re-run until a run succeeds. (One chain
    per stage, not one scenario per point: the same kills and accounting at a third of the CI time.)"""
    def scenario(lab: Lab) -> dict:
        for point in points:
            killed = lab.job(**_fault(lab, point))
            assert killed.status == "FAILED" and lab.fired(point), (point, killed.status, killed.logs[-2000:])
        started = time.monotonic()
        runs, statuses = until_done(lab)
        return {"runs_to_recover": runs, "statuses": ["FAILED"] * len(points) + statuses,
                "recover_s": time.monotonic() - started}
    return scenario


def kill_postgres(point: str) -> Callable[[Lab], dict]:
    """Stop the job at ``point``, SIGKILL every PostgreSQL process, restart the server, let the job
    go on (it fails on its dead connections, or reconnects and finishes), then re-run if it failed."""
    def scenario(lab: Lab) -> dict:
        job_id = ray_jobs.submit(lab.faulted(point, "wait"), "jobs.pipeline", lab.args())
        try:
            lab.wait_reached(point, job_id)
            killed = kill_server(lab.s)
            started = time.monotonic()
            postgres.start(lab.s)
        finally:
            lab.release(point)
        first = ray_jobs.wait(lab.s, job_id, timeout_s=900)
        runs, statuses = (0, []) if first.status == "SUCCEEDED" else until_done(lab)
        return {"runs_to_recover": runs, "statuses": [first.status, *statuses], "postgres_processes_killed": killed,
                "recover_s": time.monotonic() - started}
    return scenario


def kill_server(s: Settings) -> int:
    """SIGKILL the stack's PostgreSQL server and every one of its processes; how many there were."""
    return kill_trees([postgres.running_pid(s)])


def kill_stack(s: Settings) -> int:
    """SIGKILL every process of the stack at once, as a power loss or the OOM killer taking all would:
    each component ``stack.up`` recorded (PostgreSQL, MLflow, the Ray head) and every process below it
    (the Ray daemons and workers, the job's driver among them); how many there were."""
    return kill_trees([entry["pid"] for entry in processes.load_registry(s.state_path).values() if entry.get("pid")])


def kill_trees(roots: list[int]) -> int:
    """SIGKILL each of ``roots`` that runs and every process below it, all at once; wait until none runs."""
    tree = [p for root in roots if processes.alive(root) for p in (root, *processes.descendants(root))]
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(processes.alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(tree)


def power_loss(point: str) -> Callable[[Lab], dict]:
    """Stop the job at ``point``, SIGKILL every process of the stack, start the stack again as
    ``tasador up`` does (stale PID files, a PostgreSQL that did not shut down, Ray's job history gone),
    then re-run until a run succeeds."""
    def scenario(lab: Lab) -> dict:
        job_id = ray_jobs.submit(lab.faulted(point, "wait"), "jobs.pipeline", lab.args())
        try:
            lab.wait_reached(point, job_id)
            killed = kill_stack(lab.base)
        finally:
            lab.release(point)  # the driver is gone with the stack; nothing may wait on this point
        started = time.monotonic()
        stack.up(lab.base, only=stack.TRAINING)
        runs, statuses = until_done(lab)
        return {"runs_to_recover": runs, "statuses": ["KILLED", *statuses], "processes_killed": killed,
                "recover_s": time.monotonic() - started}
    return scenario


def kill_tune_worker(lab: Lab) -> dict:
    """SIGKILL the Ray worker running a Tune trial after its first report: Tune restarts the trial."""
    started = time.monotonic()
    outcome = lab.job(**_fault(lab, "train.trial_step"))
    assert lab.fired("train.trial_step"), "the trial never reached its kill point"
    runs, statuses = (0, [outcome.status]) if outcome.status == "SUCCEEDED" else until_done(lab)
    return {"runs_to_recover": runs, "statuses": statuses, "recover_s": time.monotonic() - started,
            "completed_in_the_killed_run": outcome.status == "SUCCEEDED"}


def concurrent_pipelines(lab: Lab) -> dict:
    """Two pipeline jobs for the same (group, day) at once: one waits for the other's lock."""
    started = time.monotonic()
    ids = [ray_jobs.submit(lab.s, "jobs.pipeline", lab.args()) for _ in range(2)]
    outcomes = [ray_jobs.wait(lab.s, job_id, timeout_s=900) for job_id in ids]
    numbers = sorted(o.summary["batches"][0]["batch_number"] for o in outcomes if o.summary.get("batches"))
    assert [o.status for o in outcomes] == ["SUCCEEDED"] * 2 and numbers == [1, 2], (numbers, outcomes)
    return {"runs_to_recover": 0, "statuses": [o.status for o in outcomes], "recover_s": time.monotonic() - started}


def scheduled_runs(s: Settings) -> list[dict]:
    """The DAG's scheduled runs, oldest first (none while the API server is not answering yet)."""
    import requests

    from cluster import airflow

    try:
        return airflow.runs(s, "scheduled")
    except requests.RequestException:
        return []


def with_scheduler(s: Settings) -> Settings:
    """An Airflow instance of the lab's own, on a one-minute schedule, whose first task to submit a
    Ray job fails right after (``airflow.after_submit``) and is retried by Airflow a second later."""
    return s.replace(airflow_instance=f"airflow_{s.model_name.replace('-', '_')}", airflow_port=processes.free_port(),
                     airflow_schedule="* * * * *", airflow_retries=1, airflow_retry_delay_s=1,
                     fault_point="airflow.after_submit", fault_action="raise")


def first_scheduled_run(s: Settings, timeout_s: float = 900) -> dict:
    """Wait for the scheduler's first run to succeed; no scheduled run may fail."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = scheduled_runs(s)
        if any(r["state"] == "success" for r in found):
            return found[0]
        assert not [r for r in found if r["state"] == "failed"], found
        assert time.monotonic() < deadline, f"no scheduled run succeeded in {timeout_s:.0f}s"
        time.sleep(2)


def settle_after_airflow(s: Settings, timeout_s: float = 900) -> None:
    """After Airflow was stopped (a scheduled run may have been half-way: Airflow stopped mid-run is a
    fault of its own), let the Ray jobs it submitted end and run the pipeline once to finish whatever
    the half-done run left: the accounting then covers a completed cycle. (Pausing instead would leave
    a run that had started "running" for ever: a paused DAG's tasks are not scheduled.)"""
    from cluster import airflow

    deadline = time.monotonic() + timeout_s
    while any(j["status"] not in ray_jobs.TERMINAL for j in ray_jobs.JobsApi(s).list()
              if airflow.DAG_ID in (j.get("submission_id") or "")):
        assert time.monotonic() < deadline, "a Ray job of the DAG did not end"
        time.sleep(1)
    finish = ray_jobs.run(s.replace(fault_point=""), "jobs.pipeline", ["--group", str(s.group), "--day", s.day],
                          timeout_s=timeout_s)
    assert finish.status == "SUCCEEDED", finish.logs[-3000:]


def jobs_of_run(s: Settings, run_id: str) -> list[str]:
    """The Ray jobs the DAG run submitted, by id; asserting one attempt per step, each succeeded, and
    that the fault fired (the first try of a task failed after submitting, and its retry re-attached)."""
    from cluster import airflow

    assert (Path(s.fault_dir) / "airflow.after_submit.fired").exists(), "no task failed after submitting"
    jobs = ray_jobs.JobsApi(s).list()
    base = ray_jobs.submission_id("tasador", airflow.DAG_ID, run_id)
    mine = sorted(j["submission_id"] for j in jobs if (j.get("submission_id") or "").startswith(base))
    assert all(j.endswith("-a1") for j in mine), mine
    assert all(j["status"] == "SUCCEEDED" for j in jobs if airflow.DAG_ID in (j.get("submission_id") or ""))
    return mine


def airflow_task_retry(lab: Lab) -> dict:
    """The real scheduler runs the cycle; its ingest task fails after submitting the Ray job and is
    retried by Airflow, which re-attaches to that job: one Ray job per step, never two."""
    from cluster import airflow

    s = with_scheduler(lab.s)
    pid = airflow.start(s)
    try:
        run = first_scheduled_run(s)
        started = time.monotonic()
    finally:
        processes.stop_pid(pid)
    settle_after_airflow(s)
    jobs = jobs_of_run(s, run["run_id"])
    steps = [j.rsplit("-", 2)[-2] for j in jobs]
    assert steps == ["decide", "ingest", "process", "promote", "train"], jobs
    return {"runs_to_recover": 1, "statuses": ["up_for_retry", "SUCCEEDED"], "ray_jobs_per_step": 1,
            "recover_s": time.monotonic() - started}


def _fault(lab: Lab, point: str, action: str = "kill") -> dict:
    return {"fault_point": point, "fault_action": action}


@dataclass(frozen=True)
class Scenario:
    name: str
    injected: str
    run: Callable[[Lab], dict]
    trains: bool = False  # a fresh model: the first batch trains and is promoted
    changes: tuple = ()
    api_modes: tuple = ()  # API faults (fault_proxy.MODES) injected in turn by api_fault
    needs_airflow: bool = False


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("api_faults", "data API faults in turn, each after the API counted the batch (batches 2-5): "
             "connection closed mid-body, silent past the client's timeout, 503, a 200 that is not a batch",
             api_fault, api_modes=MODES),
    Scenario("pg_kill_ingest_copy", "SIGKILL every PostgreSQL process during ingest's COPY",
             kill_postgres("ingest.after_copy")),
    Scenario("pg_kill_process_copy", "SIGKILL every PostgreSQL process during processing's COPY",
             kill_postgres("process.after_copy")),
    Scenario("pg_kill_promotion", "SIGKILL every PostgreSQL process during promotion (verdict written)",
             kill_postgres("promote.before_alias"), trains=True),
    Scenario("kill_ingest_process_decide", "SIGKILL the driver after the API served the batch, then the next run "
             "after processing's COPY (before COMMIT), then the next before the decision is written",
             kill_driver("ingest.after_fetch", "process.after_copy", "decide.before_record")),
    Scenario("kill_train_and_promote", "SIGKILL the driver before the version is registered, then the next run "
             "after registering (before recording), then after the verdict (before the alias moves), then after "
             "the alias moved (before tags and outcome)",
             kill_driver("train.before_register", "train.after_register", "promote.before_alias",
                         "promote.after_alias"), trains=True),
    Scenario("power_loss_logging_model", "SIGKILL every process of the stack (PostgreSQL, MLflow, Ray) while "
             "training logs its best model into the best trial's resumed run; then the stack started again",
             power_loss("train.before_log_model"), trains=True),
    Scenario("kill_tune_worker", "SIGKILL the Ray worker of a Tune trial after its first report",
             kill_tune_worker, trains=True, changes=(("train_families", "random_forest"),)),
    Scenario("concurrent_pipelines", "two pipeline jobs for the same (group, day) at once", concurrent_pipelines),
    Scenario("airflow_task_retry", "an Airflow task fails after submitting its Ray job; Airflow retries it",
             airflow_task_retry, trains=True, needs_airflow=True),
)
BY_NAME = {s.name: s for s in SCENARIOS}


def run_scenario(base: Settings, scenario: Scenario, workdir: Path) -> dict:
    """Run one scenario on its own (group, day) and account for it."""
    if not scenario.trains:
        ensure_shared_model(base)
    lab = Lab.make(base, scenario.name, workdir, scenario.trains, scenario.api_modes,
                   **dict(scenario.changes))
    started = time.monotonic()
    try:
        outcome = scenario.run(lab)
        report = lab.account()
    finally:
        lab.proxy.close()
    return {"scenario": scenario.name, "injected": scenario.injected, **outcome, "batches": report["batches"],
            "served": report["served"],
            "seconds": time.monotonic() - started, **{k: report[k] for k in
            ("rows_lost", "rows_duplicated", "decisions_dropped", "extra_versions", "mlflow_runs_left_running",
             "problems", "production_version")}}


def table(rows: list[dict]) -> str:
    head = (f"{'scenario':<28} {'lost':>5} {'dup':>5} {'dropped':>7} {'versions+':>9} {'runs':>4} {'recover s':>9}"
            "  injected")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['scenario']:<28} {r['rows_lost']:>5} {r['rows_duplicated']:>5} {r['decisions_dropped']:>7} "
                     f"{r['extra_versions']:>9} {r['runs_to_recover']:>4} {r['recover_s']:>9.1f}  {r['injected']}")
    return "\n".join(lines)


def main() -> None:
    import tempfile

    from bench.common import parser, private_stack
    from cluster.stack import TRAINING

    p = parser(__doc__)
    p.add_argument("--only", nargs="*", default=None, help="scenario names (default: all)")
    args = p.parse_args()
    from cluster import airflow

    chosen = [BY_NAME[n] for n in args.only] if args.only else list(SCENARIOS)
    chosen = [s for s in chosen if airflow.available() or not s.needs_airflow]
    if args.quick:
        chosen = [s for s in chosen if not s.trains][:4]
    rows = []
    with private_stack(0.02, only=TRAINING) as settings, tempfile.TemporaryDirectory() as tmp:
        ray_jobs.use_cluster_auth(settings)
        for scenario in chosen:
            row = run_scenario(settings, scenario, Path(tmp))
            print(f"{row['scenario']}: lost {row['rows_lost']}, duplicated {row['rows_duplicated']}, "
                  f"dropped {row['decisions_dropped']}, {row['seconds']:.0f}s", flush=True)
            rows.append(row)
    print(table(rows))
    totals = {k: sum(r[k] for r in rows) for k in ("rows_lost", "rows_duplicated", "decisions_dropped")}
    print(json.dumps({"scenarios": len(rows), **totals,
                      **{r["scenario"]: {k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()
                                         if k != "scenario"} for r in rows}}, default=str))


if __name__ == "__main__":
    main()
