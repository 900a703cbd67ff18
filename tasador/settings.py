"""The one settings object. Every value comes from a ``TASADOR_*`` environment variable, a ``.env`` file
in the working directory, or the embedded default below (which runs the local stack on loopback).

Parsed by pydantic-settings: a value that is not of its setting's type (``TASADOR_PG_LOCAL=ture``,
``TASADOR_PG_PORT=five``) is an error naming the variable; ``.env`` is read by python-dotenv (quotes,
``export``, inline ``# comments``); a ``TASADOR_*`` variable that is no setting (a typo, a renamed
setting) is an error naming it and the setting it most resembles, unless ``NOT_SETTINGS`` lists it.

Ray workers and job drivers do not inherit the submitting shell's environment: pass
``settings.as_env()`` as ``runtime_env={"env_vars": ...}`` (``tasador.ray_jobs`` does this).
URL settings left empty are derived from the host/port settings (see the properties).
"""

from __future__ import annotations

import difflib
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import BaseSettings, DotEnvSettingsSource, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

PREFIX = "TASADOR_"
# this process's MLflow identity file, set by tasador.registry.use_identity (not a setting: it differs
# between the processes of one stack, which share their settings)
MLFLOW_IDENTITY_FILE_ENV = "TASADOR_MLFLOW_AUTH_FILE"
# TASADOR_* variables that are not settings, and who reads them
NOT_SETTINGS = {
    MLFLOW_IDENTITY_FILE_ENV: "tasador/registry.py",
    "TASADOR_AIRFLOW": "scripts/bootstrap.sh (0: no Airflow environment)",
    "TASADOR_BROWSER": "scripts/bootstrap.sh (1: install chromium for the browser tests)",
    "TASADOR_EXTRAS": "scripts/bootstrap.sh (the project's pip extras)",
    "TASADOR_SCREENSHOTS": "tests/test_dashboard.py (where to write the pages' screenshots)",
    **{f"TASADOR_HAPROXY_{name}": "cluster/haproxy-rewrite-config (from cluster/ray_head.py)"
       for name in ("BINARY", "REPLICA_MAXCONN", "QUEUE_MAX", "QUEUE_TIMEOUT_MS", "QUEUE_LIFO_FROM",
                     "LARGE_BODY_BYTES", "LARGE_BODY_PREFIX", "HTTP_REQUEST_TIMEOUT_S", "METRICS_HOST")},
}


