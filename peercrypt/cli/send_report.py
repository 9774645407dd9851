"""How ``send`` shows its result: one line (or one JSON object) on stdout,
a failure as one ``peercrypt: error:`` line on stderr, and the exit code.

Light on purpose (no click): the fast path of ``send``
(:mod:`peercrypt.cli.fast`) shows its result with it too.
"""

from __future__ import annotations

import json
from pathlib import Path

from peercrypt import errors
from peercrypt.cli.echo import echo
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


def how_fast(result: SendResult, rate: float) -> str:
    """The rate of a verified send over its whole time (every attempt), and
    what of the file the receiver held when it first accepted (a resume, or
    a file delivered before: no chunk sent), whose bytes did not cross and
    are not in the rate. ``rate`` in MiB/s (``--json``'s ``mib_per_s``); shown
    in the unit it reads best in (``11.2 KiB/s``, ``1.2 GiB/s``)."""
    stats = result.stats
    chunks = stats.get("chunks", 0)
    held = stats.get("held_share", stats.get("resumed_chunks", 0) / chunks if chunks else 0.0)
    attempts = int(stats.get("attempts", 1))
    tries = f", {attempts} attempts" if attempts > 1 else ""
    if held >= 1:
        return f"the receiver had it all: nothing sent{tries}"
    if held <= 0:
        return f"{readable(rate * 2**20, rate=True)}{tries}"
    moved = result.size * (1 - held)
    sent = moved / result.seconds if result.seconds > 0 else 0.0
    share = max(1, int(100 * held))  # held, if a little: not "0% was there"
    return f"resumed, {share}% was there; {readable(sent, rate=True)}{tries}"


NAMED = 3  # the names a result line lists of the files and folders sent (then "+N more")


def sent_names(paths: list[Path]) -> str:
    """What a result line names of what was sent: every path's name, or the
    first :data:`NAMED` and how many more (`send a b c` said only "a")."""
    names = [printable(p.name) for p in paths]  # the user's own, but a name may hold escapes
    more = f" +{len(names) - NAMED} more" if len(names) > NAMED else ""
    return ", ".join(names[:NAMED]) + more


def report(result: SendResult, paths: list[Path], host: str, port: int, as_json: bool) -> int:
    """Show a unicast send's result; its exit code."""
    path = paths[0]
    ok = result.code == ResultCode.OK
    rate = result.size / result.seconds / 2**20 if ok and result.seconds > 0 else 0.0
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
                    "peer": f"{host}:{port}",
                    "size": result.size,
                    "blake3": result.digest.hex() if ok else None,
                    "stored_as": result.stored_as or None,
                    "seconds": round(result.seconds, 3),
                    "mib_per_s": round(rate, 1),
                    "files": files or None,
                    "file_bytes": file_bytes(result.stats, result.size) if tree else None,
                    "skipped": skipped if files else None,
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
            f"{name} ({files} files, {file_bytes(result.stats, result.size)} bytes)"
            if tree
            else (f"{name} ({result.size} bytes)")
        )
        echo(
            f"sent {what} to {host}:{port} as {result.stored_as} "
            f"in {result.seconds:.2f} s ({how_fast(result, rate)}), "
            f"blake3 {result.digest.hex()} verified"
        )
    else:
        echo(f"peercrypt: error: {result.reason}", err=True)
    return errors.exit_code(result.code)
