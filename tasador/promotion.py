"""Promotion: the challenger and the current production model are scored on the same held-out rows
(the test split of every clean row collected now, which neither trained on); the challenger gets the
``production`` alias only if its RMSE beats production's by the configured margin. The outcome and
its reason are written as version tags, on the decisions the training answered, and (for a move of
the alias) in ``alias_moves``. A challenger whose training covered exactly today's batches has already
been priced on these held-out rows by its training: those scores are used (``judge``).

Crash-safe order: (1) the verdict is written on the training's row, (2) the alias moves, (3) the
version's tags, (4) one transaction marks the training promoted/rejected, writes the decisions'
outcome and the alias move. A re-run after a crash anywhere finds the recorded verdict and redoes
only what is missing: it never judges twice and never leaves an outcome empty.
"""

from __future__ import annotations

import json
import logging

import numpy as np
from psycopg2 import sql
from psycopg2.extras import Json

from tasador import db, faults, locks
from tasador.models import price_metrics, threads_for_batch_work
from tasador.registry import PRODUCTION, mlflow_client, move_production_alias, production, tracking_server
from tasador.schema import FEATURES
from tasador.settings import Settings
from tasador.training import Phases, load_dataset

log = logging.getLogger(__name__)


def load_model(settings: Settings, version: str):
    import mlflow.sklearn

    with tracking_server(settings):
        return mlflow.sklearn.load_model(f"models:/{settings.model_name}/{version}")


def predict_log(model, X) -> np.ndarray:
    """A version's log prices for the held-out rows, on every core of this node (a version is pickled
    with serving's one thread)."""
    with threads_for_batch_work(model.regressor):
        return model.predict_log(X)


def verdict(challenger: str, production: str | None, new_rmse: float, old_rmse: float | None, margin: float,
            rows: int) -> tuple[bool, str]:
    """Promote or not, and why: without a production model always; else only when the challenger's
    RMSE beats production's by ``margin`` (a fraction) on the same held-out rows."""
    if production is None or old_rmse is None:
        return True, f"no production model: v{challenger} (RMSE ${new_rmse:,.0f}) becomes it"
    promoted = new_rmse < old_rmse * (1 - margin)
    word = "beats" if promoted else "does not beat"
    return promoted, (f"v{challenger} RMSE ${new_rmse:,.0f} {word} production v{production} RMSE ${old_rmse:,.0f} "
                      f"by the {margin:.0%} margin on the same {rows:,} held-out rows "
                      f"(change {(new_rmse - old_rmse) / old_rmse:+.1%})")


def judge(settings: Settings, challenger: str, recorded: dict | None = None) -> dict:
    """Score the challenger and production on the same held-out rows: the verdict and its reason.
    ``recorded``: what the challenger's training reported (its row in ``trainings``, written by the
    training job). When that training covered exactly the batches processed now, its test rows are these
    held-out rows (the split is by property id; a processed batch's rows never change), and its test
    scores are taken as they are instead of pricing the same rows with the same model again (about 4 s
    of two cores at a million rows; ``tests/test_training.py`` prices the registered version again and
    finds the same scores). Production is always priced here: its own scores were on fewer rows."""
    current = production(settings)
    if current and current.version == challenger:
        return {"verdict": "promoted", "previous_production": challenger, "scores": {},
                "reason": f"v{challenger} already holds the {PRODUCTION} alias"}
    phase = Phases()
    with phase("load_rows"):
        ds = load_dataset(settings, held_out_only=True)
    held_out = ds.frame[ds.test]
    y_log = np.log(held_out["price"].to_numpy(dtype=float))
    X = held_out[list(FEATURES)]
    versions = {"challenger": challenger, **({"production": current.version} if current is not None else {})}
    scores, reused = {}, measured_on_these_rows(recorded, challenger, ds)
    if reused is not None:
        scores["challenger"] = reused
    for role, version in versions.items():
        if role in scores:
            continue
        with phase(f"load_{role}"):
            model = load_model(settings, version)
        with phase(f"price_{role}"):
            scores[role] = price_metrics(y_log, predict_log(model, X))
    promoted, reason = verdict(challenger, current.version if current else None, scores["challenger"]["rmse"],
                               scores.get("production", {}).get("rmse"), settings.promotion_margin, len(held_out))
    if reused is not None:
        reason += f" (v{challenger}'s scores as its training measured them on these same rows)"
    return {"verdict": "promoted" if promoted else "rejected", "reason": reason, "scores": scores,
            "previous_production": current.version if current else None, "held_out_rows": len(held_out),
            "phases_s": dict(phase)}