class Settings(BaseSettings):
    # Settings(...) holds exactly what it is given (and the defaults); Settings.load() reads the
    # environment and .env (settings_customise_sources)
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="forbid", env_ignore_empty=True,
                                      protected_namespaces=())

    # where the local stack keeps its data, logs, PIDs and secrets
    state_dir: str = "state"
    # PostgreSQL: the local server, and one URL per database (any may point at another server)
    pg_host: str = "127.0.0.1"
    pg_port: int = 5433
    pg_user: str = "tasador"
    pg_local: bool = True  # start a local server in the state dir (false: every *_db_url is external)
    # libpq's password file for pg_user (empty: <state>/secrets/pgpass, written by `tasador up`); every
    # URL below names it, so the password travels by reference (an external *_db_url brings its own)
    pg_passfile: str = ""
    raw_db_url: str = ""  # empty: the local server's raw_data
    clean_db_url: str = ""
    mlflow_db_url: str = ""
    # the data API (the re-created course API by default; any compatible API by URL)
    data_api_host: str = "127.0.0.1"
    data_api_port: int = 8800
    data_api_url: str = ""
    data_api_scale: float = 1.0
    data_api_seed: int = 42
    data_api_source: str = ""
    data_api_timeout_s: float = 120.0
    data_api_retries: int = 5
    data_api_backoff_s: float = 1.0
    group: int = 9
    day: str = "Tuesday"
    # cleaning and the retrain decision
    clean_price_min: float = 10_000.0
    clean_price_max: float = 100_000_000.0
    process_read_shards: int = 0  # 0: two per CPU of the cluster (at least 4)
    drift_ks_threshold: float = 0.1  # KS statistic (an effect size) above which a feature drifted
    drift_share_threshold: float = 0.1  # total-variation distance of a categorical's shares
    drift_new_category_share: float = 0.05  # rows of categories unseen in the reference
    retrain_min_rows: int = 10_000  # a drifted batch smaller than this does not trigger a retrain
    # MLflow: the tracking server (PostgreSQL backend, artifacts proxied to a dir or to S3/MinIO)
    mlflow_host: str = "127.0.0.1"
    mlflow_port: int = 5000
    mlflow_url: str = ""  # empty: the local server
    mlflow_workers: int = 2
    mlflow_artifacts: str = ""  # empty: <state>/mlflow-artifacts; or s3://bucket[/prefix]
    mlflow_s3_endpoint_url: str = ""  # an S3-compatible endpoint (MinIO); credentials: AWS_* variables
    mlflow_experiment: str = "tasador"
    # this process's MLflow identity: a file `username:password` (empty: <state>/secrets/mlflow-writer;
    # the stack gives serving and the Dash app the reader's file); tasador/mlflow_auth.py
    mlflow_credentials_file: str = ""
    model_name: str = "tasador-price"
    # training and promotion
    test_share: float = 0.2  # held-out share, split by property
    validation_share: float = 0.1  # for early stopping and choosing the best trial, split by property
    tune_max_concurrent: int = 0  # 0: one trial per CPU
    xgb_distributed: bool = False  # XGBoost through Ray Train's XGBoostTrainer (data larger than a node)
    xgb_workers: int = 2
    promotion_margin: float = 0.01  # a challenger must beat production's RMSE by this fraction
    train_families: str = ""  # comma-separated families to search (ridge,random_forest,xgboost); empty: all
    tune_max_failures: int = 2  # a trial whose worker dies is restarted this many times (Tune's FailureConfig)
    # one writer per (group, day): each pipeline step holds a PostgreSQL advisory lock for its whole run
    step_lock_timeout_s: float = 600.0  # how long a step waits for another writer before failing clearly
    # Ray head of the local stack
    ray_gcs_port: int = 6390
    ray_dashboard_port: int = 8265
    ray_client_port: int = 10011
    ray_metrics_port: int = 8090
    ray_num_cpus: int = 0  # 0: let Ray count the cores
    ray_temp_dir: str = ""  # empty: <state>/ray when short, else /tmp/tasador-ray-<id> (socket paths)
    ray_address: str = ""  # dashboard URL for job submission; empty: the local head
    ray_serve_high_throughput: bool = True  # HAProxy ingress + gRPC between replicas (set on `ray start`)
    # Ray Serve: the prediction API (serve_app), following the registry's production alias
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    serve_url: str = ""  # empty: the local Serve proxy
    # the file holding the secret for POST /admin/reload (read at each call: replace it to rotate);
    # empty: <state>/secrets/serve-admin-token, made 0600 by `tasador up`
    serve_admin_token_file: str = ""
    serve_poll_s: float = 1.0  # how often each model replica checks its node's reading of the production alias
    # how often a serving node reads the alias from the registry (one read for all its replicas). A
    # promotion or rollback asks serving to read it at once (registry.move_production_alias), so this
    # bounds only how soon serving follows a move made elsewhere (MLflow's UI, another client)
    serve_registry_poll_s: float = 5.0
    serve_max_listings: int = 10_000  # per request
    serve_max_explain: int = 100  # listings per /explain request
    serve_batch_max_size: int = 64  # requests combined by @serve.batch
    serve_batch_wait_s: float = 0.001  # measured against 0, 1 and 2 ms: docs/benchmarks.md
    prediction_log_max_rows: int = 200_000  # rows waiting for the raw database; beyond, counted as lost
    prediction_log_flush_s: float = 0.5  # a replica killed with SIGKILL loses at most this long of predictions
    prediction_log_close_s: float = 20.0  # a replica's graceful stop retries writing its backlog this long
    serve_max_body_bytes: int = 8_000_000  # a request body past this gets 413
    # Ray Serve's own per-request and per-batch histograms (serve_app.metrics.PER_REQUEST_SERVE_HISTOGRAMS):
    # off: Ray's agent replays them one observation at a time, and the sustainable rate saw refusals
    serve_ray_request_histograms: bool = False
    # overload, refused by Serve's HAProxy (cluster/haproxy-rewrite-config) with 503 and Retry-After:
    # requests a replica gets at once; past that they queue, a request finding serve_queue_max waiting is
    # refused at once, and none waits past serve_queue_timeout_ms (0: no such limit, Ray's defaults)
    serve_replica_maxconn: int = 16
    serve_queue_max: int = 48
    # 40, not 80: fewer refusals at the sustainable rate and a shorter tail at 4x. 20 and 10 lowered the
    # p99s at both rates alike (their ratio 2.0-2.3), and 10 refused 33-96 requests at the sustainable rate;
    # at 20, 64 closed-loop clients got 4.6% refused, against 0.05% at 40 (docs/benchmarks.md, 2026-12-07)
    serve_queue_timeout_ms: int = 40
    # adaptive LIFO (cluster/haproxy-rewrite-config, 7.): while this many wait (of serve_queue_max), a new
    # request is served before them, and the ones that waited longest meet the timeout. Off (0: first
    # come, first served): at 36 it halved the median accepted request at 4x open-loop overload, but 72-80
    # closed-loop clients, whose standing queue first come drains within the timeout, got 29-31% refused
    # (docs/benchmarks.md, 2026-12-07)
    serve_queue_lifo_from: int = 0
    # HAProxy's threads (Ray's default 4): with 1 on 2 cores HAProxy took 0.17 core, not 0.36, and 64
    # clients got 1,415-1,526 req/s instead of 1,277-1,319 (docs/benchmarks.md)
    serve_haproxy_threads: int = 1
    # Prometheus (started by the stack when its binary is present) and the Dash app
    prometheus_port: int = 9090
    prometheus_url: str = ""  # empty: the local server
    dash_port: int = 8050
    # Airflow (when its environment is installed: scripts/bootstrap.sh with TASADOR_AIRFLOW=1)
    airflow_schedule: str = "@hourly"  # the retraining DAG's schedule; "none": only when triggered (dag_schedule)
    airflow_retries: int = 2
    airflow_job_timeout_s: float = 3600.0
    airflow_port: int = 8081
    airflow_server: bool = True  # `tasador up` runs Airflow (the UI and the scheduler: cluster/airflow_components.py)
    airflow_instance: str = "airflow"  # its home (<state>/<instance>) and metadata database in the stack's PostgreSQL
    airflow_paused: bool = False  # true: the DAG's schedule is paused (runs only when triggered by hand)
    airflow_retry_delay_s: float = 30.0
    # fault injection, for the fault tests only: the named point (e.g. "train.after_register") kills
    # the process there, or waits there until released; once per fault_dir (see tasador/faults.py)
    fault_point: str = ""
    fault_action: str = "kill"  # "kill" (SIGKILL itself) | "wait" (until <fault_dir>/<point>.release) | "raise"
    fault_dir: str = ""

    @property
    def serve_admin_token_path(self) -> Path:
        return Path(self.serve_admin_token_file) if self.serve_admin_token_file else (
            self.state_path / "secrets" / "serve-admin-token")

    @property
    def mlflow_credentials_path(self) -> Path:
        return Path(self.mlflow_credentials_file) if self.mlflow_credentials_file else (
            self.mlflow_identity_path("writer"))

    def mlflow_identity_path(self, identity: str) -> Path:
        """The file of the MLflow user tasador-<identity> (admin, writer, reader) of the local stack."""
        return self.state_path / "secrets" / f"mlflow-{identity}"

    @property
    def pg_passfile_path(self) -> Path:
        return Path(self.pg_passfile) if self.pg_passfile else self.state_path / "secrets" / "pgpass"

    def pg_url(self, database: str) -> str:
        """The stack's server, as the application role, its password from the passfile."""
        passfile = urllib.parse.quote(str(self.pg_passfile_path.resolve()), safe="/")
        return f"postgresql://{self.pg_user}@{self.pg_host}:{self.pg_port}/{database}?passfile={passfile}"

    @property
    def raw_db(self) -> str:
        return self.raw_db_url or self.pg_url("raw_data")

    @property
    def clean_db(self) -> str:
        return self.clean_db_url or self.pg_url("clean_data")

    @property
    def mlflow_db(self) -> str:
        return self.mlflow_db_url or self.pg_url("mlflow")

    @property
    def data_api(self) -> str:
        return (self.data_api_url or f"http://{self.data_api_host}:{self.data_api_port}").rstrip("/")

    @property
    def mlflow_uri(self) -> str:
        return (self.mlflow_url or f"http://{self.mlflow_host}:{self.mlflow_port}").rstrip("/")

    @property
    def mlflow_artifacts_destination(self) -> str:
        return self.mlflow_artifacts or str(self.state_path / "mlflow-artifacts")

    @property
    def ray_dashboard(self) -> str:
        return self.ray_address or f"http://127.0.0.1:{self.ray_dashboard_port}"

    @property
    def serve(self) -> str:
        return (self.serve_url or f"http://{self.serve_host}:{self.serve_port}").rstrip("/")

    @property
    def prometheus(self) -> str:
        return (self.prometheus_url or f"http://127.0.0.1:{self.prometheus_port}").rstrip("/")

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).resolve()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_other_sources):
        return (init_settings,)

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, dotenv: str | Path = ".env") -> Settings:
        """Read ``.env`` (if present), then the environment (``env``, default ``os.environ``), which wins."""
        variables = os.environ if env is None else env
        from_file = DotEnvSettingsSource(cls, env_file=dotenv)
        names = {k.upper() for k in [*variables, *from_file.env_vars] if k.upper().startswith(PREFIX)}
        unknown = sorted(n for n in names - NOT_SETTINGS.keys() if n[len(PREFIX):].lower() not in cls.model_fields)
        if unknown:
            raise ValueError("; ".join(_unknown(name) for name in unknown))
        values = {k: v for k, v in from_file().items() if k in cls.model_fields}  # other variables: not ours
        values.update(_Variables(cls, variables)())
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ValueError("; ".join(
                f"{PREFIX}{'.'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}"
                for e in exc.errors())) from None

    def replace(self, **changes) -> Settings:
        return type(self)(**{**self.model_dump(), **changes})

    @property
    def dag_schedule(self) -> str | None:
        """The retraining DAG's schedule as Airflow takes it: None (triggered runs only) for "none" or an
        empty value (an empty variable is ignored in the environment, so "none" is the one that travels)."""
        value = self.airflow_schedule.strip()
        return None if value.lower() in ("", "none") else value

    def as_env(self) -> dict[str, str]:
        """Every setting as ``TASADOR_*`` variables (state_dir made absolute), for runtime_env."""
        env = {PREFIX + name.upper(): str(value) for name, value in self.model_dump().items()}
        env[PREFIX + "STATE_DIR"] = str(self.state_path)
        return env


class _Variables(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (``Settings.load(env=...)``)."""

    def __init__(self, settings_cls, variables: Mapping[str, str]):
        self._given = variables
        super().__init__(settings_cls)

    def _load_env_vars(self):
        return parse_env_vars(self._given, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _unknown(name: str) -> str:
    known = [PREFIX + field.upper() for field in Settings.model_fields]
    close = difflib.get_close_matches(name.upper(), known, n=1)
    return f"{name} is not a setting" + (f" (did you mean {close[0]}?)" if close else "") + (
        "; the settings are listed in .env.example")
