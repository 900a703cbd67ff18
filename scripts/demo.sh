#!/usr/bin/env bash
# The main job on a fresh machine: set up, bring up the local stack and run the pipeline over every
# batch the data API serves, through Ray jobs, ending with a summary. Extra arguments go to
# 'tasador demo' (e.g. --scale 0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/tasador demo "$@"
