"""The MLflow tracking server of the local stack: PostgreSQL ``mlflow`` database as backend store,
artifacts served by the server (``--serve-artifacts``) from a local directory or an S3 bucket
(MinIO), the bucket created when missing. Server-side job execution is off (nothing here uses it).

Authentication: MLflow's basic-auth app (``--app-name basic-auth``). Nobody gets in anonymously;
``tasador-writer`` (training, promotion) may manage every experiment and registered model,
``tasador-reader`` (serving, the Dash app) may read them; ``tasador-admin`` creates those two. Each
is a 0600 file ``username:password`` in ``<state>/secrets`` (tasador/mlflow_auth.py); the users'
database is ``<state>/mlflow-auth.db``. The users' passwords are set from their files at every
start (rotation: replace a file, restart MLflow).
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from cluster import processes
from tasador import db, secret_files
from tasador.registry import IDENTITY_FILE_ENV, MLFLOW_AUTH_ENV, use_identity
from tasador.settings import Settings

# who may do what, granted on every experiment and registered model ("*"); anyone else: nothing
GRANTS = {"writer": "MANAGE", "reader": "READ"}


def s3_env(settings: Settings) -> dict[str, str]:
    return {"MLFLOW_S3_ENDPOINT_URL": settings.mlflow_s3_endpoint_url} if settings.mlflow_s3_endpoint_url else {}


def ensure_bucket(settings: Settings) -> None:
    """Create the artifacts bucket when the destination is s3:// and the bucket is missing."""
    destination = settings.mlflow_artifacts_destination
    if not destination.startswith("s3://"):
        Path(destination).mkdir(parents=True, exist_ok=True)
        return
    import boto3
    import botocore.exceptions

    bucket = destination[len("s3://"):].split("/", 1)[0]
    s3 = boto3.client("s3", endpoint_url=settings.mlflow_s3_endpoint_url or None)
    try:
        s3.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError:
        s3.create_bucket(Bucket=bucket)


def command(settings: Settings) -> list[str]:
    mlflow = Path(sys.executable).parent / "mlflow"
    return [str(mlflow), "server", "--backend-store-uri", db.sqlalchemy_url(settings.mlflow_db),
            "--artifacts-destination", settings.mlflow_artifacts_destination, "--serve-artifacts",
            "--host", settings.mlflow_host, "--port", str(settings.mlflow_port),
            "--workers", str(settings.mlflow_workers), "--app-name", "basic-auth"]


def start(settings: Settings) -> int:
    ensure_bucket(settings)
    # the key that signs the auth app's CSRF tokens: MLflow reads it only from its environment (the
    # server's own, readable by its user alone), kept in a 0600 file between starts
    csrf_key = secret_files.ensure(settings.state_path / "secrets" / "mlflow-flask-secret-key")
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_AUTH_CONFIG_PATH": str(auth_config(settings)),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": csrf_key, **s3_env(settings)}
    pid = processes.spawn(command(settings), settings.state_path / "logs" / "mlflow.log", env=env)
    try:
        processes.wait_http(f"{settings.mlflow_uri}/health", 120, pid=pid)
        ensure_users(settings)
    except Exception:
        processes.stop_pid(pid)
        raise
    return pid


def identity(settings: Settings, name: str) -> tuple[str, str]:
    """(username, password) of the stack's MLflow user tasador-<name>, its file made first (0600)."""
    from tasador import mlflow_auth

    path = settings.mlflow_identity_path(name)
    secret_files.ensure(path, lambda: f"tasador-{name}:{secrets.token_urlsafe(24)}")
    return mlflow_auth.read(path)


def auth_config(settings: Settings) -> Path:
    """The basic-auth app's config (0600: it holds the admin's first password)."""
    username, password = identity(settings, "admin")
    path = settings.state_path / "secrets" / "mlflow-auth.ini"
    secret_files.write_if_changed(path, "\n".join([
        "[mlflow]", "default_permission = NO_PERMISSIONS",
        f"database_uri = sqlite:///{settings.state_path / 'mlflow-auth.db'}",
        f"admin_username = {username}", f"admin_password = {password}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        # a password check is scrypt (~0.1 s of CPU); the serving nodes read the alias each second:
        # checked once per worker and user a minute (passwords change only with a restart here)
        "auth_cache_ttl_seconds = 60", ""]))
    return path


def ensure_users(settings: Settings) -> None:
    """As the admin: the writer and the reader exist with the passwords of their files, and hold
    their GRANTS on every experiment and registered model."""
    import os

    from mlflow.exceptions import RestException
    from mlflow.server.auth.client import AuthServiceClient

    saved = {k: os.environ.get(k) for k in (*MLFLOW_AUTH_ENV, IDENTITY_FILE_ENV)}
    use_identity(settings.mlflow_identity_path("admin"))
    try:
        auth = AuthServiceClient(settings.mlflow_uri)
        for name, permission in GRANTS.items():
            username, password = identity(settings, name)
            try:
                auth.get_user(username)
                auth.update_user_password(username, password)
            except RestException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                auth.create_user(username, password)
            for resource_type in ("experiment", "registered_model"):
                grant(auth, username, resource_type, permission)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def grant(auth, username: str, resource_type: str, permission: str) -> None:
    """``permission`` on every resource of the type, whether granted before (a restart) or not; a
    different earlier grant is replaced."""
    from mlflow.exceptions import RestException

    try:
        auth.grant_user_permission(username, resource_type, "*", permission)
    except RestException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        if auth.get_user_permission(username, resource_type, "*").permission != permission:
            auth.revoke_user_permission(username, resource_type, "*")
            auth.grant_user_permission(username, resource_type, "*", permission)
