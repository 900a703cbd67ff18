"""Training: the same search space run by Ray Tune and by a plain sequential loop, same run.

- tasador: ``training.tune_families`` (trials packed one per CPU, ASHA stopping bad trials, the
  matrices put in the object store once), on the 230,366-row batch, on the training stack
  (PostgreSQL, MLflow, Ray head, data API);
- baseline: a sequential loop in one process where each trial uses every core (``n_jobs=-1``,
  ``nthread`` = all), every trial run to the end: what a user without Ray would write. It runs
  after the stack is stopped, on a quiet machine: a user without Ray has no Ray daemons running.
Both start from the same prepared matrices (features fitted once, same split) and run ``--repeat``
times; the ratio is of the mean wall times. Reported: wall time of the search, peak memory (the
loop: its process; Tune: the driver plus every Ray worker, sampled), best validation RMSE.
``--all`` instead trains on all 1,084,909 rows with Tune (wall, memory, families).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time

import numpy as np

from bench.common import TreeMemory, parser, peak_rss_mb, private_stack, report, timer
from cluster import processes, ray_head, stack
from tasador import registry, training
from tasador.ingest import ingest_next
from tasador.models import fit_steps, price_metrics, trials
from tasador.processing import process_pending
from tasador.ray_jobs import use_cluster_auth


def sequential_loop(arrays: dict, out: mp.Queue) -> None:
    started = time.perf_counter()
    best = None
    for config in trials():
        model = None
        for _, model, _ in fit_steps(dict(config), arrays["X_train"], arrays["y_train"], threads=os.cpu_count()):  # noqa: B007
            pass  # every trial to the end
        val = price_metrics(arrays["y_validation"], model.predict(arrays["X_validation"]))
        if best is None or val["rmse_log"] < best[1]["rmse_log"]:
            best = (config["family"], val)
    out.put({"s": time.perf_counter() - started, "peak_mb": peak_rss_mb(os.getpid()), "best_family": best[0],
             "best_val_rmse": best[1]["rmse"], "best_val_rmse_log": best[1]["rmse_log"]})


def tune_search(settings, arrays, experiment_id, name):
    with timer() as t:
        results, _ = training.tune_families(settings, arrays, "bench", experiment_id, name)
    done = [r for r in results if r.error is None and r.metrics]
    best = min(done, key=lambda r: r.metrics["val_rmse_log"])
    families = {}
    for r in sorted(done, key=lambda r: r.metrics["val_rmse_log"]):
        families.setdefault(r.config["spec"]["family"], round(r.metrics["val_rmse_log"], 4))
    return t["s"], best, families, sum(1 for r in done if r.checkpoint is None)


def all_rows(settings, experiment_id: str, head: int, scale: float) -> dict:
    for _ in range(5):
        ingest_next(settings, 1, "bench")
    process_pending(settings, 1, "bench")
    with TreeMemory(head) as mem, timer() as t_all:
        ds = training.load_dataset(settings)
        _, arrays = training.prepare(ds)
        tune_s, best, families, stopped = tune_search(settings, arrays, experiment_id, "bench-all")
    return {"benchmark": "train_all_rows", "rows": len(ds.frame), "scale": scale, "wall_s": t_all["s"],
            "tune_s": tune_s, "peak_mb": mem.peak_mb, "best_family": best.config["spec"]["family"],
            "families_val_rmse_log": families, "trials_stopped_early": stopped}


def loop_search(arrays: dict) -> dict:
    """The baseline in a process of its own (its peak memory is its own)."""
    queue = mp.get_context("spawn").Queue()
    loop = mp.get_context("spawn").Process(target=sequential_loop, args=(arrays, queue))
    loop.start()
    result = queue.get()
    loop.join()
    return result


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--all", action="store_true", help="only: train with Tune on every batch (1,084,909 rows)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each search (the ratio is of the means)")
    args = p.parse_args()
    scale = 0.1 if args.quick else 1.0
    # The training stack only (PostgreSQL, MLflow, Ray head, data API): Serve, Prometheus and the web
    # app are not part of a training cluster, and their idle load (a third of a core) would slow both.
    with private_stack(scale, only=stack.TRAINING) as settings:
        use_cluster_auth(settings)
        import ray

        ray.init(address=ray_head.driver_address(settings), logging_level=logging.WARNING,
                 runtime_env={"env_vars": settings.as_env()})
        ingest_next(settings, 1, "bench")  # every group starts with the 230,366-row sold batch
        process_pending(settings, 1, "bench")
        client = registry.mlflow_client(settings)
        experiment_id = client.create_experiment("bench")
        head = processes.load_registry(settings.state_path)["ray_head"]["pid"]
        if args.all:
            try:
                report(all_rows(settings, experiment_id, head, scale))
            finally:
                ray.shutdown()
            return
        ds = training.load_dataset(settings)
        _, arrays = training.prepare(ds)
        tune_runs = []
        try:
            for i in range(args.repeat):
                with TreeMemory(head) as mem:
                    tune_s, best, families, stopped = tune_search(settings, arrays, experiment_id, f"bench-230k-{i}")
                tune_runs.append({"s": tune_s, "peak_mb": mem.peak_mb, "best": best, "families": families,
                                  "stopped": stopped})
        finally:
            ray.shutdown()
    # The baseline runs once the stack is down: a user without Ray has no Ray daemons on the machine.
    loop_runs = [loop_search(arrays) for _ in range(args.repeat)]

    tune_mean = float(np.mean([r["s"] for r in tune_runs]))
    loop_mean = float(np.mean([r["s"] for r in loop_runs]))
    last, baseline = tune_runs[-1], loop_runs[-1]
    result = {
        "benchmark": "train", "rows": len(ds.frame), "scale": scale, "repeat": args.repeat,
        "tune_s": [r["s"] for r in tune_runs], "tune_peak_mb": max(r["peak_mb"] for r in tune_runs),
        "tune_best_family": last["best"].config["spec"]["family"],
        "tune_best_val_rmse": last["best"].metrics["val_rmse"],
        "tune_best_val_rmse_log": last["best"].metrics["val_rmse_log"],
        "tune_families_val_rmse_log": last["families"], "tune_trials_stopped_early": last["stopped"],
        "loop_s": [r["s"] for r in loop_runs], "loop_peak_mb": max(r["peak_mb"] for r in loop_runs),
        "loop_best_family": baseline["best_family"], "loop_best_val_rmse": baseline["best_val_rmse"],
        "loop_best_val_rmse_log": baseline["best_val_rmse_log"],
        "ratio_tune_vs_loop_wall": tune_mean / loop_mean,
    }
    report({k: ([round(x, 2) for x in v] if isinstance(v, list) else v) for k, v in result.items()})


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
