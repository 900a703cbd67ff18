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
