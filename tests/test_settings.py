"""The one settings object: environment, .env, derived URLs, clear errors."""

from __future__ import annotations

import pytest

from tasador.settings import Settings
from tests.conftest import REPO


def test_environment_wins_over_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("TASADOR_PG_PORT=6000\nTASADOR_GROUP=4\n# comment\n")
    s = Settings.load(env={"TASADOR_PG_PORT": "7000"}, dotenv=dotenv)
    assert s.pg_port == 7000 and s.group == 4
    assert s.raw_db.startswith("postgresql://tasador@127.0.0.1:7000/raw_data?passfile=/")


def test_explicit_url_overrides_the_derived_one():
    s = Settings.load(env={"TASADOR_CLEAN_DB_URL": "postgresql://u@db.example:5432/clean"}, dotenv="/none")
    assert s.clean_db == "postgresql://u@db.example:5432/clean"
    assert s.raw_db.endswith(f":5433/raw_data?passfile={s.state_path}/secrets/pgpass")


def test_bad_value_names_the_variable():
    with pytest.raises(ValueError, match="TASADOR_PG_PORT"):
        Settings.load(env={"TASADOR_PG_PORT": "five"}, dotenv="/none")


def test_env_round_trip():
    s = Settings(pg_port=6543, data_api_scale=0.5, pg_local=False)
    back = Settings.load(env=s.as_env(), dotenv="/none")
    assert back.replace(state_dir=s.state_dir, mlflow_credentials_file="") == s  # both made absolute
    assert back.state_path == s.state_path and back.mlflow_credentials_path == s.mlflow_credentials_path


def test_a_schedule_of_none_travels_through_the_environment_as_triggered_runs_only():
    """An empty variable is ignored (the default, hourly, would come back): "none" is how a stack's
    DAG gets no schedule, and it survives the trip through a child process's environment."""
    s = Settings.load(env={"TASADOR_AIRFLOW_SCHEDULE": "none"}, dotenv="/none")
    assert s.dag_schedule is None
    assert Settings.load(env=s.as_env(), dotenv="/none").dag_schedule is None
    assert Settings.load(env={"TASADOR_AIRFLOW_SCHEDULE": ""}, dotenv="/none").dag_schedule == "@hourly"
    assert Settings.load(env={"TASADOR_AIRFLOW_SCHEDULE": "*/5 * * * *"}, dotenv="/none").dag_schedule == "*/5 * * * *"


def test_env_example_lists_every_setting():
    listed = {line.split("=", 1)[0].strip().lstrip("# ") for line in (REPO / ".env.example").read_text().splitlines()
              if "TASADOR_" in line and "=" in line}
    expected = {"TASADOR_" + name.upper() for name in Settings.model_fields}
    assert expected <= listed, f"missing from .env.example: {sorted(expected - listed)}"


def test_this_process_mlflow_identity_never_becomes_the_settings_of_another_stack(monkeypatch, tmp_path):
    """registry.mlflow_client points this process at one stack's identity file; a stack started
    afterwards (tests and benchmarks run several) reads its settings from the environment, and must
    still derive its own identity from its own state dir."""
    from tasador import registry

    for key in ("MLFLOW_TRACKING_AUTH", "TASADOR_MLFLOW_AUTH_FILE"):  # put back after use_identity's change
        monkeypatch.setenv(key, "")
    monkeypatch.delenv("TASADOR_MLFLOW_CREDENTIALS_FILE", raising=False)
    registry.use_identity(tmp_path / "one" / "secrets" / "mlflow-writer")
    other = Settings.load(dotenv="/none").replace(state_dir=str(tmp_path / "two"))
    assert other.mlflow_credentials_path == tmp_path / "two" / "secrets" / "mlflow-writer"


@pytest.mark.parametrize("value", ["ture", "2", "yes please"])
def test_a_boolean_that_is_no_boolean_is_an_error_naming_it(value):
    with pytest.raises(ValueError, match=f"TASADOR_PG_LOCAL='{value}'"):
        Settings.load(env={"TASADOR_PG_LOCAL": value}, dotenv="/none")
    assert Settings.load(env={"TASADOR_PG_LOCAL": "false"}, dotenv="/none").pg_local is False


