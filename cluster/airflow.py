"""Airflow for the local stack, from its own environment (``.venv-airflow``: Airflow 3 pins FastAPI
below the version Ray Serve here uses, so it cannot share ``.venv``; the DAG needs only the
project's settings and job client, installed there without dependencies).

Metadata in the stack's PostgreSQL (``airflow`` database); the DAGs folder is ``airflow_dags/``.
``start`` runs ``airflow standalone`` (API server, scheduler, DAG processor, triggerer) on loopback;
``dags_test`` runs one DAG run in-process (``airflow dags test``), as the demo and the tests do.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

from cluster import processes
from tasador.ray_jobs import auth_env
from tasador.settings import Settings

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-airflow"
DAG_ID = "tasador_retraining"


def available() -> bool:
    return (VENV / "bin" / "airflow").exists()


def env(settings: Settings) -> dict[str, str]:
    home = settings.state_path / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    return {**settings.as_env(), **auth_env(settings), "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "airflow_dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
                f"postgresql+psycopg2://{settings.pg_user}@{settings.pg_host}:{settings.pg_port}/airflow",
            "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(settings.airflow_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{settings.airflow_port}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO", "PATH": f"{VENV / 'bin'}:/usr/bin:/bin"}


def airflow(settings: Settings, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV / "bin" / "airflow"), *args], env=env(settings), capture_output=True,
                          text=True, timeout=timeout_s, cwd=REPO)


def migrate(settings: Settings) -> None:
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
    migrate(settings)
    pid = processes.spawn([str(VENV / "bin" / "airflow"), "standalone"],
                          settings.state_path / "logs" / "airflow.log", env=env(settings))
    processes.wait_http(f"http://127.0.0.1:{settings.airflow_port}/api/v2/monitor/health", 180, pid=pid)
    return pid
