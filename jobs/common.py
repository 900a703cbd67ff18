"""What every job entrypoint shares: arguments, logging, the JSON last line, the exit code."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable

from tasador.settings import Settings


def job_parser(description: str) -> argparse.ArgumentParser:
    settings = Settings.load()
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--group", type=int, default=settings.group, help="data API group number")
    parser.add_argument("--day", default=settings.day, help="data API day")
    return parser


def run_job(name: str, body: Callable[[Settings], dict], ok: Callable[[dict], bool] = lambda _: True) -> None:
    """Run ``body`` and print its summary as the last line; on an exception print an error summary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        summary = body(Settings.load())
    except Exception as exc:  # the job's contract: a JSON last line even when it fails
        traceback.print_exc()
        print(json.dumps({"job": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        sys.exit(1)
    print(json.dumps(summary, default=str), flush=True)
    sys.exit(0 if ok(summary) else 1)
