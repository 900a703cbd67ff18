"""cluster/haproxy-rewrite-config over a config Ray 2.60 wrote: what it changes, checked by the real
HAProxy (``-c``) that ray[serve] bundles. The behaviour under load is in tests/test_serve.py and
``bench.serve --part overload``."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from cluster import ray_head
from tasador.settings import Settings

FIXTURE = Path(__file__).parent / "fixtures" / "ray-haproxy.cfg"


def rewrite(tmp_path: Path, settings: Settings, times: int = 1) -> str:
    """The fixture as the wrapper leaves it, after HAProxy accepted it ``times`` times."""
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(FIXTURE.read_text().replace("@DIR@", str(tmp_path)))
    (tmp_path / "500.http").write_text("HTTP/1.1 500 Internal Server Error\r\n\r\n")
    env = {**os.environ, **ray_head.haproxy_env(settings)}
    for _ in range(times):
        done = subprocess.run([env["RAY_SERVE_HAPROXY_BINARY_PATH"], "-c", "-f", str(cfg)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    return cfg.read_text()


def test_every_frontend_binds_loopback(tmp_path):
    binds = re.findall(r"^\s*bind (\S+)", rewrite(tmp_path, Settings()), re.M)
    assert len(binds) == 3 and all(b.startswith("127.0.0.1:") for b in binds), binds
    assert re.findall(r"^\s*bind (\S+)", FIXTURE.read_text(), re.M)[0] == ":21183"  # what Ray wrote


def test_overload_is_refused_by_haproxy_with_retry_after_and_twice_rewritten_is_once(tmp_path):
    s = Settings().replace(serve_replica_maxconn=12, serve_queue_max=5, serve_queue_timeout_ms=150)
    text = rewrite(tmp_path, s, times=2)  # Ray re-executes HAProxy on the same file at each reload
    replicas = re.findall(r"^\s*server SERVE_REPLICA_\S+ .*$", text, re.M)
    assert len(replicas) == 2 and all(line.endswith(" maxconn 12") for line in replicas), replicas
    assert "maxconn" not in re.search(r"^\s*server SERVE_PROXY_ACTOR\S+ .*$", text, re.M).group(0)
    assert re.findall(r"^\s*timeout queue (\S+)$", text, re.M) == ["150ms"]
    refusal = re.findall(r"^\s*http-request return status 503 errorfile (\S+) if is_http-tasador "
                         r"\{ queue\(http-tasador\) ge 5 \}$", text, re.M)
    errorfile = re.findall(r"^\s*errorfile 503 (\S+)$", text, re.M)
    assert len(refusal) == 1 and errorfile == refusal, (refusal, errorfile)
    response = Path(errorfile[0]).read_bytes()
    head, body = response.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1" in head
    assert b"overloaded" in body and body.strip().startswith(b"{")


@pytest.mark.parametrize("zero", ["serve_replica_maxconn", "serve_queue_max", "serve_queue_timeout_ms"])
def test_a_limit_set_to_0_is_left_as_ray_has_it(tmp_path, zero):
    text = rewrite(tmp_path, Settings().replace(**{zero: 0}))
    assert ("maxconn 16" in text) == (zero != "serve_replica_maxconn")
    assert ("{ queue(" in text) == (zero != "serve_queue_max")
    assert ("timeout queue" in text) == (zero != "serve_queue_timeout_ms")


def test_the_refusal_states_its_length_so_the_connection_stays_open():
    """HAProxy sends ``haproxy-503.http`` as written: without Content-Length it must close the
    connection to end the body, and every refused request costs the client a new connection."""
    raw = (Path(__file__).parents[1] / "cluster" / "haproxy-503.http").read_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert int(headers[b"Content-Length"]) == len(body)
    assert headers[b"Retry-After"] == b"1" and b"Connection" not in headers
