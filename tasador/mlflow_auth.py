"""MLflow credentials by reference: MLflow's own request-auth plugin API (``MLFLOW_TRACKING_AUTH``).

The MLflow server runs its basic-auth app (cluster/mlflow_server.py) with three identities, each in
a 0600 file ``username:password`` under ``<state>/secrets``: ``tasador-admin`` (creates the users),
``tasador-writer`` (training and promotion: it owns the experiments and the registered model) and
``tasador-reader`` (serving and the Dash app: it reads, and cannot move the alias or register a
version). A process's identity is the setting ``mlflow_credentials_file`` (a path; empty: the
writer's); with ``MLFLOW_TRACKING_AUTH=tasador-file`` MLflow asks ``FileCredentials`` for every
request's auth, which reads that file. No password is in a runtime
environment, a Serve config or a command line. Without the file (a KubeRay pod), MLflow's own
``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` (from a Kubernetes Secret) apply.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider
from requests.auth import HTTPBasicAuth

from tasador.registry import IDENTITY_FILE_ENV, MLFLOW_AUTH_ENV, thread_identity_file

PROVIDER = MLFLOW_AUTH_ENV["MLFLOW_TRACKING_AUTH"]  # registered under this name in pyproject.toml


def read(path: Path) -> tuple[str, str]:
    """(username, password) from a ``username:password`` file."""
    username, sep, password = path.read_text().strip().partition(":")
    if not sep or not username or not password:
        raise ValueError(f"{path}: expected one line 'username:password'")
    return username, password


class FileCredentials(RequestAuthProvider):
    """Basic auth read at each request (a replaced file takes effect at once) from this thread's
    ``registry.thread_identity`` file, else the file ``TASADOR_MLFLOW_AUTH_FILE`` names, else from the
    settings' ``mlflow_credentials_path`` (a Tune
    trial's worker, which never called ``registry.mlflow_client``); None when there is no such file."""

    def get_name(self) -> str:
        return PROVIDER

    def get_auth(self):
        path = Path(thread_identity_file() or os.environ.get(IDENTITY_FILE_ENV) or _settings_identity_file())
        return HTTPBasicAuth(*read(path)) if path.is_file() else None


@functools.cache
def _settings_identity_file() -> Path:
    """The settings' identity file, resolved once per process: ``Settings.load()`` costs about 3 ms
    (validation, reading .env), too much for every MLflow request of a Tune worker."""
    from tasador.settings import Settings

    return Settings.load().mlflow_credentials_path
