"""Serving: the Ray Serve app (HAProxy ingress, @serve.batch) against a plain FastAPI + uvicorn app
(one worker, ``bench.fastapi_baseline``) serving the same MLflow model version, same run.

The model is the real pipeline (feature transformation + XGBoost booster) trained on the group's first
batch. Load comes from ``wrk`` (a separate process, loopback only, bounded in time): single-row
requests from 64 connections, then 1,000-listing requests from 8. Then the hot swap under the
single-row load: a probe client times each request and reads its version while the production alias
moves; wrk counts failures. Figures: req/s, p50/p99 latency, rows/s, failed requests, swap delay,
slowest probe request during the swap.
"""

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import requests

from bench.common import CLIENT_NICENESS, held_out_listings, parser, private_stack, report
from bench.model_bound import bound_rows_per_s
from cluster import processes, ray_head
from tasador import registry, training
from tasador.features import PriceModel
from tasador.ingest import ingest_next
from tasador.models import SEARCH_SPACE, fit_steps
from tasador.processing import process_pending
from tasador.promotion import load_model
from tasador.ray_jobs import use_cluster_auth
from tasador.registry import PRODUCTION
from tasador.schema import FEATURES

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("{body}"):read("*a")
"""


def wrk(url: str, body: str, connections: int, seconds: int, niceness: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        body_file, script = os.path.join(tmp, "body.json"), os.path.join(tmp, "post.lua")
        with open(body_file, "w") as f:
            f.write(body)
        with open(script, "w") as f:
            f.write(LUA.format(body=body_file))
        out = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--timeout",
                              "10s", "--latency", "-s", script, url], capture_output=True, text=True, check=True,
                             preexec_fn=lambda: os.nice(niceness)).stdout
    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    failed = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0)
    req_s = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    answered_2xx = requests - (int(non2xx.group(1)) if non2xx else 0)
    return {"req_s": req_s, "ok_req_s": round(req_s * answered_2xx / max(requests, 1), 2),
            "p50_ms": ms("50"), "p99_ms": ms("99"), "requests": requests, "failed": failed,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()),
                                      strict=True)) if errors else {}}


def measure(result: dict, name: str, url: str, one: str, thousand: str, seconds: int) -> None:
    wrk(f"{url}/predict", one, 64, 3)  # warm-up
    alone = wrk(f"{url}/predict", one, 1, seconds)
    single = wrk(f"{url}/predict", one, 64, seconds)
    batch = wrk(f"{url}/predict", thousand, 8, seconds)
    result[f"{name}_c1_p50_ms"], result[f"{name}_c1_p99_ms"] = alone["p50_ms"], alone["p99_ms"]
    result.update({f"{name}_single_{k}": v for k, v in single.items()})
    result[f"{name}_1000_rows_s"] = round(batch["req_s"] * 1000)
    result[f"{name}_1000_p99_ms"] = batch["p99_ms"]
    result[f"{name}_1000_failed"] = batch["failed"]


def trained_model(settings) -> str:
    """Ingest and process the group's first batch, fit the real pipeline with XGBoost, make it production."""
    import logging

    import ray

    ray.init(address=ray_head.driver_address(settings), logging_level=logging.WARNING)
    ingest_next(settings, 1, "bench")
    process_pending(settings, 1, "bench")
    ds = training.load_dataset(settings)
    features, arrays = training.prepare(ds)
    config = {"family": "xgboost", **SEARCH_SPACE["xgboost"][0]}
    *_, (_, booster, _) = fit_steps(config, arrays["X_train"], arrays["y_train"], threads=os.cpu_count())
    version = register(settings, PriceModel(features, booster, "xgboost"), ds)
    registry.mlflow_client(settings).set_registered_model_alias(settings.model_name, PRODUCTION, version)
    return version, ds


def register(settings, model, ds) -> str:
    return training.register(settings, model, training.empty_run(settings, "bench-serve"), ds,
                             {"rmse": 1.0}, {}, {"batch_ids": "[]"})


def wait_version(url: str, version: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=5).json().get("model_version") == version:
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} never served v{version}")


