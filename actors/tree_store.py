"""The receiver's side of a tree transfer: from the verified stream to folders.

Runs in the receiver's writer thread (:mod:`actors.file_writer`) once the
whole stream's hash is verified (the part file ``.NAME.TID.part``, fsynced
and read back, as for any file). :func:`unpack`:

1. reads the manifest (the stream's first bytes, at most
   :func:`~peercrypt.core.tree.manifest_limit` of them) and checks every
   rule of :mod:`peercrypt.core.tree` before anything is created;
2. builds the tree under a hidden directory of the inbox,
   ``.NAME.TID.tree/`` (mode 0700, created exclusively; a leftover of a
   crashed attempt of the same transfer is removed first), directories
   first, each file created exclusively and not through a symbolic link,
   copied from the part in bounded blocks while hashed, and compared with
   its own manifest hash: the first mismatch ends it all, and the hidden
   directory is removed;
3. makes it durable in one batch: no fsync per file but one ``syncfs`` of
   the inbox's filesystem once every file is written (where there is none,
   ``sync``), then sets the permissions (:func:`~peercrypt.core.tree.received_mode`);
4. moves each top-level entry into the inbox under the first free name
   (``renameat2(RENAME_NOREPLACE)``: never replacing anything; a clash
   renames the top folder, ``NAME.1``...), fsyncs the inbox and removes the
   hidden directory.

Nothing appears under a final name before every file of the tree is
verified and on disk. Several top-level entries (``send a b HOST PORT``)
appear one after another, each whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
import threading
from pathlib import Path

import blake3

from peercrypt.core.names import candidate_names
from peercrypt.core.tree import (
    Kind,
    Layout,
    TreeError,
    decode_manifest,
    manifest_limit,
    received_mode,
    tops,
)

COPY_BLOCK = 1 << 20  # bytes copied (and hashed) at a time
RENAME_NOREPLACE = 1

_libc: ctypes.CDLL | None = None
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def hidden_name(part: str) -> str:
    """``.NAME.TID.tree`` for the part ``.NAME.TID.part``."""
    return part.removesuffix(".part") + ".tree"


def unpack(
    inbox: Path,
    part_fd: int,
    part: str,
    manifest_bytes: int,
    size: int,
    max_files: int,
    file_mode: int,
    dir_mode: int,
    stop: threading.Event | None = None,
) -> list[str]:
    """Store the verified tree held in ``part_fd``; the names its top-level
    entries got in the inbox. Raises TreeError (the manifest, or a file's
    hash) or OSError (ECANCELED once ``stop`` is set: the node is stopping,
    checked before every entry and copy block); then nothing of the tree is
    left, and the part is untouched."""
    if manifest_bytes > manifest_limit(max_files) or manifest_bytes > size:
        raise TreeError("manifest larger than allowed")
    entries = decode_manifest(os.pread(part_fd, manifest_bytes, 0), max_files, size)
    layout = Layout.of(entries, manifest_bytes)
    inbox_fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY)
    hidden = hidden_name(part)
    try:
        _remove(inbox_fd, hidden)
        os.mkdir(hidden, 0o700, dir_fd=inbox_fd)
        root = -1
        try:
            root = os.open(hidden, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=inbox_fd)
            _build(root, part_fd, layout, file_mode, stop or threading.Event())
            _sync(root)
            for e in reversed(entries):  # deepest first, after their contents
                if e.kind is Kind.DIR:
                    os.chmod(e.text, received_mode(e, file_mode, dir_mode), dir_fd=root)
            stored = [_publish(root, inbox_fd, top) for top in tops(entries)]
            os.fsync(inbox_fd)
            return stored
        finally:
            if root >= 0:
                os.close(root)
            _remove(inbox_fd, hidden)  # empty once published; else what was built
    finally:
        os.close(inbox_fd)


def _check_stop(stop: threading.Event) -> None:
    if stop.is_set():
        raise OSError(errno.ECANCELED, "the node is stopping")


def _build(
    root: int, part_fd: int, layout: Layout, file_mode: int, stop: threading.Event
) -> None:
    """Create the entries under ``root`` (a directory only we can enter, so a
    file gets its final mode at once), the files' bytes read from the part
    in order, a block at a time."""
    reader = _Reader(part_fd, layout.manifest_bytes)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for entry in layout.entries:
        _check_stop(stop)
        if entry.kind is Kind.DIR:
            os.mkdir(entry.text, 0o700, dir_fd=root)
            continue
        fd = os.open(entry.text, flags, received_mode(entry, file_mode, 0), dir_fd=root)
        try:
            hasher = blake3.blake3()
            left = entry.size
            while left:
                _check_stop(stop)
                block = reader.read(min(COPY_BLOCK, left))
                hasher.update(block)
                while block:
                    block = block[os.write(fd, block) :]
                left -= min(COPY_BLOCK, left)
        finally:
            os.close(fd)
        if hasher.digest() != entry.digest:
            raise TreeError(f"{entry.text[:200]!r}: content does not match its hash")


class _Reader:
    """Sequential reads of a file from ``offset``, COPY_BLOCK at a time (one
    read serves many small files; at most two blocks are held)."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd, self.pos = fd, offset
        self.buf = b""
        self.at = 0

    def read(self, n: int) -> memoryview:
        """The next ``n`` bytes (n <= COPY_BLOCK); OSError if the file ends first."""
        if self.at + n > len(self.buf):
            rest = self.buf[self.at :]
            new = os.pread(self.fd, max(COPY_BLOCK, n - len(rest)), self.pos)
            self.pos += len(new)
            self.buf, self.at = rest + new, 0
            if n > len(self.buf):
                raise OSError(errno.EIO, "the part is shorter than its manifest")
        view = memoryview(self.buf)[self.at : self.at + n]
        self.at += n
        return view


