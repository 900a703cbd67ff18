"""``tasador demo``: bring up the stack, then the whole cycle for every batch the data API serves
(each step a Ray job of its own: ingest, process, decide, train, promote), through Airflow's
``tasador_retraining`` DAG when Airflow is installed, else submitted from here; then a table per batch
(from the databases) and the URLs of every component."""

from __future__ import annotations

import datetime as dt
import sys
import textwrap
import time

from cluster import airflow, stack
from tasador import decisions, ray_jobs, registry
from tasador.cycle import cycle
from tasador.settings import Settings


class JobFailed(Exception):
    pass


def submit_step(settings: Settings, step: str, group: int, day: str) -> dict:
    print(f"  -> ray job: jobs.{step} --group {group} --day {day}", flush=True)
    outcome = ray_jobs.run(settings, f"jobs.{step}", ["--group", str(group), "--day", day])
    if outcome.status != "SUCCEEDED":
        sys.stderr.write(outcome.logs[-5000:])
        raise JobFailed(f"jobs.{step} ({outcome.job_id}) {outcome.status}: {outcome.summary.get('error', '')}")
    return outcome.summary


def run(settings: Settings, scale: float | None = None) -> int:
    if scale is not None:
        settings = settings.replace(data_api_scale=scale)
    stack.up(settings)
    try:
        if "airflow" in stack.components(settings):  # the stack runs Airflow's scheduler
            through_airflow(settings)
        elif airflow.available():
            through_dags_test(settings)
        else:
            through_ray_jobs(settings)
        failed = None
    except JobFailed as exc:
        failed = exc
    rows = decisions.batch_report(settings, settings.group, settings.day)
    print(table(rows))
    if failed:
        print(f"\nThe pipeline stopped: {failed}")
        return 1
    print(f"\nRaw rows ingested: {sum(r['rows_in'] or 0 for r in rows):,} in {len(rows)} batches")
    print(urls(settings))
    return 0


def through_ray_jobs(settings: Settings) -> None:
    batch = 0
    while True:
        batch += 1
        print(f"batch {batch}:", flush=True)
        if cycle(settings, settings.group, settings.day, step=submit_step)["status"] == "exhausted":
            return


def through_airflow(settings: Settings) -> None:
    """One run of the DAG per batch, triggered through Airflow's scheduler (the path its schedule
    takes) and followed to its end, until no run ingests anything (exhausted). Runs that go first
    (the hourly schedule's, or one triggered earlier) are followed too: they take batches as well."""
    started = int(time.time())
    n = 0
    while True:
        n += 1
        before = len(decisions.batch_report(settings, settings.group, settings.day))
        run_id = airflow.trigger(settings, f"demo__{started}_{n}")
        for earlier in airflow.runs_ahead(settings, run_id):
            print(f"first, the {earlier['run_type']} run {earlier['run_id']} (Airflow runs one run of "
                  f"{airflow.DAG_ID} at a time)", flush=True)
            state = airflow.wait_run(settings, earlier["run_id"], progress=StepProgress(settings))
            if state != "success":  # its batch is left to the next run (the pipeline resumes it)
                print(f"  the {earlier['run_type']} run ended {state}", flush=True)
        print(f"batch {len(decisions.batch_report(settings, settings.group, settings.day)) + 1}: Airflow run "
              f"{run_id} of {airflow.DAG_ID}", flush=True)
        state = airflow.wait_run(settings, run_id, progress=StepProgress(settings))
        if state != "success":
            raise JobFailed(f"the Airflow run {run_id} of {airflow.DAG_ID} ended {state}; its task logs are under "
                            f"{settings.state_path / settings.airflow_instance / 'logs'}")
        if len(decisions.batch_report(settings, settings.group, settings.day)) == before:
            return