def hot_swap(settings, body: str, new_version: str, seconds: int = 20, rate: float | None = None) -> dict:
    """Load for ``seconds``, the production alias moved halfway, a light probe (one request at a time,
    niceness 0) timing each request and reading its version. The load: wrk's 64 closed-loop connections
    (``rate`` None: as much as Serve answers), or ``rate`` requests a second, open loop (``open_loop``). The stall:
    the slowest probe request that started from half a second before the move to half a second after
    the first answer from the new version, less the probe's median before the move."""
    url = settings.serve
    probe, stop = [], threading.Event()

    def run_probe():
        with requests.Session() as s:
            while not stop.is_set():
                started = time.monotonic()
                resp = s.post(f"{url}/predict", data=body, headers={"Content-Type": "application/json"}, timeout=30)
                probe.append((started, time.monotonic() - started, resp.status_code,
                              resp.json().get("model_version") if resp.ok else None))

    load = {}

    def run_load():
        if rate is None:
            load.update(wrk(f"{url}/predict", body, 64, seconds))
            return
        done = open_loop(f"{url}/predict", body, rate, seconds)
        failed = sum(1 for _, _, code, _ in done["requests"] if code != 200) + done["unanswered"]
        load.update(requests=len(done["requests"]) + done["unanswered"], failed=failed, non_2xx=failed,
                    socket_errors={})

    loader = threading.Thread(target=run_load)
    loader.start()
    probe_thread = threading.Thread(target=run_probe)
    probe_thread.start()
    time.sleep(seconds / 2)
    moved = time.monotonic()
    asked = registry.move_production_alias(settings, registry.mlflow_client(settings), new_version)  # as promotions do
    loader.join()
    stop.set()
    probe_thread.join()
    switched = min((t + d for t, d, _, v in probe if v == new_version), default=None)
    around = [d for t, d, _, _ in probe if switched and moved - 0.5 <= t <= switched + 0.5]
    before = [d for t, d, _, _ in probe if t + d < moved]
    return {"swap_failed_requests": load["failed"] + sum(1 for p in probe if p[2] != 200),
            "swap_load_requests": load["requests"] + len(probe),
            "swap_probe_failed": sorted({str(p[2]) for p in probe if p[2] != 200}),
            "swap_load_non_2xx": load["non_2xx"], "swap_load_socket_errors": load["socket_errors"],
            "swap_delay_s": round(switched - moved, 3) if switched else None, "swap_reload_answer": asked.get("status"),
            "swap_slowest_probe_ms": round(max(around) * 1000, 1) if around else None,
            "swap_stall_ms": round((max(around) - float(np.median(before))) * 1000, 1) if around and before else None,
            "swap_probe_p99_ms": round(float(np.percentile([d for _, d, _, _ in probe], 99)) * 1000, 1)}


def open_loop(url: str, body: str, rate: float, seconds: int) -> dict:
    """``rate`` requests a second spread evenly over ``seconds``, open loop (``bench.openloop``, a
    separate process): its JSON, each request as [due offset, latency from when it was due, status,
    Retry-After present]. At the default priority, not CLIENT_NICENESS like the closed-loop clients:
    an open-loop client times each request from when it was due, so a generator waiting for the CPU
    behind the replicas added its own wait to every latency (its send lag's p99 reached 76 ms at 8,224
    requests a second); its CPU is bounded by the rate it sends at (~38 us a request) either way."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        f.write(body)
        f.flush()
        out = subprocess.run([sys.executable, "-m", "bench.openloop", url, f.name, str(rate), str(seconds)],
                             capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def hey(url: str, body_file: str, workers: int, seconds: int, niceness: int = 0) -> list[tuple[float, int]]:
    """Closed-loop load from ``hey`` (a separate process, at ``niceness``): each of ``workers`` sends its
    next request as soon as the last is answered. Returns (seconds, status) per request. (Not for a
    rate: hey's paced workers all fire together, bench/openloop.py.)"""
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(workers), "-m", "POST",
                          "-T", "application/json", "-D", body_file, "-t", "120", "-o", "csv", url],
                         capture_output=True, text=True, check=True, preexec_fn=lambda: os.nice(niceness)).stdout
    rows = []
    for line in out.splitlines()[1:]:
        parts = line.split(",")
        if len(parts) >= 7 and parts[6].strip().isdigit():
            rows.append((float(parts[0]), int(parts[6])))
    return rows


def percentile_ms(values: list[float], percentile: float) -> float | None:
    return round(float(np.percentile(values, percentile)) * 1000, 1) if values else None


def p99_ms(values: list[float]) -> float | None:
    return percentile_ms(values, 99)


OVERLOAD_ROUNDS = 3  # the sustainable rate and 4x it, in turn, this many times each


