"""Submitting Ray jobs to a cluster (local stack, KubeRay, any head) and reading their JSON summary."""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from tasador.settings import Settings

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# what the working directory upload leaves out (state, caches, the venv)
EXCLUDES = [".venv", "state", ".git", "**/__pycache__", ".pytest_cache", ".ruff_cache", "docs", "kuberay"]


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
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def use_cluster_auth(settings: Settings) -> None:
    """Let this process's Ray clients authenticate: a token given in the environment wins, else the
    local stack's token file when there is one."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    if token_path(settings).exists():
        os.environ.update(auth_env(settings))


def client(settings: Settings):
    use_cluster_auth(settings)  # before the import: Ray reads its auth mode when first imported
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(settings.ray_dashboard)


def submit(settings: Settings, module: str, args: list[str], submission_id: str | None = None) -> str:
    """Submit ``python -m <module> <args>`` with the project as working dir and the settings as env."""
    entrypoint = " ".join(["python", "-m", module, *args])
    runtime_env = {"working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES, "env_vars": settings.as_env()}
    return client(settings).submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                       submission_id=submission_id)


def wait(settings: Settings, job_id: str, timeout_s: float = 3600, echo=None) -> JobOutcome:
    """Wait for the job to end, passing new log text to ``echo`` as it comes."""
    jobs = client(settings)
    seen = 0
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(jobs.get_job_status(job_id).value)
        logs = jobs.get_job_logs(job_id)
        if echo and len(logs) > seen:
            echo(logs[seen:])
            seen = len(logs)
        if status in TERMINAL:
            return JobOutcome(job_id, status, last_json(logs), logs)
        if time.monotonic() > deadline:
            jobs.stop_job(job_id)
            raise TimeoutError(f"Ray job {job_id} did not finish in {timeout_s:.0f}s; stopped it")
        time.sleep(0.5)


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
