"""``registry.move_production_alias``: the alias moves, then serving is asked over real HTTP to follow at
once; whatever serving does (no token, down, refusing, answering), the move stands and the answer is
returned, never raised. No stack: serving is a small local HTTP server, and the registry a recording
stand-in for MLflow's client (the real registry and Serve are in tests/test_operator.py and test_serve.py)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import ThreadingHTTPServer

import pytest

from bench.json_http import JsonHandler
from tasador import registry
from tasador.settings import Settings


class RecordingClient:
    """MLflow's client as the function uses it: one call, recorded."""

    def __init__(self):
        self.moves = []

    def set_registered_model_alias(self, name, alias, version):
        self.moves.append((name, alias, version))


@pytest.fixture
def serving():
    """A local server answering ``POST /admin/reload`` with ``answer`` (status, body), recording the
    Authorization header of each request."""
    seen, answer = [], {"status": 200, "body": {"status": "swapped", "version": "7", "previous": "6"}}

    class Handler(JsonHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_json(answer["status"], json.dumps(answer["body"]).encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "seen": seen, "answer": answer}
    server.shutdown()
    server.server_close()


def _settings(tmp_path, url: str, token: str | None = "s3cret-token") -> Settings:
    path = tmp_path / "serve-admin-token"
    if token is not None:
        path.write_text(token + "\n")
    return Settings(state_dir=str(tmp_path / "state"), serve_url=url, serve_admin_token_file=str(path))


def test_the_alias_moves_and_serving_answers_with_the_version(tmp_path, serving):
    client = RecordingClient()
    answered = registry.move_production_alias(_settings(tmp_path, serving["url"]), client, "7")
    assert client.moves == [(Settings().model_name, registry.PRODUCTION, "7")]
    assert answered == {"status": "swapped", "version": "7", "previous": "6", "error": None}
    assert serving["seen"] == [("/admin/reload", "Bearer s3cret-token")]


def test_a_refusal_is_returned_with_its_status_and_the_move_stands(tmp_path, serving):
    serving["answer"].update(status=401, body={"detail": "a valid admin token is required"})
    client = RecordingClient()
    answered = registry.move_production_alias(_settings(tmp_path, serving["url"]), client, "7")
    assert len(client.moves) == 1
    assert answered == {"status": "refused", "http_status": 401, "error": "a valid admin token is required"}


def test_without_a_token_serving_is_not_asked(tmp_path, serving):
    client = RecordingClient()
    answered = registry.move_production_alias(_settings(tmp_path, serving["url"], token=None), client, "7")
    assert len(client.moves) == 1 and answered["status"] == "not_asked" and serving["seen"] == []


def test_serving_down_is_reported_not_raised(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = RecordingClient()
    answered = registry.move_production_alias(_settings(tmp_path, f"http://127.0.0.1:{port}"), client, "7")
    assert len(client.moves) == 1
    assert answered["status"] == "not_answered" and "ConnectionError" in answered["error"]
    assert "s3cret-token" not in json.dumps(answered)  # the token never appears in what is returned