def overload(settings, one: str, seconds: int) -> dict:
    """The sustainable single-listing rate (half of what closed-loop wrk connections get answered),
    then four times it, both open loop (``open_loop``: evenly spread, each request timed from when it
    was due): how fast the excess is refused (503 + Retry-After), the p99 of the accepted requests
    against the p99 at the sustainable rate, and the slowest request of all. A light probe beside
    the load times requests as a client that does not share the server's cores would see them.

    The two rates are taken in turn, ``OVERLOAD_ROUNDS`` times each, ``seconds`` a phase, and each p99
    is over all of its phases: a p99 of 15 s at the sustainable rate is made by the one or two stalls
    that fall in it (Ray's agent, a log flush), so single phases gave a sustainable p99 of 18-51 ms with
    the same code in the same hour, and the ratio moved 1.25-2.66. Each round's own ratio is reported too
    (``accepted_p99_ratio_rounds``)."""
    url = f"{settings.serve}/predict"
    nice = CLIENT_NICENESS  # below what they measure (bench.common)
    # closed loop with as many connections as HAProxy lets reach the two replicas at once (more would
    # only be refused, and a closed loop re-sends a refusal at once): answered requests per second
    saturated = wrk(url, one, 2 * settings.serve_replica_maxconn, seconds, nice)["ok_req_s"]
    rate = round(saturated / 2)

    def probe(into: list):
        """One request at a time from this process (niceness 0), 5 ms apart."""
        time.sleep(seconds / 3)
        with requests.Session() as s:
            for _ in range(300):
                started = time.perf_counter()
                r = s.post(url, data=one, headers={"Content-Type": "application/json"}, timeout=60)
                into.append((time.perf_counter() - started, r.status_code))
                time.sleep(0.005)

    def timed(offered: float, phases: dict) -> None:
        prober = threading.Thread(target=probe, args=(phases["probed"],))
        prober.start()
        loaded = open_loop(url, one, offered, seconds)
        prober.join()
        phases["requests"].append(loaded["requests"])
        phases["unanswered"] += loaded["unanswered"]
        phases["lag_p99_ms"] = max(phases["lag_p99_ms"], loaded["lag_p99_ms"] or 0)
        phases["connections"].append(loaded["connections"])

    calm = {"requests": [], "probed": [], "unanswered": 0, "lag_p99_ms": 0.0, "connections": []}
    loaded = {"requests": [], "probed": [], "unanswered": 0, "lag_p99_ms": 0.0, "connections": []}
    for _ in range(OVERLOAD_ROUNDS):
        timed(rate, calm)
        timed(4 * rate, loaded)

    def ok_times(requests_: list) -> list[float]:
        return [t for _, t, code, _ in requests_ if code == 200]

    rounds = [round(p99_ms(ok_times(b)) / p99_ms(ok_times(a)), 2) if ok_times(a) and ok_times(b) else None
              for a, b in zip(calm["requests"], loaded["requests"], strict=True)]
    calm_requests = [r for phase in calm["requests"] for r in phase]
    loaded_requests = [r for phase in loaded["requests"] for r in phase]
    ok, accepted = ok_times(calm_requests), ok_times(loaded_requests)
    refused = [(t, retry_after) for _, t, code, retry_after in loaded_requests if code == 503]
    probe_calm = p99_ms([t for t, code in calm["probed"] if code == 200])
    probe_accepted = p99_ms([t for t, code in loaded["probed"] if code == 200])
    loaded_s = OVERLOAD_ROUNDS * seconds
    return {"saturated_req_s": saturated, "sustainable_req_s": rate, "overload_rounds": OVERLOAD_ROUNDS,
            "overload_phase_s": seconds,
            "sustainable_p99_ms": p99_ms(ok), "sustainable_p50_ms": percentile_ms(ok, 50),
            "sustainable_failed": len(calm_requests) - len(ok) + calm["unanswered"],
            "overload_offered_req_s": 4 * rate, "overload_requests": len(loaded_requests),
            "overload_accepted": len(accepted), "overload_accepted_req_s": round(len(accepted) / loaded_s),
            "overload_accepted_p99_ms": p99_ms(accepted), "overload_accepted_p50_ms": percentile_ms(accepted, 50),
            "overload_refused_503": len(refused), "overload_refused_p99_ms": p99_ms([t for t, _ in refused]),
            "refused_with_retry_after": sum(1 for _, retry_after in refused if retry_after),
            "overload_other_status": len(loaded_requests) - len(accepted) - len(refused),
            "unanswered": calm["unanswered"] + loaded["unanswered"],
            "overload_slowest_ms": round(max(t for _, t, _, _ in calm_requests + loaded_requests) * 1000, 1),
            "load_lag_p99_ms": max(calm["lag_p99_ms"], loaded["lag_p99_ms"]),
            # connections the generator opened per phase (a closed one is replaced)
            "sustainable_connections": calm["connections"], "overload_connections": loaded["connections"],
            "probe_sustainable_p99_ms": probe_calm,
            "probe_refused_p99_ms": p99_ms([t for t, code in loaded["probed"] if code == 503]),
            "probe_accepted_p99_ms": probe_accepted,
            "accepted_p99_ratio": round(p99_ms(accepted) / p99_ms(ok), 2) if ok and accepted else None,
            "accepted_p99_ratio_rounds": rounds,
            "sustainable_failed_rounds": [sum(1 for _, _, code, _ in phase if code != 200)
                                          for phase in calm["requests"]],
            # when in a phase the failures at the sustainable rate came (seconds from its start, whole)
            "sustainable_failed_at_s": sorted(collections.Counter(
                int(due) for phase in calm["requests"] for due, _, code, _ in phase if code != 200).items()),
            "probe_accepted_p99_ratio": round(probe_accepted / probe_calm, 2) if probe_calm and probe_accepted
            else None}


