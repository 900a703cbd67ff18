"""Serving under faults: kill, stop or freeze a real component while a separate process
(``bench.load``) sends predictions, then count failed requests and the predictions logged.

    python -m bench.serving_faults [--only NAME ...]

One private stack (PostgreSQL, MLflow, Ray head with the Serve app, the data API at 2% scale), a Ridge
version in production. Each scenario sends its listings with its own broker id, so the rows it
logged are found by that id and compared with the prediction ids its clients were answered. The
tests in ``tests/serving_faults/test_serving_faults.py`` run the same scenarios and assert the same bounds.
Prints a table, then one JSON line: ``scenarios``, ``within_bounds`` and one object per scenario.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import psycopg2
import requests

from bench.common import CLIENT_NICENESS, held_out_listings
from cluster import mlflow_server, postgres, processes, serve
from tasador import ray_jobs, registry, training
from tasador.registry import PRODUCTION
from tasador.retry import poll
from tasador.settings import Settings

GROUP = 6100
LOG_FLUSH_S = 0.5  # the prediction log's flush interval in these scenarios (the default)
# the load during a fault: 8 clients at 250 requests a second in all, a fifth of what the two replicas
# sustain on this 2-core machine (a fault under normal traffic, not at saturation, where the client
# itself would take a core the replacement replica needs to start)
CLIENTS, RATE = 8, 250.0


@dataclass
class ServingLab:
    s: Settings
    workdir: Path
    versions: dict = field(default_factory=dict)  # "good", "other": registered versions
    listing: dict = field(default_factory=dict)

    # -- the Serve app -------------------------------------------------------------------------------
    def replicas(self, deployment: str) -> list[dict]:
        apps = serve.applications(self.s)
        found = apps.get("tasador", {}).get("deployments", {}).get(deployment, {}).get("replicas", [])
        return [r for r in found if r.get("state") == "RUNNING"]

    def replica_pids(self, deployment: str) -> list[int]:
        return [int(r["pid"]) for r in self.replicas(deployment) if r.get("pid")]

    def wait_replicas_replaced(self, deployment: str, victim: int, count: int, timeout_s: float = 60) -> float:
        """Seconds until ``count`` replicas of ``deployment`` run and ``victim`` is not among them."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            pids = self.replica_pids(deployment)
            if len(pids) >= count and victim not in pids:
                return time.monotonic() - started
            time.sleep(0.25)  # each answer costs the controller and the dashboard ~15 ms of CPU
        raise TimeoutError(f"{deployment}: replica {victim} not replaced within {timeout_s:.0f}s")

    def health(self) -> dict:
        return requests.get(f"{self.s.serve}/health", timeout=10).json()

    def healths(self, n: int = 8) -> list[dict]:
        """Several answers: the replicas answer in turn."""
        return [self.health() for _ in range(n)]

    def wait_serving(self, version: str, timeout_s: float = 90) -> float:
        started = time.monotonic()
        in_a_row = 0
        while time.monotonic() - started < timeout_s and in_a_row < 10:
            with contextlib.suppress(requests.RequestException, ValueError):
                in_a_row = in_a_row + 1 if self.health().get("model_version") == version else 0
            time.sleep(0.1)
        if in_a_row < 10:
            raise TimeoutError(f"Serve did not switch to v{version} within {timeout_s:.0f}s")
        return time.monotonic() - started

    def move_alias(self, version: str) -> None:
        registry.mlflow_client(self.s).set_registered_model_alias(self.s.model_name, PRODUCTION, version)

    # -- load and accounting -------------------------------------------------------------------------
    @contextlib.contextmanager
    def load(self, name: str, clients: int = CLIENTS, seconds: float = 180, rate: float = RATE) -> Iterator[dict]:
        """Load from a separate process while the block runs; ``result`` holds the requests after."""
        marker = float(900_000 + zlib.crc32(name.encode()) % 90_000)
        body, out, stop = (self.workdir / f"{name}.{ext}" for ext in ("json", "jsonl", "stop"))
        body.write_text(json.dumps({**self.listing, "brokered_by": marker}))
        stop.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "bench.load", f"{self.s.serve}/predict", str(body), str(out),
                                 "--clients", str(clients), "--seconds", str(seconds), "--rate", str(rate),
                                 "--stop-file", str(stop)])
        psutil.Process(proc.pid).nice(CLIENT_NICENESS)  # below the replicas (a replacement starting, above all)
        result: dict = {"marker": marker}
        try:
            deadline = time.monotonic() + 30
            while (not out.exists() or out.stat().st_size == 0) and time.monotonic() < deadline:
                time.sleep(0.1)  # the load is running before the fault
            yield result
        finally:
            stop.touch()
            proc.wait(timeout=120)
        result["requests"] = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]

    def logged_ids(self, marker: float) -> list[str]:
        conn = psycopg2.connect(self.s.raw_db)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT prediction_id::text FROM predictions WHERE brokered_by = %s", (str(marker),))
                return [r[0] for r in cur.fetchall()]
        finally:
            conn.close()

    def account(self, result: dict, settle_s: float = 60) -> dict:
        """Failed requests; answered prediction ids against the rows logged (waiting for the backlog)."""
        reqs = result["requests"]
        answered = {i for r in reqs if r[2] == 200 for i in r[4]}
        deadline = time.monotonic() + settle_s
        logged = self.logged_ids(result["marker"])
        last_change = time.monotonic()
        while not answered <= set(logged) and time.monotonic() < deadline:
            time.sleep(0.5)
            before, logged = len(logged), self.logged_ids(result["marker"])
            if len(logged) != before:
                last_change = time.monotonic()
            elif time.monotonic() - last_change > max(5.0, 6 * LOG_FLUSH_S):
                break  # nothing written for many flush intervals: what is missing is lost
        failed = [r for r in reqs if r[2] != 200]
        return {"requests": len(reqs), "failed": len(failed),
                "failed_pct": round(100 * len(failed) / max(1, len(reqs)), 3),
                "failures": sorted({str(r[2]) for r in failed}),
                "answered": len(answered), "logged": len(set(logged) & answered),
                "log_lost": len(answered - set(logged)), "log_duplicated": len(logged) - len(set(logged)),
                "log_unknown": len(set(logged) - answered),
                "lost_ids": sorted(answered - set(logged))}


