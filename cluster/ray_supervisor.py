"""``ray start --block`` whose supervision restarts a dead dashboard instead of ending the node.

``ray start --block`` (``ray/scripts/scripts.py``) polls ``Node.dead_processes()`` every second and,
when any daemon has exited with an unexpected code, kills every process of the node, Serve's replicas
included. For the GCS or the raylet that is right (the node cannot work without them); for the
dashboard (the Jobs and Serve REST APIs, the web UI) it turns a lost web process into lost
predictions. Ray 2.60 has no option for it, so this entrypoint runs Ray's own CLI with one method
wrapped: a dead dashboard is started again, the way the node started it (``Node.start_api_server``:
same host, port, logs and GCS address) and is not reported as dead. The same once-a-second call puts
the node's dashboard agent at the lowest CPU priority (``AgentPriority``). Everything else, the ordered
shutdown on SIGTERM included, is Ray's.

Run as ``python -m cluster.ray_supervisor start --head --block ...`` (the arguments of ``ray``; the
local stack), or with no arguments in a KubeRay pod, where it runs the ``ray start`` command KubeRay
generated for the pod (``KUBERAY_GEN_RAY_START_CMD``, with the ``ray.io/overwrite-container-cmd``
annotation; kuberay/rayservice.yaml), Serve's ingress set up from the settings as on the local stack
(``pod_env``). Ray is pinned to 2.60; ``tests/serving_faults`` kills the
dashboard under load and fails if this wrapping stops working.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Mapping

import psutil
from ray._private import ray_constants
from ray._private.node import Node

from cluster import ray_head
from serve_app.priority import renice
from tasador.settings import Settings

DASHBOARD = ray_constants.PROCESS_TYPE_DASHBOARD
_ray_dead_processes = Node.dead_processes


# the exit codes ``ray start --block`` takes for a deliberate stop (ray/scripts/scripts.py): a process
# that exits with one of them stays dead and the node goes on (or is shutting down)
GRACEFUL_EXIT_CODES = (0, signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGTERM)


def dead_processes_restarting_dashboard(node: Node) -> list:
    """Ray's list of dead daemons, after restarting a dashboard that died unexpectedly (which is then
    not in it). A dashboard stopped deliberately (SIGTERM: the node's own shutdown sends it) is left
    to Ray, whose loop takes it as a deliberate stop: restarting it had a new dashboard start, and
    fail to reach the GCS, while the node drained (seen in a benchmark's head log, 2026-12-02)."""
    dead = _ray_dead_processes(node)
    dashboards = [p for kind, p in dead if kind == DASHBOARD and p.returncode not in GRACEFUL_EXIT_CODES]
    if dashboards:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} Ray's dashboard exited (code {dashboards[0].returncode}); "
              "starting it again", flush=True)
        node.all_processes.pop(DASHBOARD, None)
        node.start_api_server(include_dashboard=node._ray_params.include_dashboard, raise_on_failure=False)
    return [(kind, p) for kind, p in dead if not any(p is restarted for restarted in dashboards)]


# Ray's dashboard agent at the lowest priority, below the replicas (Ray's worker niceness, 15). Every
# 10 s it takes the node's metrics from every worker and replays each histogram observation one by one
# into OpenTelemetry (ray-project/ray#64852): at 1,300 requests a second, 0.5-1 s of 70-90% of a core,
# at the priority of the raylet that started it (0). The replicas lost their core to it: requests
# waited up to 150 ms, and 27 were refused at a third of the saturated rate (bench.openloop over 40 s,
# docs/benchmarks.md). It serves Prometheus' scrapes and Ray's job agent, neither in a request's path.
AGENT_NICENESS = 19
AGENT_SEARCH_S = 10.0


class AgentPriority:
    """Puts the node's dashboard agent (a child of the raylet) at ``AGENT_NICENESS`` once it is found;
    looks again, at most every ``AGENT_SEARCH_S``, while there is none or after it has gone."""

    def __init__(self):
        self.pid: int | None = None
        self.searched_at = -AGENT_SEARCH_S

    def __call__(self, node: Node) -> None:
        if self.pid is not None and psutil.pid_exists(self.pid):
            return
        if time.monotonic() - self.searched_at < AGENT_SEARCH_S:
            return
        self.searched_at, self.pid = time.monotonic(), None
        raylets = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET) or []
        for raylet in raylets:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(raylet.process.pid).children():
                    with contextlib.suppress(psutil.Error):
                        if any("DashboardAgent" in part or "dashboard/agent.py" in part for part in child.cmdline()):
                            renice(AGENT_NICENESS, child.pid)
                            self.pid = child.pid


lower_agent_priority = AgentPriority()


def supervise(node: Node) -> list:
    """What ``ray start --block`` calls every second: the dead daemons (a dead dashboard restarted),
    after putting the dashboard agent at its priority."""
    lower_agent_priority(node)
    return dead_processes_restarting_dashboard(node)


KUBERAY_COMMAND_ENV = "KUBERAY_GEN_RAY_START_CMD"


def ray_arguments(argv: list[str], env: dict[str, str]) -> list[str]:
    """The arguments for Ray's CLI: ``argv``, else KubeRay's generated command (a shell line, quoted
    JSON included, which must be a ``ray start``)."""
    if argv:
        return argv
    words = shlex.split(env.get(KUBERAY_COMMAND_ENV, ""))
    if words[:2] != ["ray", "start"]:
        raise SystemExit(f"cluster.ray_supervisor: no arguments, and {KUBERAY_COMMAND_ENV} is not a "
                         f"`ray start` command: {' '.join(words[:2]) or 'unset'}")
    return words[1:]


# Where a pod's HAProxy exports its metrics: the pod's address, which Prometheus scrapes (the
# `haproxy-metrics` port, kuberay/rayservice.yaml). Its stats page stays on loopback.
POD_HAPROXY_METRICS_HOST = "0.0.0.0"


def pod_env(env: Mapping[str, str]) -> dict[str, str]:
    """What a KubeRay pod's node adds to its environment ``env``, from the settings in it: Serve's ingress
    as the local stack's nodes run it (``ray_head.serve_ingress_env``: HAProxy through
    cluster/haproxy-rewrite-config, so a pod's overload is refused with 503 and Retry-After, a slow
    client's headers and a silent replica have deadlines, large bodies go to the bulk application).
    Without it a pod ran Ray's bare HAProxy: an unbounded queue, the template's 500s. A variable the
    manifest sets wins."""
    settings = Settings.load(env)
    if not settings.ray_serve_high_throughput:
        return {}
    ours = {**ray_head.serve_ingress_env(settings), "TASADOR_HAPROXY_METRICS_HOST": POD_HAPROXY_METRICS_HOST}
    return {name: value for name, value in ours.items() if name not in env}


def main() -> None:
    arguments = ray_arguments(sys.argv[1:], dict(os.environ))
    if not sys.argv[1:]:  # a KubeRay pod
        os.environ.update(pod_env(os.environ))
    Node.dead_processes = supervise
    from ray.scripts.scripts import main as ray_main

    sys.argv = ["ray", *arguments]
    ray_main()


if __name__ == "__main__":
    main()
