"""Airflow for the local stack, from its own environment (``.venv-airflow``: Airflow 3 pins FastAPI
below the version Ray Serve here uses, so it cannot share ``.venv``; the DAG needs only the
project's settings and job client, installed there without dependencies).

Metadata in the stack's PostgreSQL (``airflow`` database); the DAGs folder is ``airflow_dags/``.
``start`` runs Airflow's API server, scheduler and DAG processor on loopback (as
``airflow standalone`` does, without the log servers: ``cluster/airflow_components.py``)
and sets the DAG's schedule live (or paused: ``TASADOR_AIRFLOW_PAUSED``); ``trigger`` and
``wait_run`` start a run through the scheduler and follow it, as the demo does; ``dags_test`` runs
one DAG run in-process (``airflow dags test``) without a scheduler.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from psycopg2 import sql

from cluster import postgres, processes
from tasador import db, secret_files
from tasador.ray_jobs import auth_env
from tasador.settings import Settings

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-airflow"
DAG_ID = "tasador_retraining"


def available() -> bool:
    return (VENV / "bin" / "airflow").exists()


AIRFLOW_USER = "admin"  # the simple auth manager's one user, with the admin role


def login_file(settings: Settings) -> Path:
    """The Airflow UI/API login: the simple auth manager reads its users' passwords from this JSON
    file (``{"admin": password}``), which ``env`` creates."""
    return settings.state_path / "secrets" / f"{settings.airflow_instance}-passwords.json"


def _ensure_login(settings: Settings) -> Path:
    """Create the login file here (0600, a generated password), so Airflow finds its user there and
    neither generates a password into a world-readable file in its home (0644) nor prints it to its log."""
    path = login_file(settings)
    secret_files.ensure(path, lambda: json.dumps({AIRFLOW_USER: secrets.token_urlsafe(24)}))
    return path


def env(settings: Settings) -> dict[str, str]:
    home = settings.state_path / settings.airflow_instance
    home.mkdir(parents=True, exist_ok=True)
    return {**settings.as_env(), **auth_env(settings), "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(_ensure_login(settings)),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "airflow_dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            # the DAG runs one task at a time (max_active_runs=1): 4 worker processes, not Airflow's 32
            # (each an idle interpreter of its own), one parsing process, and the one DAG file parsed
            # every 2 minutes, not every 30 s (its schedule and tasks change only with a new deploy)
            "AIRFLOW__CORE__PARALLELISM": "4", "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
            # idle CPU (issue 18): the scheduler's pool gauges once a minute, not every 5 s (no metrics
            # backend reads them), no check every 15 s for timed-out triggers (no triggerer runs:
            # cluster/airflow_components.py), the DAG bundle's version checked every 30 s, not 5, and a
            # scheduler loop that found nothing to do sleeps 2 s, not 1 (each loop queries the metadata
            # database five times; a finished task is picked up at most 2 s late, a DAG run's task waits
            # on a Ray job of seconds to minutes)
            "AIRFLOW__SCHEDULER__POOL_METRICS_INTERVAL": "60", "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "2",
            "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "3600",
            "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "30",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
                db.sqlalchemy_url(settings.pg_url(settings.airflow_instance)),
            "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(settings.airflow_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{settings.airflow_port}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO", "PATH": f"{VENV / 'bin'}:/usr/bin:/bin"}


def airflow(settings: Settings, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV / "bin" / "airflow"), *args], env=env(settings), capture_output=True,
                          text=True, timeout=timeout_s, cwd=REPO)


def migrate(settings: Settings) -> None:
    _create_database(settings)
    done = airflow(settings, "db", "migrate")
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed: {done.stderr[-3000:]}")


def dags_test(settings: Settings, timeout_s: float = 7200) -> tuple[str, str]:
    """One run of the retraining DAG in the foreground (``airflow dags test``). Returns the run's
    state as Airflow recorded it ("success", "failed") and the run's output (every task's log)."""
    when = dt.datetime.now(dt.UTC).replace(microsecond=0)
    done = airflow(settings, "dags", "test", DAG_ID, when.isoformat(), timeout_s=timeout_s)
    output = done.stdout + done.stderr
    listed = airflow(settings, "dags", "list-runs", DAG_ID, "-o", "json")
    runs = json.loads(listed.stdout.strip().splitlines()[-1]) if listed.returncode == 0 else []
    state = next((r["state"] for r in runs if dt.datetime.fromisoformat(r["logical_date"]) == when), None)
    if done.returncode != 0 or state is None:
        state = "failed"
    return state, output


def start(settings: Settings) -> int:
    """Airflow's components on loopback (``cluster/airflow_components.py``: ``airflow standalone``
    without the log servers it would bind to every interface); then the DAG's schedule live, or paused
    when the settings say."""
    migrate(settings)
    pid = processes.spawn([str(VENV / "bin" / "python"), str(REPO / "cluster" / "airflow_components.py")],
                          settings.state_path / "logs" / f"{settings.airflow_instance}.log", env=env(settings))
    processes.wait_http(f"http://127.0.0.1:{settings.airflow_port}/api/v2/monitor/health", 180, pid=pid)
    set_paused(settings, settings.airflow_paused)
    return pid


def set_paused(settings: Settings, paused: bool, timeout_s: float = 180) -> None:
    """Pause or unpause the DAG, waiting for the DAG processor to have parsed it first (404 until then)."""
    RestApi(settings).until_ok("PATCH", f"/dags/{DAG_ID}", {"is_paused": paused}, timeout_s)


def trigger(settings: Settings, run_id: str, timeout_s: float = 180) -> str:
    """Start a run of the DAG through the scheduler (``POST /dags/{id}/dagRuns``); returns its run id.
    A run of that id already there (a retried trigger) is that run."""
    RestApi(settings).until_ok("POST", f"/dags/{DAG_ID}/dagRuns", {"dag_run_id": run_id, "logical_date": None},
                               timeout_s, done=(409,))
    return run_id


def runs(settings: Settings, run_type: str | None = None) -> list[dict]:
    """The DAG's runs (of ``run_type``: "scheduled", "manual"), oldest first, each with its ``run_id``."""
    query = f"?limit=100&order_by=run_after{f'&run_type={run_type}' if run_type else ''}"
    listed = RestApi(settings).get(f"/dags/{DAG_ID}/dagRuns{query}")["dag_runs"]
    return [{**r, "run_id": r["dag_run_id"]} for r in listed]


