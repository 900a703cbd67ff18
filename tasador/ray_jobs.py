"""Submitting Ray jobs to a cluster (local stack, KubeRay, any head) and reading their JSON summary.

Through Ray's Jobs REST API on the dashboard (``/api/jobs/``) with the cluster's token, so any
process can submit (the demo, tests, Airflow's own environment) without importing Ray. Not Ray's
``JobSubmissionClient``: Airflow's environment cannot hold Ray (Airflow 3.3 pins FastAPI < 0.137 and
its own dependency set; ``tasador`` is installed there without dependencies), and one client for every
caller keeps one behaviour (retries, re-attaching to an attempt, the token) instead of two. The job runs
the project's code as installed on the cluster's nodes (the editable install here, the image on
KubeRay), with every setting passed as ``runtime_env`` env vars.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests
import tenacity

from tasador import secret_files
from tasador.retry import retrying
from tasador.settings import Settings

log = logging.getLogger(__name__)

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
QUICK_S = 5.0  # a job is polled every 0.1 s for this long: a short step (a decide, ~2 s) is seen at once


@dataclass
class JobOutcome:
    job_id: str
    status: str
    summary: dict
    logs: str


def token_path(settings: Settings) -> Path:
    """The local stack's Ray token file (Ray 2.60 enables token auth by default)."""
    return settings.state_path / "ray_token"


def auth_env(settings: Settings) -> dict[str, str]:
    """The environment every Ray process and client of the local cluster needs; creates the token."""
    path = token_path(settings)
    secret_files.ensure(path)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def use_cluster_auth(settings: Settings) -> None:
    """Let this process's Ray clients authenticate: a token given in the environment wins, else the
    local stack's token file when there is one."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    if token_path(settings).exists():
        os.environ.update(auth_env(settings))


def token(settings: Settings) -> str | None:
    """Ray's token for this settings' cluster: the local stack's token file when it has one (a process
    may talk to several local stacks: tests, benchmarks), else the environment's."""
    if token_path(settings).is_file():
        return token_path(settings).read_text().strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).read_text().strip() if path and Path(path).is_file() else None


def auth_headers(settings: Settings) -> dict[str, str]:
    """The cluster's token as the Authorization header of Ray's REST APIs (none without a token)."""
    secret = token(settings)
    return {"Authorization": f"Bearer {secret}"} if secret else {}


class _Unavailable(Exception):
    """The dashboard answered 5xx (restarting): another attempt may succeed."""


class JobsApi:
    """Ray's Jobs REST API, retried on connection errors and 5xx (a restarting dashboard)."""

    def __init__(self, settings: Settings, attempts: int = 5):
        self.base = f"{settings.ray_dashboard}/api/jobs/"
        self.headers = auth_headers(settings)
        self.attempts = attempts

    def _call(self, method: str, path: str = "", **kwargs) -> dict:
        def once() -> dict:
            resp = requests.request(method, self.base + path, headers=self.headers, timeout=60, **kwargs)
            if resp.status_code >= 500:
                raise _Unavailable(f"HTTP {resp.status_code}")
            if not resp.ok:
                raise RuntimeError(f"Ray Jobs API {method} {path or '/'}: HTTP {resp.status_code}: {resp.text[:500]}")
            return resp.json()

        try:
            return retrying(f"Ray Jobs API {method} {path or '/'}", self.attempts,
                            tenacity.wait_incrementing(start=1, increment=1),
                            lambda exc: isinstance(exc, _Unavailable | requests.RequestException), log)(once)
        except (_Unavailable, requests.RequestException) as exc:
            raise RuntimeError(f"Ray Jobs API {method} {path or '/'} failed {self.attempts} times: "
                               f"{type(exc).__name__}: {exc}") from exc

    def submit(self, entrypoint: str, runtime_env: dict, submission_id: str) -> str:
        body = {"entrypoint": entrypoint, "runtime_env": runtime_env, "submission_id": submission_id}
        return self._call("POST", json=body)["submission_id"]

    def list(self) -> list[dict]:
        return self._call("GET")

    def find(self, job_id: str) -> dict | None:
        """The job's details, or None when the cluster has no job of that id."""
        try:
            return self._call("GET", job_id)
        except RuntimeError as exc:
            if "HTTP 404" in str(exc):
                return None
            raise

    def status(self, job_id: str) -> str:
        return self._call("GET", job_id)["status"]

    def logs(self, job_id: str) -> str:
        return self._call("GET", f"{job_id}/logs")["logs"]

    def stop(self, job_id: str) -> bool:
        return self._call("POST", f"{job_id}/stop")["stopped"]