def measured_on_these_rows(recorded: dict | None, version: str, ds) -> dict | None:
    """``version``'s test scores from its training when its test rows are ``ds``'s held-out rows: the
    same batches, as many rows. None otherwise (an older training's row without ``test_rows``, a batch
    processed since, another version)."""
    scores = (recorded or {}).get("test_metrics") or {}
    if not scores.get("rmse") or str(recorded.get("version")) != str(version):
        return None
    same = recorded.get("batch_ids") == ds.batch_ids and recorded.get("test_rows") == int(ds.test.sum())
    return dict(scores) if same else None


def promote_training(settings: Settings, training_id: int) -> dict:
    """Judge (once) and apply the promotion of training ``training_id``'s version; idempotent."""
    with locks.writer_lock(settings, locks.model(settings.model_name), "promote"):
        row = _training(settings, training_id)
        version, phases = row["version"], {}
        if row["verdict"] is None:
            judged = judge(settings, version, row["result"])
            with db.transaction(settings.clean_db) as cur:
                cur.execute("UPDATE trainings SET verdict = %s, promotion_reason = %s, promotion_scores = %s,"
                            " previous_production = %s WHERE training_id = %s AND verdict IS NULL",
                            (judged["verdict"], judged["reason"], Json(judged["scores"]),
                             judged["previous_production"], training_id))
            row = _training(settings, training_id)
            resumed, phases = False, judged.get("phases_s", {})
        else:
            resumed = True  # a crashed run recorded the verdict: finish applying it
        serving = _apply(settings, version, row, training_id)
    log.info("v%s %s: %s (judged in %s)", version, row["verdict"], row["promotion_reason"], phases)
    return {"job": "promote", "status": row["verdict"], "version": version, "training_id": training_id,
            "previous_production": row["previous_production"], "reason": row["promotion_reason"],
            "scores": row["promotion_scores"], "resumed": resumed, "phases_s": phases, "serving": serving}


def promote(settings: Settings, version: str) -> dict:
    """An operator's promotion of ``version``, outside the pipeline's trainings: judged and applied now."""
    with locks.writer_lock(settings, locks.model(settings.model_name), "promote"):
        row = judge(settings, version)
        row = {"version": version, "promotion_reason": row.pop("reason"), "promotion_scores": row.pop("scores"), **row}
        serving = _apply(settings, version, row, None)
    return {"job": "promote", "status": row["verdict"], "version": version, "reason": row["promotion_reason"],
            "previous_production": row["previous_production"], "scores": row["promotion_scores"], "serving": serving}


def _apply(settings: Settings, version: str, row: dict, training_id: int | None) -> dict | None:
    """Move the alias (when promoted and not there yet), tag the version, record the outcome: each
    write idempotent, in this order, so a re-run completes a crashed one. Returns what serving answered
    when asked to follow the move (None: nothing moved)."""
    promoted = row["verdict"] == "promoted"
    faults.point("promote.before_alias", settings)
    client = mlflow_client(settings)
    current = production(settings)
    serving = None
    if promoted and (current is None or current.version != version):
        serving = move_production_alias(settings, client, version)
    faults.point("promote.after_alias", settings)
    tags = {"promotion": row["verdict"], "promotion_reason": row["promotion_reason"],
            "promotion_scores": json.dumps(row["promotion_scores"] or {})}
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, version, key, value)
    with db.transaction(settings.clean_db) as cur:
        if training_id is not None:
            cur.execute("UPDATE trainings SET promoted_at = now() WHERE training_id = %s AND promoted_at IS NULL",
                        (training_id,))
            cur.execute("UPDATE decisions SET promoted = %s, promotion_reason = %s WHERE training_id = %s",
                        (promoted, row["promotion_reason"], training_id))
        if promoted and row["previous_production"] != version:
            cur.execute("INSERT INTO alias_moves (model_name, version, previous_version, kind, reason, training_id)"
                        " VALUES (%s, %s, %s, 'promotion', %s, %s) ON CONFLICT (training_id) DO NOTHING",
                        (settings.model_name, version, row["previous_production"], row["promotion_reason"],
                         training_id))
    return serving


def _training(settings: Settings, training_id: int) -> dict:
    keys = ("version", "verdict", "promotion_reason", "promotion_scores", "previous_production", "result")
    with db.transaction(settings.clean_db) as cur:
        cur.execute(sql.SQL("SELECT {} FROM trainings WHERE training_id = %s").format(db.identifiers(keys)),
                    (training_id,))
        found = cur.fetchone()
    if found is None or found[0] is None:
        raise ValueError(f"training {training_id} has no registered version to promote")
    return dict(zip(keys, found, strict=True))
