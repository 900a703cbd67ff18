"""What the Dash app reads, each over its own interface (never importing serve_app or jobs): the Serve
HTTP API, the MLflow registry, PostgreSQL (aggregates computed in the database) and Prometheus's
HTTP API. Every reader returns plain data or raises ``Unavailable`` with a message for the page."""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass

import requests
from psycopg2 import sql

from tasador import db, history
from tasador.registry import mlflow_client, thread_identity
from tasador.settings import Settings

PAGE_DB_ATTEMPTS = 2  # a page says PostgreSQL is unavailable within seconds rather than retrying for 30


class Unavailable(Exception):
    """A source did not answer; the message says which and how to fix it."""


# -- Serve --------------------------------------------------------------------------------------
def _price(settings: Settings, route: str, listing: dict) -> dict:
    """POST one listing to ``route``; a 422 comes back as ``{"invalid": detail}`` so the form can show it."""
    try:
        resp = requests.post(f"{settings.serve}{route}", json=listing, timeout=30)
    except requests.RequestException as exc:
        raise Unavailable(f"the prediction API at {settings.serve} did not answer ({type(exc).__name__})") from None
    if resp.status_code == 422:
        return {"invalid": resp.json().get("detail", "invalid listing")}
    if not resp.ok:
        raise Unavailable(f"the prediction API answered HTTP {resp.status_code}: {resp.text[:300]}")
    return resp.json()


def explain(settings: Settings, listing: dict) -> dict:
    """Price one listing with its SHAP contributions (POST /explain)."""
    return _price(settings, "/explain", listing)


def predict(settings: Settings, listing: dict) -> dict:
    """Price one listing (POST /predict): its price, version and prediction id."""
    return _price(settings, "/predict", listing)


def health(settings: Settings) -> dict:
    """The prediction API's /health: the version serving, registry, database, prediction log."""
    try:
        return requests.get(f"{settings.serve}/health", timeout=10).json()
    except (requests.RequestException, ValueError) as exc:
        raise Unavailable(f"the prediction API at {settings.serve} did not answer ({type(exc).__name__})") from None


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
            out += [_version(v, production, settings) for v in page]
            token = page.token
            if not token:
                break
    except Exception as exc:
        raise Unavailable(f"MLflow at {settings.mlflow_uri}: {type(exc).__name__}: {str(exc)[:200]}") from None
    return sorted(out, key=lambda v: -int(v["version"]))


def _version(v, production: str | None, settings: Settings) -> dict:
    tags = v.tags
    metrics = json.loads(tags.get("metrics", "{}") or "{}")
    return {"version": v.version, "production": v.version == str(production), "family": tags.get("family", ""),
            **{k: metrics.get(k) for k in ("rmse", "mae", "r2", "mape")},
            "rows": tags.get("rows"), "batch_ids": tags.get("batch_ids", "[]"), "data_hash": tags.get("data_hash"),
            "run_url": f"{settings.mlflow_uri}/#/models/{settings.model_name}/versions/{v.version}",
            "job_url": f"{settings.ray_dashboard}/#/jobs/{tags['ray_job_id']}" if tags.get("ray_job_id") else None,
            "promotion": tags.get("promotion", "not decided"), "promotion_reason": tags.get("promotion_reason", ""),
            "trigger_reason": tags.get("trigger_reason", ""), "created": time.strftime(
                "%Y-%m-%d %H:%M", time.gmtime(v.creation_timestamp / 1000))}


# -- PostgreSQL -------------------------------------------------------------------------------------
def batches(settings: Settings) -> list[dict]:
    """Every batch: received rows (raw ledger), clean and rejected (processed ledger), drift found,
    retrained. Ledger tables only: one row per batch, however many listings."""
    try:
        with db.transaction(settings.raw_db, PAGE_DB_ATTEMPTS) as cur:
            cur.execute("SELECT batch_id, group_number, day, batch_number, rows, received_at FROM batches"
                        " ORDER BY batch_id DESC LIMIT 5000")
            raw = cur.fetchall()
        with db.transaction(settings.clean_db, PAGE_DB_ATTEMPTS) as cur:
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


