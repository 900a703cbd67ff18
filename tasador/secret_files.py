"""Files that hold a secret: created 0600 in one step (``os.open`` with the mode, then an atomic
rename), so there is no moment at which another user can read them."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def ensure(path: Path, make=lambda: secrets.token_hex(32)) -> str:
    """The secret in ``path``, created there first (0600, atomically) when it does not exist yet."""
    if not path.is_file():
        write(path, make())
    return path.read_text().strip()


def read(path: Path) -> str:
    """The secret in ``path``; a missing file is named in the error (its value never is)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"the secret file {path} does not exist (`tasador up` creates it)") from None


def write_if_changed(path: Path, value: str) -> None:
    """``write``, skipped when the file already holds ``value`` (readers never see it replaced)."""
    if not (path.is_file() and path.read_text() == value):
        write(path, value)


def write(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` readable by its owner only; a reader sees the old file or the new one."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