def large_requests(settings, one: str, rows: list[dict], seconds: int) -> dict:
    """/health and single listings, 20 a second each, alone and while two clients send 10,000-listing
    requests without pause: the p99 of each, and how much the large requests add to it. The large
    requests come from ``hey`` (a separate process at the clients' niceness), so that sending and
    reading their megabytes does not hold the probe's own interpreter."""
    def probe(stop: threading.Event) -> dict:
        times: dict[str, list[float]] = {"health": [], "single": []}
        with requests.Session() as s:
            while not stop.is_set():
                for name in times:
                    started = time.perf_counter()
                    if name == "health":
                        s.get(f"{settings.serve}/health", timeout=60)
                    else:
                        s.post(f"{settings.serve}/predict", data=one, headers={"Content-Type": "application/json"},
                               timeout=60)
                    times[name].append(time.perf_counter() - started)
                time.sleep(0.05)
        return times

    def measure(big_file: str | None) -> tuple[dict, int]:
        stop, big_done = threading.Event(), []
        senders = [threading.Thread(target=lambda: big_done.extend(hey(
            f"{settings.serve}/predict", big_file, 2, seconds, CLIENT_NICENESS)))] if big_file else []
        for t in senders:
            t.start()
        out = {}
        prober = threading.Thread(target=lambda: out.update(probe(stop)))
        prober.start()
        time.sleep(seconds)
        for t in senders:
            t.join()
        stop.set()
        prober.join()
        return out, sum(1 for _, code in big_done if code == 200)

    alone, _ = measure(None)
    with tempfile.NamedTemporaryFile("w", suffix=".json") as big:
        json.dump({"listings": (rows * 10_000)[:10_000]}, big)
        big.flush()
        loaded, big_ok = measure(big.name)
    result = {"large_requests_priced": big_ok}
    for name in ("health", "single"):
        result[f"{name}_p99_ms_alone"] = p99_ms(alone[name])
        result[f"{name}_p99_ms_with_10k"] = p99_ms(loaded[name])
        result[f"{name}_p99_delay_ms"] = round(p99_ms(loaded[name]) - p99_ms(alone[name]), 1)
    return result


def explain_p50_ms(url: str, one: str, requests_count: int = 200) -> float:
    """One client, one listing at a time: the median of ``/explain``'s answers."""
    times = []
    with requests.Session() as s:
        for _ in range(requests_count):
            started = time.perf_counter()
            s.post(f"{url}/explain", data=one, headers={"Content-Type": "application/json"},
                   timeout=60).raise_for_status()
            times.append(time.perf_counter() - started)
    return round(float(np.median(times[10:])) * 1000, 2)


