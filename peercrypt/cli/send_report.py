"""How ``send`` shows its result: one line (or one JSON object) on stdout,
a failure as one ``peercrypt: error:`` line on stderr, and the exit code.

Light on purpose (no click): the fast path of ``send``
(:mod:`peercrypt.cli.fast`) shows its result with it too.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from peercrypt import errors
from peercrypt.cli.echo import echo
from peercrypt.core.address import join_host_port
from peercrypt.errors import ResultCode
from peercrypt.sizes import readable
from peercrypt.wire.local_messages import SendResult
from peercrypt.wire.text import printable


def tree_counts(stats: dict[str, float], as_json: bool) -> tuple[int, int]:
    """A finished send's files and skipped entries (both 0 for one plain
    file); warns on stderr about skipped ones unless ``as_json``."""
    files, skipped = int(stats.get("files", 0)), int(stats.get("skipped", 0))
    if skipped and not as_json:
        echo(
            f"peercrypt: warning: {skipped} symbolic link(s) or special file(s) were not sent",
            err=True,
        )
    return files, skipped


def file_bytes(stats: dict[str, float], size: int) -> int:
    """A folder's (or several files') bytes: what ``size``, the bytes of
    the stream sent, holds beyond its listing of names (another build's
    result without them: ``size``)."""
    return int(stats.get("file_bytes", size))


def held_share(stats: dict[str, float]) -> float:
    """What of the file (or folder) the receiver held when it first
    accepted: 1.0, it had it all and nothing was sent."""
    chunks = stats.get("chunks", 0)
    return stats.get("held_share", stats.get("resumed_chunks", 0) / chunks if chunks else 0.0)


def how_fast(result: SendResult, rate: float) -> str:
    """The rate of a verified send over its whole time (every attempt), and
    what of the file the receiver held when it first accepted (a resume, or
    a file delivered before: no chunk sent), whose bytes did not cross and
    are not in the rate (``rate``, MiB/s: :func:`moved_rate`, ``--json``'s
    ``mib_per_s``); shown in the unit it reads best in (``11.2 KiB/s``)."""
    stats = result.stats
    held = held_share(stats)
    attempts = int(stats.get("attempts", 1))
    tries = f", {attempts} attempts" if attempts > 1 else ""
    if held >= 1:
        return f"the receiver had it all: nothing sent{tries}"
    if held <= 0:
        return f"{readable(rate * 2**20, rate=True)}{tries}"
    share = max(1, int(100 * held))  # held, if a little: not "0% was there"
    return f"resumed, {share}% was there; {readable(rate * 2**20, rate=True)}{tries}"


def moved_rate(result: SendResult) -> float:
    """MiB/s of what crossed over the send's whole time: the bytes the
    receiver held already (a resume, a file it had: 0) are not in it, as
    the result line says (``--json``'s ``mib_per_s`` said 1208.5 of a file
    the receiver had, nothing sent)."""
    if result.code != ResultCode.OK or result.seconds <= 0:
        return 0.0
    return result.size * (1 - min(1.0, held_share(result.stats))) / result.seconds / 2**20


NAMED = 3  # the names a result line lists of the files and folders sent (then "+N more")


def sent_names(paths: list[Path]) -> str:
    """What a result line names of what was sent: every path's name, or the
    first :data:`NAMED` and how many more (`send a b c` said only "a"); of
    several, not one left out (a FIFO: the warning line names how many)."""
    if len(paths) > 1:
        paths = [p for p in paths if _kind(p) != "skipped"] or paths  # (a gone one is named)
    names = [printable(p.name) for p in paths]  # the user's own, but a name may hold escapes
    more = f" +{len(names) - NAMED} more" if len(names) > NAMED else ""
    return ", ".join(names[:NAMED]) + more


def stored_names(stored_as: str, paths: list[Path]) -> dict[str, str]:
    """Each top-level name of a folder or several files sent -> the name
    the receiver stored it as, read from its one ``stored_as`` (its names
    joined by ", " in the order of the tree: sorted) where a clash made
    ``NAME.1`` or ``stem.1.ext`` (core/names.py, ``candidate_names``); {}
    if that does not read so (cut short, another build's names)."""
    names = sorted(printable(p.name) for p in paths)  # (the receiver's names come escaped)
    parts = []
    for name in names:
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:
            stem, ext = name, ""
        renamed = re.escape(stem) + r"\.[1-9][0-9]*" + (re.escape("." + ext) if ext else "")
        parts.append(f"({re.escape(name)}|{renamed})")
    found = re.fullmatch(", ".join(parts), stored_as)
    return dict(zip(names, found.groups(), strict=True)) if found else {}


def _bytes(path: Path) -> int | None:
    """A file's bytes, or those of a folder's files (symbolic links not
    followed, as the send walks it); None if it cannot be read now."""
    try:
        if not path.is_dir():
            return path.stat().st_size
        total = 0
        for top, _, files in os.walk(path):
            for name in files:
                st = os.lstat(os.path.join(top, name))
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
        return total
    except OSError:
        return None


def _kind(path: Path) -> str:
    """ "file", "folder", or "skipped": a named source the walk leaves out
    as it does inside a folder (a device, a FIFO, a socket; gone)."""
    try:
        mode = path.stat().st_mode
    except OSError:  # (gone since: it may have been sent)
        return "gone"
    if stat.S_ISDIR(mode):
        return "folder"
    return "file" if stat.S_ISREG(mode) else "skipped"


def sources(result: SendResult, paths: list[Path]) -> list[dict[str, object]]:
    """``--json``'s ``sources`` of a folder or several files: one object
    per FILE named, in the order given: its ``name``, ``path``, ``kind``
    (``skipped``: not sent; ``gone``: not there as the result is shown),
    ``bytes``, ``stored_as`` (null unless
    verified), ``verified``, and ``held`` (the receiver had the whole send
    already: nothing sent; the result knows it of the whole only)."""
    ok = result.code == ResultCode.OK
    kinds = [_kind(p) for p in paths]
    sent = [p for p, kind in zip(paths, kinds, strict=True) if kind != "skipped"]
    stored = stored_names(result.stored_as, sent) if ok else {}
    if ok and not stored and "gone" in kinds:  # (one gone since was not sent either)
        sent = [p for p, kind in zip(paths, kinds, strict=True) if kind not in ("skipped", "gone")]
        stored = stored_names(result.stored_as, sent)
    held = ok and held_share(result.stats) >= 1
    return [
        {
            "name": p.name,
            "path": str(p),
            "kind": kind,
            "bytes": _bytes(p) if kind != "skipped" else None,
            "stored_as": stored.get(printable(p.name)) if kind != "skipped" else None,
            "verified": ok and (kind in ("file", "folder") or printable(p.name) in stored),
            "held": held and kind != "skipped",
        }
        for p, kind in zip(paths, kinds, strict=True)
    ]


def report(result: SendResult, paths: list[Path], host: str, port: int, as_json: bool) -> int:
    """Show a unicast send's result; its exit code."""
    path = paths[0]
    ok = result.code == ResultCode.OK
    rate = moved_rate(result)
    files, skipped = tree_counts(result.stats, as_json)
    tree = "files" in result.stats  # a folder (perhaps of no file) or several files
    if as_json:
        echo(
            json.dumps(
                {
                    "ok": ok,
                    "code": result.code,
                    "error": result.reason or None,
                    "file": str(path),
                    "peer": join_host_port(host, port),
                    "size": result.size,
                    "blake3": result.digest.hex() if ok else None,
                    "stored_as": result.stored_as or None,
                    "seconds": round(result.seconds, 3),
                    "mib_per_s": round(rate, 1),
                    "held_share": round(held_share(result.stats), 4) if ok else None,
                    "files": files or None,
                    "file_bytes": file_bytes(result.stats, result.size) if tree else None,
                    "skipped": skipped if files else None,
                    **({"sources": sources(result, paths)} if tree else {}),
                    "retransmits": result.retransmits,
                    "mode": result.mode or None,
                    "stats": result.stats,
                    "window_history": result.window_history,
                }
            )
        )
    elif ok:
        name = sent_names(paths)
        what = (
            f"{name} ({files} file{'' if files == 1 else 's'}, "
            f"{file_bytes(result.stats, result.size)} bytes)"
            if tree
            else (f"{name} ({result.size} bytes)")
        )
        echo(
            f"sent {what} to {join_host_port(host, port)} as {result.stored_as} "
            f"in {result.seconds:.2f} s ({how_fast(result, rate)}), "
            f"blake3 {result.digest.hex()} verified"
        )
    else:
        echo(f"peercrypt: error: {result.reason}", err=True)
    return errors.exit_code(result.code)
