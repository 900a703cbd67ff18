"""The registry's ``production`` version, swapped in place when the alias moves.

``ProductionModel`` runs in each replica of every deployment (the ingress prices /predict and explains a
few listings with it; ``PriceModelServer`` explains more, ``BulkPricer`` prices large bodies). Each
checks the alias every ``serve_poll_s`` (and at once on an admin reload, which a promotion or rollback
sends); the replicas of a node share one registry read per ``serve_registry_poll_s``
(``NodeAliasRead``). A new version is loaded and checked beside the one serving; only then does one
reference assignment switch to it, so no request waits and none fails. A
version that fails to load or to predict a sane price never replaces a working one: the error shows in
``info()`` (and /health) and in the load-failure metric, and the version is retried after
``RETRY_FAILED_S``. The ingress batches requests (``@serve.batch``); a batch is priced with one
vectorised call; every answer names the version that produced it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from ray import serve

from serve_app import metrics
from serve_app.priority import serve_at
from tasador import compiled
from tasador.features import PriceModel
from tasador.models import SERVING_THREADS, set_threads
from tasador.registry import mlflow_client, production_version, tracking_server
from tasador.schema import FEATURES
from tasador.settings import Settings

log = logging.getLogger("ray.serve")
RETRY_FAILED_S = 30.0
MODEL_CACHE_KEEP = 6  # versions kept on a node's disk (the newest; one is serving, others may come back)
REGISTRY_STALE_S = 10.0  # no answer from the registry for this long (a frozen server hangs a read): unreachable
# a listing every sane model prices between $1k and $1B: the check a new version passes before it serves
CHECK_LISTING = {"brokered_by": 22611.0, "status": "for_sale", "bed": 3.0, "bath": 2.0, "acre_lot": 0.25,
                 "street": 1594530.0, "city": "Boston", "state": "Massachusetts", "zip_code": "02108",
                 "house_size": 1800.0, "prev_sold_date": None}


@dataclass
class LoadedModel:
    version: str
    model: object  # tasador.features.PriceModel
    info: dict = field(default_factory=dict)


class RegistryUnreachable(RuntimeError):
    """The node's last read of the alias failed (raised in the replicas that share that read)."""