def last_predictions(settings: Settings, limit: int = 20) -> list[dict]:
    """The newest rows of the prediction log (raw_data.predictions)."""
    try:
        with db.transaction(settings.raw_db, PAGE_DB_ATTEMPTS) as cur:
            cur.execute("SELECT prediction_id, requested_at, model_version, predicted_price, state, city, bed, bath,"
                        " house_size FROM predictions ORDER BY requested_at DESC LIMIT %s", (limit,))
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
    except Exception as exc:
        raise Unavailable(f"PostgreSQL: {type(exc).__name__}: {str(exc)[:200]}") from None
    return [{**dict(zip(names, r, strict=True)), "prediction_id": str(r[0]),
             "requested_at": r[1].strftime("%Y-%m-%d %H:%M:%S")} for r in rows]


def lineage(settings: Settings, prediction_id: str) -> dict:
    try:
        return history.lineage(settings, prediction_id)
    except (ValueError, LookupError):
        raise
    except Exception as exc:
        raise Unavailable(f"{type(exc).__name__}: {str(exc)[:300]}") from None


SAMPLE_ROWS = 5_000  # per side of a numeric feature's ECDF


def distribution(settings: Settings, batch_id: int, feature: str, kind: str, reference: list[int]) -> dict:
    """A feature of the batch against its reference batches: for a number, a sample of values on each
    side (about SAMPLE_ROWS, Bernoulli-sampled in the database) for an ECDF; for a category, every
    value's share on each side (counted in the database)."""
    column = sql.Identifier(feature)
    out = {}
    with db.transaction(settings.clean_db, PAGE_DB_ATTEMPTS) as cur:
        for side, ids in (("batch", [batch_id]), ("reference", reference)):
            if kind == "categorical":
                cur.execute(sql.SQL("SELECT {c}, count(*) FROM listings WHERE batch_id = ANY(%s) GROUP BY {c}")
                            .format(c=column), (ids,))
                counts = dict(cur.fetchall())
                total = sum(counts.values()) or 1
                out[side] = {str(k): n / total for k, n in counts.items()}
            else:
                cur.execute("SELECT count(*) FROM listings WHERE batch_id = ANY(%s)", (ids,))
                rows = cur.fetchone()[0] or 1
                percent = min(100.0, 100.0 * SAMPLE_ROWS / rows)
                cur.execute(sql.SQL("SELECT {c} FROM listings TABLESAMPLE BERNOULLI (%s) REPEATABLE (7)"
                                    " WHERE batch_id = ANY(%s) AND {c} IS NOT NULL").format(c=column), (percent, ids))
                out[side] = sorted(float(r[0]) for r in cur.fetchall())
    return out


def drift(settings: Settings, batch_id: int) -> dict | None:
    """The batch's drift statistics per feature and the decision's reason."""
    with db.transaction(settings.clean_db, PAGE_DB_ATTEMPTS) as cur:
        cur.execute("SELECT drift, retrain_reason, reference_batches, production_version FROM decisions"
                    " WHERE batch_id = %s", (batch_id,))
        row = cur.fetchone()
    if not row:
        return None
    report, reason, reference, production = row
    return {"features": report.get("features", []), "batch_rows": report.get("batch_rows"),
            "reference_rows": report.get("reference_rows"), "reason": reason, "reference_batches": reference,
            "production_version": production}


def production_history(settings: Settings) -> list[dict]:
    """Every move of the production alias, oldest first (tasador.history)."""
    try:
        return history.moves(settings)
    except Exception as exc:
        raise Unavailable(f"PostgreSQL: {type(exc).__name__}: {str(exc)[:200]}") from None


