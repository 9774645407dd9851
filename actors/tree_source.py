"""The sender's side of a tree transfer: walk, hash, and read as one stream.

:func:`build_tree` walks the roots given (each a directory or a regular
file; a root named through a symbolic link is taken as the user named it),
never following a symbolic link inside a tree: links and other special
files are skipped and counted (:attr:`TreeSource.skipped`). Every regular
file is hashed (BLAKE3) for the manifest (:mod:`peercrypt.core.tree`), one
read before the send, so the receiver can verify each file by its own hash.

:class:`TreeSource` is then read like one file (``pread``) by the chunk
reader (:mod:`actors.file_chunks`): the manifest from memory, the contents
from the files, opened per read (no descriptor per file is held, whatever
the number of files; one chunk may span many files). A file that changed
size since it was hashed makes the read fail; one that changed in place is
caught by the receiver's per-file hash, and :meth:`TreeSource.changed`
(checked before Done) names it.
"""

from __future__ import annotations

import bisect
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import blake3

from actors.file_chunks import not_empty_as_it_says
from peercrypt.core.tree import (
    MAX_DEPTH,
    Kind,
    Layout,
    TreeEntry,
    TreeError,
    check_component,
    check_entries,
    encode_manifest,
    sort_entries,
    unsendable,
)

MAX_SOURCE_FILES = 1_000_000  # entries one send may walk (the receiver's limit is usually lower)
HASH_BLOCK = 1 << 20


