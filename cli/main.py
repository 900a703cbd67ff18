"""The ``tasador`` command: ``up``, ``down``, ``status``, ``demo``, ``data-api``."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tasador.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tasador", description="Tasador local stack and tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the local stack (PostgreSQL, Ray head, data API)")
    p_up.add_argument("--scale", type=float, default=None, help="shrink every data API batch (0 < S <= 1)")
    sub.add_parser("down", help="stop exactly what 'up' started")
    sub.add_parser("status", help="report each component of the local stack")
    p_demo = sub.add_parser("demo", help="up, then the pipeline over every batch the API serves, then a summary")
    p_demo.add_argument("--scale", type=float, default=None)
    p_api = sub.add_parser("data-api", help="serve the re-created course data API")
    p_api.add_argument("--host", default=None)
    p_api.add_argument("--port", type=int, default=None)
    p_api.add_argument("--scale", type=float, default=None)
    p_api.add_argument("--seed", type=int, default=None)
    p_api.add_argument("--source", default=None, help="a realtor CSV to serve instead of the generator")
    p_af = sub.add_parser("airflow", help="the stack's Airflow CLI (e.g. 'dags pause tasador_retraining')")
    p_af.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the airflow command")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.load()
    scale = getattr(args, "scale", None)
    if scale is not None and not 0 < scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {scale}")

    if args.command == "data-api":
        from data_api.server import serve

        serve(args.host or settings.data_api_host, args.port or settings.data_api_port,
              scale if scale is not None else settings.data_api_scale,
              args.seed if args.seed is not None else settings.data_api_seed,
              args.source if args.source is not None else settings.data_api_source)
        return

    if args.command == "airflow":
        from cluster import airflow

        done = airflow.airflow(settings, *args.args, timeout_s=3600)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        sys.exit(done.returncode)

    from cluster import stack

    if args.command == "up":
        _print(stack.up(settings, scale))
    elif args.command == "down":
        _print({"stopped": stack.down(settings)})
    elif args.command == "status":
        report = stack.status(settings)
        _print(report)
        sys.exit(0 if all(c["state"] == "running" for c in report.values()) else 1)
    elif args.command == "demo":
        from cli import demo

        sys.exit(demo.run(settings, scale))


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


if __name__ == "__main__":
    main()
