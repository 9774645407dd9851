"""The inbox rules every receiving actor follows (unicast and multicast).

- An incoming file is checked before anything is created: chunk size within
  bounds, a name that sanitises to a single safe component, room on disk.
- It is written as a hidden ``.NAME.ID[.KIND].part`` file of its final size
  (sparse), mode 0600 while incomplete.
- Once its whole-file hash is verified it is made readable (0644), hard-linked
  under the first free name (``NAME``, ``NAME.1``...: ``link()`` fails
  instead of replacing, so nothing is ever overwritten, not even by a
  concurrent transfer of the same name) and the directory is fsynced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from peercrypt.core.names import UnsafeName, candidate_names, sanitise
from peercrypt.settings import MIN_CHUNK, NodeSettings


class Refusal(Exception):
    """The incoming file is refused; ``code`` goes on the wire."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def check_incoming(settings: NodeSettings, name: str, chunk_size: int, size: int) -> str:
    """The sanitised name, or raise :class:`Refusal`."""
    if not MIN_CHUNK <= chunk_size <= settings.max_chunk:
        raise Refusal("bad-offer", f"chunk size must be {MIN_CHUNK}..{settings.max_chunk} bytes")
    try:
        safe = sanitise(name)
    except UnsafeName as exc:
        raise Refusal("bad-name", str(exc)) from None
    free = shutil.disk_usage(settings.inbox).free
    if size > free:
        raise Refusal("no-space", f"not enough space in the inbox ({free} bytes free)")
    return safe


def create_part(
    inbox: Path, name: str, ident: str, size: int, *, kind: str = "", replace: bool = False
) -> tuple[Path, int]:
    """Create ``.NAME.IDENT[.KIND].part`` of ``size`` bytes; (path, fd).
    ``replace``: a file of that name left by a killed process is removed first.
    Raises :class:`Refusal` ("io")."""
    part = inbox / f".{name}.{ident}{'.' + kind if kind else ''}.part"
    try:
        if replace:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise Refusal("io", f"cannot create file in inbox: {exc.strerror}") from None
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        part.unlink()
        raise Refusal("io", f"cannot create file in inbox: {exc.strerror}") from None
    return part, fd


def publish(part: Path, fd: int, inbox: Path, name: str) -> str | None:
    """Give a verified part file its final name (never overwriting); the name
    used, or None if every candidate is taken. The part file stays; the
    caller removes it."""
    os.fchmod(fd, 0o644)
    for candidate in candidate_names(name):
        try:
            os.link(part, inbox / candidate)
        except FileExistsError:
            continue
        fsync_dir(inbox)
        return candidate
    return None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
