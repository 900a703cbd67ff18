"""Starting and stopping the stack's processes: each in its own session, recorded by PID in
``<state>/stack.json``, stopped by that PID (and its process group) only."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import requests


def registry_path(state: Path) -> Path:
    return state / "stack.json"


def load_registry(state: Path) -> dict:
    path = registry_path(state)
    return json.loads(path.read_text()) if path.is_file() else {}


def record(state: Path, name: str, **info) -> None:
    _save(state, {**load_registry(state), name: info})


def forget(state: Path, name: str) -> None:
    registry = load_registry(state)
    registry.pop(name, None)
    _save(state, registry)


def _save(state: Path, registry: dict) -> None:
    """Write the registry atomically (a reader never sees half a file)."""
    tmp = registry_path(state).with_suffix(".tmp")
    tmp.write_text(json.dumps(registry, indent=2))
    tmp.replace(registry_path(state))


def spawn(cmd: list[str], log_file: Path, env: dict | None = None, user: str | None = None) -> int:
    """Start ``cmd`` in a new session (its own process group), output to ``log_file``; return its PID."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    return proc.pid


def alive(pid: int | None) -> bool:
    """``pid`` runs (a zombie, our own exited child not yet reaped, does not)."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def stop_pid(pid: int, timeout_s: float = 30.0, sig: int = signal.SIGTERM) -> None:
    """Stop the process ``pid`` and its process group: the leader first (its own shutdown: Ray's
    ``ray start --block`` stops its daemons in order, while signalling the whole group at once left a
    two-node head's GCS and raylet waiting on each other for 30 s), then the rest of the group, then
    SIGKILL for whatever is still running at ``timeout_s``, descendants that left the group included."""
    if not alive(pid):
        return
    tree = descendants(pid)  # before the signal: orphans get re-parented once the leader exits
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
    wait_gone(pid, min(deadline, time.monotonic() + 10))
    _signal_group(pid, sig, quiet=True)
    if not wait_gone(pid, deadline):
        _signal_group(pid, signal.SIGKILL)
        time.sleep(0.5)
    _signal_group(pid, signal.SIGKILL, quiet=True)  # stragglers of the group
    grace = time.monotonic() + 10
    while any(alive(p) for p in tree) and time.monotonic() < grace:
        time.sleep(0.2)
    for child in tree:  # descendants that left the group (workers in sessions of their own)
        if alive(child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def wait_gone(pid: int, until: float) -> bool:
    """Wait (reaping our own child) until ``pid`` has exited or the monotonic time ``until``."""
    while time.monotonic() < until:
        _reap(pid)
        if not alive(pid):
            return True
        time.sleep(0.2)
    _reap(pid)
    return not alive(pid)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process tree."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_group(pid: int, sig: int, quiet: bool = False) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        if not quiet:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    except PermissionError:
        pass


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_http(url: str, timeout_s: float, headers: dict | None = None, pid: int | None = None) -> None:
    """Wait until ``url`` answers 2xx; fail early if ``pid`` died."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            raise RuntimeError(f"process {pid} exited before {url} came up")
        try:
            resp = requests.get(url, timeout=2, headers=headers)
            if resp.ok:
                return
            last = f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s (last: {last})")


# Ports handed out by this process to stacks not yet discarded: two stacks made by one test session never
# share one, and a session of many stacks does not run out (a CI run found no block of 900 after ~40).
_HANDED_OUT: set[int] = set()


def release(ports: set[int]) -> None:
    """Ports of a discarded stack, free to hand out again (a port still bound is never handed out)."""
    _HANDED_OUT.difference_update(ports)


def _assignable_ports() -> range:
    """Ports nothing takes on its own: below the kernel's ephemeral range (outgoing connections
    take those at any time, so a port merely free when chosen could be gone when bound) and above
    Ray's default worker ports (10002-19999)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(20000, max(low, 24000))


def free_block(size: int) -> int:
    """The first of ``size`` consecutive loopback ports that are free, outside the ephemeral range,
    and not handed out before by this process (a Ray head uses a block)."""
    ports = _assignable_ports()
    for _ in range(500):
        base = random.randrange(ports.start, ports.stop - size)
        block = range(base, base + size)
        if _HANDED_OUT.intersection(block) or not all(_bindable(p) for p in block):
            continue
        _HANDED_OUT.update(block)
        return base
    raise RuntimeError(f"no block of {size} free ports found in {ports.start}-{ports.stop - 1}")


def free_port() -> int:
    """A free loopback port (see ``free_block``)."""
    return free_block(1)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening_sockets(roots: list[int]) -> list[dict]:
    """Every listening TCP socket of ``roots`` and their descendants: pid, process name, address,
    port, and whether the address is loopback."""
    found = []
    for pid in sorted({*roots, *(d for root in roots for d in descendants(root))}):
        try:
            proc = psutil.Process(pid)
            name, sockets = proc.name(), proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for sock in sockets:
            if sock.status == psutil.CONN_LISTEN:
                found.append({"pid": pid, "name": name, "address": sock.laddr.ip, "port": sock.laddr.port,
                              "loopback": is_loopback(sock.laddr.ip)})
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback
