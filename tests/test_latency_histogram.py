"""serve_app.metrics.LatencyHistogram's arithmetic: observations into Prometheus's cumulative ``le``
buckets, per route, and the Serve histograms a replica does not record. Its gauges are replaced by
recorders here: what Ray and Prometheus make of the real ones is tests/test_serve.py's
``test_prometheus_scrapes_the_serve_metrics`` (a real stack)."""

from __future__ import annotations

import pytest
from ray.serve import metrics as serve_metrics
from ray.util import metrics as ray_metrics

from serve_app.metrics import LatencyHistogram, skip_per_request_serve_histograms
from tasador.settings import Settings


class Recorder:
    def __init__(self):
        self.values: dict[tuple, float] = {}

    def set(self, value, tags):
        self.values[tuple(sorted(tags.items()))] = value


def test_observations_land_in_cumulative_le_buckets_per_route():
    h = LatencyHistogram("test_latency_ms", "test", boundaries=[1, 10, 100])
    h.close()  # no background reports: this test calls report() itself
    h.bucket, h.sum, h.count = Recorder(), Recorder(), Recorder()
    for value in (0.2, 1, 1.01, 10, 50, 5000):  # a value on a bound belongs to that bucket (le: <=)
        h.observe(value, "/predict")
    h.observe(3, "/health")
    h.report()
    buckets = {(dict(k)["route"], dict(k)["le"]): v for k, v in h.bucket.values.items()}
    assert buckets == {("/predict", "1.0"): 2, ("/predict", "10.0"): 4, ("/predict", "100.0"): 5,
                       ("/predict", "+Inf"): 6,
                       ("/health", "1.0"): 0, ("/health", "10.0"): 1, ("/health", "100.0"): 1, ("/health", "+Inf"): 1}
    assert h.count.values == {(("route", "/predict"),): 6, (("route", "/health"),): 1}
    assert h.sum.values[(("route", "/predict"),)] == 0.2 + 1 + 1.01 + 10 + 50 + 5000
    # running totals: a later report adds to them, never restarts
    h.observe(0.5, "/predict")
    h.report()
    assert h.count.values[(("route", "/predict"),)] == 7
    assert h.bucket.values[(("le", "1.0"), ("route", "/predict"))] == 3


@pytest.fixture
def recorded(monkeypatch) -> list:
    """What Ray's histograms hand to Ray's core (``Metric._record``), by name; both classes' ``observe``
    restored after the test."""
    for cls in (serve_metrics.Histogram, ray_metrics.Histogram):
        monkeypatch.setattr(cls, "observe", cls.__dict__["observe"])
    values = []
    monkeypatch.setattr(ray_metrics.Metric, "_record", lambda self, value, tags=None: values.append(self._name))
    return values


def observe_serve_histograms() -> None:
    """One observation of Serve's per-request ingress latency (Ray's class), of a @serve.batch histogram
    (Serve's class), and of a Serve histogram observed once per replica start."""
    ray_metrics.Histogram("serve_http_request_latency_ms", boundaries=[1, 2]).observe(1.5, tags={})
    batch = serve_metrics.Histogram("serve_batch_wait_time_ms", boundaries=[1, 2], tag_keys=("function_name",))
    batch.observe(0.5, tags={"function_name": "predict_batched"})
    serve_metrics.Histogram("serve_model_load_latency_ms", boundaries=[1, 2]).observe(3, tags={})


def test_serve_per_request_histograms_are_not_recorded_others_are(recorded):
    skip_per_request_serve_histograms(Settings())
    skip_per_request_serve_histograms(Settings())  # a second replica class in the process: wrapped once
    observe_serve_histograms()
    assert recorded == ["serve_model_load_latency_ms"]


def test_serve_per_request_histograms_recorded_when_the_setting_asks(recorded):
    skip_per_request_serve_histograms(Settings(serve_ray_request_histograms=True))
    observe_serve_histograms()
    assert recorded == ["serve_http_request_latency_ms", "serve_batch_wait_time_ms", "serve_model_load_latency_ms"]
