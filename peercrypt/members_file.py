"""The members a node last saw alive, kept in its data dir (``members``)
so that a node restarted without a bootstrap rejoins through them.

A seed (the node the others joined through, started without a bootstrap of
its own) that was stopped and started again knew no one: the others had
marked it left (or dead, and probed it only after a backoff of up to eight
health intervals), so it stayed alone for good after a clean stop. Discovery
writes the addresses of the members alive that health proved at the
address their record names (:func:`choose`: a record alone is a claim)
whenever that set changes (:class:`Keeper`: never an empty set, a node left
alone keeps the last one), and at its start (gossip on) and whenever it is
alone it joins through a few of them as through a bootstrap.

One ``HOST:PORT`` per line (``[V6]:PORT``), at most :data:`MAX_LINES`; the
file is this node's own (0600, written whole and renamed into place), and a
line that does not parse is skipped. Deleting it forgets them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from peercrypt.core.address import endpoint_key, join_host_port, split_host_port, visible_ascii

FILE_NAME = "members"
KEEP_EVERY = 1.0  # seconds between two writes at most (a churning membership)
MAX_LINES = 256  # the membership's own bound (max_members)
MAX_BYTES = 64 * 1024  # read no more: 256 lines of a long host name each fit


def read(data_dir: Path) -> list[tuple[str, int]]:
    """The addresses kept (none: no file, or one that cannot be read, or
    that is no regular file: a FIFO there hung the node's start, a symbolic
    link is not followed)."""
    try:
        fd = os.open(
            data_dir / FILE_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        )
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        data = os.read(fd, MAX_BYTES)
    except OSError:
        return []
    finally:
        os.close(fd)
    found: list[tuple[str, int]] = []
    for line in data.decode("ascii", "replace").splitlines()[:MAX_LINES]:
        if not visible_ascii(line):  # (a host name is ASCII: IDNA spells the rest so)
            continue
        try:
            address = split_host_port(line)
        except ValueError:
            continue
        if address not in found:
            found.append(address)
    return found


def write(data_dir: Path, addresses: list[str]) -> None:
    """Keep ``addresses`` (``HOST:PORT`` each), replacing what was kept.
    Raises OSError (the caller logs it: a full disk costs the rejoin only)."""
    path = data_dir / FILE_NAME
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
    data = memoryview("".join(f"{a}\n" for a in addresses[:MAX_LINES]).encode())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # (one left by a crash of this pid's namesake: never followed)
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            # (no fsync: discovery's thread writes it, and a disk that stalls
            # must not stall gossip; a crash costs at most the newest set)
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def choose(
    alive: list[tuple[bytes, str]],
    proven: dict[bytes, str],
    scores: dict[bytes, float],
    most: int,
    prior: float,
) -> list[str]:
    """The ``HOST:PORT`` of each member alive (``(id, record's url)``)
    whose record names the address its health proved it at (``proven``: id
    -> endpoint_key of that address: a record alone is a claim, and a
    member proven at one address may sign a record of another), the
    ``most`` best scored (``scores``, ``prior`` for one not scored yet)."""
    kept = [
        (node_id, endpoint_key(url))
        for node_id, url in alive
        if node_id in proven and proven[node_id] == endpoint_key(url)
    ]
    kept.sort(key=lambda item: (-scores.get(item[0], prior), item[0]))
    out: list[str] = []
    for _node_id, key in kept:
        if len(out) == most:
            break
        try:  # (an address that does not parse is not dialled)
            out.append(join_host_port(*split_host_port(key)))
        except ValueError:
            continue
    return out


class Keeper:
    """When to write which addresses (pure: ``now`` passed in): a set
    alive that differs from the one kept, never an empty one (a node left
    alone keeps the last), at most every ``every`` seconds (a change within
    them is written at a later call, if it stays)."""

    def __init__(self, kept: list[str], every: float = KEEP_EVERY) -> None:
        self.kept = list(kept)
        self.every = every
        self.kept_at = -float("inf")

    def update(self, alive: list[str], now: float) -> list[str] | None:
        """The addresses to write now (sorted), or None."""
        wanted = sorted(set(alive))[:MAX_LINES]
        if not wanted or wanted == self.kept or now - self.kept_at < self.every:
            return None
        self.kept, self.kept_at = wanted, now
        return wanted
