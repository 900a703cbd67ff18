"""The Serve app's metrics, through ``ray.serve.metrics`` (Ray exports them on each node's Prometheus
endpoint with a ``ray_`` prefix; Serve adds the deployment, replica and application tags). Created in
the replica, never at import."""

from __future__ import annotations

import bisect
import threading

from ray.serve import metrics
from ray.util import metrics as ray_metrics

LATENCY_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]

# the names Prometheus sees (Grafana dashboards and the Dash app query these)
EXPORTED = {
    "requests": "ray_tasador_requests_total",
    "latency": "ray_tasador_request_latency_ms",
    "errors": "ray_tasador_request_errors_total",
    "batches": "ray_tasador_batches_total",
    "batched_requests": "ray_tasador_batched_requests_total",
    "batch_rows": "ray_tasador_batch_rows_total",
    "model_version": "ray_tasador_model_version",
    "model_rmse": "ray_tasador_model_rmse",
    "load_failures": "ray_tasador_model_load_failures_total",
    "bad_prices": "ray_tasador_model_bad_prices_total",
    "logged": "ray_tasador_predictions_logged_total",
    "lost": "ray_tasador_predictions_lost_total",
}


# Ray Serve's own histograms that a replica observes per request or per batch: each request's
# processing latency, its ingress latency (a replica records it itself under HAProxy ingress, whose
# own metrics are off: cluster/ray_head.py), and @serve.batch's wait, execution time, utilization and
# size. Ray's metrics agent replays every observation one by one at each 10-s report (ray-project/ray#64852,
# LatencyHistogram below), and Serve offers no switch for them (Ray 2.60: serve/_private/replica.py,
# request_ingress_metrics.py, batching.py). At 1,300 single listings a second their replay took the agent
# 40 us of CPU a request (11 without) and 92 requests were refused (none without): bench.serve_histograms.
# Tasador's request latency histogram (counted in the replica) and its batch counters carry the same.
PER_REQUEST_SERVE_HISTOGRAMS = frozenset({
    "serve_deployment_processing_latency_ms", "serve_http_request_latency_ms", "serve_grpc_request_latency_ms",
    "serve_batch_wait_time_ms", "serve_batch_execution_time_ms", "serve_batch_utilization_percent",
    "serve_actual_batch_size"})


def skip_per_request_serve_histograms(settings) -> None:
    """Unless ``settings.serve_ray_request_histograms``: in this replica's process, ``observe`` of
    ``PER_REQUEST_SERVE_HISTOGRAMS`` records nothing. Every other histogram, and Serve's counters and
    gauges, record as before. Both histogram classes are wrapped: Serve's (``ray.serve.metrics``, which
    adds Serve's tags first) and Ray's own, which Serve's ingress metrics use directly. Idempotent."""
    if settings.serve_ray_request_histograms:
        return
    for cls in (metrics.Histogram, ray_metrics.Histogram):
        observe = cls.observe
        if getattr(observe, "skips", None) is PER_REQUEST_SERVE_HISTOGRAMS:
            continue

        def observe_unless_per_request(self, value, tags=None, _observe=observe):
            if self._name not in PER_REQUEST_SERVE_HISTOGRAMS:
                _observe(self, value, tags)

        observe_unless_per_request.skips = PER_REQUEST_SERVE_HISTOGRAMS
        cls.observe = observe_unless_per_request


class ApiMetrics:
    def __init__(self):
        self.requests = metrics.Counter("tasador_requests", description="HTTP requests by route and status code.",
                                        tag_keys=("route", "code"))
        self.errors = metrics.Counter("tasador_request_errors", description="Requests answered 4xx/5xx, by kind.",
                                      tag_keys=("route", "kind"))
        self.latency = LatencyHistogram("tasador_request_latency_ms", "Request latency in ms, by route.")
        self.logged = metrics.Counter("tasador_predictions_logged",
                                      description="Predictions written to the raw database.")
        self.lost = metrics.Counter("tasador_predictions_lost",
                                    description="Predictions not logged (buffer full while the database was down).")


