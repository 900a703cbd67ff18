"""What the benchmarks share, without a stack: a failed run's logs are kept before its stack goes."""

from __future__ import annotations

import os

from bench.common import keep_logs
from tasador.settings import Settings


def test_a_failed_runs_logs_are_copied_out_of_the_stack(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "kept"))
    (tmp_path / "kept").mkdir()
    settings = Settings(state_dir=str(tmp_path / "state"), ray_temp_dir=str(tmp_path / "ray"))
    (settings.state_path / "logs").mkdir(parents=True)
    (settings.state_path / "logs" / "ray-head.log").write_text("head")
    session = tmp_path / "ray" / "session_2026-12-02_16-49-28"
    (session / "logs").mkdir(parents=True)
    (session / "logs" / "gcs_server.out").write_text("gcs")
    os.symlink(session, tmp_path / "ray" / "session_latest")  # as Ray links its newest session
    kept = keep_logs(settings)
    assert kept.parent == tmp_path / "kept"
    assert (kept / "stack" / "ray-head.log").read_text() == "head"
    assert (kept / "ray" / "gcs_server.out").read_text() == "gcs"
