"""``cluster/ray_supervisor.py``: which dead daemons it restarts and which it leaves to Ray's ``--block``
loop, without a cluster (the live kill is ``tests/serving_faults``' dashboard scenario); and, on a real
head started as a KubeRay pod starts it, Serve's HAProxy through the wrapper."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from ray._private import ray_constants

from cluster import ray_supervisor
from cluster.ray_supervisor import DASHBOARD, dead_processes_restarting_dashboard


class FakeNode:
    def __init__(self, dead: list):
        self.dead, self.started = dead, 0
        self.all_processes = {kind: [p] for kind, p in dead}
        self._ray_params = SimpleNamespace(include_dashboard=True)

    def start_api_server(self, include_dashboard, raise_on_failure):
        self.started += 1


@pytest.fixture()
def node(monkeypatch):
    def make(*dead):
        fake = FakeNode([(kind, SimpleNamespace(returncode=code)) for kind, code in dead])
        monkeypatch.setattr(ray_supervisor, "_ray_dead_processes", lambda n: n.dead)
        return fake
    return make


def test_a_dashboard_that_died_is_started_again_and_not_reported(node):
    fake = node((DASHBOARD, -signal.SIGKILL))
    assert dead_processes_restarting_dashboard(fake) == [] and fake.started == 1
    assert DASHBOARD not in fake.all_processes


@pytest.mark.parametrize("code", [0, signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGTERM])
def test_a_dashboard_stopped_deliberately_is_left_to_ray(node, code):
    fake = node((DASHBOARD, code))
    assert [p.returncode for _, p in dead_processes_restarting_dashboard(fake)] == [code]
    assert fake.started == 0


def test_a_dead_raylet_still_ends_the_node(node):
    fake = node(("raylet", -signal.SIGKILL), (DASHBOARD, 1))
    assert [kind for kind, _ in dead_processes_restarting_dashboard(fake)] == ["raylet"] and fake.started == 1



def test_the_dashboard_agent_is_put_at_the_lowest_priority_every_thread_of_it():
    """A real process tree: a stand-in raylet whose child carries the agent's command line (Ray's agent is
    ``dashboard/agent.py``) and runs a second thread; the raylet's other child stays as it was."""
    agent_code = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)"
    tree = ("import subprocess, sys, time\n"
            f"kids = [subprocess.Popen([sys.executable, '-c', {agent_code!r}, '/ray/dashboard/agent.py']),\n"
            "        subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'other'])]\n"
            "print(kids[0].pid, kids[1].pid, flush=True)\n"
            "time.sleep(60)\n")
    raylet = subprocess.Popen([sys.executable, "-c", tree], stdout=subprocess.PIPE, text=True)
    agent, other = map(int, raylet.stdout.readline().split())
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{agent}/task")) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        node = SimpleNamespace(all_processes={ray_constants.PROCESS_TYPE_RAYLET: [SimpleNamespace(process=raylet)]})
        lower = ray_supervisor.AgentPriority()
        lower(node)
        assert lower.pid == agent
        threads = {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{agent}/task")}
        assert len(threads) == 2 and set(threads.values()) == {ray_supervisor.AGENT_NICENESS}
        assert os.getpriority(os.PRIO_PROCESS, other) == os.getpriority(os.PRIO_PROCESS, raylet.pid)
    finally:
        for pid in (agent, other, raylet.pid):  # the processes this test started, by PID
            os.kill(pid, 9)
        raylet.wait()


@pytest.mark.stack
def test_a_pods_node_runs_serves_haproxy_through_the_wrapper(tmp_path):
    """A real Ray head started as a KubeRay pod starts it: ``cluster.ray_supervisor`` with no arguments
    and KubeRay's ``ray start`` in ``KUBERAY_GEN_RAY_START_CMD``, the environment without Serve's ingress
    variables (a manifest sets none). A Serve app deployed on it is answered through the HAProxy the
    wrapper configured: replicas' slots, the queue's bound and timeout, the header deadline. The
    exporter's address is set as a manifest would (loopback here: a pod's is 0.0.0.0)."""
    import re
    import shlex

    import requests

    from cluster import processes, ray_head, stack
    from tasador.ray_jobs import auth_headers

    s = stack.isolated_settings(str(tmp_path / "state"))
    ingress = ray_head.serve_ingress_env(s)
    env = {k: v for k, v in ray_head.node_env(s).items() if k not in ingress}
    kuberay_command = ["ray", *ray_head.head_command(s)[len(ray_head.RAY_CLI):]]
    env.update({ray_supervisor.KUBERAY_COMMAND_ENV: shlex.join(kuberay_command),
                "TASADOR_HAPROXY_METRICS_HOST": "127.0.0.1"})
    head = processes.spawn(ray_head.RAY_CLI, s.state_path / "logs" / "ray-head.log", env={**os.environ, **env})
    driver = ("import ray\nfrom ray import serve\n"
              f"ray.init(address='127.0.0.1:{s.ray_gcs_port}')\n"
              "@serve.deployment(num_replicas=2)\nclass Hello:\n    def __call__(self, request):\n        return 'hi'\n"
              f"serve.start(http_options={{'host': '127.0.0.1', 'port': {s.serve_port}}})\n"
              "serve.run(Hello.bind(), route_prefix='/')\n")
    try:
        processes.wait_http(f"{s.ray_dashboard}/api/version", 120, headers=auth_headers(s), pid=head)
        subprocess.run([sys.executable, "-c", driver], env={**os.environ, **env}, check=True, timeout=240,
                       capture_output=True)
        assert requests.get(f"http://127.0.0.1:{s.serve_port}/", timeout=30).text == "hi"
        configs = list(ray_head.haproxy_dir(s).rglob("haproxy.cfg"))
        assert len(configs) == 1, f"Serve's HAProxy kept no config under {ray_head.haproxy_dir(s)}: not ours"
        text = configs[0].read_text()
        replicas = re.findall(r"^\s*server SERVE_REPLICA_\S+ .*$", text, re.M)
        assert len(replicas) == 2 and all(line.endswith(f" maxconn {s.serve_replica_maxconn}") for line in replicas)
        assert re.findall(r"^\s*timeout queue (\S+)$", text, re.M) == [f"{s.serve_queue_timeout_ms}ms"]
        assert f"ge {s.serve_queue_max} }}" in text and "haproxy-503.http" in text
        header_wait = f"{ray_head.HAPROXY_REQUEST_HEADER_TIMEOUT_S}s"
        assert re.findall(r"^\s*timeout http-request (\S+)$", text, re.M) == [header_wait]
        binds = re.findall(r"^\s*bind (\S+)", text, re.M)
        assert binds and all(b.startswith("127.0.0.1:") for b in binds), binds
    finally:
        processes.stop_pid(head)
        ray_head.stop_haproxy(s)
        ray_head.discard_files(s)

