"""Secret files are created 0600 in one step: never readable by others, not even for a moment."""

from __future__ import annotations

import stat

from tasador import secret_files


def test_a_secret_file_is_created_owner_only_and_kept(tmp_path):
    path = tmp_path / "state" / "token"
    first = secret_files.ensure(path)
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_files.ensure(path) == first  # kept: not made again
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temporary file left behind


def test_rewriting_keeps_the_mode(tmp_path):
    path = tmp_path / "secret"
    secret_files.write(path, "one")
    secret_files.write(path, "two")
    assert path.read_text() == "two" and stat.S_IMODE(path.stat().st_mode) == 0o600