@contextlib.contextmanager
def node_lock(path: Path):
    """An exclusive lock on the file ``path``, shared by every process of the node (``flock``), held for
    the block. Yields None while held, or the ``OSError`` that kept it from being taken (no writable
    state directory): the caller then does its work alone, as it says."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = open(path, "w")  # noqa: SIM115 (held across the block)
    except OSError as exc:
        yield exc
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield None


class NodeAliasRead:
    """The production alias, read from the registry at most once per ``max_age_s`` by all the replicas
    of a node together: the reading (version or error, and when) is a small file beside the model
    cache; a replica that finds it older than ``max_age_s`` takes the file's lock, reads the registry
    and replaces the file (atomic rename), the others use it. A read of the alias costs the MLflow
    server about 33 ms of CPU (Flask, the auth app's permission lookups, SQLAlchemy; py-spy): four
    replicas each reading every second held 0.13 core of the idle stack (docs/benchmarks.md). A frozen
    registry holds the lock and every replica waits, as each waited for its own read before, so the
    replicas' staleness check still fires. No writable state directory: each replica reads on its own.
    (A file, not a Ray actor: nothing more to start, supervise or reach, and nothing shared across
    nodes; a KubeRay pod reads for its own replicas.)"""

    def __init__(self, path: Path, read, max_age_s: float):
        self.path, self.read, self.max_age_s = path, read, max_age_s
        self.lock_path = path.with_name(path.name + ".lock")

    def __call__(self, max_age_s: float | None = None) -> str | None:
        max_age_s = self.max_age_s if max_age_s is None else max_age_s
        reading = self._reading(max_age_s)
        if reading is None:
            with node_lock(self.lock_path) as unlocked:
                if unlocked:
                    return self.read()
                reading = self._reading(max_age_s) or self._read_and_share()
        if "error" in reading:
            raise RegistryUnreachable(reading["error"])
        return reading["version"]

    def _reading(self, max_age_s: float) -> dict | None:
        try:
            reading = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return reading if 0 <= time.time() - reading.get("at", 0) <= max_age_s else None

    def _read_and_share(self) -> dict:
        try:
            reading = {"version": self.read()}
        except Exception as exc:
            reading = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        reading["at"] = time.time()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(reading))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("the alias reading could not be shared at %s: %s", self.path, exc)
        return reading


class RegistryLoader:
    """Reads the production alias and loads versions from the MLflow registry (injectable: tests and
    benchmarks may pass another loader with the same two methods). ``small_requests``: the deployment
    prices a few listings at a time, so each version's trees are compiled for them and checked
    (``compiled.attach_at_load``: about 0.75 s of CPU for 600 trees of depth 10, on every replica, at
    every swap); ``large_requests_loader`` skips that where only XGBoost prices (the bulk pricer, the
    explainer)."""

    def __init__(self, settings: Settings, small_requests: bool = True):
        self.settings = settings
        self.small_requests = small_requests
        self.client = mlflow_client(settings)
        where = hashlib.sha256(f"{settings.mlflow_uri}\0{settings.model_name}".encode()).hexdigest()[:16]
        self.alias = NodeAliasRead(settings.state_path / "model-cache" / f".production-alias-{where}.json",
                                   lambda: production_version(self.client, settings.model_name),
                                   settings.serve_registry_poll_s)
        # imported here, before the replica serves: the first version's load would otherwise import
        # MLflow's sklearn flavour, scikit-learn and XGBoost (seconds of CPU on a busy node, holding the
        # GIL and the import locks) while requests wait on the same process
        import mlflow.sklearn  # noqa: F401
        import xgboost  # noqa: F401

        import tasador.features  # noqa: F401

    def production_version(self, max_age_s: float | None = None) -> str | None:
        """The alias's version, read by this node at most ``max_age_s`` ago (default ``serve_registry_poll_s``)."""
        return self.alias(max_age_s)

    def load(self, version: str) -> LoadedModel:
        import mlflow.sklearn

        name = self.settings.model_name
        mv = self.client.get_model_version(name, version)
        with tracking_server(self.settings):  # a models:/ URI resolves through the tracking server
            local = self._local_copy(mv)
            # One version loads at a time on a node. A load holds its replica's GIL for about a second
            # (unpickling; compiling the trees for small requests), and the replica answers at about
            # half speed meanwhile. When both ingress replicas loaded at once, the node did for that
            # second, and an open-loop load at half the sustainable rate had requests refused at every
            # swap (38 of 25,542, bench.serve); one at a time, the other replica takes the traffic
            # (HAProxy's leastconn). The node's other replicas wait for the lock (a second or two
            # each): the new version serves from the first replica that has it.
            with node_lock(self.settings.state_path / "model-cache" / ".locks" / "loading"):
                model = mlflow.sklearn.load_model(local)
            set_threads(model.regressor, SERVING_THREADS)  # whatever the version was pickled with
            compiled_ = compiled.attach_at_load(model) if self.small_requests else {
                "compiled": False, "why": "this deployment prices large requests only: XGBoost"}
        tags = mv.tags
        metrics_ = {k.removeprefix("metric_"): float(v) for k, v in tags.items() if k.startswith("metric_")}
        info = {"name": name, "version": version, "family": tags.get("family", getattr(model, "family", "")),
                "metrics": metrics_, "batch_ids": json.loads(tags.get("batch_ids", "[]")),
                "rows": int(tags.get("rows", 0)),
                "trigger_reason": tags.get("trigger_reason"), "promotion_reason": tags.get("promotion_reason"),
                "run_id": mv.run_id, "compiled": compiled_}
        return LoadedModel(version, model, info)

    def _local_copy(self, mv) -> str:
        """The version's artifacts on this node's disk, downloaded once per node: a replica that replaces
        a killed one, or a second replica, skips the download (3-4 s of the ~6 s a replica took to
        start under load). Keyed by what makes a version unique (name, number, source, creation time;
        a registry re-created from scratch reuses numbers), published by an atomic rename, so a
        half-written copy is never loaded. Without a writable state directory: the registry's URI."""
        import mlflow.artifacts

        uri = f"models:/{mv.name}/{mv.version}"
        key = hashlib.sha256(f"{mv.name}\0{mv.version}\0{mv.source}\0{mv.creation_timestamp}".encode())
        root = self.settings.state_path / "model-cache"
        final = root / f"{mv.name}-v{mv.version}-{key.hexdigest()[:16]}"
        if final.is_dir():
            return str(final)
        # one download per node: the node's other replicas (the other PriceApi, the explainer, the bulk
        # pricer) wait for it instead of each fetching the same files from MLflow at the same moment
        with node_lock(root / ".locks" / final.name) as unlocked:
            if unlocked:
                log.warning("no model cache at %s (%s): loading %s from the registry", root, unlocked, uri)
                return uri
            if final.is_dir():
                return str(final)
            staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
            try:
                downloaded = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging))
                os.rename(downloaded, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        for stale in sorted(root.glob("*-v*-*"), key=lambda p: p.stat().st_mtime)[:-MODEL_CACHE_KEEP]:
            shutil.rmtree(stale, ignore_errors=True)
        return str(final)


def large_requests_loader(settings: Settings) -> RegistryLoader:
    return RegistryLoader(settings, small_requests=False)


def check_model(loaded: LoadedModel) -> None:
    """Refuse a version that cannot price a plain listing sanely."""
    price = float(np.asarray(loaded.model.predict(pd.DataFrame([CHECK_LISTING])))[0])
    if not (np.isfinite(price) and 1e3 <= price <= 1e9):
        raise ValueError(f"version {loaded.version} priced the check listing at {price!r}")


GAUGE_REPORT_S = 5  # well inside the 20 s after which Ray's metrics agent drops an unreported gauge


class ProductionModel:
    """The production version in this process, following the alias from a thread of its own."""

    def __init__(self, settings: Settings, loader_factory=RegistryLoader):
        self.settings = settings
        self.loader = loader_factory(settings)
        self.metrics = metrics.ModelMetrics()
        self.current: LoadedModel | None = None
        self.last_error: dict | None = None
        self.production: str | None = None  # the alias's version when last read
        self.registry_unreachable_since: float | None = None  # wall time of the first failed read of a streak
        self.registry_error: str | None = None
        self.registry_read_at = time.time()  # the last successful read of the alias
        self._failed: dict[str, float] = {}  # version -> when it last failed
        self.loading: str | None = None  # the version being loaded and checked, if any
        self._lock = threading.Lock()
        self._wake = threading.Event()
        try:
            self.refresh()
        except Exception:  # the registry is unreachable: start without a model (/health says why), keep trying
            log.exception("the production alias could not be read at start")
        self._thread = threading.Thread(target=self._follow_alias, name="follow-production-alias", daemon=True)
        self._thread.start()
        threading.Thread(target=self._report_serving, name="report-serving-version", daemon=True).start()

    # -- following the alias -------------------------------------------------------------------
    def _follow_alias(self) -> None:
        while True:
            self._wake.wait(self.settings.serve_poll_s)
            self._wake.clear()
            try:
                self.refresh()
            except Exception:  # a registry outage must never stop the loop
                log.exception("checking the production alias failed")

    def _report_serving(self) -> None:
        """The serving version's gauges, re-reported every few seconds on a thread of their own: whatever
        the registry answers, and while a read of a frozen one hangs (ModelMetrics.serving)."""
        while True:
            if self.current is not None:
                self.metrics.serving(self.current)
            time.sleep(GAUGE_REPORT_S)

    def refresh(self, at_once: bool = False) -> dict:
        """Load the production version if it is not the one serving (``at_once``: read the alias now,
        not the node's reading of up to ``serve_poll_s`` ago). Returns what happened."""
        with self._lock:
            try:
                wanted = self.loader.production_version(0 if at_once else None)
            except Exception as exc:
                self.registry_unreachable_since = self.registry_unreachable_since or time.time()
                self.registry_error = (str(exc) if isinstance(exc, RegistryUnreachable)
                                       else f"{type(exc).__name__}: {exc}")[:500]
                raise
            self.registry_unreachable_since, self.production, self.registry_read_at = None, wanted, time.time()
            current = self.current.version if self.current else None
            if wanted is None or wanted == current:
                if wanted == current:
                    self.last_error = None  # a refused version is no longer wanted
                return {"status": "unchanged", "version": current, "production": wanted}
            failed_at = self._failed.get(wanted)
            if failed_at is not None and time.time() - failed_at < RETRY_FAILED_S:
                return {"status": "refused", "version": current, "production": wanted, "error": self.last_error}
            started = time.perf_counter()
            self.loading = wanted
            try:
                loaded = self.loader.load(wanted)
                check_model(loaded)
            except Exception as exc:
                self._failed[wanted] = time.time()
                self.last_error = {"stage": "load", "version": wanted, "error": f"{type(exc).__name__}: {exc}",
                                   "at": time.time()}
                self.metrics.load_failures.inc(tags={"version": str(wanted)})
                log.error("production version %s refused, still serving %s: %s", wanted, current, exc)
                return {"status": "refused", "version": current, "production": wanted, "error": self.last_error}
            finally:
                self.loading = None
            loaded.info["loaded_at"] = time.time()
            loaded.info["load_seconds"] = round(time.perf_counter() - started, 3)
            self.current = loaded  # the swap: one reference assignment; in-flight batches keep the old one
            self._failed.pop(wanted, None)
            self.last_error = None
            self.metrics.serving(loaded)
            log.info("now serving version %s (was %s), loaded in %.2fs", wanted, current,
                     loaded.info["load_seconds"])
            return {"status": "swapped", "version": wanted, "previous": current}

    def alive(self) -> bool:
        """False when the replica should be replaced: the thread that follows the alias died, or there is
        a production version (the registry answered) and none is loaded, loading or refused. (A replica's
        first load takes seconds: failing Serve's health check meanwhile had it replaced mid-load.)"""
        if not self._thread.is_alive():
            return False
        return not (self.current is None and self.production is not None and self.production not in self._failed
                    and self.loading is None)

    def registry_status(self) -> dict:
        """The registry as this replica sees it: unreachable since a read failed, or since the last
        successful read when none has come back for ``REGISTRY_STALE_S`` (a frozen server never fails)."""
        stale = time.time() - self.registry_read_at > max(REGISTRY_STALE_S, 3 * self.settings.serve_poll_s)
        down = self.registry_unreachable_since or (self.registry_read_at if stale else None)
        return {"status": "unreachable" if down else "ok",
                "unreachable_for_s": round(time.time() - down, 1) if down else None,
                "error": self.registry_error if self.registry_unreachable_since else (
                    "no answer to the last read" if down else None),
                "production_version": self.production,
                "refused": self.last_error if self.last_error and self.last_error.get("stage") == "load" else None}

    # -- answering --------------------------------------------------------------------------------
    def predict(self, requests: list[dict]) -> list[dict]:
        """A batch of requests (the ingress batches them with ``@serve.batch``), each a dict of the 11
        feature columns: one frame, one vectorised call, one version for the whole batch."""
        current = self.current  # whatever swaps meanwhile, this batch is priced by one version
        if current is None:
            return [{"error": "no production model yet"}] * len(requests)
        sizes = [len(r["status"]) for r in requests]
        columns = requests[0] if len(requests) == 1 else {f: [v for r in requests for v in r[f]] for f in FEATURES}
        # a PriceModel takes the columns as they are (no frame per call: tasador/features.py typed)
        rows = columns if isinstance(current.model, PriceModel) else pd.DataFrame(columns, columns=list(FEATURES))
        prices = np.asarray(current.model.predict(rows), dtype=float)
        self.metrics.batches.inc()
        self.metrics.batched_requests.inc(len(requests))
        self.metrics.batch_rows.inc(sum(sizes))
        bounds = np.cumsum([0, *sizes])
        return [self._answer(current, prices[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _answer(self, current: LoadedModel, prices: np.ndarray) -> dict:
        bad = int((~np.isfinite(prices)).sum())
        if bad:  # never answer NaN or infinity as a price (JSON cannot even carry it)
            self.metrics.bad_prices.inc(bad, tags={"version": str(current.version)})
            return {"error": f"version {current.version} priced {bad} of {len(prices)} listings at no number"}
        return {"model_name": current.info.get("name"), "model_version": current.version,
                "prices": prices.round(2).tolist()}

    def explain(self, columns: dict) -> dict:
        from tasador.explain import contributions

        current = self.current
        if current is None:
            return {"error": "no production model yet"}
        frame = pd.DataFrame(columns, columns=list(FEATURES))
        base, per_feature = contributions(current.model, frame)
        values = per_feature.to_numpy()
        prices = np.exp(base + values.sum(axis=1))
        return {"model_name": current.info.get("name"), "model_version": current.version,
                "explanations": [{"price": round(float(p), 2), "base_price": round(float(np.exp(b)), 2),
                                  "contributions": dict(zip(FEATURES, np.round(row, 6).tolist(), strict=True))}
                                 for p, b, row in zip(prices, base, values, strict=True)],
                "units": "log price: exp(contribution) is the factor the feature multiplies the price by"}

    def info(self) -> dict:
        current = self.current
        return {"model": current.info if current else None, "last_error": self.last_error}


@serve.deployment
class PriceModelServer:
    """The model deployment: SHAP explanations of more than ``EXPLAIN_HERE_ROWS`` listings (CPU-heavy,
    kept off the prediction path; fewer are explained by the ingress's own model) and batch
    prediction for other Serve apps by handle. The HTTP ingress prices /predict with its own
    in-process ``ProductionModel``: a hop to this deployment per batch cut single-row throughput
    4.2x on the 2-core benchmark machine (docs/benchmarks.md)."""

    def __init__(self, loader_factory=large_requests_loader):
        import tasador.explain  # noqa: F401  (SHAP: imported before the replica answers, not in its first request)

        settings = Settings.load()
        metrics.skip_per_request_serve_histograms(settings)
        self.model = ProductionModel(settings, loader_factory)
        serve_at()  # started at the default priority (serve_app/priority.py)

    async def predict(self, requests: list[dict]) -> list[dict]:
        return await asyncio.to_thread(self.model.predict, requests)

    async def explain(self, columns: dict) -> dict:
        return await asyncio.to_thread(self.model.explain, columns)

    async def reload(self) -> dict:
        return await asyncio.to_thread(self.model.refresh, True)

    def info(self) -> dict:
        return self.model.info()
