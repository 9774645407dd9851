"""Whom a sender trusts at an address: pins, known peers, gossip (pure).

Like SSH's ``known_hosts``: the first time a node proves an identity at an
address (``host:port``), that fingerprint is recorded; later, a different
key at the same address is refused until the user accepts the change
(``peercrypt trust HOST PORT FINGERPRINT``). ``send --expect FP`` pins one
fingerprint for one send, whatever the file says. Signed membership records
count: a fingerprint that a member's own signed record lists at this address
is known; on first contact, an address that members' records assign only to
*other* keys is refused (someone else answered at a member's address).

The check runs on a fingerprint the peer *proved* (crypto/handshake.py), never
on one it merely claimed. The file format is one ``ADDRESS FINGERPRINT`` per
line, ``#`` comments allowed; :func:`parse` skips what it cannot read and
:func:`dumps` writes entries sorted, so the file diffs well.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from peercrypt.core.address import canonical_host, join_host_port
from peercrypt.crypto.identity import normalise_fingerprint

MAX_ENTRIES = 100_000  # a file beyond this is read only up to here
RACY_NS = 2_000_000_000  # a file changed this recently is read again at each check


class Verdict(enum.Enum):
    KNOWN = "known"  # the file (or a signed record) already has this key here
    NEW = "new"  # first contact: record it
    PINNED = "pinned"  # --expect matched
    CHANGED = "changed"  # another key is recorded for this address
    MISMATCH = "mismatch"  # --expect names another key
    CLAIMED = "claimed"  # members' signed records assign this address to others


TRUSTED = frozenset({Verdict.KNOWN, Verdict.NEW, Verdict.PINNED})


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    proven: str  # the fingerprint the peer proved
    expected: str = ""  # what the pin, the file or the records said instead

    @property
    def trusted(self) -> bool:
        return self.verdict in TRUSTED


def normalise_address(host: str, port: int) -> str:
    """``host:port`` as recorded: one spelling per host (core/address.py)."""
    return join_host_port(canonical_host(host), port)


def parse(text: str) -> dict[str, str]:
    """``address -> fingerprint`` from the file's text; unreadable lines are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) != 2:
            continue
        try:
            out[parts[0]] = normalise_fingerprint(parts[1])
        except ValueError:
            continue
        if len(out) >= MAX_ENTRIES:
            break
    return out


def dumps(entries: dict[str, str]) -> str:
    head = "# PeerCrypt known peers: ADDRESS FINGERPRINT (proven keys; see `peercrypt trust`)\n"
    return head + "".join(f"{a} {fp}\n" for a, fp in sorted(entries.items()))


def decide(
    known: dict[str, str],
    address: str,
    proven: str,
    expect: str = "",
    members_here: Iterable[str] = (),
) -> Decision:
    """Should a sender trust the key ``proven`` at ``address``?

    ``expect`` (normalised) overrides everything; else the recorded entry;
    else the fingerprints members' signed records list at this address.
    """
    if expect:
        if proven == expect:
            return Decision(Verdict.PINNED, proven)
        return Decision(Verdict.MISMATCH, proven, expect)
    recorded = known.get(address)
    if recorded is not None:
        if recorded == proven:
            return Decision(Verdict.KNOWN, proven)
        return Decision(Verdict.CHANGED, proven, recorded)
    members = sorted(set(members_here))
    if proven in members:
        return Decision(Verdict.KNOWN, proven)
    if members:
        return Decision(Verdict.CLAIMED, proven, members[0])
    return Decision(Verdict.NEW, proven)


def pin_of(pins: Sequence[str], proven: str) -> str:
    """The pin one of several receivers is held to (``send -m --expect FP
    ...``, normalised): its proven fingerprint if that is one of ``pins``,
    else all of them (so :func:`decide` refuses, naming them); "" for none."""
    if not pins or proven in pins:
        return proven if pins else ""
    return " or ".join(pins)


def changed_here(
    data_dir: Path,
    host: str,
    port: int,
    proven: str,
    expect: str = "",
    outcome: str = "nothing was sent",
) -> str:
    """The warning a send to ``host``:``port`` would end with (:func:`explain`,
    saying ``outcome``: a health check sent nothing, a send there is refused)
    if the node's known-peers file holds another key there than ``proven``
    (what a health check saw) and the send pins none (``expect``: its
    ``--expect``, which has the last word); "" if not."""
    if not proven:
        return ""
    try:
        pinned = normalise_fingerprint(expect) if expect else ""
    except ValueError:  # (the send says what is wrong with it)
        return ""
    known = KnownPeersFile(data_dir).load()
    decision = decide(known, normalise_address(host, port), proven, pinned)
    return explain(decision, host, port, outcome) if decision.verdict is Verdict.CHANGED else ""