def runs_ahead(settings: Settings, run_id: str) -> list[dict]:
    """The DAG's queued or running runs that go before ``run_id``, oldest first (``ahead_of``)."""
    return ahead_of(RestApi(settings).get(f"/dags/{DAG_ID}/dagRuns?state=queued&state=running"
                                          "&order_by=run_after&limit=100")["dag_runs"], run_id)


def ahead_of(active: list[dict], run_id: str) -> list[dict]:
    """Of the active (queued or running) runs as the REST API lists them, those that go before
    ``run_id``: Airflow runs one at a time (``max_active_runs=1``), the earliest ``run_after`` first.
    None once ``run_id`` runs, or when it is not active."""
    ours = next((r for r in active if r["dag_run_id"] == run_id), None)
    if ours is None or ours["state"] == "running":
        return []

    def after(run: dict) -> dt.datetime:
        return dt.datetime.fromisoformat(run["run_after"])

    return sorted(({**r, "run_id": r["dag_run_id"]} for r in active
                   if r["dag_run_id"] != run_id and after(r) <= after(ours)), key=after)


class RestApi:
    """The stack's Airflow REST API (``/api/v2``) as its admin user (the password from the 0600 login
    file, exchanged for a JWT at ``/auth/token``). Following a run over HTTP costs next to nothing;
    the ``airflow`` CLI costs about 3 s of CPU per call (it imports Airflow), which a poll every few
    seconds turned into most of a core taken from the Ray jobs it was waiting for."""

    def __init__(self, settings: Settings):
        import requests

        self.base = f"http://127.0.0.1:{settings.airflow_port}"
        self.login = login_file(settings)
        self.session = requests.Session()

    def _token(self) -> None:
        password = json.loads(self.login.read_text())[AIRFLOW_USER]
        answer = self.session.post(f"{self.base}/auth/token", json={"username": AIRFLOW_USER, "password": password},
                                   timeout=30)
        answer.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def request(self, method: str, path: str, body: dict | None = None):
        if "Authorization" not in self.session.headers:
            self._token()
        answer = self.session.request(method, f"{self.base}/api/v2{path}", json=body, timeout=30)
        if answer.status_code == 401:  # the token expired: a new one, once
            self._token()
            answer = self.session.request(method, f"{self.base}/api/v2{path}", json=body, timeout=30)
        return answer

    def get(self, path: str) -> dict:
        answer = self.request("GET", path)
        answer.raise_for_status()
        return answer.json()

    def until_ok(self, method: str, path: str, body: dict, timeout_s: float, done: tuple[int, ...] = ()) -> None:
        """Send until answered 2xx (or a status in ``done``): the DAG is unknown (404) until the DAG
        processor has parsed it, and the API server may still be starting."""
        import requests

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answer = self.request(method, path, body)
                if answer.ok or answer.status_code in done:
                    return
                problem = f"HTTP {answer.status_code}: {answer.text[:1000]}"
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"Airflow {method} {path} failed for {timeout_s:.0f}s: {problem}")
            time.sleep(1)

    def run(self, run_id: str) -> dict:
        """The run (its ``state``) and its tasks (``task_id``, ``state``, ``start_date``, ``end_date``)."""
        run = self.get(f"/dags/{DAG_ID}/dagRuns/{run_id}")
        tasks = self.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
        return {**run, "tasks": tasks}


def wait_run(settings: Settings, run_id: str, timeout_s: float = 7200, poll_s: float = 2.0,
             progress: Callable[[dict], None] | None = None) -> str:
    """Wait until the run ends; its final state ("success", "failed"). ``progress`` sees the run and
    its tasks at every poll. A poll the API server does not answer is retried until the deadline."""
    import requests

    api = RestApi(settings)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            run = api.run(run_id)
        except requests.RequestException:  # not created yet (404) or the API server restarting
            run = None
        if run is not None:
            if progress:
                progress(run)
            if run["state"] in ("success", "failed"):
                return run["state"]
        time.sleep(poll_s)
    raise TimeoutError(f"the Airflow run {run_id} of {DAG_ID} did not end within {timeout_s:.0f}s")


def _create_database(settings: Settings) -> None:
    """The instance's metadata database in the stack's PostgreSQL, owned by the application role
    (created by the superuser: the role may not create databases)."""
    if settings.pg_local:
        postgres.create_database(settings, settings.airflow_instance)
        return
    conn = db.connect(settings.raw_db)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (settings.airflow_instance,))
            if not cur.fetchone():
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.airflow_instance)))
    finally:
        conn.close()
