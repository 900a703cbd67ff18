"""Deploys the Serve app of ``serve_app/config.yaml`` on the stack's Ray cluster, the way ``serve deploy``
does (Ray's Serve REST API, with the cluster's token): the proxy's host and port and every setting
(as ``runtime_env`` env vars) come from the settings. The app lives in the Ray cluster; stopping the
Ray head stops it."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import requests
import yaml

from tasador import secret_files
from tasador.ray_jobs import token_path
from tasador.settings import Settings

CONFIG = Path(__file__).resolve().parent.parent / "serve_app" / "config.yaml"


def with_admin_token(settings: Settings) -> Settings:
    """The admin token from the settings (the environment), else one kept in the state dir (0600)."""
    if settings.serve_admin_token:
        return settings
    token = secret_files.ensure(settings.state_path / "serve_admin_token", lambda: secrets.token_urlsafe(32))
    return settings.replace(serve_admin_token=token)


def config(settings: Settings) -> dict:
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["http_options"] = {**cfg.get("http_options", {}), "host": settings.serve_host, "port": settings.serve_port}
    for app in cfg["applications"]:
        env = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
        env.update(settings.as_env())
    return cfg


def _headers(settings: Settings) -> dict:
    # the stack deploys to the cluster it started: that cluster's token file, whatever token this
    # process's environment holds for another cluster (tasador.ray_jobs.token prefers the environment)
    return {"Authorization": f"Bearer {token_path(settings).read_text().strip()}"}


def deploy(settings: Settings, timeout_s: float = 180) -> dict:
    """PUT the config and wait until the application is RUNNING and the proxy answers /health."""
    url = f"{settings.ray_dashboard}/api/serve/applications/"
    resp = requests.put(url, json=config(settings), headers=_headers(settings), timeout=60)
    if not resp.ok:
        raise RuntimeError(f"Serve deploy refused: HTTP {resp.status_code}: {resp.text[:500]}")
    deadline = time.monotonic() + timeout_s
    last = {}
    while time.monotonic() < deadline:
        last = applications(settings)
        app = last.get("tasador", {})
        if app.get("status") == "DEPLOY_FAILED":
            raise RuntimeError(f"Serve app failed to deploy: {app.get('message', '')[:2000]}")
        if app.get("status") == "RUNNING":
            try:
                if requests.get(f"{settings.serve}/health", timeout=5).status_code in (200, 503):
                    return app
            except requests.RequestException:
                pass
        time.sleep(1)
    raise TimeoutError(f"Serve app not running within {timeout_s:.0f}s: {last}")


def shutdown(settings: Settings, timeout_s: float = 90) -> None:
    """Delete the Serve applications (``serve shutdown``): every replica stops gracefully, so each
    ``PriceApi`` writes its prediction log's backlog before it exits. Returns once none is left."""
    requests.delete(f"{settings.ray_dashboard}/api/serve/applications/", headers=_headers(settings),
                    timeout=30).raise_for_status()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not applications(settings):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Serve applications still there {timeout_s:.0f}s after the delete")


def applications(settings: Settings) -> dict:
    resp = requests.get(f"{settings.ray_dashboard}/api/serve/applications/", headers=_headers(settings), timeout=10)
    resp.raise_for_status()
    return resp.json().get("applications") or {}