def prepare(s: Settings, workdir: Path) -> ServingLab:
    """The group's first batch ingested and cleaned (real Ray jobs), a Ridge version made production,
    a second version registered, the Serve app deployed following them."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tasador.features import PriceModel

    for job in ("jobs.ingest", "jobs.process"):
        outcome = ray_jobs.run(s, job, ["--group", str(GROUP), "--day", "Monday"], timeout_s=600)
        assert outcome.status == "SUCCEEDED", outcome.logs[-3000:]
    ds = training.load_dataset(s)
    features, arrays = training.prepare(ds)
    lab = ServingLab(s, workdir)
    for name, alpha in (("good", 1.0), ("other", 30.0)):
        model = PriceModel(features, make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(
            arrays["X_train"], arrays["y_train"]), "ridge")
        lab.versions[name] = register(s, model, ds, name)
    lab.move_alias(lab.versions["good"])
    serve.deploy(s)
    lab.wait_serving(lab.versions["good"])
    lab.listing = held_out_listings(ds, 1)[0]
    lab.ds, lab.features, lab.arrays = ds, features, arrays
    return lab


def register(s: Settings, model, ds, name: str) -> str:
    return training.register(s, model, training.empty_run(s, f"serving-faults-{name}"), ds,
                             {"rmse": 1.0}, {}, {"batch_ids": "[]"})


# -- scenarios -------------------------------------------------------------------------------------
def kill_price_api_replica(lab: ServingLab) -> dict:
    """SIGKILL one PriceApi replica under load: errors <= 0.1%, both replicas back within 10 s, and the
    predictions the killed replica had not written were answered within one flush interval of the kill."""
    with lab.load("kill-price-api", seconds=120) as result:
        time.sleep(5)
        before = lab.replica_pids("PriceApi")
        victim = before[0]
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        back_s = lab.wait_replicas_replaced("PriceApi", victim, 2)
        # where the time went: until Serve started the replacement's process, then its start-up
        new = set(lab.replica_pids("PriceApi")) - set(before)
        spawned_s = [round(psutil.Process(pid).create_time() - killed_at, 2) for pid in new if psutil.pid_exists(pid)]
        startup = next((h["replica"] for h in lab.healths(8) if h.get("replica", {}).get("pid") in new), {})
        time.sleep(10)  # load on the new replica too
    figures = lab.account(result)
    answered_at = {i: r[0] + r[1] for r in result["requests"] if r[2] == 200 for i in r[4]}
    oldest = min((answered_at[i] for i in figures.pop("lost_ids")), default=killed_at)
    figures.update(capacity_back_s=round(back_s, 2), replacement_spawned_s=spawned_s[0] if spawned_s else None,
                   replacement_before_constructor_s=startup.get("before_constructor_s"),
                   replacement_constructor_s=startup.get("constructor_s"),
                   lost_window_s=round(killed_at - oldest, 3))
    figures["within"] = (figures["failed_pct"] <= 0.1 and back_s <= 10
                         and figures["lost_window_s"] <= 2 * LOG_FLUSH_S and figures["log_duplicated"] == 0)
    figures["bounds"] = "errors <= 0.1%, capacity back <= 10 s, lost rows answered within 2 flush intervals"
    return figures


def kill_explainer_replica(lab: ServingLab) -> dict:
    from serve_app.app import EXPLAIN_HERE_ROWS

    with lab.load("kill-explainer", seconds=120) as result:
        time.sleep(3)
        victim = lab.replica_pids("PriceModelServer")[0]
        os.kill(victim, signal.SIGKILL)
        back_s = lab.wait_replicas_replaced("PriceModelServer", victim, 1)
        time.sleep(2)
    figures = lab.account(result)
    figures.pop("lost_ids")
    # more listings than the ingress explains itself: the explainer deployment answers them
    explained = requests.post(f"{lab.s.serve}/explain", json={"listings": [lab.listing] * (EXPLAIN_HERE_ROWS + 1)},
                              timeout=60).status_code
    figures.update(explainer_back_s=round(back_s, 2), explain_after=explained)
    figures["within"] = figures["failed"] == 0 and figures["log_lost"] == 0 and explained == 200
    figures["bounds"] = "/predict: 0 errors; /explain answers again"
    return figures


LOAD_FAILURES = "ray_tasador_model_load_failures_total"
# Ray's metrics agent drops a gauge not reported again within 2 export intervals (20 s): MLflow stays
# down longer than that, so a replica that re-reported its gauges only after reading the alias fails
OUTAGE_S = {"down": 32, "frozen": 20}


def mlflow_fault(kind: str) -> Callable[[ServingLab], dict]:
    """MLflow stopped (``down``) or frozen with SIGSTOP (``frozen``) under load: serving goes on, /health
    says degraded with the registry unreachable, every replica still reports the version it serves to
    Prometheus (an outage longer than the gauges' TTL, ``OUTAGE_S``), and once MLflow is back an alias
    move is followed."""
    def scenario(lab: ServingLab) -> dict:
        pid = processes.load_registry(lab.s.state_path)["mlflow"]["pid"]
        with lab.load(f"mlflow-{kind}", seconds=180) as result:
            time.sleep(3)
            if kind == "down":
                processes.stop_pid(pid)
            else:
                group = [pid, *processes.descendants(pid)]
                for p in group:
                    os.kill(p, signal.SIGSTOP)
            degraded = wait_for(lambda: any(h["registry"]["status"] == "unreachable" and h["status"] == "degraded"
                                            for h in lab.healths(4)), 45)
            time.sleep(max(0.0, OUTAGE_S[kind] - degraded))
            gauges = node_metric(lab, "ray_tasador_model_version")  # still there, though MLflow is not
            if kind == "down":
                new_pid = mlflow_server.start(lab.s)
                processes.record(lab.s.state_path, "mlflow", pid=new_pid, url=lab.s.mlflow_uri,
                                 artifacts=lab.s.mlflow_artifacts_destination)
            else:
                for p in group:
                    os.kill(p, signal.SIGCONT)
            lab.move_alias(lab.versions["other"])
            followed_s = lab.wait_serving(lab.versions["other"], 120)
        lab.move_alias(lab.versions["good"])
        lab.wait_serving(lab.versions["good"], 120)
        figures = lab.account(result)
        figures.pop("lost_ids")
        figures.update(degraded_after_s=round(degraded, 1), alias_followed_after_back_s=round(followed_s, 1),
                       version_gauges_at_outage_end=gauges)
        good = float(lab.versions["good"])
        figures["within"] = (figures["failed"] == 0 and figures["log_lost"] == 0
                             and len(gauges) >= 2 and set(gauges) == {good})
        figures["bounds"] = ("0 errors, /health degraded, every replica's version gauge still exported at the "
                             "outage's end, the alias followed once MLflow is back")
        return figures
    return scenario


def kill_postgres_30s(lab: ServingLab) -> dict:
    """SIGKILL every PostgreSQL process, restart the server 30 s later: serving unaffected, the backlog
    written after the restart, 0 duplicates."""
    from bench.faults import kill_server

    with lab.load("kill-postgres", seconds=180) as result:
        time.sleep(3)
        killed = kill_server(lab.s)
        degraded = wait_for(lambda: any(h["database"]["status"] == "unreachable" for h in lab.healths(4)), 30)
        backlog = max(h["prediction_log"]["backlog"] for h in lab.healths(4))
        time.sleep(max(0.0, 30 - degraded))
        postgres.start(lab.s)
        time.sleep(5)
    figures = lab.account(result, settle_s=90)
    figures.pop("lost_ids")
    figures.update(postgres_processes_killed=killed, backlog_while_down=backlog)
    figures["within"] = figures["failed"] == 0 and figures["log_lost"] == 0 and figures["log_duplicated"] == 0
    figures["bounds"] = "0 errors, every answered prediction logged after the restart, 0 duplicates"
    return figures


def refused_version(kind: str) -> Callable[[ServingLab], dict]:
    """The alias moved to a version whose artifact is corrupt (``corrupt``) or that prices absurdly
    (``absurd``: a million times the price): the old version keeps serving; the refusal shows in
    /health and in the load-failure metric. (Not in the registry: serving's MLflow identity is the
    reader, which may not write a tag; docs/security.md.)"""
    def scenario(lab: ServingLab) -> dict:
        bad = corrupt_version(lab) if kind == "corrupt" else absurd_version(lab)
        with lab.load(f"refused-{kind}", seconds=120) as result:
            time.sleep(2)
            lab.move_alias(bad)
            refused = wait_for(lambda: all((h["registry"]["refused"] or {}).get("version") == bad
                                           for h in lab.healths(6)), 60)
            time.sleep(2)
        error = [(h["registry"]["refused"] or {}).get("error", "") for h in lab.healths(2)][0]
        with contextlib.suppress(TimeoutError):  # Ray exports metrics every few seconds
            wait_for(lambda: sum(node_metric(lab, LOAD_FAILURES, bad)) >= 1, 30)
        failures = sum(node_metric(lab, LOAD_FAILURES, bad))
        lab.move_alias(lab.versions["good"])
        wait_for(lambda: all(h["status"] == "ok" for h in lab.healths(6)), 60)
        figures = lab.account(result)
        figures.pop("lost_ids")
        versions = {r[3] for r in result["requests"] if r[2] == 200}
        figures.update(refused_after_s=round(refused, 1), served_versions=sorted(versions),
                       refusal=error[:120], load_failure_metric=failures)
        figures["within"] = (figures["failed"] == 0 and versions == {lab.versions["good"]} and bool(error)
                             and failures >= 1)
        figures["bounds"] = "0 errors, only the old version answers, refusal (and why) in /health and metric"
        return figures
    return scenario


def kill_dashboard(lab: ServingLab) -> dict:
    """SIGKILL Ray's dashboard process (the Jobs and Serve REST APIs, the web UI) under load: serving
    unaffected; the head's supervisor (``cluster.ray_supervisor``) starts it again, and its Jobs API
    answers."""
    from cluster import ray_head

    temp = str(ray_head.temp_dir(lab.s))

    def dashboard_processes() -> set[int]:
        """The head's dashboard and the module processes it forks (JobHead, ServeHead, ...), by PID."""
        found = set()
        for p in psutil.process_iter(["cmdline"]):
            cmdline = p.info["cmdline"] or []
            if any("dashboard/dashboard.py" in a for a in cmdline) and any(temp in a for a in cmdline):
                found |= {p.pid, *processes.descendants(p.pid)}
        return found

    before = dashboard_processes()
    victims = [pid for pid in before if any("dashboard/dashboard.py" in a for a in psutil.Process(pid).cmdline())]
    headers = ray_jobs.auth_headers(lab.s)

    def jobs_api_answers() -> bool:
        try:
            return requests.get(f"{lab.s.ray_dashboard}/api/jobs/", headers=headers, timeout=2).ok
        except requests.RequestException:
            return False

    back_s = None
    with lab.load("kill-dashboard", seconds=30) as result:
        time.sleep(3)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            back_s = wait_for(jobs_api_answers, 60)
        time.sleep(10)  # serving goes on beside the new dashboard
    after = dashboard_processes()
    figures = lab.account(result)
    figures.pop("lost_ids")
    figures.update(dashboard_processes_killed=len(victims),
                   jobs_api_back_s=None if back_s is None else round(back_s, 1),
                   dashboard_processes_before=len(before), dashboard_processes_after=len(after),
                   dashboard_processes_left_over=len(before & after))
    figures["within"] = (figures["failed"] == 0 and figures["log_lost"] == 0 and len(victims) == 1
                         and back_s is not None and len(after) == len(before) and not before & after)
    figures["bounds"] = ("0 errors, every prediction logged, the dashboard's Jobs API answers again, "
                         "as many dashboard processes as before, none of the old ones left")
    return figures


def graceful_redeploy(lab: ServingLab) -> dict:
    """Nothing flushes on its own (flush interval one hour); the app is redeployed under load (every
    replica replaced, each stopped gracefully): every answered prediction is logged."""
    slow = lab.s.replace(prediction_log_flush_s=3600.0)
    serve.deploy(slow)
    with lab.load("graceful-redeploy", seconds=120) as result:
        time.sleep(5)
        serve.deploy(lab.s)  # back to the normal interval: new replicas, the old ones stop gracefully
        time.sleep(5)
    figures = lab.account(result)
    figures.pop("lost_ids")
    figures["within"] = figures["log_lost"] == 0 and figures["failed"] == 0
    figures["bounds"] = "0 predictions lost at a redeploy, 0 errors"
    return figures


# -- helpers ---------------------------------------------------------------------------------------
def wait_for(condition: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``condition`` holds (an answer that is not yet there or not JSON: not yet)."""
    started = time.monotonic()
    poll(condition, bool, timeout_s, "the scenario's condition",
         transient=(requests.RequestException, ValueError, KeyError))
    return time.monotonic() - started


def corrupt_version(lab: ServingLab) -> str:
    """A new version of the good model whose pickled model file is overwritten with garbage."""
    from tasador.promotion import load_model

    version = register(lab.s, load_model(lab.s, lab.versions["good"]), lab.ds, "corrupt")
    client = registry.mlflow_client(lab.s)
    source = client.get_model_version(lab.s.model_name, version).source
    location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    root = Path(lab.s.mlflow_artifacts_destination.removeprefix("file://")) / location.split(":/", 1)[1]
    files = list(root.rglob("*.pkl"))
    assert files, f"no pickled model under {root}"
    for f in files:
        f.write_bytes(b"\x80\x04not a pickle at all" + os.urandom(64))
    return version


def absurd_version(lab: ServingLab) -> str:
    """A version that prices every listing a million times too high (its log-price intercept + 14)."""
    from tasador.promotion import load_model

    model = load_model(lab.s, lab.versions["good"])
    model.regressor.steps[-1][1].intercept_ += np.log(1e6)
    return register(lab.s, model, lab.ds, "absurd")


def node_metric(lab: ServingLab, name: str, version: str | None = None) -> list[float]:
    """Every value of the metric ``name`` on the Ray nodes' endpoints (found as Prometheus finds them),
    only the series tagged ``version`` when given: one value per replica that reports it."""
    from cluster import prometheus

    return [float(line.rsplit(" ", 1)[1]) for line in prometheus.endpoints_text(lab.s).splitlines()
            if line.startswith(name + "{") and (version is None or f'version="{version}"' in line)]


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[ServingLab], dict]
    injected: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("kill_price_api_replica", kill_price_api_replica, "SIGKILL one PriceApi replica"),
    Scenario("kill_explainer_replica", kill_explainer_replica, "SIGKILL the PriceModelServer replica"),
    Scenario("mlflow_down", mlflow_fault("down"), "MLflow stopped 32 s, then the alias moved"),
    Scenario("mlflow_frozen", mlflow_fault("frozen"), "MLflow SIGSTOPped 20 s, then the alias moved"),
    Scenario("kill_postgres_30s", kill_postgres_30s, "SIGKILL every PostgreSQL process, restart after 30 s"),
    Scenario("alias_to_corrupt_artifact", refused_version("corrupt"), "alias -> a version with a corrupt pickle"),
    Scenario("alias_to_absurd_prices", refused_version("absurd"), "alias -> a version pricing x1,000,000"),
    Scenario("graceful_redeploy", graceful_redeploy, "redeploy under load, log flush interval 1 h"),
    Scenario("kill_ray_dashboard", kill_dashboard, "SIGKILL Ray's dashboard process"),
)
BY_NAME = {s.name: s for s in SCENARIOS}


def main() -> None:
    import tempfile

    from bench.common import parser, private_stack

    p = parser(__doc__)
    p.add_argument("--only", nargs="*", default=None, help="scenario names (default: all)")
    args = p.parse_args()
    chosen = [BY_NAME[n] for n in args.only] if args.only else list(SCENARIOS)
    rows = []
    with private_stack(0.02, only=("postgres", "mlflow", "ray_head", "data_api")) as settings, \
            tempfile.TemporaryDirectory() as tmp:
        ray_jobs.use_cluster_auth(settings)
        lab = prepare(settings, Path(tmp))
        for scenario in chosen:
            started = time.monotonic()
            row = {"scenario": scenario.name, "injected": scenario.injected, **scenario.run(lab),
                   "seconds": round(time.monotonic() - started, 1)}
            print(f"{row['scenario']}: failed {row['failed']}/{row['requests']}, log lost {row['log_lost']}, "
                  f"within bounds: {row['within']}", flush=True)
            rows.append(row)
    print(json.dumps({"scenarios": len(rows), "within_bounds": sum(r["within"] for r in rows),
                      **{r["scenario"]: {k: v for k, v in r.items() if k != "scenario"} for r in rows}}))


if __name__ == "__main__":
    main()
