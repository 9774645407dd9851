"""The inbox rules every receiving actor follows (unicast and multicast).

- An incoming file is checked before anything is created: chunk size within
  bounds, at most ``MAX_TRANSFER_CHUNKS`` chunks (so no offer makes a node
  keep or scan a bigger bitmap), a name that sanitises to a single safe
  component, room on disk.
- It is written as a hidden ``.NAME.ID[.KIND].part`` file of its final size
  (sparse), mode 0600 while incomplete, created with ``O_EXCL`` (an existing
  file of that name is never replaced or removed: it belongs to another
  session). With ``unique=True`` (multicast, whose session ids a co-receiver
  knows) the name adds a local random suffix to ``ID``, so nobody can
  predict it: no other session can open, replace or remove the part.
- Once its whole-file hash is verified it is made readable (0644) and the
  *open file* - the very file that was written and verified, never a path
  someone could have replaced meanwhile - is hard-linked under the first
  free name (``linkat`` of ``/proc/self/fd/N``; ``NAME``, ``NAME.1``...:
  linking fails instead of replacing, so nothing is ever overwritten, not
  even by a concurrent transfer of the same name) and the directory is
  fsynced.
- Beside a part, ``.NAME.ID.part.manifest`` lists the chunks the part
  durably holds (:class:`~peercrypt.core.resume.Manifest`): the part is synced
  (``fdatasync``) before every manifest, which is replaced atomically; a
  later offer of the same file from the same sender continues it (multicast:
  the same session, rejoined by a restarted receiver).
- Leftovers (kept parts, their manifests, halves of a pair a crash split)
  are deleted by :func:`sweep` once older than the part expiry. No file in
  the inbox is ever opened through a symbolic link.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from peercrypt.chunking import MIN_CHUNK
from peercrypt.core.bitmap import MAX_TRANSFER_CHUNKS
from peercrypt.core.delivered import FileStamp
from peercrypt.core.names import UnsafeName, candidate_names, inbox_name
from peercrypt.core.resume import MAX_MANIFEST_BYTES, KeptPart, Manifest, ManifestError, expired
from peercrypt.errors import ResultCode
from peercrypt.settings import NodeSettings


class Refusal(Exception):
    """The incoming file is refused; ``code`` goes on the wire."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class LinkFailed(Refusal):
    """The verified file could not be linked under its name (a full disk, a
    quota, an inbox made read-only): its part stays, and a send of it again
    finds every chunk held (``no-space`` for a full disk or a quota)."""

    def __init__(self, exc: OSError) -> None:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        code = ResultCode.NO_SPACE if full else ResultCode.IO
        super().__init__(code, f"cannot link the verified file: {exc.strerror or exc}")


def offered_chunks(settings: NodeSettings, chunk_size: int, min_chunk: int) -> tuple[int, int]:
    """The chunk sizes an offer allows (``OfferDetails``: ``min_chunk`` to
    ``chunk_size``; ``min_chunk`` 0: ``chunk_size`` alone) that this node
    takes: (low, high), ``high`` within ``--max-chunk``. Raise
    :class:`Refusal` for a range that is empty or starts outside the chunk
    bounds (a size above ``--max-chunk`` alone is refused by
    :func:`check_offer`)."""
    if not min_chunk:
        return chunk_size, chunk_size
    if not MIN_CHUNK <= min_chunk <= min(chunk_size, settings.max_chunk):
        raise Refusal(
            "bad-offer",
            f"chunk sizes must be within {MIN_CHUNK}..{settings.max_chunk} bytes, "
            f"the smallest first (offered {min_chunk}..{chunk_size})",
        )
    return min_chunk, min(chunk_size, settings.max_chunk)


