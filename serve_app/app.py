"""The prediction API: a FastAPI ingress that prices with the production model in-process (batched),
and a model deployment for explanations. Import path ``serve_app.app:app``
(deployed with ``serve deploy serve_app/config.yaml``, or by ``tasador up``).

- ``POST /predict``: one listing or ``{"listings": [...]}`` -> model name, version, one price per listing
- ``POST /explain``: the same body -> each feature's SHAP contribution per listing
- ``GET /model``: the version serving, its family, metrics, batches trained on and why it was promoted
- ``GET /health``: 200 when a model serves (with the last refused version, if any), else 503
- ``POST /admin/reload``: check the production alias now (``Authorization: Bearer <admin token>``)
Bad input gets a 422 naming the field, never a 500.
"""


import asyncio
import hmac
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import metrics
from serve_app.model import PriceModelServer, ProductionModel, RegistryLoader
from serve_app.prediction_log import PredictionLog
from serve_app.schemas import LISTING, Listing, listings_adapter, to_columns
from tasador.settings import Settings

_listing_schema = Listing.model_json_schema()
_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
    _listing_schema, {"type": "object", "required": ["listings"],
                      "properties": {"listings": {"type": "array", "items": _listing_schema}}}]}}}}}

api = FastAPI(title="Tasador price API", version="1",
              description="US real-estate prices from the production model of the Tasador registry.")


class BadRequest(Exception):
    def __init__(self, message: str, errors: list[dict] | None = None):
        super().__init__(message)
        self.errors = errors or [{"field": None, "message": message}]


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "body"


def parse_listings(body: bytes, max_listings: int, batch_adapter) -> list[Listing]:
    if not body.strip():
        raise BadRequest("the request body is empty: send one listing or {\"listings\": [...]}")
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not JSON: {exc}") from None
    try:
        if isinstance(payload, dict) and "listings" in payload:
            if isinstance(payload["listings"], list) and len(payload["listings"]) > max_listings:
                raise BadRequest(f"listings: {len(payload['listings'])} listings, at most {max_listings} per request")
            return batch_adapter.validate_python(payload).listings
        if isinstance(payload, dict):
            return [LISTING.validate_python(payload)]
    except ValidationError as exc:
        errors = [{"field": _field(e["loc"]), "message": e["msg"], "input": _short(e.get("input"))}
                  for e in exc.errors(include_url=False)]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        raise BadRequest(f"invalid listing: {summary}", errors) from None
    raise BadRequest(f"the body is a JSON {type(payload).__name__}: send one listing object or "
                     "{\"listings\": [...]}")


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@serve.deployment
@serve.ingress(api)
class PriceApi:
    def __init__(self, explainer: DeploymentHandle, loader_factory=RegistryLoader):
        self.settings = Settings.load()
        self.model = ProductionModel(self.settings, loader_factory)
        self.explainer = explainer
        self.metrics = metrics.ApiMetrics()
        self.batch_adapter = listings_adapter(self.settings.serve_max_listings)
        self.explain_adapter = listings_adapter(self.settings.serve_max_explain)
        self.prediction_log = PredictionLog(self.settings, on_logged=self.metrics.logged.inc,
                                            on_lost=self.metrics.lost.inc)
        self.predict_batched.set_max_batch_size(self.settings.serve_batch_max_size)
        self.predict_batched.set_batch_wait_timeout_s(self.settings.serve_batch_wait_s)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def predict_batched(self, requests: list[dict]) -> list[dict]:
        """Concurrent /predict requests of this replica: one frame, one vectorised call."""
        return self.model.predict(requests)

    def _done(self, route: str, started: float, code: int, body: dict, kind: str | None = None) -> JSONResponse:
        self.metrics.requests.inc(tags={"route": route, "code": str(code)})
        self.metrics.latency.observe((time.perf_counter() - started) * 1000, tags={"route": route})
        if code >= 400:
            self.metrics.errors.inc(tags={"route": route, "kind": kind or str(code)})
        return JSONResponse(body, status_code=code)

    async def _priced(self, route: str, request: Request, limit: int, adapter, price):
        started = time.perf_counter()
        try:
            listings = parse_listings(await request.body(), limit, adapter)
        except BadRequest as exc:
            return self._done(route, started, 422, {"detail": str(exc), "errors": exc.errors}, "invalid_input"), None
        columns = to_columns(listings)
        try:
            result = await price(columns)
        except Exception as exc:  # a replica died mid-request: say so, never a bare 500
            return self._done(route, started, 503, {"detail": f"the model is unavailable: {type(exc).__name__}"},
                              "model_unavailable"), None
        if "error" in result:
            return self._done(route, started, 503, {"detail": result["error"]}, "no_model"), None
        return self._done(route, started, 200, result), (columns, result)

    @api.post("/predict", openapi_extra=_BODY, summary="Price one listing or a list of listings")
    async def predict(self, request: Request):
        response, priced = await self._priced("/predict", request, self.settings.serve_max_listings,
                                              self.batch_adapter, self.predict_batched)
        if priced:
            columns, result = priced
            self.prediction_log.add(columns, result["model_name"], result["model_version"], result["prices"])
        return response

    @api.post("/explain", openapi_extra=_BODY, summary="Each feature's SHAP contribution to the price")
    async def explain(self, request: Request):
        response, _ = await self._priced("/explain", request, self.settings.serve_max_explain,
                                         self.explain_adapter, self.explainer.explain.remote)
        return response

    @api.get("/model", summary="The version serving and its lineage")
    async def model_info(self):
        started = time.perf_counter()
        info = self.model.info()
        if info["model"] is None:
            return self._done("/model", started, 503, {"detail": "no production model yet", **info}, "no_model")
        return self._done("/model", started, 200, info["model"])

    @api.get("/health")
    async def health(self):
        started = time.perf_counter()
        info = self.model.info()
        model = info["model"]
        body = {"status": "ok" if model and not info["last_error"] else ("degraded" if model else "no_model"),
                "model_version": model["version"] if model else None, "last_error": info["last_error"],
                "prediction_log": self.prediction_log.status()}
        return self._done("/health", started, 200 if model else 503, body)

    @api.post("/admin/reload", summary="Check the production alias now (admin token)")
    async def reload(self, request: Request):
        started = time.perf_counter()
        token = self.settings.serve_admin_token
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not token:
            return self._done("/admin/reload", started, 403, {"detail": "no admin token is configured"}, "forbidden")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return self._done("/admin/reload", started, 401, {"detail": "a valid admin token is required"},
                              "unauthorized")
        here = await asyncio.to_thread(self.model.refresh)
        try:
            explainer = await self.explainer.reload.remote()
        except Exception as exc:  # the explainer follows the alias on its own within serve_poll_s
            explainer = {"status": "unreachable", "error": type(exc).__name__}
        return self._done("/admin/reload", started, 200, {**here, "explainer": explainer})


app = PriceApi.bind(PriceModelServer.bind())