@dataclass
class TreeSource:
    manifest: bytes
    layout: Layout
    paths: list[str]  # per file of the layout, in order: where to read it
    stamps: list[tuple[int, int]]  # per file: (size, mtime_ns) when hashed
    skipped: list[str] = field(default_factory=list)  # symbolic links and special files

    def __post_init__(self) -> None:
        self._starts = [end - s[0] for end, s in zip(self.layout.ends, self.stamps, strict=True)]
        self.total_size = self.layout.ends[-1] if self.layout.ends else len(self.manifest)

    @property
    def files(self) -> int:
        return self.layout.files

    @property
    def file_bytes(self) -> int:
        """The files' bytes: the stream less its manifest (the listing of
        names and sizes that goes first)."""
        return sum(size for size, _ in self.stamps)

    def pread(self, length: int, offset: int) -> bytes:
        """``length`` bytes of the stream at ``offset`` (short only past its end).
        Raises OSError when a file is shorter than when it was hashed."""
        out = bytearray()
        if offset < len(self.manifest):
            out += self.manifest[offset : offset + length]
            offset += len(out)
            length -= len(out)
        i = bisect.bisect_right(self.layout.ends, offset)
        while length > 0 and i < len(self.paths):
            start = self._starts[i]
            size = self.stamps[i][0]
            within = offset - start
            take = min(length, size - within)
            if take > 0:
                fd = os.open(self.paths[i], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    data = os.pread(fd, take, within)
                finally:
                    os.close(fd)
                if len(data) != take:
                    raise OSError(f"{self.paths[i]} shrank while it was sent")
                out += data
                offset += take
                length -= take
            i += 1
        return bytes(out)

    def changed(self) -> str:
        """The first file whose size or mtime differs from when it was
        hashed (its path), or ""."""
        for path, stamp in zip(self.paths, self.stamps, strict=True):
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                return path
            if (st.st_size, st.st_mtime_ns) != stamp:
                return path
        return ""


@dataclass
class WalkCount:
    """How far a walk got: files hashed and their bytes read so far. The
    walking thread only adds; another thread reads them for display."""

    files: int = 0
    bytes: int = 0


def build_tree(
    roots: list[Path],
    max_files: int = MAX_SOURCE_FILES,
    cancelled: threading.Event | None = None,
    count: WalkCount | None = None,
) -> TreeSource:
    """Walk and hash ``roots``; raises TreeError (a name the receiver would
    refuse, two roots of one name, too many entries, ``cancelled`` set: the
    walk stops at the next entry or hash block) or OSError. ``count``, if
    given, follows the files and bytes hashed."""
    stop = cancelled or threading.Event()
    counted = count if count is not None else WalkCount()
    found: dict[tuple[str, ...], tuple[TreeEntry, str, tuple[int, int]]] = {}
    skipped: list[str] = []

    def add(entry: TreeEntry, path: str, stamp: tuple[int, int] = (0, 0)) -> None:
        if len(found) >= max_files:
            raise TreeError(f"more than {max_files} files and folders")
        found[entry.path] = (entry, path, stamp)

    def visit(path: str, rel: tuple[str, ...], is_dir: bool) -> None:
        if stop.is_set():
            raise TreeError("the walk was cancelled")
        if len(rel) > MAX_DEPTH:
            raise TreeError(f"{path}: deeper than {MAX_DEPTH} levels")
        try:
            check_component(rel[-1])
        except TreeError:
            why = unsendable(rel[-1])
            raise TreeError(
                f"{path!r}: the name cannot be sent as it is ({why}): rename it"
            ) from None
        if is_dir:
            add(TreeEntry(Kind.DIR, rel, 0, os.stat(path).st_mode & 0o777), path)
            with os.scandir(path) as it:
                children = sorted(it, key=lambda d: d.name)
            for child in children:  # the kind from the directory entry: no stat per file
                if child.is_dir(follow_symlinks=False):
                    visit(child.path, (*rel, child.name), True)
                elif child.is_file(follow_symlinks=False):
                    visit(child.path, (*rel, child.name), False)
                else:
                    skipped.append(child.path)
            return
        hashed = _hash(path, stop, counted)
        if hashed is None:  # replaced by something else since the directory was read
            skipped.append(path)
            return
        digest, stamp, mode = hashed
        add(TreeEntry(Kind.FILE, rel, stamp[0], mode & 0o777, digest), path, stamp)
        counted.files += 1

    for root in roots:
        name = root.name
        if (name,) in found:
            raise TreeError(f"two sources are named {name!r}")
        # A root named through a link is taken as named: the link's name,
        # its target's content (read there: a file is read not through a link).
        real = os.path.realpath(root)  # (resolved once: what is stat'ed is what is read)
        st = os.stat(real)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
            visit(real, (name,), stat.S_ISDIR(st.st_mode))
        else:
            skipped.append(str(root))
    entries = sort_entries(e for e, _, _ in found.values())
    check_entries(entries, max_files)
    manifest = encode_manifest(entries)
    layout = Layout.of(entries, len(manifest))
    files = [found[e.path] for e in entries if e.kind is Kind.FILE]
    return TreeSource(
        manifest=manifest,
        layout=layout,
        paths=[p for _, p, _ in files],
        stamps=[s for _, _, s in files],
        skipped=skipped,
    )


def _hash(
    path: str, stop: threading.Event, counted: WalkCount
) -> tuple[bytes, tuple[int, int], int] | None:
    """BLAKE3 of the regular file at ``path`` (not through a symbolic link;
    a FIFO does not block the open), its (size, mtime_ns) as it was read and
    its mode; None if it is not a regular file (or one of /proc, whose size
    says nothing). Each block read is added to
    ``counted.bytes``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        # Skipped as special files are: a file of /proc says it is empty.
        if not stat.S_ISREG(st.st_mode) or not_empty_as_it_says(fd, st):
            return None
        hasher = blake3.blake3()
        offset = 0
        while offset < st.st_size:
            if stop.is_set():
                raise TreeError("the walk was cancelled")
            block = os.pread(fd, min(HASH_BLOCK, st.st_size - offset), offset)
            if not block:
                raise OSError(f"{path} shrank while it was read")
            hasher.update(block)
            offset += len(block)
            counted.bytes += len(block)
        return hasher.digest(), (st.st_size, st.st_mtime_ns), st.st_mode
    finally:
        os.close(fd)


class _Watcher(Protocol):
    """What :class:`Walk` needs of an actor: a file descriptor watched."""

    def watch(self, sock: Any, handler: Callable[[Any], None]) -> None: ...

    def unwatch(self, sock: Any) -> None: ...


class Walk:
    """:func:`build_tree` in a thread of its own, so the actor goes on
    meanwhile: ``done(result)`` (the :class:`TreeSource`, or the TreeError or
    OSError) is called in the actor's loop once it is ready, unless
    :meth:`cancel` came first (the thread then stops at its next entry or
    hash block and its result is dropped). The thread owns the wake pipe's
    write end and closes it."""

    def __init__(
        self,
        actor: _Watcher,
        paths: list[Path],
        done: Callable[[TreeSource | Exception], None],
        now: float = 0.0,
    ) -> None:
        self.paths = paths
        self.started = now  # the actor's clock
        self.result: TreeSource | Exception | None = None
        self.cancelled = threading.Event()
        self.count = WalkCount()  # what ``transfers`` shows meanwhile
        self._actor, self._done = actor, done
        self._wake = os.pipe()
        self._open = True
        actor.watch(self._wake[0], self._woken)
        threading.Thread(target=self._run, name="pc-walk", daemon=True).start()

    def row(self, ident: int, path: str, peer: str, mode: str, now: float) -> dict[str, str]:
        """Its row in ``transfers`` (as a send's: ``cancel ID`` finds it):
        state ``walking``, the bytes hashed so far, the size not yet known."""
        return {
            "id": str(ident),
            "file": path[-200:],
            "peer": peer[:200],
            "mode": mode,
            "state": "walking",
            "bytes": str(self.count.bytes),
            "size": "?",
            "seconds": f"{now - self.started:.1f}",
        }

    def _run(self) -> None:
        try:
            self.result = build_tree(self.paths, cancelled=self.cancelled, count=self.count)
        except (TreeError, OSError) as exc:
            self.result = exc
        try:
            os.write(self._wake[1], b"!")
        except OSError:  # dropped: the read end is closed, nobody waits
            pass
        finally:
            os.close(self._wake[1])

    def _woken(self, _fd: object = None) -> None:
        if not self._open:
            return
        self.cancel()
        assert self.result is not None
        self._done(self.result)

    def cancel(self) -> None:
        """Forget the walk (idempotent): ``done`` is not called."""
        if self._open:
            self._open = False
            self.cancelled.set()
            self._actor.unwatch(self._wake[0])
            os.close(self._wake[0])  # the thread's write then fails harmlessly
