"""A folder (or several files) sent as one transfer: the tree manifest.

Pure: no file is opened here. A tree transfer moves one logical byte
stream through the ordinary chunk pipeline (window, congestion, resume
bitmap, whole-stream hash), laid out as::

    [manifest][file 1][file 2]...[file n]

The manifest is the first ``Offer.tree`` bytes of the stream, so it is
sealed and authenticated chunk by chunk like the contents, covered by the
whole-stream hash, and costs no extra message or round trip however many
files there are; chunks may span files. Its entries, in the order the
contents follow:

    [VERSION, [[kind, [component, ...], size, mode, blake3], ...]]

- ``kind`` is ``"d"`` (a directory, so empty ones arrive too) or ``"f"`` (a
  regular file of ``size`` bytes whose BLAKE3 is ``blake3``); ``mode`` is
  the sender's permission bits, of which the receiver keeps only the
  execute bit (:func:`received_mode`), within its own file modes.
- Entries are strictly increasing by their component tuple: duplicates are
  impossible and every parent sorts before its children.
- Every component must already be a safe name (:func:`~peercrypt.core.names.sanitise`
  returns it unchanged): nothing is rewritten, so two entries cannot
  collide after sanitising, and ``..``, ``.``, ``/``, ``\\``, NUL and other
  control characters are refused, not repaired. A top-level name shaped
  like the receiver's own inbox files (:func:`~peercrypt.core.names.reserved`:
  hidden and ending in ``.part``, ``.part.manifest``, ``.part.manifest.tmp``
  or ``.tree``) is refused too.
- Every entry below the top has its parent listed as a directory: a file
  is never a parent, and nothing is created through a path the manifest
  did not declare.
- At most ``max_files`` entries, at most :data:`MAX_DEPTH` components and
  :data:`MAX_PATH_BYTES` bytes per path, and at most
  :func:`manifest_limit` bytes in all; the sizes and the manifest add up to
  the offered size exactly.

:func:`decode_manifest` enforces all of it in one streaming pass: the
list headers' counts are checked before anything is read, then each row
is unpacked under row-sized msgpack limits and checked before the next,
so a hostile manifest (nested lists included) costs memory bounded by
one row plus the entries already accepted and linear time; it never
raises anything but :class:`TreeError`.

Symbolic links are never followed inside a tree and never sent (the sender
skips them and counts them); other special files likewise.
"""

from __future__ import annotations

import bisect
import enum
import io
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import blake3
import msgpack

from peercrypt.core.names import MAX_NAME_BYTES, UnsafeName, reserved, sanitise

VERSION = 1
MAX_DEPTH = 64  # components of one path
MAX_PATH_BYTES = 4096  # UTF-8 bytes of one path, separators included
ENTRY_BUDGET = 256  # manifest bytes allowed per entry on average (see manifest_limit)
HASH_BYTES = 32
_SOURCE_CONTEXT = "peercrypt 2026-12 tree source tag"


class TreeError(ValueError):
    """The manifest (or a source tree) breaks a rule; the message says which."""


class Kind(enum.Enum):
    DIR = "d"
    FILE = "f"


@dataclass(frozen=True)
class TreeEntry:
    kind: Kind
    path: tuple[str, ...]
    size: int = 0
    mode: int = 0o644
    digest: bytes = b""

    @property
    def text(self) -> str:
        return "/".join(self.path)


def manifest_limit(max_files: int) -> int:
    """Bytes a manifest of at most ``max_files`` entries may take."""
    return 64 + max_files * ENTRY_BUDGET


def offer_refusal(tree: int, files: int, size: int, max_files: int) -> tuple[str, str] | None:
    """Why an offer of a tree (``tree`` manifest bytes, ``files`` files, a
    stream of ``size`` bytes) is refused before anything is received, as
    (code, reason); None: it may start."""
    if not (tree or files):
        return None
    if files > max_files or tree > manifest_limit(max_files):
        return "too-many-files", f"a folder of at most {max_files} files is taken here"
    if not 0 < tree <= size:
        return "bad-offer", "the folder's manifest does not fit its size"
    return None


def check_component(name: str) -> str:
    """``name`` if it is usable as one path component unchanged, else TreeError."""
    if (  # the common case, decided without sanitise's per-character pass
        name.isprintable()  # no control, format or separator characters but " "
        and "/" not in name
        and "\\" not in name
        and name not in ("", ".", "..")
        and name.strip() == name
        and len(name.encode("utf-8")) <= MAX_NAME_BYTES
    ):
        return name
    try:
        safe = sanitise(name)
    except UnsafeName as exc:
        raise TreeError(str(exc)) from None
    if safe != name:
        raise TreeError(f"unsafe name {name[:80]!r} in the tree")
    return name


def unsendable(name: str) -> str:
    """Why :func:`check_component` refuses ``name``, in words for its user."""
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        return f"{size} bytes long, over {MAX_NAME_BYTES}"
    if name in ("", ".", ".."):
        return "not a name a receiver can store"
    if any("\udc80" <= c <= "\udcff" for c in name):
        return "it holds a byte that is not UTF-8"
    if not name.isprintable():
        return "it holds an invisible or control character"
    if "/" in name or "\\" in name:
        return "it holds / or \\"
    if name.strip() != name:
        return "it starts or ends with a space"
    return "the receiver would have to change it"


def check_entries(entries: Sequence[TreeEntry], max_files: int) -> None:
    """Every rule of the module docstring but the byte limit; TreeError."""
    if len(entries) > max_files:
        raise TreeError(f"more than {max_files} entries")
    checker = _Checker()
    for e in entries:
        checker.add(e)


class _Checker:
    """The per-entry rules, one entry at a time in stream order.

    A path below the top is its listed parent's plus one name: only that
    name is checked (the parent's were, as the parent), and the entry
    :meth:`add` returns holds the parent's very components, so a deep tree
    costs a tuple per entry, not a string per component (a manifest of
    100,000 entries 63 folders deep held 389 MiB of paths for its 23 MB,
    and took 5.5 s of the interpreter to check)."""

    def __init__(self) -> None:
        # Each directory listed: its path as held, and its UTF-8 bytes with
        # separators.
        self.dirs: dict[tuple[str, ...], tuple[tuple[str, ...], int]] = {}
        self.previous: tuple[str, ...] | None = None

    def add(self, e: TreeEntry) -> TreeEntry:
        if not 1 <= len(e.path) <= MAX_DEPTH:
            raise TreeError(f"a path of {len(e.path)} components (1..{MAX_DEPTH})")
        name = check_component(e.path[-1])
        path: tuple[str, ...]
        if len(e.path) == 1:
            if reserved(name):
                raise TreeError(f"{e.text[:200]!r} has the shape of the receiver's own files")
            path, size = (name,), len(name.encode("utf-8")) + 1
        else:
            parent = self.dirs.get(e.path[:-1])
            if parent is None:
                if self.previous is not None and e.path <= self.previous:
                    raise TreeError(f"{e.text[:200]!r} is a duplicate or out of order")
                raise TreeError(f"{e.text[:200]!r} is not under a listed directory")
            path, size = (*parent[0], name), parent[1] + len(name.encode("utf-8")) + 1
        if size > MAX_PATH_BYTES:
            raise TreeError(f"a path longer than {MAX_PATH_BYTES} bytes")
        if self.previous is not None and path <= self.previous:
            raise TreeError(f"{e.text[:200]!r} is a duplicate or out of order")
        self.previous = path
        if e.kind is Kind.DIR:
            if e.size or e.digest:
                raise TreeError(f"directory {e.text[:200]!r} has a size or hash")
            self.dirs[path] = (path, size)
        elif len(e.digest) != HASH_BYTES:
            raise TreeError(f"file {e.text[:200]!r} has no {HASH_BYTES}-byte hash")
        if e.size < 0 or not 0 <= e.mode <= 0o7777:
            raise TreeError(f"{e.text[:200]!r} has a bad size or mode")
        return e if path is e.path else TreeEntry(e.kind, path, e.size, e.mode, e.digest)


def sort_entries(entries: Iterable[TreeEntry]) -> list[TreeEntry]:
    return sorted(entries, key=lambda e: e.path)


