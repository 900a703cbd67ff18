"""Who gets in where (issue 15), on the session stack's real PostgreSQL server."""

from __future__ import annotations

import stat
import subprocess
from contextlib import closing

import grpc
import psycopg2
import pytest
import requests

from cluster import postgres, prometheus, ray_head, serve, stack
from tasador import mlflow_auth, ray_jobs
from tasador.retry import poll
from tests.conftest import REPO, module_data

settings = module_data()  # this module's own databases, model and experiment


def _tcp(settings, user: str, **params) -> str:
    """How a TCP login as ``user`` ends: "connected" or the server's words."""
    try:
        psycopg2.connect(host=settings.pg_host, port=settings.pg_port, user=user, dbname="postgres",
                         connect_timeout=5, **params).close()
        return "connected"
    except psycopg2.OperationalError as exc:
        return str(exc)


def test_psql_as_the_superuser_without_a_password_fails(settings):
    done = subprocess.run([postgres.pg_bin("psql"), "-U", "postgres", "-h", settings.pg_host, "-p",
                           str(settings.pg_port), "-w", "-c", "SELECT 1"], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "rejects connection" in done.stderr, done.stderr


def test_the_superuser_is_refused_over_tcp_even_with_its_password(settings):
    password = postgres.superuser_password_path(settings).read_text().strip()
    assert "pg_hba.conf rejects connection" in _tcp(settings, "postgres", password=password)
    with closing(postgres.admin_connect(settings)) as conn, conn.cursor() as cur:  # the Unix socket still lets it in
        cur.execute("SELECT current_user")
        assert cur.fetchone() == ("postgres",)


@pytest.mark.parametrize("password", [None, "wrong"])
def test_the_application_role_needs_its_password(settings, password):
    said = _tcp(settings, settings.pg_user, **({"password": password} if password else {}))
    assert "no password supplied" in said or "password authentication failed" in said, said


def test_the_application_role_gets_in_through_the_passfile_and_owns_only_databases(settings):
    with closing(psycopg2.connect(settings.raw_db)) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles"
                    " WHERE rolname = current_user")
        assert cur.fetchone() == (False, False, False, False, False)
        cur.execute("SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member"
                    " WHERE r.rolname = current_user")
        assert cur.fetchone() == (0,)  # a member of no other role
        cur.execute("SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles"
                    " WHERE rolname = current_user)")
        owned = {r[0] for r in cur.fetchall()}
        assert set(postgres.DATABASES) <= owned and not owned & {"postgres", "template0", "template1"}
    conn = psycopg2.connect(settings.raw_db)
    conn.autocommit = True  # CREATE DATABASE refuses a transaction block before it checks privileges
    try:
        with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("CREATE DATABASE not_allowed")
    finally:
        conn.close()


