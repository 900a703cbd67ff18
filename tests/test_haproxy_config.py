"""cluster/haproxy-rewrite-config over a config Ray 2.60 wrote: what it changes, checked by the real
HAProxy (``-c``) that ray[serve] bundles. The behaviour under load is in tests/test_serve.py and
``bench.serve --part overload``."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from cluster import processes, ray_head, ray_supervisor
from serve_app.schemas import BULK_ROUTE_PREFIX, LARGE_BODY_BYTES
from tasador.retry import poll
from tasador.settings import NOT_SETTINGS, Settings

FIXTURE = Path(__file__).parent / "fixtures" / "ray-haproxy.cfg"


def with_bulk_app(text: str) -> str:
    """The fixture with the bulk application beside the main one: the lines Ray 2.60's template
    (``ray/serve/_private/haproxy_templates.py``) writes for an application at ``/bulk``, longest prefix
    first."""
    text = text.replace("    acl is_http-tasador path_beg /\n", "    acl is_http-tasador-bulk path_beg /bulk/\n"
                        "    acl is_http-tasador-bulk path /bulk\n    acl is_http-tasador path_beg /\n")
    text = text.replace("    use_backend http-tasador if", "    use_backend http-tasador-bulk if is_http-tasador-bulk\n"
                        "    use_backend http-tasador if")
    return text.replace("listen stats", "backend http-tasador-bulk\n    server SERVE_REPLICA_tasador-bulk-BulkPricer-x "
                        "127.0.0.1:30002 check\nlisten stats")


def rewrite(tmp_path: Path, settings: Settings, times: int = 1, bulk_app: bool = False,
            pod: bool = False) -> str:
    """The fixture as the wrapper leaves it, after HAProxy accepted it ``times`` times (``pod``: with
    the variables a KubeRay pod's supervisor adds, cluster/ray_supervisor.py)."""
    cfg = tmp_path / "haproxy.cfg"
    text = FIXTURE.read_text().replace("@DIR@", str(tmp_path))
    cfg.write_text(with_bulk_app(text) if bulk_app else text)
    (tmp_path / "500.http").write_text("HTTP/1.1 500 Internal Server Error\r\n\r\n")
    env = {**os.environ, **ray_head.haproxy_env(settings)}
    if pod:
        env.update(ray_supervisor.pod_env(settings.as_env()))
    for _ in range(times):
        done = subprocess.run([env["RAY_SERVE_HAPROXY_BINARY_PATH"], "-c", "-f", str(cfg)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    return cfg.read_text()


def test_every_variable_for_the_wrapper_is_known_to_the_settings():
    """The head's environment reaches every replica, whose ``Settings.load`` refuses an unknown TASADOR_*
    variable: one the wrapper reads but ``NOT_SETTINGS`` does not list failed every deployment."""
    ours = {name for name in [*ray_head.haproxy_env(Settings()), *ray_supervisor.pod_env({})]
            if name.startswith("TASADOR_")}
    assert ours and ours <= NOT_SETTINGS.keys(), ours - NOT_SETTINGS.keys()


def test_every_frontend_binds_loopback(tmp_path):
    binds = re.findall(r"^\s*bind (\S+)", rewrite(tmp_path, Settings()), re.M)
    assert len(binds) == 3 and all(b.startswith("127.0.0.1:") for b in binds), binds
    assert re.findall(r"^\s*bind (\S+)", FIXTURE.read_text(), re.M)[0] == ":21183"  # what Ray wrote


def test_a_pods_exporter_binds_the_pods_address_and_its_stats_page_loopback(tmp_path):
    """In a KubeRay pod Prometheus scrapes HAProxy's exporter from outside the pod."""
    binds = re.findall(r"^\s*bind (\S+)", rewrite(tmp_path, Settings(), times=2, pod=True), re.M)
    assert binds == ["0.0.0.0:21183", "127.0.0.1:20646", "127.0.0.1:21184"], binds


def test_overload_is_refused_by_haproxy_with_retry_after_and_twice_rewritten_is_once(tmp_path):
    s = Settings().replace(serve_replica_maxconn=12, serve_queue_max=5, serve_queue_timeout_ms=150,
                           serve_queue_lifo_from=4)
    text = rewrite(tmp_path, s, times=2)  # Ray re-executes HAProxy on the same file at each reload
    replicas = re.findall(r"^\s*server SERVE_REPLICA_\S+ .*$", text, re.M)
    assert len(replicas) == 2 and all(line.endswith(" maxconn 12") for line in replicas), replicas
    assert "maxconn" not in re.search(r"^\s*server SERVE_PROXY_ACTOR\S+ .*$", text, re.M).group(0)
    assert re.findall(r"^\s*timeout queue (\S+)$", text, re.M) == ["150ms"]
    refusal = re.findall(r"^\s*http-request return status 503 errorfile (\S+) if is_http-tasador "
                         r"\{ queue\(http-tasador\) ge 5 \}$", text, re.M)
    errorfile = re.findall(r"^\s*errorfile 503 (\S+)$", text, re.M)
    assert len(refusal) == 1 and errorfile == refusal, (refusal, errorfile)
    lifo = re.findall(r"^\s*http-request set-priority-offset (.*)$", text, re.M)
    assert lifo == ["date(0,ms),mod(60000),mul(-2) if is_http-tasador "
                    f"{{ queue(http-tasador) ge {s.serve_queue_lifo_from} }}"]
    response = Path(errorfile[0]).read_bytes()
    head, body = response.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1" in head
    assert b"overloaded" in body and body.strip().startswith(b"{")


@pytest.mark.parametrize("zero", ["serve_replica_maxconn", "serve_queue_max", "serve_queue_timeout_ms",
                                  "serve_queue_lifo_from"])
def test_a_limit_set_to_0_is_left_as_ray_has_it(tmp_path, zero):
    text = rewrite(tmp_path, Settings().replace(**{"serve_queue_lifo_from": 36, zero: 0}))
    assert ("maxconn 16" in text) == (zero != "serve_replica_maxconn")
    assert ("return status 503 errorfile" in text) == (zero != "serve_queue_max")
    assert ("timeout queue" in text) == (zero != "serve_queue_timeout_ms")
    assert ("set-priority-offset" in text) == (zero != "serve_queue_lifo_from")


def test_the_refusal_states_its_length_so_the_connection_stays_open():
    """HAProxy sends ``haproxy-503.http`` as written: without Content-Length it must close the
    connection to end the body, and every refused request costs the client a new connection."""
    raw = (Path(__file__).parents[1] / "cluster" / "haproxy-503.http").read_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert int(headers[b"Content-Length"]) == len(body)
    assert headers[b"Retry-After"] == b"1" and b"Connection" not in headers


def test_a_silent_replica_gets_a_504_that_says_so_not_the_templates_500(tmp_path):
    """Ray's template maps HAProxy's 504 (no answer within ``timeout server``) to a bare 500."""
    text = rewrite(tmp_path, Settings())
    ours = ray_head.HAPROXY_WRAPPER.parent / "haproxy-504.http"
    assert re.findall(r"^\s*errorfile 504 (\S+)$", text, re.M) == [str(ours)]
    raw = ours.read_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert head.startswith(b"HTTP/1.1 504 ") and int(headers[b"Content-Length"]) == len(body)
    assert f"within {ray_head.HAPROXY_SERVER_TIMEOUT_S} s" in json.loads(body)["detail"]


def test_a_slow_clients_headers_have_a_deadline_and_twice_rewritten_is_once(tmp_path):
    """Ray's template sets no ``timeout http-request``: HAProxy waited for a request's headers as long as
    its client timeout (3600 s). The 408 on a live stack: tests/test_serve.py."""
    text = rewrite(tmp_path, Settings(), times=2)
    wait = ray_head.HAPROXY_REQUEST_HEADER_TIMEOUT_S
    assert re.findall(r"^\s*timeout http-request (\S+)$", text, re.M) == [f"{wait}s"]


def test_large_predict_bodies_are_sent_to_the_bulk_application_once_it_is_routed(tmp_path):
    text = rewrite(tmp_path, Settings(), times=2, bulk_app=True)
    rules = re.findall(r"^\s*http-request set-path (.*)$", text, re.M)
    assert rules == [f"{BULK_ROUTE_PREFIX}%[path] if {{ method POST }} {{ path /predict }} "
                     f"{{ req.hdr_val(content-length) gt {LARGE_BODY_BYTES} }}"]
    lines = text.splitlines()
    first_acl = next(i for i, line in enumerate(lines) if line.strip().startswith("acl is_http-"))
    assert "set-path" in lines[first_acl - 1]  # before the rules that pick the backend and its metrics' labels
    assert "set-path" not in rewrite(tmp_path, Settings())  # no bulk application routed: nothing to send there


def test_the_bulk_application_is_where_the_wrapper_sends_large_bodies():
    import yaml

    apps = yaml.safe_load((Path(__file__).parents[1] / "serve_app" / "config.yaml").read_text())["applications"]
    (bulk,) = [a for a in apps if a["import_path"] == "serve_app.app:bulk_app"]
    assert bulk["route_prefix"] == BULK_ROUTE_PREFIX


class HeldReplica:
    """A stand-in for the replicas behind a real HAProxy: answers Serve's health check at once and holds
    every other request until ``release``, noting the ``X-Seq`` header of each in the order it came."""

    def __init__(self):
        self.arrived, self.held, self.cond = [], [], threading.Condition()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn, conn.makefile("rb") as f:
            while (line := f.readline()) and line.strip():
                head = [line]
                while (h := f.readline()) not in (b"\r\n", b"\n", b""):
                    head.append(h)
                seq = next((h[6:].strip().decode() for h in head if h.lower().startswith(b"x-seq:")), None)
                if seq is not None:
                    done = threading.Event()
                    with self.cond:
                        self.arrived.append(seq)
                        self.held.append(done)
                        self.cond.notify_all()
                    done.wait(30)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def wait_arrived(self, count: int):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.arrived) >= count, 10), self.arrived

    def release(self):
        with self.cond:
            self.held.pop(0).set()


def queued(admin_sock: Path, backend: str) -> int:
    """Requests waiting in HAProxy's queue for ``backend`` (``show stat`` on its admin socket)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(admin_sock))
        s.sendall(b"show stat\n")
        out = b"".join(iter(lambda: s.recv(65536), b"")).decode()
    rows = list(csv.DictReader(out.lstrip("# ").splitlines()))
    return int(next(r["qcur"] for r in rows if r["pxname"] == backend and r["svname"] == "BACKEND"))


@pytest.mark.stack
def test_a_queue_that_is_not_draining_serves_the_newest_request_first(tmp_path):
    """Adaptive LIFO on the real HAProxy, through the rewritten template: two slots busy, two requests
    queued first come first served, then three more once two wait. As slots free, the three go newest
    first, then the first two in their order."""
    held = HeldReplica()
    s = Settings().replace(serve_replica_maxconn=1, serve_queue_max=100, serve_queue_timeout_ms=20_000,
                           serve_queue_lifo_from=2)
    text = rewrite(tmp_path, s)
    front, stats, exporter = processes.free_port(), processes.free_port(), processes.free_port()
    text = re.sub(r"127\.0\.0\.1:3000[01]", f"127.0.0.1:{held.port}", text)
    text = text.replace("127.0.0.1:20646", f"127.0.0.1:{front}").replace("127.0.0.1:21184", f"127.0.0.1:{stats}")
    (tmp_path / "haproxy.cfg").write_text(text.replace("127.0.0.1:21183", f"127.0.0.1:{exporter}"))
    # the window of the LIFO offsets turns each minute (cluster/haproxy-rewrite-config, 7.): not during the test
    while time.time() % 60 > 55:  # the test takes about a second
        time.sleep(60 - time.time() % 60)
    proxy = subprocess.Popen([ray_head.haproxy_env(s)["TASADOR_HAPROXY_BINARY"], "-f", str(tmp_path / "haproxy.cfg")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answers, clients = {}, []
    try:
        def ask(seq):
            with requests.post(f"http://127.0.0.1:{front}/predict", headers={"X-Seq": seq}, timeout=30) as r:
                answers[seq] = r.status_code

        processes.wait_http(f"http://127.0.0.1:{front}/-/healthz", 15, pid=proxy.pid)
        for seq, waiting in [("s1", None), ("s2", None), ("f1", 0), ("f2", 1), ("l1", 2), ("l2", 3), ("l3", 4)]:
            clients.append(threading.Thread(target=ask, args=(seq,)))
            clients[-1].start()
            if waiting is None:
                held.wait_arrived(len(clients))
            else:
                poll(lambda: queued(tmp_path / "admin.sock", "http-tasador"), lambda n, w=waiting: n == w + 1, 10,
                     f"{seq} queued", every_s=0.02)
        for n in range(3, 8):
            held.release()
            held.wait_arrived(n)
        while held.held:
            held.release()
        for c in clients:
            c.join(30)
    finally:
        proxy.kill()
        proxy.wait()
        held.sock.close()
    assert held.arrived == ["s1", "s2", "l3", "l2", "l1", "f1", "f2"]
    assert answers == dict.fromkeys(held.arrived, 200)
