"""Deploys the Serve app of ``serve_app/config.yaml`` on the stack's Ray cluster, the way ``serve deploy``
does (Ray's Serve REST API, with the cluster's token): the proxy's host and port and every setting
(as ``runtime_env`` env vars) come from the settings. The app lives in the Ray cluster; stopping the
Ray head stops it."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import requests
import yaml

from tasador import secret_files
from tasador.ray_jobs import auth_headers
from tasador.registry import client_env
from tasador.settings import Settings

CONFIG = Path(__file__).resolve().parent.parent / "serve_app" / "config.yaml"
# the replicas' MLflow client gives up on a registry that does not answer within seconds (its default,
# 120 s and 7 retries, would hold the alias follower that long); it polls again at the next interval
REPLICA_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}


def admin_token(settings: Settings) -> str:
    """The admin token, from its file (made 0600 first when missing). The replicas read the file
    themselves: the value is never in the Serve config or a runtime environment."""
    return secret_files.ensure(settings.serve_admin_token_path, lambda: secrets.token_urlsafe(32))


def config(settings: Settings) -> dict:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["http_options"] = {**cfg.get("http_options", {}), "host": settings.serve_host, "port": settings.serve_port}
    for app in cfg["applications"]:
        env = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
        env.update(settings.as_env())
        env.update(client_env(settings, "reader"))  # serving reads the registry, never writes it
        env.update(REPLICA_ENV)
    return cfg


def deploy(settings: Settings, timeout_s: float = 180) -> dict:
    """PUT the config and wait until every application is RUNNING and the proxy answers /health; the
    first application's status."""
    admin_token(settings)  # the file exists before a replica looks for it
    url = f"{settings.ray_dashboard}/api/serve/applications/"
    cfg = config(settings)
    resp = requests.put(url, json=cfg, headers=auth_headers(settings), timeout=60)
    if not resp.ok:
        raise RuntimeError(f"Serve deploy refused: HTTP {resp.status_code}: {resp.text[:500]}")
    names = [a["name"] for a in cfg["applications"]]
    deadline = time.monotonic() + timeout_s
    last = {}
    while time.monotonic() < deadline:
        last = applications(settings)
        failed = [n for n in names if last.get(n, {}).get("status") == "DEPLOY_FAILED"]
        if failed:
            app = last[failed[0]]
            # the app's own message names no cause; a deployment's ends with its replica's traceback
            why = "; ".join(f"{name}: ...{d.get('message', '')[-1500:]}"
                            for name, d in app.get("deployments", {}).items() if d.get("status") != "HEALTHY")
            raise RuntimeError(f"Serve app {failed[0]} failed to deploy: {app.get('message', '')} ({why})")
        if all(last.get(n, {}).get("status") == "RUNNING" for n in names):
            try:
                if requests.get(f"{settings.serve}/health", timeout=5).status_code in (200, 503):
                    return last[names[0]]
            except requests.RequestException:
                pass
        time.sleep(1)
    raise TimeoutError(f"Serve app not running within {timeout_s:.0f}s: {last}")


def shutdown(settings: Settings, timeout_s: float = 90) -> None:
    """Delete the Serve applications (``serve shutdown``): every replica stops gracefully, so each
    ``PriceApi`` writes its prediction log's backlog before it exits. Returns once none is left.
    Through the dashboard's REST API; when the dashboard is gone, through a Ray driver (the GCS)."""
    try:
        requests.delete(f"{settings.ray_dashboard}/api/serve/applications/", headers=auth_headers(settings),
                        timeout=30).raise_for_status()
    except requests.ConnectionError:
        _shutdown_through_ray(settings, timeout_s)
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not applications(settings):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Serve applications still there {timeout_s:.0f}s after the delete")


def _shutdown_through_ray(settings: Settings, timeout_s: float) -> None:
    import subprocess
    import sys

    from cluster.ray_head import LOOPBACK_ENV
    from tasador.ray_jobs import auth_env

    code = ("import ray; from ray import serve; "
            f"ray.init(address='127.0.0.1:{settings.ray_gcs_port}', logging_level='ERROR'); serve.shutdown()")
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **auth_env(settings), **LOOPBACK_ENV}, check=True,
                   timeout=timeout_s, capture_output=True)


def applications(settings: Settings) -> dict:
    resp = requests.get(f"{settings.ray_dashboard}/api/serve/applications/", headers=auth_headers(settings), timeout=10)
    resp.raise_for_status()
    return resp.json().get("applications") or {}
