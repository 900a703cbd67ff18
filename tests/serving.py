"""Shared by the tests that need a served model: a small registered Ridge pipeline under a test's own
registered-model name, the Serve app redeployed to follow it, and listings as a client sends them."""

from __future__ import annotations

import csv
import json
import re
from contextlib import contextmanager

import numpy as np
import requests
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cluster import ray_head, serve
from tasador import ray_jobs, registry, training
from tasador.features import PriceModel
from tasador.registry import PRODUCTION
from tasador.retry import poll
from tasador.schema import FEATURES


def listings(frame) -> list[dict]:
    """Rows as a client sends them: JSON values, missing as null."""
    features = frame[list(FEATURES)]
    return features.astype(object).where(features.notna(), None).to_dict("records")


def first_listing(ds, held_out: bool = False) -> dict:
    """The dataset's first listing (with ``held_out``: its first held-out one) as a client sends it."""
    return listings((ds.frame[ds.test] if held_out else ds.frame).head(1))[0]


def register_ridge(s, ds, arrays, features, alpha: float) -> str:

    model = PriceModel(features, make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(
        arrays["X_train"], arrays["y_train"]), "ridge")
    pred = model.predict_log(ds.frame[ds.test][list(FEATURES)])
    rmse = float(np.sqrt(np.mean((np.exp(pred) - ds.frame[ds.test]["price"].to_numpy()) ** 2)))
    return training.register(s, model, training.empty_run(s, f"serve-test-ridge-{alpha}"), ds,
                             {"rmse": rmse}, {"alpha": alpha},
                             {"batch_ids": json.dumps(ds.batch_ids), "rows": str(len(ds.frame)),
                              "data_hash": ds.data_hash, "trigger_batch_id": str(ds.batch_ids[-1]),
                              "trigger_reason": f"a test's Ridge (alpha {alpha:g}) on batches {ds.batch_ids}"})


def haproxy_requests(s) -> dict[str, int]:
    """Requests HAProxy has sent to each Serve backend (``http-<application>``), from its stats page (the
    ``listen stats`` port of the config Ray wrote for this stack)."""
    cfg = max(ray_head.haproxy_dir(s).rglob("*.cfg"), key=lambda f: f.stat().st_mtime)  # <dir>/<node id>/
    port = re.search(r"^listen stats\s*\n\s*bind [^:]*:(\d+)", cfg.read_text(), re.M).group(1)
    rows = csv.DictReader(requests.get(f"http://127.0.0.1:{port}/stats;csv", timeout=10).text.lstrip("# ").splitlines())
    return {r["pxname"]: int(r["stot"]) for r in rows if r["svname"] == "BACKEND"}


def haproxy_state(s, limit: int = 4000) -> str:
    """What this stack's HAProxy was doing, for a failure message: each HAProxy process (its age, and the
    connections it holds on the Serve port) and the live worker's sessions (``show sess all`` on the
    admin socket Ray's config gives it). A worker Ray reloaded out keeps serving its idle keep-alive
    connections from the config it had (ray-project/ray#63996)."""
    import socket
    import time

    import psutil

    port = int(s.serve.rsplit(":", 1)[1])
    lines = []
    for pid in ray_head.haproxy_pids(s):
        try:
            proc = psutil.Process(pid)
            held = [c for c in proc.net_connections("tcp") if c.laddr.port == port and c.status == "ESTABLISHED"]
            lines.append(f"haproxy {pid}: {time.time() - proc.create_time():.0f} s old, {len(held)} client connections")
        except psutil.Error as exc:
            lines.append(f"haproxy {pid}: {exc!r}")
    for path in ray_head.haproxy_dir(s).rglob("admin.sock"):
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(3)
                sock.connect(str(path))
                sock.sendall(b"show sess all\n")
                answer = b"".join(iter(lambda: sock.recv(65536), b""))
            lines.append(f"{path.name}: {answer.decode(errors='replace')[:limit]}")
        except OSError as exc:
            lines.append(f"{path.name}: {exc!r}")
    return "\n".join(lines)


def set_production(s, version: str) -> None:
    registry.mlflow_client(s).set_registered_model_alias(s.model_name, PRODUCTION, version)


def until_every_replica(s, holds, what: str, timeout_s: float = 30) -> dict:
    """Until ``holds`` is true of every replica's /health: of ten answers in a row (each replica reports
    its own state; HAProxy spreads the requests over them). Fails naming ``what`` at ``timeout_s``."""
    held: list[bool] = []  # of each answer so far

    def answer() -> dict:
        try:
            seen = requests.get(f"{s.serve}/health", timeout=5).json()
        except (requests.RequestException, ValueError) as exc:  # a replica still starting: not yet
            seen = {"unanswered": f"{type(exc).__name__}: {exc}"}
        held.append("unanswered" not in seen and holds(seen))
        return seen

    return poll(answer, lambda _: held[-10:] == [True] * 10, timeout_s,
                f"every replica {what} (ten answers in a row)", every_s=0.1)


def wait_for_version(s, version: str, timeout_s: float = 30) -> None:
    """Until every replica serves ``version`` (each follows the alias on its own)."""
    until_every_replica(s, lambda health: health.get("model_version") == version, f"serves v{version}", timeout_s)


@contextmanager
def serving_model(settings, model_name: str, group: int):
    """Ingest and process the group's first batch, deploy Serve following ``model_name``, register a
    Ridge version and make it production. Serve is left following ``model_name``: every module that
    needs Serve deploys the app it needs (a redeploy costs a CI run about 20 s per module)."""
    s = settings.replace(model_name=model_name)
    for job in ("jobs.ingest", "jobs.process", "jobs.decide"):
        outcome = ray_jobs.run(settings, job, ["--group", str(group), "--day", "Monday"], timeout_s=600)
        assert outcome.status == "SUCCEEDED", outcome.logs[-3000:]
        if job == "jobs.process":
            batch_id = outcome.summary["batches"][0]["batch_id"]
    serve.deploy(s)
    assert requests.get(f"{s.serve}/health", timeout=5).status_code == 503  # no model under this name yet
    ds = training.load_dataset(s, [batch_id])
    features, arrays = training.prepare(ds)
    v1 = register_ridge(s, ds, arrays, features, alpha=1.0)
    set_production(s, v1)
    wait_for_version(s, v1)
    yield {"s": s, "ds": ds, "features": features, "arrays": arrays, "v1": v1, "batch_id": batch_id}
