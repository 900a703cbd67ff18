"""A local PostgreSQL cluster in the state directory (run as the ``postgres`` user when we are root)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from psycopg2 import sql

from cluster import processes
from tasador import db, secret_files
from tasador.settings import Settings

DATABASES = ("raw_data", "clean_data", "mlflow", "airflow")
SUPERUSER = "postgres"
HBA_MARKER = "# tasador: scram-sha-256"
# who may connect how: the superuser over the Unix socket only (TCP refused, whatever its password),
# everyone with a SCRAM password; nothing is trusted
HBA = f"""{HBA_MARKER}
# TYPE  DATABASE  USER            ADDRESS       METHOD
local   all       {SUPERUSER}                   scram-sha-256
host    all       {SUPERUSER}     0.0.0.0/0     reject
host    all       {SUPERUSER}     ::/0          reject
local   all       all                           scram-sha-256
host    all       all             127.0.0.1/32  scram-sha-256
host    all       all             ::1/128       scram-sha-256
"""


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
    """initdb if needed, start the server, create the role and its databases. Returns the PID.

    Authentication is ``scram-sha-256`` (``pg_hba.conf`` below): the superuser ``postgres`` only over
    the server's Unix socket in the state directory, the application role over TCP and the socket,
    each with a generated password in a 0600 file under ``<state>/secrets``. The passwords are set
    from those files at every start (rotation: replace a file, restart the stack)."""
    state = settings.state_path
    data, sock, log = state / "pg" / "data", state / "pg" / "sock", state / "logs" / "postgres.log"
    for d in (data.parent, sock, log.parent):
        d.mkdir(parents=True, exist_ok=True)
    _make_reachable(data.parent)
    for d in (data.parent, sock):
        _chown(d)
    log.touch()
    _chown(log)
    superuser_password = secret_files.ensure(superuser_password_path(settings))
    if not (data / "PG_VERSION").exists():
        data.mkdir(exist_ok=True)
        _chown(data)
        with _owner_readable_copy(data.parent, superuser_password) as pwfile:
            subprocess.run(_as_owner([pg_bin("initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=scram-sha-256",
                                      f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"]),
                           check=True, capture_output=True)
    if HBA_MARKER not in (data / "pg_hba.conf").read_text():
        stop(settings)  # a cluster made before authentication: restarted with it
    pid = running_pid(settings)
    if pid is None:
        # a server killed with SIGKILL leaves its lock files, and here its postmaster as a zombie that
        # init may never reap (PostgreSQL then refuses to start: "lock file already exists")
        for stale in (data / "postmaster.pid", *sock.glob(".s.PGSQL.*")):
            stale.unlink(missing_ok=True)
        _single_user(data, f"ALTER ROLE {SUPERUSER} PASSWORD {_literal(superuser_password)};", superuser_password)
        _write_owned(data / "pg_hba.conf", HBA)
        options = (f"-p {settings.pg_port} -c listen_addresses={settings.pg_host} -k {sock}"
                   " -c password_encryption=scram-sha-256"
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


def superuser_password_path(settings: Settings) -> Path:
    return settings.state_path / "secrets" / "pg-superuser-password"


def app_password_path(settings: Settings) -> Path:
    return settings.state_path / "secrets" / "pg-app-password"


def admin_connect(settings: Settings, database: str = "postgres"):
    """The superuser, over the server's Unix socket (the only way in for it)."""
    return db.connect("", host=str(settings.state_path / "pg" / "sock"), port=settings.pg_port, user=SUPERUSER,
                      dbname=database, password=secret_files.read(superuser_password_path(settings)))


def create_database(settings: Settings, name: str) -> None:
    """A database owned by the application role (which may not create databases itself)."""
    conn = admin_connect(settings)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if not cur.fetchone():
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name),
                                                                        sql.Identifier(settings.pg_user)))
    finally:
        conn.close()


def _create_role_and_databases(settings: Settings) -> None:
    """The application role: LOGIN with the password of its file, no other attribute; the owner of its
    databases and nothing else. Its password reaches clients through the passfile (libpq's
    ``passfile``, by reference in every URL), never a URL or a command line."""
    password = secret_files.ensure(app_password_path(settings))
    secret_files.write_if_changed(settings.pg_passfile_path,
                                  f"{_pgpass_field(settings.pg_host)}:{settings.pg_port}:*:"
                                  f"{_pgpass_field(settings.pg_user)}:{_pgpass_field(password)}\n")
    conn = admin_connect(settings)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            role = sql.Identifier(settings.pg_user)
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (settings.pg_user,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s").format(role),
                        (password,))
    finally:
        conn.close()
    for name in DATABASES:
        create_database(settings, name)


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def _owner_readable_copy(folder: Path, secret: str) -> Iterator[Path]:
    """The secret in a 0600 file the server's owner can read (initdb's --pwfile), removed after."""
    path = folder / f".pwfile-{os.getpid()}"
    secret_files.write(path, secret)
    _chown(path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _write_owned(path: Path, text: str) -> None:
    secret_files.write(path, text)
    _chown(path)


def _literal(secret: str) -> str:
    """A generated secret as an SQL literal (single-user mode takes no parameters): letters, digits,
    - and _ only, so quoting cannot be escaped."""
    if not secret or not all(c.isascii() and (c.isalnum() or c in "-_") for c in secret):
        raise ValueError("the PostgreSQL superuser's password file may hold letters, digits, - and _ only")
    return f"'{secret}'"


def _single_user(data: Path, statement: str, secret: str) -> None:
    """Run one statement in single-user mode (the server stopped): no connection, no authentication."""
    done = subprocess.run(_as_owner([pg_bin("postgres"), "--single", "-D", str(data), "-c", "listen_addresses=",
                                     SUPERUSER]), input=statement + "\n", capture_output=True, text=True)
    if done.returncode != 0:
        said = done.stderr.replace(secret, "<redacted>")[-1000:]  # an error quotes the statement
        raise RuntimeError(f"PostgreSQL single-user mode failed ({done.returncode}): {said}")
