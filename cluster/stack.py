"""The local stack: ``up`` starts each real component on loopback, ``down`` stops exactly what ``up``
started (by the PIDs it recorded), ``status`` reports each one."""

from __future__ import annotations

import logging
import sys
import time

import psutil
import requests

from cluster import airflow, mlflow_server, postgres, processes, prometheus, ray_head, serve
from tasador import db
from tasador.ray_jobs import auth_headers
from tasador.registry import client_env
from tasador.settings import Settings

log = logging.getLogger(__name__)

# start order; stopped in reverse
ORDER = ("postgres", "mlflow", "ray_head", "data_api", "serve", "prometheus", "dash", "airflow")
IN_RAY = ("serve",)  # lives in the Ray cluster: no PID of its own, stopped with the Ray head
TRAINING = ("postgres", "mlflow", "ray_head", "data_api")  # what the pipeline's jobs need (no serving, UI)


def components(settings: Settings) -> tuple[str, ...]:
    """What ``up`` starts with these settings on this machine (Prometheus and Airflow when installed)."""
    optional = {"prometheus": prometheus.binary() is not None,
                "airflow": settings.airflow_server and airflow.available()}
    return tuple(name for name in ORDER if optional.get(name, True))


def up(settings: Settings, scale: float | None = None, only: tuple[str, ...] | None = None) -> dict:
    """Start every component (``only``: just those of them) that is not running yet."""
    wanted = set(only or ORDER)
    state = settings.state_path
    state.mkdir(parents=True, exist_ok=True)
    if scale is not None:
        settings = settings.replace(data_api_scale=scale)
    registry = processes.load_registry(state)

    def needed(name: str) -> bool:
        return name in wanted and not processes.alive(registry.get(name, {}).get("pid"))

    if settings.pg_local and "postgres" in wanted:
        pid = postgres.start(settings)
        processes.record(state, "postgres", pid=pid, url=f"postgresql://{settings.pg_host}:{settings.pg_port}")
    db.create_all_tables(settings)

    if needed("mlflow"):
        pid = mlflow_server.start(settings)
        processes.record(state, "mlflow", pid=pid, url=settings.mlflow_uri,
                         artifacts=settings.mlflow_artifacts_destination)

    if needed("ray_head"):
        pid = ray_head.start(settings)
        processes.record(state, "ray_head", pid=pid, url=settings.ray_dashboard)

    if needed("data_api"):
        cmd = [sys.executable, "-m", "cli.main", "data-api", "--host", settings.data_api_host,
               "--port", str(settings.data_api_port), "--scale", str(settings.data_api_scale),
               "--seed", str(settings.data_api_seed)]
        if settings.data_api_source:
            cmd += ["--source", settings.data_api_source]
        pid = processes.spawn(cmd, state / "logs" / "data-api.log")
        processes.wait_http(f"{settings.data_api}/health", 60, pid=pid)
        processes.record(state, "data_api", pid=pid, url=settings.data_api, scale=settings.data_api_scale)

    if "serve" in wanted and not _healthy(settings, "serve", registry.get("serve", {"url": settings.serve})):
        serve.deploy(settings)
        processes.record(state, "serve", pid=None, url=settings.serve, docs=f"{settings.serve}/docs")

    if prometheus.binary() and needed("prometheus"):
        pid = prometheus.start(settings)
        processes.record(state, "prometheus", pid=pid, url=settings.prometheus)

    if needed("dash"):
        pid = processes.spawn([sys.executable, "-m", "dashboard.app"], state / "logs" / "dash.log",
                              env={**settings.as_env(), **client_env(settings, "reader")})
        url = f"http://127.0.0.1:{settings.dash_port}"
        processes.wait_http(f"{url}/health", 60, pid=pid)
        processes.record(state, "dash", pid=pid, url=url)

    if settings.airflow_server and airflow.available() and needed("airflow"):
        pid = airflow.start(settings)
        processes.record(state, "airflow", pid=pid, url=f"http://127.0.0.1:{settings.airflow_port}")
    return status(settings)


def down(settings: Settings, discard: bool = False) -> list[str]:
    """Stop every component the stack started (the names, in stopping order). ``discard``: the state is
    thrown away after (tests, benchmarks): also remove what the cluster kept outside it."""
    state = settings.state_path
    registry = processes.load_registry(state)
    stopped = []
    for name in reversed(ORDER):
        info = registry.get(name)
        if not info:
            continue
        began = time.monotonic()
        if name == "postgres":
            postgres.stop(settings)
        elif name == "serve":
            _stop_serve(settings, registry.get("ray_head", {}).get("pid"))
        elif name == "ray_head":
            if "serve" not in stopped and processes.alive(info["pid"]):  # an app deployed outside `up`
                _stop_serve(settings, info["pid"])  # (a test's, a benchmark's): its logs are written too
            processes.stop_pid(info["pid"])
            ray_head.stop_haproxy(settings)
        else:
            processes.stop_pid(info["pid"])
        processes.forget(state, name)
        stopped.append(name)
        log.info("stopped %s in %.1f s", name, time.monotonic() - began)
    if discard:
        ray_head.discard_files(settings)
        processes.release(ports(settings))  # its processes are gone: a later stack of this process may have them
    return stopped


