"""The prediction API: an HTTP deployment that prices with the production model in-process (batched;
its routes in ``PRICE_ROUTES``, described by a FastAPI app for the OpenAPI schema and ``/docs``), and a
model deployment for explanations. Import path ``serve_app.app:app``
(deployed with ``serve deploy serve_app/config.yaml``, or by ``tasador up``).

- ``POST /predict``: one listing or ``{"listings": [...]}`` -> model name, version, one price and one
  ``prediction_id`` per listing. With an ``Idempotency-Key`` header the ids derive from the key, so a
  retried request answers the same ids and is logged once.
- ``POST /explain``: the same body -> each feature's SHAP contribution per listing (up to
  ``EXPLAIN_HERE_ROWS`` listings by the ingress replica's own model, more by ``PriceModelServer``)
- ``GET /model``: the version serving, its family, metrics, batches trained on and why it was promoted
- ``GET /health``: 200 while a model serves ("ok", or "degraded" with what is wrong: registry or
  database unreachable and for how long, a refused version, the prediction log's backlog), else 503
- ``POST /admin/reload``: check the production alias now (``Authorization: Bearer <admin token>``)

Bad input gets a 4xx naming the problem, never a 500. ``/predict`` bodies over ``LARGE_BODY_BYTES``
are parsed, priced, logged and rendered by ``BulkPricer``, the ingress of an application of its own
(``bulk_app``, where HAProxy sends them), so a 10,000-listing request never holds the event loop (nor
the GIL) that answers /health and single listings. Overload is refused by Serve itself
(``max_queued_requests``, 503 with ``Retry-After``; ``request_timeout_s``), see config.yaml.
"""

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app import metrics
from serve_app.model import PriceModelServer, ProductionModel, RegistryLoader, large_requests_loader
from serve_app.prediction_log import PredictionLog
from serve_app.priority import serve_at
from serve_app.schemas import LARGE_BODY_BYTES, LISTING, Listing, listings_adapter, to_columns
from tasador import json_body
from tasador.settings import Settings

log = logging.getLogger("ray.serve")
EXPLAIN_HERE_ROWS = 4  # /explain of up to this many listings by the replica's own model; more: the explainer
MAX_ERRORS = 20  # validation errors listed per response (the count says how many there were)
IDEMPOTENCY_KEY = "idempotency-key"
BULK_APP = "tasador-bulk"  # the application of BulkPricer (serve_app/config.yaml)
BULK_NICENESS = 19  # every thread of BulkPricer once started (BulkPricer.__init__)
ID_NAMESPACE = uuid.UUID("6f1f5a43-52a4-4d54-9d2b-7c1f3f0a7a11")  # prediction ids from idempotency keys

_listing_schema = Listing.model_json_schema()
_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
    _listing_schema, {"type": "object", "required": ["listings"],
                      "properties": {"listings": {"type": "array", "items": _listing_schema}}}]}}}},
    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                    "schema": {"type": "string", "maxLength": 255},
                    "description": "A retried request with the same key answers the same prediction ids "
                                   "and is logged once."}]}

api = FastAPI(title="Tasador price API", version="1",
              description="US real-estate prices from the production model of the Tasador registry.")

# The price API's routes, defined once: ``PriceApi.__call__`` dispatches on this table and ``api`` is
# built from it for the OpenAPI schema and ``/docs`` only. Routing through FastAPI inside Serve cost a
# one-listing request more than its pricing: py-spy on a replica at 64 clients put ~60% of its GIL in
# Serve's ASGI path with Starlette's middleware, FastAPI's routing and its request handler.
PRICE_ROUTES = (  # method, path, PriceApi's handler, summary, extra OpenAPI
    ("POST", "/predict", "predict", "Price one listing or a list of listings", _BODY),
    ("POST", "/explain", "explain", "Each feature's SHAP contribution to the price", _BODY),
    ("GET", "/model", "model_info", "The version serving and its lineage", None),
    ("GET", "/health", "health", "What serves, and what is wrong if anything", None),
    ("POST", "/admin/reload", "reload", "Check the production alias now (admin token)", None),
)


# The endpoint ``api`` declares for each of ``PRICE_ROUTES`` (no docstring: it would be each route's
# description): ``api`` only describes the routes, ``PriceApi`` answers them.
def _described_only(request: Request):
    raise NotImplementedError("PriceApi answers this route; api only describes it")


for _method, _path, _handler, _summary, _extra in PRICE_ROUTES:
    api.add_api_route(_path, _described_only, methods=[_method], name=_handler, summary=_summary,
                      openapi_extra=_extra)