def check_offer(settings: NodeSettings, name: str, chunk_size: int, size: int) -> str:
    """The sanitised name, or raise :class:`Refusal` (chunk size and count, name)."""
    if not MIN_CHUNK <= chunk_size <= settings.max_chunk:
        raise Refusal("bad-offer", f"chunk size must be {MIN_CHUNK}..{settings.max_chunk} bytes")
    if -(-size // chunk_size) > MAX_TRANSFER_CHUNKS:
        raise Refusal(
            "bad-offer",
            f"more than {MAX_TRANSFER_CHUNKS} chunks; offer a chunk size of at least "
            f"{-(-size // MAX_TRANSFER_CHUNKS)} bytes",
        )
    try:
        return inbox_name(name)
    except UnsafeName as exc:
        raise Refusal("bad-name", str(exc)) from None


def create_part(
    inbox: Path, name: str, ident: str, size: int, *, kind: str = "", unique: bool = False
) -> tuple[Path, int]:
    """Create the part file of ``size`` bytes: ``.NAME.IDENT[.KIND].part``
    (``unique``: ``.NAME.IDENT-RANDOM[.KIND].part``), refused if that name
    exists; (path, fd). Raises :class:`Refusal` ("io")."""
    suffix = f".{kind}" if kind else ""
    if unique:
        ident = f"{ident}-{secrets.token_hex(8)}"
    part = inbox / f".{name}.{ident}{suffix}.part"
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise Refusal(ResultCode.IO, f"cannot create file in inbox: {exc.strerror}") from None
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        discard_part(part, fd)
        os.close(fd)
        raise Refusal(ResultCode.IO, f"cannot create file in inbox: {exc.strerror}") from None
    return part, fd


class PartGone(Refusal):
    """The kept part chosen to continue is no longer there (a part that held
    no chunk, which the writer removes after its queued work, was chosen by
    the next offer before it went): the transfer starts afresh instead."""


def open_part(inbox: Path, part: str, size: int) -> int:
    """Open a kept part to continue it (not through a symbolic link); its fd.
    Raises :class:`Refusal` ("io") unless it is a regular file of ``size``
    bytes (:class:`PartGone` if it is not there)."""
    try:
        fd = os.open(inbox / part, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise PartGone("io", f"cannot open the kept part: {exc.strerror}") from None
    except OSError as exc:
        raise Refusal("io", f"cannot open the kept part: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        os.close(fd)
        raise Refusal("io", "the kept part is not the file it should be")
    return fd


def discard_part(part: Path | None, fd: int) -> str:
    """Remove this session's named part file - only if the name still refers
    to the file open as ``fd`` (nothing else is ever removed). Why it could
    not be removed ("" if it is gone): an inbox made read-only meanwhile
    raised here, and the transfer's close stopped halfway (its fd and its
    space kept until the node restarted)."""
    if part is None:
        return ""
    try:
        mine = os.fstat(fd)
        there = os.lstat(part)
    except OSError:
        return ""
    if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
        try:
            part.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            return exc.strerror or type(exc).__name__
    return ""


def remake(inbox: Path, mode: int) -> str | None:
    """The inbox removed while the node runs, made again as the node made it
    at its start (its parent is not: a data dir or a folder the user named
    that is gone is not the node's to make). None if it is there (or
    something else is at its name, or it cannot be looked at: what uses it
    next refuses, saying why), "" if it was made again, else why it could
    not be."""
    try:
        os.stat(inbox)
        return None
    except FileNotFoundError:
        pass
    except OSError:  # (a folder above not searchable, a dead mount...)
        return None
    try:
        inbox.mkdir(mode=mode)
    except FileExistsError:
        return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return ""


def remove_quietly(path: Path) -> None:
    """Remove ``path`` if it is there and may be removed (a manifest beside
    a part being discarded: what cannot go stays, as its part does)."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def link_verified(
    part: Path | None, fd: int, inbox: Path, name: str, mode: int = 0o644
) -> str | None:
    """Give the verified file open as ``fd`` its final name (never
    overwriting); the name used, or None if every candidate is taken. The
    link is made to the open file itself, so what appears is what was
    verified even if ``part``'s name was replaced meanwhile. A named part
    stays; the caller removes it (:func:`discard_part`), and makes the name
    durable (:func:`fsync_dir` of ``inbox``). ``mode``: the file's
    permissions once published."""
    os.fchmod(fd, mode)
    for candidate in candidate_names(name):
        try:
            _link_fd(fd, part, inbox / candidate)
        except FileExistsError:
            continue
        return candidate
    return None


def _link_fd(fd: int, part: Path | None, target: Path) -> None:
    """linkat() the open file ``fd`` to ``target`` (FileExistsError if taken)."""
    try:
        # src_dir_fd makes CPython call linkat(..., AT_SYMLINK_FOLLOW), which
        # follows the /proc magic link to the open file (plain link() would
        # try to link the symlink itself).
        procfd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        procfd = -1
    if procfd >= 0:
        try:
            os.link(str(fd), target, src_dir_fd=procfd, follow_symlinks=True)
            return
        except FileExistsError:
            raise
        except OSError as exc:
            raise LinkFailed(exc) from None
        finally:
            os.close(procfd)
    if part is None:
        raise Refusal(ResultCode.IO, "cannot link the verified file: no /proc")
    # No /proc: link the name, but only while it is still this very file.
    mine, there = os.fstat(fd), os.lstat(part)
    if (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino):
        raise Refusal(ResultCode.IO, "the part file was replaced")
    try:
        os.link(part, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        raise LinkFailed(exc) from None


def stamp(inbox: Path, name: str) -> FileStamp | None:
    """The inbox file ``name`` as it is now, to tell whether a delivered file
    is still the one stored (core/delivered.py); None: gone, or not a
    regular file."""
    try:
        st = os.lstat(inbox / name)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return FileStamp(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


PART_SUFFIX = ".part"
MANIFEST_SUFFIX = ".part.manifest"
# A multicast session's part (``.NAME.SID-RANDOM.mc.part``): the mreceiver's
# alone, so the unicast receiver never plans, resumes or sweeps it.
MC_PART_SUFFIX = ".mc.part"
MAX_SCAN = 100_000  # inbox entries one sweep looks at


def free_space(inbox: Path) -> int:
    """Bytes free for us on the inbox's filesystem."""
    return shutil.disk_usage(inbox).free


def manifest_name(part: str) -> str:
    return part + ".manifest"


def save_manifest(inbox: Path, part_fd: int, manifest: Manifest) -> None:
    """Record durably what the part holds: ``fdatasync`` the part first (so
    the manifest never lists a chunk a crash could lose), then write the
    manifest to a temporary file, fsync it and rename it over the old one.
    Raises OSError."""
    os.fdatasync(part_fd)
    final = manifest_name(manifest.part)
    tmp = final + ".tmp"
    data = manifest.encode()
    dir_fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def load_manifest(inbox: Path, name: str) -> Manifest:
    """Read the manifest file ``name`` (not through a symbolic link, at most
    :data:`MAX_MANIFEST_BYTES`). Raises ManifestError, also when it describes
    a part other than its own."""
    try:
        fd = os.open(inbox / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise ManifestError(f"cannot open manifest: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ManifestError("manifest is not a regular file")
        data = os.read(fd, MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"cannot read manifest: {exc.strerror}") from None
    finally:
        os.close(fd)
    manifest = Manifest.decode(data)
    if manifest_name(manifest.part) != name:
        raise ManifestError("manifest names another part")
    return manifest


@dataclass
class Leftovers:
    """What a scan of the inbox found. ``manifests``: readable manifests
    whose part exists; ``kept``: every part/manifest pair or half of one;
    ``allocated``: bytes each part occupies on disk."""

    manifests: list[Manifest] = field(default_factory=list)
    kept: list[KeptPart] = field(default_factory=list)
    allocated: dict[str, int] = field(default_factory=dict)


def scan(inbox: Path, prefix: str = ".", *, multicast: bool | None = None) -> Leftovers:
    """Find kept parts and manifests (hidden ``.*.part`` files and their
    ``.manifest``; multicast parts, ``.*.mc.part``, have one too) whose
    names start with ``prefix``: only multicast ones (``multicast`` True),
    only unicast ones (False) or both (None). Symbolic links and other
    non-regular files are ignored; a manifest that cannot be read counts as
    missing (its part is reclaimed when it expires)."""
    parts: dict[str, os.stat_result] = {}
    manifests: dict[str, os.stat_result] = {}
    with os.scandir(inbox) as entries:
        for n, entry in enumerate(entries):
            if n >= MAX_SCAN:
                break
            name = entry.name
            if not name.startswith(prefix) or not name.startswith("."):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            part = name[: -len(".manifest")] if name.endswith(MANIFEST_SUFFIX) else name
            if multicast is not None and part.endswith(MC_PART_SUFFIX) != multicast:
                continue
            if name.endswith(MANIFEST_SUFFIX):
                manifests[part] = st
            elif name.endswith(PART_SUFFIX):
                parts[name] = st
    out = Leftovers()
    for part in sorted(parts.keys() | manifests.keys()):
        pst, mst = parts.get(part), manifests.get(part)
        updated = max(st.st_mtime for st in (pst, mst) if st is not None)
        readable = False
        if pst is not None and mst is not None:
            try:
                m = load_manifest(inbox, manifest_name(part))
            except ManifestError:
                pass
            else:
                out.manifests.append(m)
                updated, readable = m.updated, True
        out.kept.append(
            KeptPart(part, manifest_name(part) if readable else None, pst is not None, updated)
        )
        if pst is not None:
            out.allocated[part] = pst.st_blocks * 512
    return out


def remove_part(inbox: Path, part: str) -> None:
    """Delete a kept part and its manifest (either may be missing)."""
    for name in (part, manifest_name(part), manifest_name(part) + ".tmp"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(inbox / name)


def sweep(
    inbox: Path,
    now: float,
    expiry: float,
    in_use: Iterable[str] = (),
    *,
    multicast: bool | None = None,
) -> list[str]:
    """Delete leftovers (of the kind ``multicast`` selects, as :func:`scan`)
    not updated for ``expiry`` seconds (wall clock ``now``), sparing parts
    of running transfers; the part names deleted."""
    gone = expired(scan(inbox, multicast=multicast).kept, now, expiry, in_use)
    for k in gone:
        remove_part(inbox, k.part)
    return [k.part for k in gone]
