"""A local PostgreSQL cluster in the state directory (run as the ``postgres`` user when we are root)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from cluster import processes
from tasador import db
from tasador.settings import Settings

DATABASES = ("raw_data", "clean_data", "mlflow", "airflow")


def pg_bin(name: str) -> str:
    for candidate in (shutil.which(name), *sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise FileNotFoundError(f"PostgreSQL's {name} was not found (install the postgresql package)")


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _chown(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def _make_reachable(path: Path) -> None:
    """The server runs as ``postgres`` when we are root: every folder above its data dir must let
    others pass through (search permission only; nothing becomes readable). A private temporary
    folder (pytest's, mkdtemp's: 0700) is the usual case."""
    if os.geteuid() != 0:
        return
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)


def start(settings: Settings) -> int:
    """initdb if needed, start the server, create the role and the three databases. Returns the PID."""
    state = settings.state_path
    data, sock, log = state / "pg" / "data", state / "pg" / "sock", state / "logs" / "postgres.log"
    for d in (data.parent, sock, log.parent):
        d.mkdir(parents=True, exist_ok=True)
    _make_reachable(data.parent)
    for d in (data.parent, sock):
        _chown(d)
    log.touch()
    _chown(log)
    if not (data / "PG_VERSION").exists():
        data.mkdir(exist_ok=True)
        _chown(data)
        subprocess.run(_as_owner([pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                  "-E", "UTF8", "--locale=C"]), check=True, capture_output=True)
    pid = running_pid(settings)
    if pid is None:
        # a server killed with SIGKILL leaves its lock files, and here its postmaster as a zombie that
        # init may never reap (PostgreSQL then refuses to start: "lock file already exists")
        for stale in (data / "postmaster.pid", *sock.glob(".s.PGSQL.*")):
            stale.unlink(missing_ok=True)
        options = (f"-p {settings.pg_port} -c listen_addresses={settings.pg_host} -k {sock}"
                   " -c max_connections=200 -c shared_buffers=256MB -c max_wal_size=4GB")
        subprocess.run(_as_owner([pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w",
                                  "-t", "60", "start"]), check=True, capture_output=True)
        pid = running_pid(settings)
    _create_role_and_databases(settings)
    return pid


def running_pid(settings: Settings) -> int | None:
    pidfile = settings.state_path / "pg" / "data" / "postmaster.pid"
    if not pidfile.exists():
        return None
    pid = int(pidfile.read_text().split()[0])
    return pid if processes.alive(pid) else None  # a killed server's postmaster may linger as a zombie


def stop(settings: Settings) -> None:
    data = settings.state_path / "pg" / "data"
    if running_pid(settings) is not None:
        subprocess.run(_as_owner([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       check=False, capture_output=True)


def _create_role_and_databases(settings: Settings) -> None:
    admin = f"postgresql://postgres@{settings.pg_host}:{settings.pg_port}/postgres"
    conn = db.connect(admin)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (settings.pg_user,))
            if not cur.fetchone():
                cur.execute(f'CREATE ROLE "{_ident(settings.pg_user)}" LOGIN CREATEDB')
            for name in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if not cur.fetchone():
                    cur.execute(f'CREATE DATABASE "{name}" OWNER "{_ident(settings.pg_user)}"')
    finally:
        conn.close()


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"TASADOR_PG_USER={name!r}: only letters, digits and _ are allowed")
    return name