bulk_api = FastAPI(title="Tasador price API: large requests", version="1",
                   description=f"``/predict`` of over {LARGE_BODY_BYTES} bytes, where HAProxy sends them (the same "
                               "request and answer as the price API's ``/predict``).")


class BadRequest(Exception):
    """Input the API refuses: ``status`` (422; 413 for a body too large, 415 for one that is not JSON),
    what is wrong, and the error ``kind`` the metrics count."""

    def __init__(self, message: str, errors: list[dict] | None = None, status: int = 422,
                 kind: str = "invalid_input"):
        super().__init__(message)
        self.status, self.kind = status, kind
        self.errors = errors or [{"field": None, "message": message}]


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "body"


def parse_listings(body: bytes, max_listings: int, batch_adapter) -> list[Listing]:
    if not body.strip():
        raise BadRequest("the request body is empty: send one listing or {\"listings\": [...]}")
    try:
        payload = json_body.loads(body)
    except RecursionError:
        raise BadRequest("the request body nests JSON too deeply") from None
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
        found = exc.errors(include_url=False)
        errors = [{"field": _field(e["loc"]), "message": e["msg"], "input": _short(e.get("input"))}
                  for e in found[:MAX_ERRORS]]
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
        raise BadRequest(f"invalid listing: {summary}{more}", errors) from None
    except RecursionError:
        raise BadRequest("the request body nests JSON too deeply") from None
    raise BadRequest(f"the body is a JSON {type(payload).__name__}: send one listing object or "
                     "{\"listings\": [...]}")


def check_content_type(content_type: str | None) -> None:
    """Passes when the body may be read as JSON (no Content-Type, or a JSON one)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media and media not in ("application/json", "*/*") and not media.endswith("+json"):
        problem = f"Content-Type {media!r}: send the listings as application/json"
        raise BadRequest(problem, [{"field": "Content-Type", "message": problem}], 415, "unsupported_media_type")


def check_idempotency_key(key: str | None) -> None:
    if key is not None and not (1 <= len(key) <= 255 and key.isascii() and key.isprintable()):
        problem = "the Idempotency-Key header must be 1 to 255 printable ASCII characters"
        raise BadRequest(problem, [{"field": "Idempotency-Key", "message": problem}])


def prediction_ids(count: int, key: str | None) -> list[str]:
    """One id per listing: random, or derived from the idempotency key (a retry gets the same ids)."""
    if key is None:
        return random_uuids(count)
    return [str(uuid.uuid5(ID_NAMESPACE, f"{key}/{i}")) for i in range(count)]


def random_uuids(count: int) -> list[str]:
    """``count`` random (version 4) UUIDs as text, what ``str(uuid.uuid4())`` gives, from one read of
    the OS's randomness: ``uuid.uuid4()`` per id was 4.4 ms of a 1,000-listing request (py-spy: 12% of
    the bulk replica's samples), this 1.0 ms. Under 4 ids numpy's fixed cost is more than ``uuid4``'s
    (12.8 against 9.6 us for one; a one-listing request's ids were 3.6% of a replica's GIL at 64 clients)."""
    if count < 4:
        return [str(uuid.uuid4()) for _ in range(count)]
    raw = np.frombuffer(os.urandom(16 * count), dtype=np.uint8).reshape(count, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = raw.tobytes().hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * count, 32)]


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def route_path(scope: dict) -> str:
    """The request's path below the application's mount (Serve sets ``root_path`` for a route prefix
    other than ``/``), as Starlette's router matches it."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root):] or "/"
    return path


def documentation(app: FastAPI) -> dict[str, tuple[bytes, str]]:
    """What FastAPI serves about ``app``, rendered once: path -> (content, media type)."""
    page = get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - Swagger UI",
                               oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url)
    return {app.openapi_url: (json.dumps(app.openapi()).encode(), "application/json"),
            app.docs_url: (page.body, "text/html"),
            app.swagger_ui_oauth2_redirect_url: (get_swagger_ui_oauth2_redirect_html().body, "text/html")}


def _retry(code: int, settings: Settings) -> dict | None:
    """``Retry-After`` on a 503: the next alias poll may bring a model."""
    return {"Retry-After": str(int(settings.serve_poll_s) + 1)} if code == 503 else None