def test_a_variable_that_is_no_setting_is_an_error_naming_the_setting_it_resembles(tmp_path):
    with pytest.raises(ValueError, match=r"TASADOR_PG_PROT is not a setting \(did you mean TASADOR_PG_PORT\?\)"):
        Settings.load(env={"TASADOR_PG_PROT": "7000"}, dotenv="/none")
    dotenv = tmp_path / ".env"
    dotenv.write_text("TASADOR_GRUOP=4\n")
    with pytest.raises(ValueError, match="TASADOR_GRUOP is not a setting"):
        Settings.load(env={}, dotenv=dotenv)
    assert Settings.load(env={"TASADOR_AIRFLOW": "0", "TASADOR_MLFLOW_AUTH_FILE": "/x"}, dotenv="/none").group == 9


def test_dotenv_is_parsed_like_a_dotenv_file(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text('TASADOR_GROUP=4  # the course group\nexport TASADOR_DAY="Monday"\nAWS_REGION=eu-west-1\n'
                      "TASADOR_DATA_API_URL='http://api.example:80'\n")
    s = Settings.load(env={}, dotenv=dotenv)
    assert (s.group, s.day, s.data_api) == (4, "Monday", "http://api.example:80")


def test_tracking_server_blocks_of_two_threads_never_see_each_others_server():
    """MLflow's tracking URI is process-wide: a thread inside ``tracking_server`` keeps its server
    while another thread's block (another server) waits; each URI is restored after."""
    import threading

    import mlflow

    from tasador.registry import tracking_server

    before = mlflow.get_tracking_uri()
    seen: dict[str, list[str]] = {"a": [], "b": []}
    inside = {"a": threading.Event(), "b": threading.Event()}
    a_has_read = threading.Event()

    def block(name: str, port: int) -> None:
        with tracking_server(Settings().replace(mlflow_port=port)):
            inside[name].set()
            if name == "a":  # b gets in now only if nothing keeps it out
                inside["b"].wait(1)
                seen["a"].append(mlflow.get_tracking_uri())
                a_has_read.set()
            else:
                a_has_read.wait(5)
                seen["b"].append(mlflow.get_tracking_uri())

    a = threading.Thread(target=block, args=("a", 5101))
    a.start()
    assert inside["a"].wait(5)
    b = threading.Thread(target=block, args=("b", 5102))
    b.start()
    a.join(10)
    b.join(10)
    assert seen == {"a": ["http://127.0.0.1:5101"], "b": ["http://127.0.0.1:5102"]}
    assert mlflow.get_tracking_uri() == before


def test_a_threads_writer_identity_is_that_threads_alone(monkeypatch, tmp_path):
    """The Dash app's rollback acts as the MLflow writer on its request's thread while the app's other
    threads keep answering as the reader, whatever either calls meanwhile (no process-wide switch)."""
    import threading

    from tasador import registry
    from tasador.mlflow_auth import FileCredentials

    reader, writer = tmp_path / "reader", tmp_path / "writer"
    reader.write_text("tasador-reader:r")
    writer.write_text("tasador-writer:w")
    monkeypatch.setenv(registry.IDENTITY_FILE_ENV, str(reader))
    in_block, checked, seen = threading.Event(), threading.Event(), {}

    def rollback_thread():
        with registry.thread_identity(writer):
            registry.use_identity(writer)  # what mlflow_client(writer settings) does inside the block
            in_block.set()
            checked.wait(10)
            seen["inside"] = FileCredentials().get_auth().username
        seen["after"] = FileCredentials().get_auth().username

    worker = threading.Thread(target=rollback_thread)
    worker.start()
    assert in_block.wait(10)
    registry.use_identity(reader)  # another thread's mlflow_client(reader settings) meanwhile
    seen["other"] = FileCredentials().get_auth().username
    checked.set()
    worker.join(10)
    assert seen == {"inside": "tasador-writer", "other": "tasador-reader", "after": "tasador-reader"}