class StepProgress:
    """Live progress of one Airflow run: a line when a step changes state (with the time since the
    run began), and while a step runs, a line every ``beat_s`` with its elapsed time and, while
    ``train`` runs, the Tune trials MLflow has recorded so far."""

    def __init__(self, settings: Settings, beat_s: float = 20.0):
        self.settings, self.beat_s = settings, beat_s
        self.began = time.monotonic()
        self.states: dict[str, str] = {}
        self.last_beat = time.monotonic()

    def __call__(self, run: dict) -> None:
        now = time.monotonic()
        # once, and only when it lasts (a run is queued for a second or two before the scheduler starts
        # it): why nothing moves yet
        if run.get("state") == "queued" and "run" not in self.states and now - self.began >= self.beat_s:
            self.states["run"] = "queued"
            print(f"  {_clock(now - self.began)}  queued: Airflow runs one run of the DAG at a time "
                  "(max_active_runs=1); the scheduled or earlier run goes first", flush=True)
        for task in sorted(run["tasks"], key=lambda t: t.get("start_date") or "~"):
            name, state = task["task_id"], task["state"] or "waiting"
            if self.states.get(name) != state:
                self.states[name] = state
                if state != "waiting":
                    print(f"  {_clock(now - self.began)}  {name:<16} {state}", flush=True)
            elif state == "running" and now - self.last_beat >= self.beat_s:
                self.last_beat = now
                trials = self.trials_since(task.get("start_date")) if name == "train" else None
                print(f"  {_clock(now - self.began)}  {name:<16} running for {self.running_for(task)}"
                      + (f", {trials} trials recorded in MLflow" if trials is not None else ""), flush=True)

    @staticmethod
    def running_for(task: dict) -> str:
        started = task.get("start_date")
        if not started:
            return "-"
        since = dt.datetime.fromisoformat(started.replace("Z", "+00:00"))
        return _clock((dt.datetime.now(dt.UTC) - since).total_seconds())

    def trials_since(self, started: str | None) -> int | None:
        """Runs of the experiment started since ``started`` (the trials, and their parent run)."""
        if not started:
            return None
        try:
            client = registry.mlflow_client(self.settings)
            experiment = client.get_experiment_by_name(self.settings.mlflow_experiment)
            if experiment is None:
                return 0
            since_ms = int(dt.datetime.fromisoformat(started.replace("Z", "+00:00")).timestamp() * 1000)
            runs = client.search_runs([experiment.experiment_id], f"attributes.start_time >= {since_ms}",
                                      max_results=5000)
            return max(0, len(runs) - 1)  # less the training's parent run
        except Exception:  # progress is a courtesy: MLflow busy or down does not stop the demo
            return None


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:d}:{secs:02d}"


def through_dags_test(settings: Settings) -> None:
    """One ``airflow dags test`` run of the DAG per batch, until a run ingests nothing (exhausted)."""
    airflow.migrate(settings)
    while True:
        before = len(decisions.batch_report(settings, settings.group, settings.day))
        print(f"batch {before + 1}: airflow dags test {airflow.DAG_ID}", flush=True)
        state, output = airflow.dags_test(settings)
        if state != "success":
            sys.stderr.write(output[-8000:])
            raise JobFailed(f"the Airflow run of {airflow.DAG_ID} ended {state}")
        if len(decisions.batch_report(settings, settings.group, settings.day)) == before:
            return


def table(rows: list[dict]) -> str:
    head = f"{'#':>2} {'rows in':>9} {'rejected':>8}  {'drift':<5} {'retrain':<7} {'version':>7} {'family':<13} " \
           f"{'test RMSE':>11}  {'promoted':<8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        rmse = f"${r['rmse']:,.0f}" if r.get("rmse") else "-"
        lines.append(f"{r['batch_number']:>2} {r['rows_in'] or 0:>9,} {r['rejected'] or 0:>8,}  "
                     f"{'yes' if r['drift_found'] else 'no':<5} {'yes' if r['retrain'] else 'no':<7} "
                     f"{r['version'] or '-':>7} {r['family'] or '-':<13} {rmse:>11}  "
                     f"{'-' if r['promoted'] is None else ('yes' if r['promoted'] else 'no'):<8}")
        lines.append(textwrap.indent(textwrap.fill(f"why retrain: {r['retrain_reason']}", 110), "     "))
        if r.get("promotion_reason"):
            lines.append(textwrap.indent(textwrap.fill(f"promotion: {r['promotion_reason']}", 110), "     "))
    return "\n".join(lines)


def urls(settings: Settings) -> str:
    """Every URL, and where its login is (the values stay in their 0600 files)."""
    airflow_login = (f"  (user {airflow.AIRFLOW_USER}, password in {airflow.login_file(settings)})"
                     if airflow.available() else " (not set up)")
    return "\n".join([
        f"Predict API:   {settings.serve}/predict  (docs: {settings.serve}/docs)",
        f"Dash app:      http://127.0.0.1:{settings.dash_port}",
        f"Ray dashboard: {settings.ray_dashboard}  (token in {ray_jobs.token_path(settings)})",
        f"Prometheus:    {settings.prometheus}",
        f"Airflow:       http://127.0.0.1:{settings.airflow_port}{airflow_login}",
        f"MLflow:        {settings.mlflow_uri}  (user:password in {settings.mlflow_identity_path('reader')}; "
        f"writer, admin beside it)",
        f"Data API:      {settings.data_api}",
        f"PostgreSQL:    {settings.pg_host}:{settings.pg_port} (raw_data, clean_data, mlflow; "
        f"password in {settings.pg_passfile_path})",
    ])