def throughput(result: dict, settings, version: str, one: str, thousand: str, seconds: int) -> None:
    """Serve against the FastAPI baseline, single rows and 1,000-listing requests; the model's own bound
    for those rows (one process per core, no HTTP); /explain for one listing."""
    measure(result, "serve", settings.serve, one, thousand, seconds)
    result["explain_p50_ms"] = explain_p50_ms(settings.serve, one)
    rows = pd.DataFrame(json.loads(thousand)["listings"], columns=list(FEATURES))
    result["bound_rows_per_s_1000"] = bound_rows_per_s(load_model(settings, version), rows, seconds)
    # the baseline as a user would run it, then with one OpenMP thread per request (as Ray gives
    # its workers): XGBoost's default of every core per call thrashes under 64 concurrent requests
    # its workers): XGBoost's default of every core per call thrashes under 64 concurrent requests; and
    # issue 17's baseline: two workers (one per core), one OpenMP thread each
    for name, extra, workers in (("fastapi", {}, 1), ("fastapi_1thread", {"OMP_NUM_THREADS": "1"}, 1),
                                 ("fastapi_2workers", {"OMP_NUM_THREADS": "1"}, 2)):
        port = processes.free_port()
        env = {**settings.as_env(), "MODEL_VERSION": version, **extra}
        base_pid = processes.spawn([sys.executable, "-m", "uvicorn", "bench.fastapi_baseline:app", "--host",
                                    "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level",
                                    "warning"], settings.state_path / "logs" / f"{name}.log", env=env)
        try:
            wait_version(f"http://127.0.0.1:{port}", version)
            measure(result, name, f"http://127.0.0.1:{port}", one, thousand, seconds)
        finally:
            processes.stop_pid(base_pid)
    best = max(("fastapi", "fastapi_1thread", "fastapi_2workers"), key=lambda n: result[f"{n}_single_req_s"])
    result["baseline_compared"] = best
    result["single_req_s_ratio"] = round(result["serve_single_req_s"] / result[f"{best}_single_req_s"], 2)
    result["single_p99_ratio"] = round(result["serve_single_p99_ms"] / result[f"{best}_single_p99_ms"], 2)
    result["rows_s_ratio_1000"] = round(result["serve_1000_rows_s"] / max(
        result[f"{n}_1000_rows_s"] for n in ("fastapi", "fastapi_1thread", "fastapi_2workers")), 2)
    # issue 17's names (the baseline: FastAPI with two workers)
    result.update(c1_p50_ms=result["serve_c1_p50_ms"], c1_p99_ms=result["serve_c1_p99_ms"],
                  c64_rps=result["serve_single_req_s"], c64_p99_ms=result["serve_single_p99_ms"],
                  baseline_c1_p50_ms=result["fastapi_2workers_c1_p50_ms"],
                  baseline_c64_rps=result["fastapi_2workers_single_req_s"], rows_per_s_1000=result["serve_1000_rows_s"],
                  rows_1000_vs_bound=round(result["serve_1000_rows_s"] / result["bound_rows_per_s_1000"], 2))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--part", nargs="*", choices=("throughput", "swap", "overload", "large"),
                   default=["throughput", "swap", "overload", "large"],
                   help="throughput: against the FastAPI baseline; swap: the hot swap under load; overload: 4x "
                        "the sustainable rate; large: 10,000-listing requests beside small ones (default: all)")
    args = p.parse_args()
    if not shutil.which("wrk") or not shutil.which("hey"):
        sys.exit("bench.serve needs wrk and hey (apt-get install wrk hey)")
    seconds = 5 if args.quick else 15
    with private_stack(0.02 if args.quick else 0.1) as settings:
        use_cluster_auth(settings)
        version, ds = trained_model(settings)
        wait_version(settings.serve, version)
        rows = held_out_listings(ds)
        one, thousand = json.dumps(rows[0]), json.dumps({"listings": (rows * 1000)[:1000]})

        result = {}
        if "overload" in args.part:
            result.update(overload(settings, one, seconds))
        if "large" in args.part:
            result.update(large_requests(settings, one, rows, seconds))
        if "throughput" in args.part:
            throughput(result, settings, version, one, thousand, seconds)
        if "swap" in args.part:
            model = load_model(settings, version)
            # under as much load as Serve answers: no request fails, the new version within 5 s
            swapped = hot_swap(settings, one, register(settings, model, ds), seconds=20 if not args.quick else 10)
            result.update(swapped, swap_failed=swapped["swap_failed_requests"])
            # at half the sustainable rate (itself half of what Serve answers): how long the swap stalls a request
            sustainable = (result.get("sustainable_req_s")
                           or wrk(f"{settings.serve}/predict", one, 32, 5)["ok_req_s"] / 2)
            calm = hot_swap(settings, one, register(settings, model, ds), seconds=20 if not args.quick else 10,
                            rate=sustainable / 2)
            result.update({f"half_rate_{k}": v for k, v in calm.items()}, swap_half_rate_req_s=round(sustainable / 2),
                          swap_stall_ms=calm["swap_stall_ms"],
                          swap_failed=swapped["swap_failed_requests"] + calm["swap_failed_requests"])
        result["model_version"] = version
        import ray

        ray.shutdown()  # before the stack goes down
        report(result)


if __name__ == "__main__":
    main()
