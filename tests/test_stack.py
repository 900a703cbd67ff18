"""``tasador up / status / down`` on a stack of their own, through Typer's runner as a user types them:
down stops exactly what up started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from cluster import processes, ray_head, stack
from tasador.retry import poll
from tests.conftest import fresh_settings, registry_pids


def test_status_reports_every_component_running(settings):
    report = stack.status(settings)
    assert {name: c["state"] for name, c in report.items()} == {n: "running" for n in stack.components(settings)}


@pytest.mark.stack
def test_up_is_idempotent_and_down_stops_exactly_what_up_started(tmp_path):
    s = fresh_settings(tmp_path)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)"])  # killed below
    runner, env = CliRunner(), s.as_env()
    try:
        started = runner.invoke(app, ["up"], env=env)
        assert started.exit_code == 0, started.output[-3000:]
        pids = registry_pids(s)
        tree = {pid: processes.descendants(pid) for pid in pids.values()}
        report = runner.invoke(app, ["status", "--json"], env=env)
        assert report.exit_code == 0, report.output[-3000:]
        assert {name: c["state"] for name, c in json.loads(report.stdout).items()} == {
            n: "running" for n in stack.components(s)}
        assert runner.invoke(app, ["up"], env=env).exit_code == 0  # a second up starts nothing new
        assert registry_pids(s) == pids
        stopped = runner.invoke(app, ["down"], env=env)
        assert stopped.exit_code == 0, stopped.output[-3000:]
        assert sorted(json.loads(stopped.stdout)["stopped"]) == sorted(stack.components(s))
        for name, pid in pids.items():
            assert not processes.alive(pid), f"{name} ({pid}) still running after down"
            assert not [p for p in tree[pid] if processes.alive(p)], f"children of {name} left running"
        assert processes.alive(bystander.pid), "down must not touch processes it did not start"
        assert {c["state"] for c in stack.status(s).values()} == {"not started"}
        assert runner.invoke(app, ["status"], env=env).exit_code == 1  # nothing runs: status says so
        outside = ray_head.temp_dir(s)  # derived under /tmp: the test's state path is too long for sockets
        assert outside.parent == Path("/tmp") and outside.is_dir()  # down keeps Ray's logs...
        assert stack.down(s, discard=True) == [] and not outside.exists()  # ...a discarded stack does not
        assert not ray_head.haproxy_dir(s).exists()
    finally:
        stack.down(s, discard=True)
        bystander.kill()


def test_private_stack_ports_are_distinct_and_outside_the_ephemeral_range(tmp_path):
    """Ports chosen for test stacks must not be taken by outgoing connections before they are bound
    (a CI run lost Dash's port that way), nor repeat between two stacks of one session."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    first, second = (stack.isolated_settings(str(tmp_path / n)) for n in ("a", "b"))
    ports = [*stack.ports(first), *stack.ports(second)]
    assert len(ports) == len(set(ports)) == 2 * (10 + ray_head.PORT_BLOCK)
    assert max(ports) < low
    stack.down(first, discard=True)  # nothing ran: a discarded stack's ports may be handed out again
    assert not stack.ports(first) & processes._HANDED_OUT and stack.ports(second) <= processes._HANDED_OUT


def test_the_log_monitor_lets_go_of_dead_workers_log_files(settings):
    """Ray's log monitor reads every log file it holds open ten times a second, and moves a dead worker's
    files to ``logs/old`` only when it reaches its limit of open files. 40 short-lived workers, each
    writing one file: at Ray's limit of 200 it would hold the 40 with the stack's own (about 24) and move
    none; at the head's ``LOG_MONITOR_MAX_OPEN_FILES`` it reaches its limit and lets go of the dead
    workers' files it holds (how many depends on when it reached it)."""
    import psutil

    logs = (ray_head.temp_dir(settings) / "session_latest").resolve() / "logs"  # open files name the real path
    driver = ("import ray\n"
              f"ray.init(address='127.0.0.1:{settings.ray_gcs_port}', logging_level='ERROR')\n"
              "@ray.remote(max_calls=1, num_cpus=0.5)\ndef hello(i):\n    print('hello', i)\n    return i\n"
              "assert ray.get([hello.remote(i) for i in range(40)]) == list(range(40))\n")
    subprocess.run([sys.executable, "-c", driver], env={**os.environ, **ray_head.node_env(settings)}, check=True,
                   timeout=300, capture_output=True)
    monitor = next(p for p in psutil.process_iter(["cmdline"])
                   if any("log_monitor.py" in part for part in p.info["cmdline"] or [])
                   and any(str(ray_head.temp_dir(settings)) in part for part in p.info["cmdline"]))

    def held_and_let_go() -> tuple[int, int]:
        held = sum(1 for f in monitor.open_files()  # workers' files: the monitor's own log is in logs/ too
                   if Path(f.path).parent == logs and Path(f.path).name.startswith("worker-"))
        return held, len(list((logs / "old").glob("worker-*"))) if (logs / "old").is_dir() else 0

    held, let_go = poll(held_and_let_go, lambda seen: seen[1], 30, "dead workers' files moved to logs/old")
    assert held <= ray_head.LOG_MONITOR_MAX_OPEN_FILES and let_go, (held, let_go)
