"""A small filesystem that fills, mounted for the duration of a ``with``
block (root only), for tests of a disk that fills: a tmpfs of a given size,
or a real ext4 (a sparse image file beside the mount point, ``mkfs.ext4``,
a loop mount) where the writer allocates blocks ahead (``fallocate``), which
it skips on tmpfs.

    with small_tmpfs(tmp_path / "disk", "24m") as mount:
        ...                      # mount is a directory on a 24 MiB tmpfs
    with small_ext4(tmp_path / "disk", 24 * 2**20) as mount:
        ...                      # on a 24 MiB ext4 (its image: disk.img)

A disk that stops answering (:func:`stalling_ext4`): an ext4 whose image
lives on a second, outer ext4; freezing the outer one (``fsfreeze``) leaves
every write of the inner disk's loop device waiting in the kernel, so an
fsync (or a writeback) on it does not return until the outer one is thawed,
as on a disk that hangs. The inner filesystem itself is not frozen: writes
to its page cache still go through.

    with stalling_ext4(tmp_path / "disk", 24 * 2**20) as disk:
        ...                      # disk.path: the inner ext4's directory
        disk.settle()            # (optional) what was written so far lands
        disk.stall()             # fsync there blocks from now on
        disk.resume()            # (always done when the block ends)

A stall also hangs what the kernel was writing back when it began, and
whatever waits for it: a folder's block being written back (a ``sync``
anywhere on the machine starts that) holds every lookup in that folder, the
creation of a file included. A test whose node must still create files
while the disk hangs settles it first.

Raises :class:`DiskUnavailable` (with the reason) where it cannot mount; the
unmount is lazy and bounded, so a busy mount never hangs a test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DiskUnavailable", "StallingDisk", "small_ext4", "small_tmpfs", "stalling_ext4"]

MOUNT_TIMEOUT = 10.0


class DiskUnavailable(RuntimeError):
    """No such filesystem could be mounted here (not root, no mount command,
    no ``mkfs.ext4``, no loop device, ...)."""


@contextlib.contextmanager
def small_tmpfs(mount: Path, size: str, inodes: int = 0) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``mount -o size=``, e.g. "512k", "24m") on
    ``mount`` (created, mode 0700) and unmount it afterwards. ``inodes``: at
    most that many names (files, folders, and each hard link: a full
    folder, where a new name finds no room), else the default."""
    mount.mkdir(parents=True, exist_ok=True)
    limit = f",nr_inodes={inodes}" if inodes else ""
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700{limit}", "tmpfs", str(mount))
    try:
        yield mount
    finally:
        _unmount(mount)


@contextlib.contextmanager
def small_ext4(mount: Path, size: int) -> Iterator[Path]:
    """Make an ext4 of ``size`` bytes in a sparse image ``<mount>.img`` (no
    blocks kept for root: the nodes run as root here, and a full disk must be
    full for them too), loop-mount it on ``mount`` (created, mode 0700), and
    afterwards unmount it and delete the image."""
    if os.geteuid() != 0:
        raise DiskUnavailable("mounting an ext4 image needs root")
    if shutil.which("mkfs.ext4") is None:
        raise DiskUnavailable("no mkfs.ext4")
    if not os.path.exists("/dev/loop-control") and not os.path.exists("/dev/loop0"):
        raise DiskUnavailable("no loop device")
    image = mount.with_name(mount.name + ".img")
    mount.mkdir(parents=True, exist_ok=True)
    try:
        with open(image, "wb") as f:
            f.truncate(size)
        _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
        _run("mount", "-t", "ext4", "-o", "loop", str(image), str(mount))
        try:
            mount.chmod(0o700)
            shutil.rmtree(mount / "lost+found", ignore_errors=True)  # an empty inbox
            yield mount
        finally:
            _unmount(mount)
    finally:
        image.unlink(missing_ok=True)  # a lazy unmount's loop device keeps it until released


class StallingDisk:
    """The inner disk of :func:`stalling_ext4` and its switch."""

    def __init__(self, path: Path, outer: Path) -> None:
        self.path = path
        self._outer = outer
        self.stalled = False

    def settle(self) -> None:
        """What was written to the disk so far reaches it (``sync -f``): no
        writeback of it can be under way when the disk then stalls."""
        _run("sync", "-f", str(self.path))

    def stall(self) -> None:
        """From now on the disk's writes (and so fsync) do not return."""
        _run("fsfreeze", "--freeze", str(self._outer))
        self.stalled = True

    def resume(self) -> None:
        """The disk answers again: what waited goes through."""
        if self.stalled:
            _run("fsfreeze", "--unfreeze", str(self._outer))
            self.stalled = False


@contextlib.contextmanager
def stalling_ext4(mount: Path, size: int, journal: bool = True) -> Iterator[StallingDisk]:
    """An ext4 of ``size`` bytes on ``mount`` that :meth:`StallingDisk.stall`
    makes hang (see the module docs); resumed, unmounted and deleted when
    the block ends, whatever happened in it. Without ``journal`` a stall
    hangs only what must reach the disk (fsync, a writeback the kernel waits
    for), not every change of metadata (a journal's commit in progress holds
    up the next change of any file)."""
    if shutil.which("fsfreeze") is None:
        raise DiskUnavailable("no fsfreeze")
    outer_mount = mount.with_name(mount.name + "-outer")
    with small_ext4(outer_mount, size + 16 * 2**20) as outer:
        image = outer / "inner.img"
        with open(image, "wb") as f:
            f.truncate(size)
        _run(
            "mkfs.ext4",
            "-q",
            "-F",
            "-m",
            "0",
            *([] if journal else ["-O", "^has_journal"]),
            str(image),
        )
        mount.mkdir(parents=True, exist_ok=True)
        # No periodic journal commit: what was written before a stall is
        # committed by the next fsync (which then hangs), not behind its back.
        options = "loop,commit=600" if journal else "loop"
        _run("mount", "-t", "ext4", "-o", options, str(image), str(mount))
        disk = StallingDisk(mount, outer)
        try:
            mount.chmod(0o700)
            shutil.rmtree(mount / "lost+found", ignore_errors=True)
            yield disk
        finally:
            with contextlib.suppress(DiskUnavailable):
                disk.resume()
            _unmount(mount)


def _run(*argv: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=MOUNT_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DiskUnavailable(f"{argv[0]}: {exc}") from None
    if done.returncode != 0:
        reason = done.stderr.strip() or f"exited with {done.returncode}"
        raise DiskUnavailable(f"{argv[0]}: {reason}")


def _unmount(mount: Path) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=MOUNT_TIMEOUT)
