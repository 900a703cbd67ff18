#!/usr/bin/env bash
# Set up a fresh machine for Tasador: PostgreSQL server and Prometheus (apt-get when missing), the virtual
# environment at .venv with the project and its extras. Idempotent; safe to run every time.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${TASADOR_EXTRAS:-dev}"

apt_install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "bootstrap: installing PostgreSQL server"
  apt_install postgresql
fi

# Prometheus scrapes Ray's metrics in the local stack and the tests query it
if ! command -v prometheus >/dev/null 2>&1; then
  echo "bootstrap: installing Prometheus"
  apt_install prometheus
fi

# The web app's tests drive Debian's Chromium (scripts/test.sh asks for it)
if [ "${TASADOR_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "bootstrap: installing Chromium"
  apt_install chromium
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $PY"
  "$PY" -m venv .venv
fi
# uv installs what pip would (the same resolution, checked on this machine: identical `pip freeze`) in
# a fraction of the time, which a clean clone's CI run pays on every run; pip when uv cannot be had.
# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set (this machine), nothing else
# ever writes the .pyc files, and every Ray worker and job would compile MLflow, Ray and pandas anew
# (a CI run without them took 700 s instead of about 400 for the Airflow fault test alone)
if [ -n "${PIP_FIND_LINKS:-}" ] && [ -z "${UV_FIND_LINKS:-}" ]; then export UV_FIND_LINKS="$PIP_FIND_LINKS"; fi
install_into() {  # install_into VENV ARGS...: pip's arguments, through uv when there is one
  local venv="$1"; shift
  if [ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q uv >/dev/null 2>&1; then
    .venv/bin/uv pip install -q --compile-bytecode --python "$venv/bin/python" "$@"
  else
    "$venv/bin/python" -m pip install -q "$@"
  fi
}
stamp=".venv/.tasador-installed-$(sha1sum pyproject.toml | cut -c1-12)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing the project and its dependencies (extras: $EXTRAS)"
  install_into .venv -e ".[${EXTRAS}]"
  rm -f .venv/.tasador-installed-*
  touch "$stamp"
fi

# Airflow 3 in its own environment (it pins FastAPI below Ray Serve's): the DAG needs only the
# project's settings and Ray job client, installed there without dependencies. TASADOR_AIRFLOW=0 skips.
if [ "${TASADOR_AIRFLOW:-1}" = 1 ]; then
  af_stamp=".venv-airflow/.tasador-installed-$(sha1sum pyproject.toml | cut -c1-12)"
  if [ ! -f "$af_stamp" ]; then
    echo "bootstrap: installing Airflow into .venv-airflow"
    [ -x .venv-airflow/bin/python ] || "$PY" -m venv .venv-airflow
    install_into .venv-airflow "apache-airflow[postgres]==$(sed -n 's/.*"apache-airflow==\([0-9.]*\)".*/\1/p' pyproject.toml)"
    install_into .venv-airflow --no-deps -e .
    rm -f .venv-airflow/.tasador-installed-*
    touch "$af_stamp"
  fi
fi