def submit(settings: Settings, module: str, args: list[str], submission_id: str | None = None) -> str:
    """Submit ``python -m <module> <args>`` with the settings as env; returns the submission id."""
    entrypoint = " ".join(["python", "-m", module, *args])
    job_id = submission_id or f"tasador-{module.rsplit('.', 1)[-1]}-{uuid.uuid4().hex[:12]}"
    return JobsApi(settings).submit(entrypoint, {"env_vars": settings.as_env()}, job_id)


def wait(settings: Settings, job_id: str, timeout_s: float = 3600, echo=None) -> JobOutcome:
    """Wait for the job to end, passing new log text to ``echo`` as it comes. Polls every 0.1 s for
    the first ``QUICK_S``, then less often up to every 2 s: a short step's result is seen at once
    (issue 18's step overhead: backing off from the start, a 1.8-s decide was seen after up to 2.4 s),
    a long training is not asked for its whole log ten times a second."""
    jobs = JobsApi(settings)
    seen = 0
    started = time.monotonic()
    deadline = started + timeout_s
    pause = 0.1
    while True:
        status = jobs.status(job_id)
        logs = jobs.logs(job_id)
        if echo and len(logs) > seen:
            echo(logs[seen:])
            seen = len(logs)
        if status in TERMINAL:
            return JobOutcome(job_id, status, last_json(logs), logs)
        if time.monotonic() > deadline:
            jobs.stop(job_id)
            raise TimeoutError(f"Ray job {job_id} did not finish in {timeout_s:.0f}s; stopped it")
        time.sleep(pause)
        if time.monotonic() - started > QUICK_S:
            pause = min(pause * 1.3, 2.0)


def submission_id(*parts: str) -> str:
    """A job id made of ``parts`` with every character Ray's ids and log file names do not take replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))[:180]


def current_submission_id() -> str | None:
    """The submission id of the Ray job this process is the driver of, or None outside a job. Ray's job
    supervisor hands its driver the job's config, metadata included, in this variable (Ray 2.60
    ``job_supervisor.py``; there is no public getter for the submission id)."""
    config = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    try:
        return json.loads(config)["metadata"]["job_submission_id"] if config else None
    except (ValueError, KeyError, TypeError):
        return None


def run_attached(settings: Settings, module: str, args: list[str], base_id: str, timeout_s: float = 3600,
                 echo=None, on_submit=None) -> JobOutcome:
    """Run the step's job once per ``base_id`` (one task of one DAG run), whatever retries: attempt
    ``<base_id>-a1`` first; a running or succeeded attempt is re-attached to (waited for, its result
    read), and only after a failed or stopped one is the next attempt submitted. Two attempts never
    run at once, and a retry never repeats a job that succeeded."""
    jobs = JobsApi(settings)
    attempt = 1
    while True:
        job_id = f"{base_id}-a{attempt}"
        found = jobs.find(job_id)
        if found is None:
            submit(settings, module, args, job_id)
            if on_submit:
                on_submit(job_id)
            break
        if found["status"] not in ("FAILED", "STOPPED"):
            log.info("re-attaching to Ray job %s (%s)", job_id, found["status"])
            break
        attempt += 1
    return wait(settings, job_id, timeout_s, echo)


def run(settings: Settings, module: str, args: list[str], timeout_s: float = 3600, echo=None) -> JobOutcome:
    return wait(settings, submit(settings, module, args), timeout_s, echo)


def last_json(logs: str) -> dict:
    """The job's summary: the last line of its output that is a JSON object."""
    for line in reversed(logs.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}