def rollback(settings: Settings, version: str, reason: str, token: str) -> dict:
    """An operator's rollback from the app: the Serve admin token gates it (compared in constant
    time); the move is made as the stack's MLflow writer, for this call only."""
    try:
        expected = settings.serve_admin_token_path.read_text().strip()
    except OSError:
        raise Unavailable(f"no admin token at {settings.serve_admin_token_path}: is the stack up?") from None
    if not token or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise PermissionError("the admin token is wrong: a rollback needs the Serve admin token "
                              f"(in {settings.serve_admin_token_path})")
    writer_file = settings.mlflow_identity_path("writer")
    with thread_identity(writer_file):  # this request's thread only: the app's other threads stay the reader
        return history.rollback(settings.replace(mlflow_credentials_file=str(writer_file)), version, reason)


# -- Prometheus -------------------------------------------------------------------------------------
def _quantile(q: float) -> str:
    return (f"histogram_quantile({q}, sum by (le) (rate(ray_tasador_request_latency_ms_bucket"
            '{route="/predict"}[1m])))')


@dataclass(frozen=True)
class Chart:
    """A Monitoring chart: its lines, each a PromQL query (one "by (kind)" gives a line per kind), and
    how a line joins its points: "linear" for rates, "hv" (steps) for a value that holds until it changes."""
    lines: dict[str, str]
    shape: str = "linear"


_LOGGED = "sum(rate(ray_tasador_predictions_logged_total[1m]))"
HAPROXY_5XX = 'haproxy_frontend_http_responses_total{proxy="http_frontend",code="5xx"}'
INGRESS_5XX = "5xx at the ingress (HAProxy: refused when overloaded, or no replica answered)"
CHARTS = {
    "request rate (req/s)": Chart({"/predict": 'sum(rate(ray_tasador_requests_total{route="/predict"}[1m]))'}),
    "/predict latency (ms)": Chart({"p50": _quantile(0.5), "p95": _quantile(0.95), "p99": _quantile(0.99)}),
    # the replicas' answers by kind, and what the ingress answered 5xx itself (HAProxy's own exporter:
    # overload refused before any replica, a replica that never answered)
    "errors by kind (req/s)": Chart({"by kind": "sum by (kind) (rate(ray_tasador_request_errors_total[1m]))",
                                     INGRESS_5XX: f"sum(rate({HAPROXY_5XX}[1m]))"}),
    "model version serving": Chart({"version": "max(ray_tasador_model_version)"}, shape="hv"),
    # a counter appears at its first increment: no loss yet is a 0 line while anything is logged
    "prediction log (rows/s)": Chart({"logged": _LOGGED, "lost": "sum(rate(ray_tasador_predictions_lost_total[1m]))"
                                                                 f" or (0 * {_LOGGED})"}),
    "model RMSE ($)": Chart({"held-out RMSE": "max(ray_tasador_model_rmse)"}, shape="hv"),
}
# the words for an error kind on the chart
KIND_WORDS = {"no_model": "no model loaded (before the first promotion, or none loadable)",
              "invalid_input": "invalid input (4xx)", "overloaded": "refused: overloaded (503)"}


def monitoring(settings: Settings, minutes: int = 30) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Each chart of CHARTS over the last ``minutes``: its lines' points (Prometheus query_range, 15 s steps)."""
    end = time.time()
    out = {}
    for chart, spec in CHARTS.items():
        out[chart] = {}
        for line, query in spec.lines.items():
            try:
                resp = requests.get(f"{settings.prometheus}/api/v1/query_range", timeout=10,
                                    params={"query": query, "start": end - minutes * 60, "end": end, "step": 15})
                resp.raise_for_status()
            except requests.RequestException as exc:
                raise Unavailable(f"Prometheus is not reachable at {settings.prometheus} ({type(exc).__name__}):"
                                  " install Debian's prometheus package and run `tasador up` to start it") from None
            for series in resp.json()["data"]["result"]:
                kind = series["metric"].get("kind")
                name = KIND_WORDS.get(kind, kind) if kind else line
                points = [(float(t), float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf")]
                if points:
                    out[chart][name] = points
    return out