def test_nothing_trusts_and_every_secret_file_is_private(settings):
    hba = (settings.state_path / "pg" / "data" / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules and {r[-1] for r in rules} <= {"scram-sha-256", "reject"}, rules
    files = [postgres.superuser_password_path(settings), postgres.app_password_path(settings),
             settings.pg_passfile_path]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(settings.pg_passfile_path.parent.stat().st_mode) == 0o700
    password = postgres.app_password_path(settings).read_text().strip()
    assert password not in settings.raw_db and password not in " ".join(settings.as_env().values())


def test_no_secret_value_is_readable_through_rays_job_and_serve_apis(settings):
    """Ray's dashboard shows every job's entrypoint and runtime environment and the Serve config to
    anyone with the cluster token: the secrets must reach Ray processes by reference only."""
    outcome = ray_jobs.run(settings, "jobs.ingest", ["--group", "77", "--day", "Monday"], timeout_s=600)
    assert outcome.status == "SUCCEEDED", outcome.logs[-2000:]
    serve.deploy(settings)  # the stack's app: config and runtime environment as `tasador up` sends them
    headers = ray_jobs.auth_headers(settings)
    pages = {path: requests.get(f"{settings.ray_dashboard}{path}", headers=headers, timeout=30)
             for path in ("/api/jobs/", "/api/serve/applications/", f"/api/jobs/{outcome.job_id}")}
    assert all(r.ok for r in pages.values()), {p: r.status_code for p, r in pages.items()}
    text = "\n".join(r.text for r in pages.values())
    assert "jobs.ingest" in text and "PriceApi" in text  # the pages that hold them were read
    secrets = {"serve admin token": serve.admin_token(settings),
               "database password": postgres.app_password_path(settings).read_text().strip(),
               "superuser password": postgres.superuser_password_path(settings).read_text().strip(),
               "Ray token": ray_jobs.token(settings),
               **{f"MLflow {who} password": mlflow_auth.read(settings.mlflow_identity_path(who))[1]
                  for who in ("admin", "writer", "reader")}}
    assert all(len(v) >= 16 for v in secrets.values())
    assert [name for name, value in secrets.items() if value in text] == []


def allow_list() -> list[tuple[str, str]]:
    """(process name prefix, address) rows of docs/security.md's allow-list."""
    text = (REPO / "docs" / "security.md").read_text()
    section = text.split("## Listeners off loopback", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| `")]
    return [(name.strip().strip("`"), address.strip().strip("`")) for name, address in rows]


def not_allowed(sockets: list[dict]) -> list[dict]:
    """The listening sockets off loopback that the allow-list does not name."""
    allowed = allow_list()
    return [s for s in sockets if not s["loopback"]
            and not any(s["name"].startswith(name) and s["address"] == address for name, address in allowed)]


def test_nothing_the_stack_started_listens_off_loopback_but_the_allow_list(settings):
    if "tasador" not in serve.applications(settings):  # Serve up, whichever module's model it follows
        serve.deploy(settings)
    seen = ("gcs_server", "raylet", "postgres", "haproxy", "ray::ServeReplica", "ray::ProxyActor",
            *(("prometheus",) if prometheus.binary() else ()))

    def listening() -> tuple[list[str], list[dict]]:
        sockets = stack.listening_sockets(settings)
        return [prefix for prefix in seen if not any(s["name"].startswith(prefix) for s in sockets)], sockets

    # until the whole stack listens (a replica may be starting or being replaced)
    _, sockets = poll(listening, lambda got: not got[0], 90, "every process of the stack listening", every_s=1)
    assert not_allowed(sockets) == []
    # Serve's replicas and fallback proxy take their loopback ports in the head's block (ray_head.serve_ports_env):
    # with Ray's fixed defaults two stacks on one machine drew from the same ports. (The replicas' gRPC
    # listeners off loopback, on ports the kernel picks, are the allow-list's.)
    serve_ports = {s["port"] for s in sockets if s["loopback"] and s["name"].startswith(("ray::ServeReplica",
                                                                                         "ray::ProxyActor"))}
    block = range(settings.ray_gcs_port, settings.ray_gcs_port + ray_head.PORT_BLOCK)
    assert serve_ports and [p for p in sorted(serve_ports) if p not in block] == [], (sorted(serve_ports), block)
    allowed = [s for s in sockets if not s["loopback"]]
    assert allowed, "the allow-list names listeners that no longer exist: shorten it"
    for sock in allowed:  # what protects them: Ray's token
        with grpc.insecure_channel(f"127.0.0.1:{sock['port']}") as channel:
            call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (sock, refused.value)


def test_only_the_writer_may_move_the_alias_or_register_a_version(settings):
    """MLflow's basic-auth app: anonymous clients get nothing, the reader (serving's identity) reads
    but cannot move the alias or register a version, the writer (training, promotion) can."""
    from requests.auth import HTTPBasicAuth

    from tasador import registry

    name = "tasador-security-test"
    client = registry.mlflow_client(settings)  # this process: the writer
    experiment = client.get_experiment_by_name(name) or client.get_experiment(client.create_experiment(name))
    run = client.create_run(experiment.experiment_id)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    api = f"{settings.mlflow_uri}/api/2.0/mlflow"
    move = {"name": name, "alias": "production", "version": version.version}
    register = {"name": name, "source": f"runs:/{run.info.run_id}/model", "run_id": run.info.run_id}
    reader = HTTPBasicAuth(*mlflow_auth.read(settings.mlflow_identity_path("reader")))
    writer = HTTPBasicAuth(*mlflow_auth.read(settings.mlflow_identity_path("writer")))

    def status(method: str, path: str, auth, **kwargs) -> int:
        return requests.request(method, f"{api}/{path}", auth=auth, timeout=30, **kwargs).status_code

    assert status("GET", "registered-models/get", None, params={"name": name}) == 401
    assert status("POST", "registered-models/alias", None, json=move) == 401
    assert status("POST", "model-versions/create", None, json=register) == 401
    assert status("GET", "registered-models/get", reader, params={"name": name}) == 200
    assert status("POST", "registered-models/alias", reader, json=move) == 403
    assert status("POST", "model-versions/create", reader, json=register) == 403
    assert status("POST", "registered-models/alias", HTTPBasicAuth("tasador-writer", "guessed"), json=move) == 401
    assert client.get_registered_model(name).aliases == {}  # none of it moved the alias
    assert status("POST", "registered-models/alias", writer, json=move) == 200
    assert client.get_registered_model(name).aliases == {"production": version.version}


def test_a_restarted_mlflow_keeps_its_users_and_grants(settings):
    """What every MLflow start does (a restart, `tasador up` after `down`): users and grants made
    again over the ones that exist; a different grant is replaced, not duplicated."""
    from mlflow.server.auth.client import AuthServiceClient

    from cluster import mlflow_server
    from tasador import registry

    mlflow_server.ensure_users(settings)
    admin = settings.mlflow_identity_path("admin")
    registry.use_identity(admin)
    try:
        auth = AuthServiceClient(settings.mlflow_uri)
        mlflow_server.grant(auth, "tasador-reader", "experiment", "EDIT")
        assert auth.get_user_permission("tasador-reader", "experiment", "*").permission == "EDIT"
    finally:
        registry.use_identity(settings.mlflow_credentials_path)
    mlflow_server.ensure_users(settings)
    registry.use_identity(admin)
    try:
        for resource_type in ("experiment", "registered_model"):
            assert auth.get_user_permission("tasador-reader", resource_type, "*").permission == "READ"
            assert auth.get_user_permission("tasador-writer", resource_type, "*").permission == "MANAGE"
    finally:
        registry.use_identity(settings.mlflow_credentials_path)
