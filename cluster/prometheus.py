"""Prometheus (Debian's ``prometheus`` package) scraping the Ray cluster's metrics: Ray writes the
service-discovery file of every node's metrics endpoint into its temp dir; Prometheus follows it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import requests

from cluster import processes, ray_head
from tasador.settings import Settings

# Prometheus's usual 15 s: every scrape has Ray's dashboard agent render all the cluster's metrics
# (0.039 core of an idle stack at 5 s, 0.019 at 15; issue 18's idle goal). The charts' and Grafana's
# rates are over 1 minute: four samples.
SCRAPE_INTERVAL_S = ray_head.METRICS_PERIOD_S


def binary() -> str | None:
    return shutil.which("prometheus")


def sd_file(settings: Settings) -> Path:
    """Ray's service-discovery file: every metrics endpoint of the cluster (nodes, dashboard, autoscaler)."""
    return ray_head.temp_dir(settings) / "prom_metrics_service_discovery.json"


def endpoints_text(settings: Settings) -> str:
    """What the cluster's metrics endpoints export now, all of them, as Prometheus would scrape them."""
    groups = json.loads(sd_file(settings).read_text())
    return "\n".join(requests.get(f"http://{target}/metrics", timeout=10).text
                     for group in groups for target in group["targets"])


def config_text(settings: Settings) -> str:
    # Serve's ingress (the head's HAProxy): requests answered and refused by status class, from HAProxy's
    # own exporter (Ray's per-request parser of HAProxy's log is off: cluster/ray_head.py)
    haproxy = f"""  - job_name: haproxy
    static_configs:
      - targets: ["127.0.0.1:{ray_head.haproxy_metrics_port(settings)}"]
""" if settings.ray_serve_high_throughput else ""
    return f"""# written by tasador up
global:
  scrape_interval: {SCRAPE_INTERVAL_S}s
  evaluation_interval: {SCRAPE_INTERVAL_S}s
scrape_configs:
  - job_name: ray
    file_sd_configs:
      - files: ["{sd_file(settings)}"]
        refresh_interval: {SCRAPE_INTERVAL_S}s
{haproxy}"""


def start(settings: Settings) -> int:
    root = settings.state_path / "prometheus"
    root.mkdir(parents=True, exist_ok=True)
    (root / "prometheus.yml").write_text(config_text(settings))
    cmd = [binary(), f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
           f"--web.listen-address=127.0.0.1:{settings.prometheus_port}", "--storage.tsdb.retention.time=15d"]
    pid = processes.spawn(cmd, settings.state_path / "logs" / "prometheus.log")
    processes.wait_http(f"{settings.prometheus}/-/ready", 60, pid=pid)
    return pid