def encode_manifest(entries: Sequence[TreeEntry]) -> bytes:
    rows = [[e.kind.value, list(e.path), e.size, e.mode, e.digest] for e in entries]
    data = msgpack.packb([VERSION, rows], use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def decode_manifest(data: bytes, max_files: int, stream_size: int) -> list[TreeEntry]:
    """The entries of ``data`` (the first bytes of a stream of
    ``stream_size``), all rules checked; raises TreeError only.

    Streamed: the two list headers are read and their counts checked
    first, then one row at a time under row-sized msgpack limits, each
    checked before the next is read, so nesting cannot multiply the cost.
    """
    if len(data) > manifest_limit(max_files):
        raise TreeError(f"manifest larger than {manifest_limit(max_files)} bytes")
    unpacker = msgpack.Unpacker(
        io.BytesIO(data),  # read in small pieces, not copied whole
        read_size=64 * 1024,
        raw=False,
        use_list=True,
        strict_map_key=True,
        max_buffer_size=1024 * 1024,  # above any one row's limits
        max_str_len=MAX_NAME_BYTES * 4,
        max_bin_len=HASH_BYTES,
        max_array_len=max(5, MAX_DEPTH + 1),  # one over, so the checker names a too-deep path
        max_map_len=0,
        max_ext_len=0,
    )
    entries: list[TreeEntry] = []
    checker = _Checker()
    try:
        if unpacker.read_array_header() != 2 or unpacker.unpack() != VERSION:
            raise TreeError("not a version 1 manifest")
        try:
            count = unpacker.read_array_header()
        except ValueError:  # another type where the list should be
            raise TreeError("manifest entries are not a list") from None
        if count > max_files:
            raise TreeError(f"more than {max_files} entries")
        for _ in range(count):
            entries.append(checker.add(_entry(unpacker.unpack())))
        if unpacker.tell() != len(data):
            raise TreeError("bytes after the manifest's entries")
    except TreeError:
        raise
    except Exception as exc:  # msgpack raises many types on bad input
        raise TreeError(f"unreadable manifest ({type(exc).__name__})") from None
    total = len(data) + sum(e.size for e in entries if e.kind is Kind.FILE)
    if total != stream_size:
        raise TreeError(f"the entries add up to {total} bytes, the offer said {stream_size}")
    return entries


def _entry(row: object) -> TreeEntry:
    if not (isinstance(row, list) and len(row) == 5):
        raise TreeError("a manifest entry is not [kind, path, size, mode, hash]")
    kind, path, size, mode, digest = row
    if kind not in ("d", "f") or not isinstance(path, list):
        raise TreeError("a manifest entry has a bad kind or path")
    if not all(isinstance(c, str) for c in path):
        raise TreeError("a manifest path has a non-text component")
    if type(size) is not int or type(mode) is not int or not isinstance(digest, bytes):
        raise TreeError("a manifest entry has a bad size, mode or hash")
    return TreeEntry(Kind(kind), tuple(path), size, mode, digest)


@dataclass(frozen=True)
class Layout:
    """Where each file's bytes are in the stream."""

    entries: tuple[TreeEntry, ...]
    manifest_bytes: int
    offsets: tuple[int, ...]  # per entry: its first byte in the stream (dirs: where they'd be)
    ends: tuple[int, ...]  # per file, in order: one past its last byte

    @classmethod
    def of(cls, entries: Sequence[TreeEntry], manifest_bytes: int) -> Layout:
        offsets, ends, at = [], [], manifest_bytes
        for e in entries:
            offsets.append(at)
            if e.kind is Kind.FILE:
                at += e.size
                ends.append(at)
        return cls(tuple(entries), manifest_bytes, tuple(offsets), tuple(ends))

    @property
    def files(self) -> int:
        return len(self.ends)

    def files_done(self, done_bytes: int) -> int:
        """Files whose last byte is below ``done_bytes``."""
        return bisect.bisect_right(self.ends, done_bytes)


def tops(entries: Iterable[TreeEntry]) -> list[str]:
    """The top-level names, in order."""
    return [e.path[0] for e in entries if len(e.path) == 1]


def received_mode(entry: TreeEntry, file_mode: int, dir_mode: int) -> int:
    """Permissions on the receiver: its own modes (within its umask); a file
    the sender could execute gets execute wherever the receiver's mode reads."""
    if entry.kind is Kind.DIR:
        return dir_mode
    if entry.mode & stat.S_IXUSR:
        return file_mode | ((file_mode & 0o444) >> 2)
    return file_mode


def source_tag(manifest: bytes) -> bytes:
    """The resume identity of a tree: the manifest holds every path, size
    and content hash, so the same tree offered again continues its part."""
    return blake3.blake3(manifest, derive_key_context=_SOURCE_CONTEXT).digest()