def ports(settings: Settings) -> set[int]:
    """Every port the settings give the stack's processes (the Ray head's block included)."""
    named = {settings.pg_port, settings.data_api_port, settings.ray_dashboard_port, settings.ray_client_port,
             settings.ray_metrics_port, settings.mlflow_port, settings.serve_port, settings.prometheus_port,
             settings.dash_port, settings.airflow_port}
    return named | set(range(settings.ray_gcs_port, settings.ray_gcs_port + ray_head.PORT_BLOCK))


REPLICA_EXIT_S = 60.0  # past Serve's graceful_shutdown_timeout_s (30 s in config.yaml)


def _stop_serve(settings: Settings, head_pid: int | None) -> None:
    """Delete the Serve app while the databases are up, so every replica writes its prediction log
    before it exits (the Ray head stops at once: ``ray_head.node_env``), and wait for the replicas'
    processes to exit."""
    replicas = [pid for pid in processes.descendants(head_pid) if _is_replica(pid)] if head_pid else []
    try:
        serve.shutdown(settings)
    except Exception as exc:  # Ray already gone: nothing left to flush from
        log.warning("Serve could not be shut down gracefully: %s", exc)
    deadline = time.monotonic() + REPLICA_EXIT_S
    left = [pid for pid in replicas if not processes.wait_gone(pid, deadline)]
    if left:
        log.warning("Serve replicas %s still running %.0f s after the app was deleted", left, REPLICA_EXIT_S)


def _is_replica(pid: int) -> bool:
    try:
        return " ".join(psutil.Process(pid).cmdline()).startswith("ray::ServeReplica")  # Ray's process title
    except psutil.Error:
        return False


def status(settings: Settings) -> dict:
    registry = processes.load_registry(settings.state_path)
    report = {}
    for name in components(settings):
        info = registry.get(name)
        if not info:
            report[name] = {"state": "not started"}
            continue
        report[name] = {**info, "state": "running" if _healthy(settings, name, info) else "down"}
    return report


def listening_sockets(settings: Settings) -> list[dict]:
    """Every listening TCP socket of the stack's processes: those in its registry and everything
    below them, and its HAProxy processes (see ``processes.listening_sockets``)."""
    roots = [info["pid"] for info in processes.load_registry(settings.state_path).values() if info.get("pid")]
    return processes.listening_sockets([*roots, *ray_head.haproxy_pids(settings)])


def _healthy(settings: Settings, name: str, info: dict) -> bool:
    if name not in IN_RAY and not processes.alive(info.get("pid")):
        return False
    try:
        if name == "serve":  # 503 while no model is in production yet is a running app
            return requests.get(f"{info['url']}/health", timeout=3).status_code in (200, 503)
        if name == "prometheus":
            requests.get(f"{info['url']}/-/ready", timeout=3).raise_for_status()
        elif name == "airflow":
            requests.get(f"{info['url']}/api/v2/monitor/health", timeout=3).raise_for_status()
        elif name == "postgres":
            db.connect(settings.raw_db, attempts=1).close()
        elif name == "ray_head":
            requests.get(f"{info['url']}/api/version", timeout=3, headers=auth_headers(settings)).raise_for_status()
        else:
            requests.get(f"{info['url']}/health", timeout=3).raise_for_status()
    except Exception:  # any failure to answer is "down"
        return False
    return True


def isolated_settings(state_dir: str, **changes) -> Settings:
    """Settings for a private stack (tests, benchmarks): its own state dir and free loopback ports."""
    base = dict(state_dir=state_dir, pg_port=processes.free_port(), data_api_port=processes.free_port(),
                ray_gcs_port=processes.free_block(ray_head.PORT_BLOCK), ray_dashboard_port=processes.free_port(),
                ray_client_port=processes.free_port(), ray_metrics_port=processes.free_port(),
                mlflow_port=processes.free_port(), serve_port=processes.free_port(),
                prometheus_port=processes.free_port(), dash_port=processes.free_port(),
                airflow_port=processes.free_port())
    base.update(changes)
    return Settings.load().replace(**base)
