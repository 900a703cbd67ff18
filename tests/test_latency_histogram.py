"""serve_app.metrics.LatencyHistogram's arithmetic: observations into Prometheus's cumulative ``le``
buckets, per route. Its gauges are replaced by recorders here: what Ray and Prometheus make of the real
ones is tests/test_serve.py's ``test_prometheus_scrapes_the_serve_metrics`` (a real stack)."""

from __future__ import annotations

from serve_app.metrics import LatencyHistogram


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
