"""The MLflow tracking server of the local stack: PostgreSQL ``mlflow`` database as backend store,
artifacts served by the server (``--serve-artifacts``) from a local directory or an S3 bucket
(MinIO), the bucket created when missing. Server-side job execution is off (nothing here uses it)."""

from __future__ import annotations

import sys
from pathlib import Path

from cluster import processes
from tasador import db
from tasador.settings import Settings


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
            "--workers", str(settings.mlflow_workers)]


def start(settings: Settings) -> int:
    ensure_bucket(settings)
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **s3_env(settings)}
    pid = processes.spawn(command(settings), settings.state_path / "logs" / "mlflow.log", env=env)
    try:
        processes.wait_http(f"{settings.mlflow_uri}/health", 120, pid=pid)
    except Exception:
        processes.stop_pid(pid)
        raise
    return pid
