"""The receiver's side of a tree transfer: from the stream to folders.

:class:`TreeBuilder` runs in the receiver's writer thread
(:mod:`actors.file_writer`), fed the stream in order **as it arrives** (the
chunks are written to the part file ``.NAME.TID.part`` as for any file, for
resume; a chunk that came early is fed once the gap before it is filled,
read back from the part), so the tree is built while the rest of the stream
is still on the way. :func:`unpack` feeds it from a verified part instead
(after a build that failed on I/O, e.g. a full disk). Either way it:

1. reads the manifest (the stream's first bytes, at most
   :func:`~peercrypt.core.tree.manifest_limit` of them) and checks every
   rule of :mod:`peercrypt.core.tree` before anything is created;
2. builds the tree under a hidden directory of the inbox,
   ``.NAME.TID.tree/`` (mode 0700, created exclusively; a leftover of a
   crashed attempt of the same transfer is removed first), directories
   first, each file created exclusively and not through a symbolic link,
   written as its bytes come while hashed, and compared with its own
   manifest hash when its last byte is in: the first mismatch ends it all,
   and the hidden directory is removed;

and only once the whole stream's hash is verified (:meth:`TreeBuilder.publish`):

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
import itertools
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import blake3

from peercrypt.core.delivered import (
    MAX_TREE_ENTRIES,
    TREE_STAMP_SECONDS,
    StampRow,
    TreeStamp,
    tree_stamp,
)
from peercrypt.core.names import candidate_names
from peercrypt.core.tree import (
    MAX_DEPTH,
    Kind,
    Layout,
    TreeEntry,
    TreeError,
    decode_manifest,
    manifest_limit,
    received_mode,
    tops,
)

log = logging.getLogger("peercrypt.writer")

COPY_BLOCK = 1 << 20  # bytes copied (and hashed) at a time
RENAME_NOREPLACE = 1

_libc: ctypes.CDLL | None = None
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def hidden_name(part: str) -> str:
    """``.NAME.TID.tree`` for the part ``.NAME.TID.part``."""
    return part.removesuffix(".part") + ".tree"


def unpack(builder: TreeBuilder, part_fd: int) -> list[str]:
    """Feed ``builder`` (fresh) the verified stream held in ``part_fd`` and
    store its tree; the names its top-level entries got in the inbox.
    Raises TreeError (the manifest, or a file's hash) or OSError (ECANCELED
    once its ``stop`` is set: the node is stopping, checked before every
    entry and copy block); then nothing of the tree is left, and the part
    is untouched."""
    size = builder.size
    try:
        for offset in range(0, size, COPY_BLOCK):
            block = os.pread(part_fd, min(COPY_BLOCK, size - offset), offset)
            if not block:
                raise OSError(errno.EIO, "the part is shorter than its manifest")
            builder.feed(block)
            if builder.error is not None:
                raise builder.error
        return builder.publish()
    finally:
        builder.discard()


class TreeBuilder:
    """Builds a tree under its hidden directory from the stream's bytes, fed
    in order (:meth:`feed`) - while the stream arrives, or from the verified
    part (:func:`unpack`). The manifest (its first ``manifest_bytes``, at
    most :func:`~peercrypt.core.tree.manifest_limit` of them) is checked
    whole before anything is created; then each entry is created as its
    bytes come: directories, each file exclusively and not through a
    symbolic link, its bytes hashed as written and compared with its own
    manifest hash when its last byte is in. Nothing is under a final name
    until :meth:`publish` (once the whole stream's hash is verified): one
    ``syncfs``, the folders' modes, each top-level entry renamed into the
    inbox. The first broken rule, wrong hash or I/O error ends the build
    (:attr:`error`, a TreeError or OSError; ECANCELED once ``stop`` is set)
    and removes what was built; later bytes are ignored. Memory: the
    manifest's entries and one file's hasher, whatever the sizes."""

    def __init__(
        self,
        inbox: Path,
        part: str,
        manifest_bytes: int,
        size: int,
        max_files: int,
        file_mode: int,
        dir_mode: int,
        stop: threading.Event | None = None,
    ) -> None:
        self.inbox, self.hidden = inbox, hidden_name(part)
        self.manifest_bytes, self.size, self.max_files = manifest_bytes, size, max_files
        self.file_mode, self.dir_mode = file_mode, dir_mode
        self.stop = stop or threading.Event()
        self.error: TreeError | OSError | None = None
        self.fed = 0  # stream bytes fed
        self._manifest = bytearray()
        self._layout: Layout | None = None
        self._next = 0  # the next entry of the layout to create
        self._inbox_fd = self._root = self._fd = -1
        self._dirs: dict[tuple[str, ...], int] = {}  # open folders, by path (one branch)
        self._hasher: Any = None
        self._left = 0  # bytes of the open file still to come
        self._entry: TreeEntry | None = None
        if manifest_bytes > manifest_limit(max_files) or not 0 < manifest_bytes <= size:
            self.error = TreeError("manifest larger than allowed")

    @property
    def complete(self) -> bool:
        """Every entry is built and checked (and no error)."""
        layout = self._layout
        return (
            self.error is None
            and layout is not None
            and self._next == len(layout.entries)
            and self._fd < 0
        )

    def fail(self, exc: TreeError | OSError) -> None:
        """End the build with ``exc`` (an error reading the stream)."""
        if self.error is None:
            self.error = exc
            self.discard()

    def feed(self, data: bytes | memoryview) -> None:
        """The next bytes of the stream (after an error: ignored)."""
        self.fed += len(data)
        if self.error is not None:
            return
        try:
            self._feed(memoryview(data))
        except (TreeError, OSError) as exc:
            self.error = exc
            self.discard()

    def _feed(self, view: memoryview) -> None:
        if self._layout is None:
            need = self.manifest_bytes - len(self._manifest)
            self._manifest += view[:need]
            view = view[need:]
            if len(self._manifest) < self.manifest_bytes:
                return
            entries = decode_manifest(bytes(self._manifest), self.max_files, self.size)
            self._manifest = bytearray()
            self._layout = Layout.of(entries, self.manifest_bytes)
            self._start()
            self._advance()
        while view and self._fd >= 0:
            _check_stop(self.stop)
            take = min(len(view), self._left)
            block = view[:take]
            self._hasher.update(block)
            while block:
                block = block[os.write(self._fd, block) :]
            self._left -= take
            view = view[take:]
            if not self._left:
                self._close_file()
                self._advance()
        if view:
            raise TreeError("bytes after the last file")

    def _start(self) -> None:
        """The hidden directory, fresh (a leftover of a crashed attempt of the
        same transfer is removed first)."""
        self._inbox_fd = os.open(self.inbox, os.O_RDONLY | os.O_DIRECTORY)
        _remove(self._inbox_fd, self.hidden)
        os.mkdir(self.hidden, 0o700, dir_fd=self._inbox_fd)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        self._root = os.open(self.hidden, flags, dir_fd=self._inbox_fd)

    def _parent(self, path: tuple[str, ...]) -> int:
        """An open descriptor of the folder ``path[:-1]`` (created by an entry
        before: the manifest lists every parent first). Entries come in path
        order, so only the current branch is kept open."""
        parent = path[:-1]
        if not parent:
            return self._root
        fd = self._dirs.get(parent)
        if fd is None:
            for kept in [p for p in self._dirs if p != parent[: len(p)]]:
                os.close(self._dirs.pop(kept))
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            fd = self._dirs[parent] = os.open(path[-2], flags, dir_fd=self._parent(parent))
        return fd

    def _advance(self) -> None:
        """Create entries up to the next file with bytes to come (open it)."""
        layout = self._layout
        assert layout is not None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        while self._next < len(layout.entries):
            _check_stop(self.stop)
            entry = layout.entries[self._next]
            self._next += 1
            parent = self._parent(entry.path)
            if entry.kind is Kind.DIR:
                os.mkdir(entry.path[-1], 0o700, dir_fd=parent)
                continue
            mode = received_mode(entry, self.file_mode, 0)
            self._fd = os.open(entry.path[-1], flags, mode, dir_fd=parent)
            self._entry, self._left = entry, entry.size
            self._hasher = blake3.blake3()
            if entry.size:
                return
            self._close_file()

    def _close_file(self) -> None:
        fd, self._fd = self._fd, -1
        os.close(fd)
        entry = self._entry
        assert entry is not None
        if self._hasher.digest() != entry.digest:
            raise TreeError(f"{entry.text[:200]!r}: content does not match its hash")

    def publish(self) -> list[str]:
        """Make the complete tree durable and move it into the inbox; the
        names its top-level entries got. Raises the build's error, or
        TreeError if the stream ended early."""
        if self.error is not None:
            raise self.error
        layout = self._layout
        if not self.complete or layout is None:
            raise TreeError("the stream ended before the tree was complete")
        try:
            for fd in self._dirs.values():
                os.close(fd)
            self._dirs.clear()
            _sync(self._root)
            for e in reversed(layout.entries):  # deepest first, after their contents
                if e.kind is Kind.DIR:
                    mode = received_mode(e, self.file_mode, self.dir_mode)
                    os.chmod(e.text, mode, dir_fd=self._root)
            moved: list[tuple[str, str]] = []  # (top, its name in the inbox)
            try:
                for top in tops(layout.entries):
                    moved.append((top, _publish(self._root, self._inbox_fd, top)))
            except (OSError, TreeError):
                # All or nothing: the tops moved already go back (and are
                # removed with the hidden directory); the part stays, and
                # a send again stores the whole tree, not a second copy of
                # what was left in the inbox.
                for top, name in reversed(moved):
                    try:  # (a plain rename: the hidden root is this tree's alone,
                        # and ``top`` left it; it needs no new inode on a full disk)
                        os.rename(name, top, src_dir_fd=self._inbox_fd, dst_dir_fd=self._root)
                    except OSError as exc:
                        log.warning("cannot take %s back out of the inbox: %s", name, exc.strerror)
                raise
            try:
                os.fsync(self._inbox_fd)
            except OSError as exc:  # (stored: the names are there; as a file's)
                log.warning("cannot sync the inbox after storing a folder: %s", exc.strerror)
            return [name for _, name in moved]
        finally:
            self.discard()  # the hidden directory: empty once published

    def discard(self) -> None:
        """Close everything and remove the hidden directory with what is left
        in it (nothing once published). Idempotent."""
        for fd in [self._fd, *self._dirs.values(), self._root]:
            if fd >= 0:
                os.close(fd)
        self._fd = self._root = -1
        self._dirs.clear()
        if self._inbox_fd >= 0:
            try:
                _remove(self._inbox_fd, self.hidden)
            finally:
                os.close(self._inbox_fd)
                self._inbox_fd = -1


def _check_stop(stop: threading.Event) -> None:
    if stop.is_set():
        raise OSError(errno.ECANCELED, "the node is stopping")


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
    # (the inbox's state, not the sender's tree: an OSError, so its part is kept)
    raise FileExistsError(errno.EEXIST, f"no free name in the inbox for {top!r}")


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


def stamp_tree(
    inbox: Path, tops: Sequence[str], seconds: float = TREE_STAMP_SECONDS
) -> TreeStamp | None:
    """The stamp of the folder stored in ``inbox`` under ``tops``
    (:func:`~peercrypt.core.delivered.tree_stamp`): None if one of them is
    gone, it cannot be read, it is more than the table remembers, or walking
    it takes longer than ``seconds`` (a slow disk: the receiver's loop waits
    on it). Lists and stats at most one entry past that bound in all, never
    following a link."""
    rows = _stamp_rows(inbox, tops, MAX_TREE_ENTRIES, time.monotonic() + seconds)
    try:
        return tree_stamp(tops, rows)
    except (OSError, ValueError, _Unstamped):
        return None
    finally:
        rows.close()


class _Unstamped(Exception):
    """The walk stopped: too many names, too deep, too slow, or a folder
    replaced while it was read."""


def _stamp_rows(
    inbox: Path, tops: Sequence[str], limit: int, deadline: float
) -> Generator[StampRow, None, None]:
    """Every entry under ``tops`` as :data:`~peercrypt.core.delivered.StampRow`,
    in path order (each folder's names sorted, its entries right after it),
    from ``lstat``; folders opened by descriptor, without following links,
    and checked to be the very ones stat'ed. More than ``limit`` entries
    listed in all, a folder deeper than a tree may be, or the clock past
    ``deadline`` raises."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    listed = len(tops)  # entries named so far: the walk reads no more than limit + 1

    def entries(dir_fd: int, name: str, path: tuple[str, ...]) -> Iterator[StampRow]:
        nonlocal listed
        if time.monotonic() > deadline:
            raise _Unstamped("too slow")
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        yield path, st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns
        if not stat.S_ISDIR(st.st_mode):
            return
        if len(path) > MAX_DEPTH:
            raise _Unstamped(f"deeper than {MAX_DEPTH}")
        fd = os.open(name, flags | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                raise _Unstamped("replaced while read")
            with os.scandir(fd) as listing:
                names = [e.name for e in itertools.islice(listing, max(0, limit - listed + 1))]
            listed += len(names)
            if listed > limit:
                raise _Unstamped(f"more than {limit} entries")
            for child in sorted(names):
                yield from entries(fd, child, (*path, child))
        finally:
            os.close(fd)

    inbox_fd = os.open(inbox, flags)  # the inbox itself may be a link: it is configured
    try:
        for top in tops:
            yield from entries(inbox_fd, top, (top,))
    finally:
        os.close(inbox_fd)