# (module-level helpers the ingress uses are defined above it: @serve.ingress captures the
# module's names when the class is decorated)
class PricingReplica:
    """What both pricing deployments share: the production model, the prediction log, the health Serve
    asks for, and the graceful stop that writes the log."""

    def _start(self, loader_factory) -> None:
        began = time.time()
        self.settings = Settings.load()
        metrics.skip_per_request_serve_histograms(self.settings)
        self.model = ProductionModel(self.settings, loader_factory)
        self.metrics = metrics.ApiMetrics()
        self.prediction_log = PredictionLog(self.settings, on_logged=self.metrics.logged.inc,
                                            on_lost=self.metrics.lost.inc)
        # where a replica's start-up went (a replacement's time to serve): the process before the
        # constructor (worker start, imports), then the constructor (settings, model, log)
        process_started = psutil.Process().create_time()
        self.startup = {"pid": os.getpid(), "before_constructor_s": round(began - process_started, 2),
                        "constructor_s": round(time.time() - began, 2),
                        "started_at_niceness": os.getpriority(os.PRIO_PROCESS, 0)}
        log.info("replica started: %s", self.startup)

    async def check_health(self):
        """Serve calls this on the replica's event loop (a wedged loop times it out) and replaces the
        replica when it raises."""
        if not self.model.alive():
            raise RuntimeError(f"no model loaded while the registry names version {self.model.production}, "
                               "or the alias follower stopped")
        if not self.prediction_log.alive():
            raise RuntimeError("the prediction log's writer thread stopped")

    def __del__(self):
        """A graceful stop (redeploy, scale-down, ``tasador down``): write every buffered prediction."""
        log = getattr(self, "prediction_log", None)
        if log is not None:
            log.close(timeout_s=self.settings.prediction_log_close_s)

    def _done(self, route: str, started: float, code: int, body: dict | bytes, kind: str | None = None,
              headers: dict | None = None) -> Response:
        self.metrics.requests.inc(tags={"route": route, "code": str(code)})
        self.metrics.latency.observe((time.perf_counter() - started) * 1000, route)
        if code >= 400:
            self.metrics.errors.inc(tags={"route": route, "kind": kind or str(code)})
        if isinstance(body, bytes):
            return Response(body, status_code=code, media_type="application/json", headers=headers)
        return JSONResponse(body, status_code=code, headers=headers)

    def _refused(self, route: str, started: float, exc: BadRequest) -> Response:
        return self._done(route, started, exc.status, {"detail": str(exc), "errors": exc.errors}, exc.kind)

    async def _body(self, request: Request) -> bytes:
        """The body, refused when it is not JSON, or past ``serve_max_body_bytes`` without reading the rest."""
        check_content_type(request.headers.get("content-type"))
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.settings.serve_max_body_bytes:
            raise BadRequest(f"the body has {int(declared)} bytes, at most {self.settings.serve_max_body_bytes}",
                             status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.settings.serve_max_body_bytes:
                raise BadRequest(f"the body has more than {self.settings.serve_max_body_bytes} bytes", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    def _logged(self, columns: dict, result: dict, key: str | None) -> dict:
        """The answer with one prediction id per listing, its rows handed to the log."""
        ids = prediction_ids(len(result["prices"]), key)
        self.prediction_log.add(ids, columns, result["model_name"], result["model_version"], result["prices"])
        return {**result, "prediction_ids": ids}


@serve.deployment
@serve.ingress(bulk_api)
class BulkPricer(PricingReplica):
    """``/predict`` bodies over ``LARGE_BODY_BYTES``: read, validated, priced, logged and rendered in a
    process of their own, so a 10,000-listing request holds neither an ingress replica's event loop
    nor its GIL. HAProxy sends such bodies here over HTTP (``BULK_ROUTE_PREFIX``/predict, the
    ``tasador-bulk`` application), so they never pass through ``PriceApi``; a large body that reaches
    ``PriceApi`` anyway (chunked, or no HAProxy in front) is handed to ``price`` through a handle."""

    def __init__(self, loader_factory=large_requests_loader):
        # The lowest priority: on 2 cores a single listing otherwise waited for the CPU behind a
        # 10,000-listing request. A/B on one private stack (25 s each, ~380 probes, 2 rounds): one listing's
        # p99 +40..+51 ms beside 10,000-listing requests at Ray's 15, +13..+22 ms at 19, as many priced.
        self._start(loader_factory)
        self.adapter = listings_adapter(self.settings.serve_max_listings)
        serve_at(BULK_NICENESS)

    @bulk_api.post("/predict", openapi_extra=_BODY, summary="Price a list of listings: the price API's /predict")
    async def predict(self, request: Request):
        started = time.perf_counter()
        key = request.headers.get(IDEMPOTENCY_KEY)
        try:
            check_idempotency_key(key)
            body = await self._body(request)
        except BadRequest as exc:
            return self._refused("/predict", started, exc)
        code, rendered, kind = await asyncio.to_thread(self.price, body, key)  # the loop keeps answering health
        return self._done("/predict", started, code, rendered, kind, _retry(code, self.settings))

    def price(self, body: bytes, key: str | None) -> tuple[int, bytes, str | None]:
        try:
            columns = to_columns(parse_listings(body, self.settings.serve_max_listings, self.adapter))
        except BadRequest as exc:
            return exc.status, json.dumps({"detail": str(exc), "errors": exc.errors}).encode(), "invalid_input"
        result = self.model.predict([columns])[0]
        if "error" in result:
            return 503, json.dumps({"detail": result["error"]}).encode(), "no_model"
        return 200, json.dumps(self._logged(columns, result, key)).encode(), None


@serve.deployment
class PriceApi(PricingReplica):
    """The price API's HTTP routes (``PRICE_ROUTES``) without FastAPI in the request's path: Serve hands
    ``__call__`` a Starlette request, which it dispatches on the table; the schema and ``/docs`` are
    ``api``'s, served from memory."""

    def __init__(self, explainer: DeploymentHandle, loader_factory=RegistryLoader):
        self._start(loader_factory)
        self.routes: dict[str, dict[str, object]] = {}
        for method, path, handler, _, _ in PRICE_ROUTES:
            self.routes.setdefault(path, {})[method] = getattr(self, handler)
        self.documents = documentation(api)
        self.explainer, self.bulk = explainer, None
        self.batch_adapter = listings_adapter(self.settings.serve_max_listings)
        self.explain_adapter = listings_adapter(self.settings.serve_max_explain)
        self.heavy = ThreadPoolExecutor(max_workers=2, thread_name_prefix="large-explain")
        self.predicting = 0  # /predict requests in this replica now (predict_small)
        self.predict_batched.set_max_batch_size(self.settings.serve_batch_max_size)
        self.predict_batched.set_batch_wait_timeout_s(self.settings.serve_batch_wait_s)
        serve_at()  # started at the default priority (serve_app/priority.py)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.001)  # both set from the settings in __init__
    async def predict_batched(self, requests: list[dict]) -> list[dict]:
        """Concurrent small /predict requests of this replica: one frame, one vectorised call."""
        return self.model.predict(requests)

    async def predict_small(self, columns: dict) -> dict:
        """A small /predict alone on this replica is priced at once; with others in flight it joins
        their batch. The batch waits ``serve_batch_wait_s`` for company that a lone client never
        brings (bench.serve's one-client figure)."""
        if self.predicting <= 1:
            await asyncio.sleep(0)  # requests that arrived with this one enter /predict and count
            if self.predicting <= 1:
                return self.model.predict([columns])[0]
        return await self.predict_batched(columns)

    def _bulk(self) -> DeploymentHandle:
        """BulkPricer, for a large body that reached this replica (chunked, or no HAProxy in front). Its
        application is deployed beside this one, so the handle is looked up at first use."""
        if self.bulk is None:
            self.bulk = serve.get_deployment_handle(BulkPricer.name, app_name=BULK_APP)
        return self.bulk

    async def _priced(self, route: str, request: Request, limit: int, adapter, price, key: str | None = None):
        """Read, validate and price one request; the response."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            check_idempotency_key(key)  # None (no header, or /explain) passes
            body = await self._body(request)
            if len(body) > LARGE_BODY_BYTES and route == "/predict":
                code, rendered, kind = await self._bulk().price.remote(body, key)
                return self._done(route, started, code, rendered, kind, _retry(code, self.settings))
            if len(body) > LARGE_BODY_BYTES:
                columns = await loop.run_in_executor(self.heavy, lambda: to_columns(parse_listings(body, limit,
                                                                                                   adapter)))
            else:
                columns = to_columns(parse_listings(body, limit, adapter))
        except BadRequest as exc:
            return self._refused(route, started, exc)
        except Exception as exc:  # the bulk replica died mid-request: say so, never a bare 500
            log.exception("a large request could not be priced")
            return self._done(route, started, 503, {"detail": f"the model is unavailable: {type(exc).__name__}"},
                              "model_unavailable", {"Retry-After": "1"})
        try:
            result = await price(columns)
        except Exception as exc:  # a replica died mid-request: say so, never a bare 500
            log.exception("a request could not be priced")
            return self._done(route, started, 503, {"detail": f"the model is unavailable: {type(exc).__name__}"},
                              "model_unavailable", {"Retry-After": "1"})
        if "error" in result:
            return self._done(route, started, 503, {"detail": result["error"]}, "no_model",
                              _retry(503, self.settings))
        if route == "/predict":
            result = self._logged(columns, result, key)
        return self._done(route, started, 200, result)

    async def __call__(self, request: Request) -> Response:
        """Every request of the price API: its route's handler, the schema or /docs, else 404 or 405
        with FastAPI's answers."""
        path = route_path(request.scope)
        method = "GET" if request.method == "HEAD" else request.method
        handlers = self.routes.get(path)
        if handlers is not None:
            handler = handlers.get(method)
            if handler is None:
                return JSONResponse({"detail": "Method Not Allowed"}, 405, headers={"Allow": ", ".join(handlers)})
            return await handler(request)
        if path in self.documents:
            if method != "GET":
                return JSONResponse({"detail": "Method Not Allowed"}, 405, headers={"Allow": "GET"})
            content, media_type = self.documents[path]
            return Response(content, media_type=media_type)
        return JSONResponse({"detail": "Not Found"}, 404)

    async def predict(self, request: Request):
        key = request.headers.get(IDEMPOTENCY_KEY)
        self.predicting += 1  # from the first await on: requests that arrive together see each other
        try:
            return await self._priced("/predict", request, self.settings.serve_max_listings, self.batch_adapter,
                                      self.predict_small, key)
        finally:
            self.predicting -= 1

    async def explain(self, request: Request):
        return await self._priced("/explain", request, self.settings.serve_max_explain, self.explain_adapter,
                                  self._explained)

    async def _explained(self, columns: dict) -> dict:
        """A few listings are explained here, on a thread, by the model that prices them: the version
        /predict answers, without a hop to another replica (about 3.6 ms of a one-listing /explain's
        ~22). More go to the explainer deployment, so that TreeSHAP over many rows stays off the cores
        that answer /predict."""
        if len(columns["status"]) <= EXPLAIN_HERE_ROWS:
            return await asyncio.get_running_loop().run_in_executor(self.heavy, self.model.explain, columns)
        return await self.explainer.explain.remote(columns)

    async def model_info(self, request: Request):
        started = time.perf_counter()
        info = self.model.info()
        if info["model"] is None:
            return self._done("/model", started, 503, {"detail": "no production model yet", **info}, "no_model")
        return self._done("/model", started, 200, info["model"])

    async def health(self, request: Request):
        started = time.perf_counter()
        info = self.model.info()
        model = info["model"]
        registry = self.model.registry_status()
        log = self.prediction_log.status()
        problems = [f"registry unreachable for {registry['unreachable_for_s']}s" if registry["unreachable_for_s"]
                    is not None else None,
                    f"version {registry['refused']['version']} refused" if registry["refused"] else None,
                    f"database unreachable for {log['unreachable_for_s']}s, {log['backlog']} predictions waiting"
                    if log["unreachable_for_s"] is not None else None]
        problems = [p for p in problems if p]
        status = ("degraded" if problems else "ok") if model else "no_model"
        body = {"status": status, "problems": problems, "model_version": model["version"] if model else None,
                "model_load_seconds": model.get("load_seconds") if model else None, "registry": registry,
                "database": {"status": log["database"], "unreachable_for_s": log["unreachable_for_s"]},
                "prediction_log": log, "last_error": info["last_error"], "replica": self.startup}
        return self._done("/health", started, 200 if model else 503, body)

    async def reload(self, request: Request):
        started = time.perf_counter()
        try:  # read at each call: replacing the file rotates the token without a redeploy
            token = self.settings.serve_admin_token_path.read_text().strip()
        except OSError:
            token = ""
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not token:
            return self._done("/admin/reload", started, 403, {"detail": "no admin token is configured"}, "forbidden")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return self._done("/admin/reload", started, 401, {"detail": "a valid admin token is required"},
                              "unauthorized")
        try:
            here = await asyncio.to_thread(self.model.refresh, True)
        except Exception as exc:  # the registry is down: say so, keep serving
            return self._done("/admin/reload", started, 503, {"detail": f"the registry is unreachable: "
                                                              f"{type(exc).__name__}"}, "registry_unreachable",
                              {"Retry-After": "5"})
        try:
            explainer = await self.explainer.reload.remote()
        except Exception as exc:  # the explainer follows the alias on its own within serve_poll_s
            explainer = {"status": "unreachable", "error": type(exc).__name__}
        return self._done("/admin/reload", started, 200, {**here, "explainer": explainer})


app = PriceApi.bind(PriceModelServer.bind())
bulk_app = BulkPricer.bind()
