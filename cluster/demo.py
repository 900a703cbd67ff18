"""``tasador demo``: bring up the stack, then run the pipeline over every batch the data API serves,
each step as a Ray job, and print a summary table with the URLs."""

from __future__ import annotations

import sys

from cluster import stack
from tasador import ray_jobs
from tasador.settings import Settings


def run(settings: Settings, scale: float | None = None) -> int:
    if scale is not None:
        settings = settings.replace(data_api_scale=scale)
    stack.up(settings)
    group, day = str(settings.group), settings.day
    rows = []
    while True:
        outcome = ray_jobs.run(settings, "jobs.ingest", ["--group", group, "--day", day],
                               echo=lambda text: sys.stderr.write(text))
        summary = outcome.summary
        if outcome.status != "SUCCEEDED":
            print(f"ingest job {outcome.job_id} {outcome.status}: {summary.get('error', 'see its logs')}")
            return 1
        if summary.get("status") == "exhausted":
            break
        rows.append(summary)
    print(table(rows))
    print(f"\nRaw rows ingested: {sum(r['rows'] for r in rows):,} in {len(rows)} batches")
    print(urls(settings))
    return 0


def table(rows: list[dict]) -> str:
    head = f"{'batch':>5} {'batch_id':>8} {'rows':>9}  {'status':<15} sha256"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['batch_number']:>5} {r['batch_id']:>8} {r['rows']:>9,}  {r['status']:<15} "
                     f"{(r.get('payload_sha256') or '')[:12]}")
    return "\n".join(lines)


def urls(settings: Settings) -> str:
    return "\n".join([
        f"Ray dashboard: {settings.ray_dashboard}",
        f"Data API:      {settings.data_api}",
        f"Raw database:  {settings.raw_db}",
    ])