class ModelMetrics:
    def __init__(self):
        # counters, not histograms of the batch sizes: Ray's metrics agent replays every observation of a
        # histogram one by one every 10 s (ray-project/ray#64852), at the priority of the node's daemons;
        # two per model call were a third of what it replayed under load, and its bursts stalled the
        # replicas (docs/benchmarks.md). The mean sizes are the counters' ratios.
        self.batches = metrics.Counter("tasador_batches",
                                       description="Model calls (a batch, or a request priced alone).")
        self.batched_requests = metrics.Counter("tasador_batched_requests",
                                                description="Requests priced by those calls.")
        self.batch_rows = metrics.Counter("tasador_batch_rows", description="Listings priced by those calls.")
        self.version = metrics.Gauge("tasador_model_version", description="The registry version being served.")
        self.rmse = metrics.Gauge("tasador_model_rmse",
                                  description="Held-out RMSE (dollars) of the version being served.")
        self.load_failures = metrics.Counter("tasador_model_load_failures",
                                             description="Production versions refused (failed to load or check).",
                                             tag_keys=("version",))
        self.bad_prices = metrics.Counter("tasador_model_bad_prices",
                                          description="Listings a serving version priced at NaN or infinity.",
                                          tag_keys=("version",))

    def serving(self, loaded) -> None:
        """The gauges of the version serving. Re-reported every few seconds (ProductionModel._report_serving),
        not only at a swap: Ray's metrics agent drops a gauge's value that is not reported again within
        its TTL (2 export intervals, 20 s; ray-project/ray#64633), and the version vanished from
        Prometheus minutes after a swap, or during an MLflow outage."""
        if str(loaded.version).isdigit():
            self.version.set(int(loaded.version))
        rmse = loaded.info.get("metrics", {}).get("rmse")
        if rmse is not None:
            self.rmse.set(float(rmse))


class LatencyHistogram:
    """A Prometheus histogram (``<name>_bucket`` by ``le``, ``_sum``, ``_count``), counted in the replica
    and handed to Ray once a second, not a ``ray.serve.metrics.Histogram``.

    Ray's metrics agent replays every observation of a Ray histogram one by one every 10 s
    (``record_histogram_aggregated_batch``, ray-project/ray#64852): under load it took 0.5-0.9 of a core
    for about 1.5 s every 10 s, and the replicas, which use 1.3-1.5 cores at the sustainable rate, were
    left short (docs/benchmarks.md). This one reaches the agent as one value per series per report,
    whatever the request rate. The series are gauges holding the running totals: Ray's counters refuse
    an increment of 0, so a bucket no request fell in would be missing, and Ray exports counters as
    ``<name>_total``, which would rename the histogram Grafana and the Dash app query. ``rate()`` and
    ``histogram_quantile`` read them as they read a histogram's; each replica restarts its totals from
    0 under its own replica tag, as a counter does."""

    FLUSH_S = 1.0

    def __init__(self, name: str, description: str, boundaries: list[float] = LATENCY_MS):
        self.boundaries = list(boundaries)
        self.les = [str(float(b)) for b in self.boundaries] + ["+Inf"]
        self.bucket = metrics.Gauge(f"{name}_bucket", description=description, tag_keys=("route", "le"))
        self.sum = metrics.Gauge(f"{name}_sum", description=description, tag_keys=("route",))
        self.count = metrics.Gauge(f"{name}_count", description=description, tag_keys=("route",))
        self.counts: dict[str, list[int]] = {}  # per route: observations per bucket (not cumulative)
        self.sums: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="latency-histogram", daemon=True).start()

    def observe(self, value: float, route: str) -> None:
        """On the request path: a bisect and an increment."""
        i = bisect.bisect_left(self.boundaries, value)  # the first bucket whose bound is >= value (le)
        with self._lock:
            counts = self.counts.get(route)
            if counts is None:
                counts = self.counts[route] = [0] * len(self.les)
            counts[i] += 1
            self.sums[route] = self.sums.get(route, 0.0) + value

    def _run(self) -> None:
        while not self._stop.wait(self.FLUSH_S):
            self.report()

    def report(self) -> None:
        """Every route's running totals to Ray's gauges (re-set each second, so none outlives its TTL)."""
        with self._lock:
            totals = {route: (list(counts), self.sums[route]) for route, counts in self.counts.items()}
        for route, (counts, total) in totals.items():
            cumulative = 0
            for le, n in zip(self.les, counts, strict=True):
                cumulative += n
                self.bucket.set(cumulative, tags={"route": route, "le": le})
            self.count.set(cumulative, tags={"route": route})
            self.sum.set(total, tags={"route": route})

    def close(self) -> None:
        self._stop.set()