def explain(decision: Decision, host: str, port: int, outcome: str = "nothing was sent") -> str:
    """One line for the user about a refused key, naming both fingerprints,
    ``outcome`` and what to do."""
    addr = normalise_address(host, port)
    accept = f"`peercrypt trust {host} {port} {decision.proven}`"
    if decision.verdict is Verdict.MISMATCH:
        return (
            f"{addr} proved key {decision.proven}, not the expected {decision.expected}; "
            "nothing was sent"
        )
    if decision.verdict is Verdict.CHANGED:
        return (
            f"WARNING: the key at {addr} changed: known {decision.expected}, now "
            f"{decision.proven}; {outcome}. If the change is expected, run: {accept}"
        )
    if decision.verdict is Verdict.CLAIMED:
        return (
            f"{addr} proved key {decision.proven}, but members' signed records name "
            f"{decision.expected} at that address; nothing was sent. If it is right, run: {accept}"
        )
    return f"{addr} is trusted ({decision.verdict.value})"


FILE_NAME = "known_peers"


class UnreadablePins(Exception):
    """The known-peers file is there but cannot be read as a file (a
    directory, a FIFO, no permission, a disk error): a send cannot tell whom
    it trusts, so the request that needed it fails with this line; the
    node goes on."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"cannot read the known-peers file {path}: {why}")


def _not_a_file(mode: int) -> str:
    """Why a file of this ``mode`` is no known-peers file ("": it is one)."""
    if stat.S_ISREG(mode):
        return ""
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    kind = next((name for test, name in kinds if test(mode)), "a device")
    return f"it is {kind}, not a readable file"


def _no_read(exc: OSError) -> str:
    return f"not a readable file ({exc.strerror or exc})"


class KnownPeersFile:
    """The known-peers file in a node's data directory (mode 0600).

    Looked at on every check (``peercrypt trust`` may change it while the
    node runs), read again only when its identity, size, modification or
    change time changed, or that change is within RACY_NS of now; written
    under an exclusive ``flock`` with an atomic replace, so the sender and
    the multicast sender never lose each other's entries.
    """

    def __init__(self, data_dir: Path, racy_ns: int = RACY_NS) -> None:
        self.path = data_dir / FILE_NAME
        self.racy_ns = racy_ns
        self._seen: tuple[tuple[int, ...], dict[str, str]] | None = None

    def load(self) -> dict[str, str]:
        """``address -> fingerprint`` as the file has them ({}: no file).
        Raises :class:`UnreadablePins`."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UnreadablePins(self.path, _no_read(exc)) from None
        # The change time too: every write, and a modification time set back
        # (`touch -d`, `cp -p` into the file), sets it, and nobody can set it.
        version = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if self._seen is not None and self._seen[0] == version:
            return dict(self._seen[1])
        entries = self._read()
        # Kept only once that change is well away from now (git's "racy"
        # rule): a filesystem's clock ticks in milliseconds on many kernels,
        # so an edit of the same size in the same tick would look unchanged;
        # a change time ahead of the clock (set back since) is no older.
        if abs(time.time_ns() - info.st_ctime_ns) > self.racy_ns:
            self._seen = (version, entries)
        return dict(entries)

    def _read(self) -> dict[str, str]:
        try:
            # Not blocking on a FIFO (its open waits for a writer): refused below.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UnreadablePins(self.path, _no_read(exc)) from None
        try:
            if why := _not_a_file(os.fstat(fd).st_mode):
                raise UnreadablePins(self.path, why)
            with open(fd, "rb", closefd=False) as f:
                data = f.read(MAX_ENTRIES * 128)
        except OSError as exc:
            raise UnreadablePins(self.path, _no_read(exc)) from None
        finally:
            os.close(fd)
        return parse(data.decode("utf-8", errors="replace"))

    def set(self, address: str, fp: str, *, replace: bool) -> bool:
        """Record ``fp`` at ``address``. Without ``replace`` an existing entry
        wins (first contact only). Returns whether the file changed. Raises
        OSError, or :class:`UnreadablePins` for a file there it cannot read."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(self.path.with_name(FILE_NAME + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            entries = self._read()  # (under the lock: what another writer left)
            if entries.get(address) == fp or (address in entries and not replace):
                return False
            entries[address] = fp
            tmp = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(dumps(entries))
            os.replace(tmp, self.path)
            return True
        finally:
            os.close(lock_fd)

    def check(
        self, host: str, port: int, proven: str, expect: str = "", members_here: Iterable[str] = ()
    ) -> Decision:
        """:func:`decide` against the file; a first contact is recorded.
        An unwritable file does not stop a transfer (the check still holds);
        one that cannot be read does: raises :class:`UnreadablePins`."""
        address = normalise_address(host, port)
        known = self.load()
        decision = decide(known, address, proven, expect, members_here)
        # (A key the file already has here is not written again: no lock, no
        # second read, once per send to a known peer.)
        recorded = known.get(address) == proven
        if decision.verdict in (Verdict.NEW, Verdict.KNOWN) and not expect and not recorded:
            with contextlib.suppress(OSError):
                self.set(address, proven, replace=False)
        return decision