def _sync(root: int) -> None:
    """Everything written so far on the inbox's filesystem, to disk, at once."""
    if _libc is not None and hasattr(_libc, "syncfs") and _libc.syncfs(root) == 0:
        return
    os.sync()


def _publish(root: int, inbox_fd: int, top: str) -> str:
    for candidate in candidate_names(top):
        try:
            _rename_noreplace(root, top, inbox_fd, candidate)
        except FileExistsError:
            continue
        return candidate
    raise TreeError(f"no free name in the inbox for {top!r}")


def _rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """rename without ever replacing ``dst`` (FileExistsError if it exists)."""
    if _libc is not None and hasattr(_libc, "renameat2"):
        rc = _libc.renameat2(src_dir, src.encode(), dst_dir, dst.encode(), RENAME_NOREPLACE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), dst)
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), dst)
    # No renameat2 here: reserve the name exclusively, then move onto it (a
    # directory replaces the empty one we made; a file is linked, never replacing).
    if stat.S_ISDIR(os.stat(src, dir_fd=src_dir, follow_symlinks=False).st_mode):
        os.mkdir(dst, 0o700, dir_fd=dst_dir)
        os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
    else:
        os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
        os.unlink(src, dir_fd=src_dir)


def _remove(dir_fd: int, name: str) -> None:
    """Remove ``name`` (a hidden tree of ours) in ``dir_fd``, never following links."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def sweep_trees(inbox: Path) -> list[str]:
    """Remove hidden trees a crash left behind (``.NAME.TID.tree`` whose part
    is gone: its transfer can no longer resume); the names removed. One with
    a part stays: a resend of it removes and rebuilds it."""
    gone = []
    inbox_fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(inbox_fd) as entries:
            names = [
                e.name
                for e in entries
                if e.name.startswith(".")
                and e.name.endswith(".tree")
                and e.is_dir(follow_symlinks=False)
            ]
        for name in names:
            part = name.removesuffix(".tree") + ".part"
            if not os.path.lexists(inbox / part):
                _remove(inbox_fd, name)
                gone.append(name)
    finally:
        os.close(inbox_fd)
    return gone
