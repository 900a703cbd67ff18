"""The MLflow model registry: the production model (the ``production`` alias, not deprecated stages)
and the tags every version carries (batches, family, metrics, decision and reason)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tasador.settings import Settings

PRODUCTION = "production"


@dataclass(frozen=True)
class Production:
    version: str
    run_id: str
    batch_ids: list[int]
    tags: dict


def mlflow_client(settings: Settings):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    return MlflowClient(settings.mlflow_uri, settings.mlflow_uri)


def production(settings: Settings) -> Production | None:
    """The version holding the ``production`` alias, or None when there is none (yet)."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(settings)
    try:
        mv = client.get_model_version_by_alias(settings.model_name, PRODUCTION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return Production(mv.version, mv.run_id, json.loads(mv.tags.get("batch_ids", "[]")), dict(mv.tags))


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
