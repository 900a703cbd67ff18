"""Serve's per-request histograms recorded (Ray's default, the baseline) against not recorded (Tasador's
default, ``serve_ray_request_histograms``), each on a private stack of its own, one after the other: at a
fixed open-loop rate of single listings, the p99, the requests not answered 200, the seconds with many
slow requests (Ray's metrics agent replays every histogram observation at its 10-s report), and the CPU
per answered request of the ``PriceApi`` replicas and of Ray's dashboard agent.

    .venv/bin/python -m bench.serve_histograms [--rate 1300] [--seconds 30] [--rounds 4]

The last line carries ``p99_ms`` and ``baseline_p99_ms``, ``failed`` and ``baseline_failed``,
``slow_seconds`` and ``baseline_slow_seconds`` (seconds of a round with ``SLOW_PER_S`` or more requests
over ``SLOW_MS`` or refused), ``agent_us_per_request``, ``replicas_us_per_request`` and their baselines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from bench.common import held_out_listings, parser, private_stack, report
from bench.idle import cpu_seconds
from bench.serve import open_loop, trained_model, wait_version
from tasador.ray_jobs import use_cluster_auth

SLOW_MS, SLOW_PER_S = 60, 10
PROCESSES = {"replicas": "ServeReplica:tasador:PriceApi", "agent": "DashboardAgent"}


def measured(rate: float, seconds: int, rounds: int) -> dict:
    """A private stack serving a trained model; ``rounds`` open-loop phases at ``rate``, after a warm-up."""
    with private_stack(0.1) as settings:
        use_cluster_auth(settings)
        version, ds = trained_model(settings)
        wait_version(settings.serve, version)
        one = json.dumps(held_out_listings(ds, 1)[0])
        url = f"{settings.serve}/predict"
        open_loop(url, one, rate, 5)
        latencies, failed, slow_seconds, cpu = [], 0, 0, dict.fromkeys(PROCESSES, 0.0)
        for _ in range(rounds):
            before = cpu_seconds()
            phase = open_loop(url, one, rate, seconds)
            after = cpu_seconds()
            for pid, (label, used) in after.items():
                for name, word in PROCESSES.items():
                    if word in label:
                        cpu[name] += used - before.get(pid, (label, 0.0))[1]
            ok = [latency for _, latency, status, _ in phase["requests"] if status == 200]
            latencies += ok
            failed += len(phase["requests"]) - len(ok) + phase["unanswered"]
            slow = np.bincount([int(due) for due, latency, status, _ in phase["requests"]
                                if status != 200 or latency * 1000 > SLOW_MS], minlength=seconds)
            slow_seconds += int((slow >= SLOW_PER_S).sum())
        answered = len(latencies)
        import ray

        ray.shutdown()  # before the stack goes down
    return {"p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1), "failed": failed,
            "slow_seconds": slow_seconds, "answered": answered,
            **{f"{name}_us_per_request": round(used / answered * 1e6, 1) for name, used in cpu.items()}}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rate", type=float, default=1300, help="single-listing requests a second (default 1300)")
    p.add_argument("--seconds", type=int, default=30, help="seconds a round (default 30)")
    p.add_argument("--rounds", type=int, default=4, help="rounds per stack (default 4)")
    p.add_argument("--one", action="store_true", help="measure one stack, with the environment's setting")
    args = p.parse_args()
    seconds, rounds = (10, 2) if args.quick else (args.seconds, args.rounds)
    if args.one:
        print(json.dumps(measured(args.rate, seconds, rounds)))
        return
    result = {"rate": args.rate, "seconds": seconds, "rounds": rounds}
    # each stack measured by a process of its own: Ray reads a cluster's auth token once per process
    for prefix, recorded in (("baseline_", "true"), ("", "false")):  # Ray's default first: the baseline
        out = subprocess.run([sys.executable, "-m", "bench.serve_histograms", "--one", "--rate", str(args.rate),
                              "--seconds", str(seconds), "--rounds", str(rounds)], check=True, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "TASADOR_SERVE_RAY_REQUEST_HISTOGRAMS": recorded}).stdout
        result.update({prefix + k: v for k, v in json.loads(out.strip().splitlines()[-1]).items()})
    report(result)


if __name__ == "__main__":
    main()
