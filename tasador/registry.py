"""The MLflow model registry: the production model (the ``production`` alias, not deprecated stages)
and the tags every version carries (batches, family, metrics, decision and reason)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tasador.settings import MLFLOW_IDENTITY_FILE_ENV, Settings

PRODUCTION = "production"
# how every process of the stack authenticates to MLflow: the request-auth plugin of tasador/mlflow_auth.py
# (a name, not a secret: the plugin reads the identity file, see use_identity)
MLFLOW_AUTH_ENV = {"MLFLOW_TRACKING_AUTH": "tasador-file"}
# this process's identity file, set by use_identity (deliberately not a setting: a value set here must
# never become the settings of another stack this process starts)
IDENTITY_FILE_ENV = MLFLOW_IDENTITY_FILE_ENV
# how long a promotion waits for serving to answer its reload: one replica's load of the new version
SERVING_RELOAD_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


def client_env(settings: Settings, identity: str) -> dict[str, str]:
    """The environment (settings) of a process of the stack that talks to MLflow as ``identity``."""
    return {**MLFLOW_AUTH_ENV,
            "TASADOR_MLFLOW_CREDENTIALS_FILE": str(settings.mlflow_identity_path(identity).resolve())}


_THREAD = threading.local()  # a thread's own identity file, inside thread_identity


def use_identity(path) -> None:
    """This process's MLflow calls authenticate with the file ``path`` (tasador/mlflow_auth.py); inside
    ``thread_identity``, only this thread's."""
    if getattr(_THREAD, "identity_file", None):
        _THREAD.identity_file = str(path)
        os.environ.update(MLFLOW_AUTH_ENV)
        return
    os.environ.update({**MLFLOW_AUTH_ENV, IDENTITY_FILE_ENV: str(path)})


def thread_identity_file() -> str | None:
    """The identity file of this thread's ``thread_identity`` block, or None outside one."""
    return getattr(_THREAD, "identity_file", None)


@contextmanager
def thread_identity(path) -> Iterator[None]:
    """For the block, this thread's MLflow calls (and only this thread's) authenticate with ``path``: a
    web app's request acting as the writer while its other threads stay the reader. MLflow's client
    asks for a request's auth on the thread that makes the request."""
    previous = thread_identity_file()
    _THREAD.identity_file = str(path)
    os.environ.update(MLFLOW_AUTH_ENV)
    try:
        yield
    finally:
        _THREAD.identity_file = previous


@dataclass(frozen=True)
class Production:
    version: str
    run_id: str
    batch_ids: list[int]
    tags: dict


def mlflow_client(settings: Settings):
    """A client of this settings' server, this process's MLflow calls authenticated as the settings'
    identity (mlflow_auth). MLflow's global tracking URI is left alone: see ``tracking_server``."""
    from mlflow import MlflowClient

    use_identity(settings.mlflow_credentials_path.resolve())
    return MlflowClient(settings.mlflow_uri, settings.mlflow_uri)


# MLflow's tracking URI is one per process: blocks that set it run one at a time (re-entrant: a block
# may call code that opens its own)
_TRACKING_URI = threading.RLock()


@contextmanager
def tracking_server(settings: Settings) -> Iterator:
    """MLflow's module-level API (``mlflow.start_run``, ``log_model``, ``register_model``, loading a
    ``models:/`` URI) on this settings' server for the block, the previous tracking URI restored after
    it (the registry URI follows the tracking URI when unset). Another thread's block waits for this
    one, so neither runs against the other's server. Yields the settings' client."""
    import mlflow

    with _TRACKING_URI:
        client = mlflow_client(settings)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(settings.mlflow_uri)
        try:
            yield client
        finally:
            mlflow.set_tracking_uri(previous)


def production_version(client, model_name: str) -> str | None:
    """The version number the ``production`` alias names, or None (no such model or alias yet)."""
    mv = production_model_version(client, model_name)
    return None if mv is None else mv.version


def production_model_version(client, model_name: str):
    """The model version the ``production`` alias names, or None (no such model or alias yet). Looked
    up by alias: 15 ms of the MLflow server's CPU, against 21-24 ms for the registered model, which
    loads every version and alias and grows with the registry (every serving node reads it each
    ``serve_poll_s``). A failed lookup is told apart by the registered model: MLflow's auth app answers
    an alias lookup on a model that does not exist with 403, and the registry a missing alias with
    INVALID_PARAMETER_VALUE; anything else (the server down or refusing) is raised."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, PRODUCTION)
    except MlflowException as exc:
        if exc.error_code not in ("INVALID_PARAMETER_VALUE", "PERMISSION_DENIED", "RESOURCE_DOES_NOT_EXIST"):
            raise
    try:
        version = client.get_registered_model(model_name).aliases.get(PRODUCTION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            return None
        raise
    return None if version is None else client.get_model_version(model_name, version)


def production(settings: Settings) -> Production | None:
    """The version holding the ``production`` alias, or None when there is none (yet)."""
    mv = production_model_version(mlflow_client(settings), settings.model_name)
    if mv is None:
        return None
    return Production(mv.version, mv.run_id, json.loads(mv.tags.get("batch_ids", "[]")), dict(mv.tags))


def move_production_alias(settings: Settings, client, version: str) -> dict:
    """Point the ``production`` alias at ``version``, then ask serving to follow at once: POST
    ``/admin/reload`` with the admin token. The replica that answers reads the alias and loads the version
    before it answers, and shares its reading with its node's other replicas (they follow within
    ``serve_poll_s``); nodes the request does not reach read the registry within ``serve_registry_poll_s``.
    Serving that is down, or a stack without the token, follows on its own poll: what serving answered (or
    why not) is returned, never raised, as the alias has moved."""
    client.set_registered_model_alias(settings.model_name, PRODUCTION, version)
    import requests

    try:
        token = settings.serve_admin_token_path.read_text().strip()
    except OSError as exc:
        return {"status": "not_asked", "error": f"no admin token: {type(exc).__name__}"}
    try:
        resp = requests.post(f"{settings.serve}/admin/reload", headers={"Authorization": f"Bearer {token}"},
                             timeout=(3.0, SERVING_RELOAD_TIMEOUT_S))
        answer = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    except requests.RequestException as exc:
        log.info("serving was not told of v%s (%s): it follows within %gs", version, type(exc).__name__,
                 settings.serve_registry_poll_s)
        return {"status": "not_answered", "error": f"{type(exc).__name__}: {exc}"[:300]}
    if resp.status_code != 200:
        return {"status": "refused", "http_status": resp.status_code, "error": answer.get("detail")}
    return {key: answer.get(key) for key in ("status", "version", "previous", "error")}


def version_for_training(settings: Settings, training_id: int) -> str | None:
    """The version registered by training ``training_id`` (its ``training_id`` tag, written with the
    version in one request), or None. A re-run after a crash finds the version here instead of
    training and registering a second one."""
    client = mlflow_client(settings)
    found = client.search_model_versions(f"name = '{quoted_name(settings.model_name)}'"
                                         f" AND tags.training_id = '{int(training_id)}'")
    versions = sorted((mv.version for mv in found), key=int)
    if len(versions) > 1:
        raise RuntimeError(f"training {training_id} registered {len(versions)} versions ({versions}); expected one")
    return versions[0] if versions else None


def quoted_name(name: str) -> str:
    """A model name inside a search filter's single quotes (MLflow's filter grammar has no parameters)."""
    if "'" in name or "\\" in name:
        raise ValueError(f"model name {name!r}: quotes and backslashes are not allowed")
    return name
