"""Promotion: the challenger and the current production model are scored on the same held-out rows
(the test split of every clean row collected now, which neither trained on); the challenger gets the
``production`` alias only if its RMSE beats production's by the configured margin. The outcome and
its reason are written as version tags and on the batch's decision."""

from __future__ import annotations

import json
import logging

import numpy as np

from tasador import decisions
from tasador.models import price_metrics
from tasador.registry import PRODUCTION, mlflow_client, production
from tasador.schema import FEATURES
from tasador.settings import Settings
from tasador.training import load_dataset

log = logging.getLogger(__name__)


def load_model(settings: Settings, version: str):
    import mlflow.sklearn

    mlflow_client(settings)
    return mlflow.sklearn.load_model(f"models:/{settings.model_name}/{version}")


def promote(settings: Settings, challenger: str, batch_id: int | None = None) -> dict:
    client = mlflow_client(settings)
    current = production(settings)
    if current and current.version == challenger:
        return {"job": "promote", "status": "already_production", "version": challenger}
    ds = load_dataset(settings)
    held_out = ds.frame[ds.test]
    y_log = np.log(held_out["price"].to_numpy(dtype=float))
    X = held_out[list(FEATURES)]
    scores = {"challenger": price_metrics(y_log, load_model(settings, challenger).predict_log(X))}
    margin = settings.promotion_margin
    if current is None:
        rmse = scores["challenger"]["rmse"]
        promoted, reason = True, f"no production model: v{challenger} (RMSE ${rmse:,.0f}) becomes it"
    else:
        scores["production"] = price_metrics(y_log, load_model(settings, current.version).predict_log(X))
        new, old = scores["challenger"]["rmse"], scores["production"]["rmse"]
        promoted = new < old * (1 - margin)
        verdict = "beats" if promoted else "does not beat"
        reason = (f"v{challenger} RMSE ${new:,.0f} {verdict} production v{current.version} RMSE ${old:,.0f} "
                  f"by the {margin:.0%} margin on the same {len(held_out):,} held-out rows "
                  f"(change {(new - old) / old:+.1%})")
    if promoted:
        client.set_registered_model_alias(settings.model_name, PRODUCTION, challenger)
    client.set_model_version_tag(settings.model_name, challenger, "promotion", "promoted" if promoted else "rejected")
    client.set_model_version_tag(settings.model_name, challenger, "promotion_reason", reason)
    client.set_model_version_tag(settings.model_name, challenger, "promotion_scores", json.dumps(scores))
    if batch_id is not None:
        decisions.record_outcome(settings, batch_id, None, promoted, reason)
    log.info("v%s %s: %s", challenger, "promoted" if promoted else "rejected", reason)
    return {"job": "promote", "status": "promoted" if promoted else "rejected", "version": challenger,
            "previous_production": current.version if current else None, "reason": reason, "scores": scores,
            "held_out_rows": len(held_out)}
