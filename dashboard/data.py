"""What the Dash app reads, each over its own interface (never importing serve_app or jobs): the Serve
HTTP API, the MLflow registry, PostgreSQL (aggregates computed in the database) and Prometheus's
HTTP API. Every reader returns plain data or raises ``Unavailable`` with a message for the page."""

from __future__ import annotations

import json
import time

import requests

from tasador import db
from tasador.registry import mlflow_client
from tasador.settings import Settings


class Unavailable(Exception):
    """A source did not answer; the message says which and how to fix it."""


# -- Serve --------------------------------------------------------------------------------------
def explain(settings: Settings, listing: dict) -> dict:
    """Price one listing with its SHAP contributions (POST /explain). A 422 comes back as
    ``{"invalid": detail}`` so the form can show it."""
    try:
        resp = requests.post(f"{settings.serve}/explain", json=listing, timeout=30)
    except requests.RequestException as exc:
        raise Unavailable(f"the prediction API at {settings.serve} did not answer ({type(exc).__name__})") from None
    if resp.status_code == 422:
        return {"invalid": resp.json().get("detail", "invalid listing")}
    if not resp.ok:
        raise Unavailable(f"the prediction API answered HTTP {resp.status_code}: {resp.text[:300]}")
    return resp.json()


# -- MLflow registry --------------------------------------------------------------------------------
def model_versions(settings: Settings) -> list[dict]:
    """Every registered version with its lineage tags, newest first (one paged registry query)."""
    client = mlflow_client(settings)  # as the stack's reader (cluster/stack.py)
    try:
        production = client.get_registered_model(settings.model_name).aliases.get("production")
    except Exception:  # no model registered yet, or MLflow down: the search below says which
        production = None
    out, token = [], None
    try:
        while True:
            page = client.search_model_versions(f"name = '{settings.model_name}'", max_results=1000,
                                                page_token=token)
            out += [_version(v, production) for v in page]
            token = page.token
            if not token:
                break
    except Exception as exc:
        raise Unavailable(f"MLflow at {settings.mlflow_uri}: {type(exc).__name__}: {str(exc)[:200]}") from None
    return sorted(out, key=lambda v: -int(v["version"]))


def _version(v, production: str | None) -> dict:
    tags = v.tags
    metrics = json.loads(tags.get("metrics", "{}") or "{}")
    return {"version": v.version, "production": v.version == str(production), "family": tags.get("family", ""),
            **{k: metrics.get(k) for k in ("rmse", "mae", "r2", "mape")},
            "rows": tags.get("rows"), "batch_ids": tags.get("batch_ids", "[]"),
            "promotion": tags.get("promotion", "not decided"), "promotion_reason": tags.get("promotion_reason", ""),
            "trigger_reason": tags.get("trigger_reason", ""), "created": time.strftime(
                "%Y-%m-%d %H:%M", time.gmtime(v.creation_timestamp / 1000))}


# -- PostgreSQL -------------------------------------------------------------------------------------
def batches(settings: Settings) -> list[dict]:
    """Every batch: received rows (raw ledger), clean and rejected (processed ledger), drift found,
    retrained. Ledger tables only: one row per batch, however many listings."""
    try:
        with db.transaction(settings.raw_db) as cur:
            cur.execute("SELECT batch_id, group_number, day, batch_number, rows, received_at FROM batches"
                        " ORDER BY batch_id DESC LIMIT 5000")
            raw = cur.fetchall()
        with db.transaction(settings.clean_db) as cur:
            cur.execute("SELECT p.batch_id, p.clean_rows, p.rejected_rows, p.processed_at, d.drift_found, d.retrain"
                        " FROM processed_batches p LEFT JOIN decisions d USING (batch_id)")
            clean = {r[0]: r[1:] for r in cur.fetchall()}
    except Exception as exc:
        raise Unavailable(f"PostgreSQL: {type(exc).__name__}: {str(exc)[:200]}") from None
    out = []
    for batch_id, group, day, number, rows, received in raw:
        c = clean.get(batch_id, (None,) * 5)
        out.append({"batch_id": batch_id, "group": group, "day": day, "batch": number, "raw_rows": rows,
                    "clean_rows": c[0], "rejected_rows": c[1], "received_at": received.strftime("%Y-%m-%d %H:%M:%S"),
                    "processed_at": c[2].strftime("%Y-%m-%d %H:%M:%S") if c[2] else "not yet",
                    "drift_found": c[3], "retrain": c[4]})
    return out


def drift(settings: Settings, batch_id: int) -> dict | None:
    """The batch's drift statistics per feature and the decision's reason."""
    with db.transaction(settings.clean_db) as cur:
        cur.execute("SELECT drift, retrain_reason, reference_batches, production_version FROM decisions"
                    " WHERE batch_id = %s", (batch_id,))
        row = cur.fetchone()
    if not row:
        return None
    report, reason, reference, production = row
    return {"features": report.get("features", []), "batch_rows": report.get("batch_rows"),
            "reference_rows": report.get("reference_rows"), "reason": reason, "reference_batches": reference,
            "production_version": production}


# -- Prometheus -------------------------------------------------------------------------------------
QUERIES = {
    "request rate (req/s)": 'sum(rate(ray_tasador_requests_total{route="/predict"}[1m]))',
    "p50 latency (ms)": "histogram_quantile(0.5, sum by (le) (rate(ray_tasador_request_latency_ms_bucket"
                        '{route="/predict"}[1m])))',
    "p95 latency (ms)": "histogram_quantile(0.95, sum by (le) (rate(ray_tasador_request_latency_ms_bucket"
                        '{route="/predict"}[1m])))',
    "p99 latency (ms)": "histogram_quantile(0.99, sum by (le) (rate(ray_tasador_request_latency_ms_bucket"
                        '{route="/predict"}[1m])))',
    "error rate (share)": "sum(rate(ray_tasador_request_errors_total[1m])) / sum(rate(ray_tasador_requests_total[1m]))",
    "model version": "max(ray_tasador_model_version)",
    "model RMSE ($)": "max(ray_tasador_model_rmse)",
}


def monitoring(settings: Settings, minutes: int = 30) -> dict[str, list[tuple[float, float]]]:
    """Each series of QUERIES over the last ``minutes`` (Prometheus query_range, 15 s steps)."""
    end = time.time()
    out = {}
    for name, query in QUERIES.items():
        try:
            resp = requests.get(f"{settings.prometheus}/api/v1/query_range", timeout=10,
                                params={"query": query, "start": end - minutes * 60, "end": end, "step": 15})
            resp.raise_for_status()
        except requests.RequestException as exc:
            raise Unavailable(f"Prometheus is not reachable at {settings.prometheus} ({type(exc).__name__}): "
                              "install Debian's prometheus package and run `tasador up` to start it") from None
        result = resp.json()["data"]["result"]
        out[name] = [(float(t), float(v)) for t, v in result[0]["values"] if v not in ("NaN", "+Inf")] if result else []
    return out
