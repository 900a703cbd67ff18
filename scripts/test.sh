#!/usr/bin/env bash
# The tests on a fresh machine: set up, lint, then pytest against real components (PostgreSQL,
# a Ray cluster, HTTP servers) that the tests start themselves on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
TASADOR_BROWSER=1 bash scripts/bootstrap.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -p no:dash --durations=20 "$@"  # the 20 slowest: where the run's time goes
