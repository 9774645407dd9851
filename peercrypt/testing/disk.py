"""A small filesystem that fills: a tmpfs of a given size, mounted for the
duration of a ``with`` block (root only), for tests of a disk that fills.

    with small_tmpfs(tmp_path / "disk", "24m") as mount:
        ...                      # mount is a directory on a 24 MiB tmpfs

Raises :class:`DiskUnavailable` (with the reason) where it cannot mount; the
unmount is lazy and bounded, so a busy mount never hangs a test.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DiskUnavailable", "small_tmpfs"]

MOUNT_TIMEOUT = 10.0


class DiskUnavailable(RuntimeError):
    """No tmpfs could be mounted here (not root, no mount command, ...)."""


@contextlib.contextmanager
def small_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``mount -o size=``, e.g. "512k", "24m") on
    ``mount`` (created, mode 0700) and unmount it afterwards."""
    mount.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
            timeout=MOUNT_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise DiskUnavailable(str(exc)) from None
    if done.returncode != 0:
        raise DiskUnavailable(done.stderr.strip() or f"mount exited with {done.returncode}")
    try:
        yield mount
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=MOUNT_TIMEOUT)
