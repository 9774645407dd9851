"""Result codes of transfers and checks, and the CLI's exit code for each.

A :class:`ResultCode` travels as text in ``SendResult``, ``Failed``,
``Refuse`` and the multicast results (it is a ``StrEnum``, so it compares
equal to the text on the wire).  :data:`EXIT_CODES` maps it to the process
exit status: 0 success; 1 the transfer failed (timeout, verification, the
peer aborted, an I/O error); 2 a usage error or a local problem (bad option,
unreadable file, no network key); 3 the peer is unreachable; 4 not admitted
or not authentic (wrong network key, not on the peer's allow-list, or the
receiver could not prove its identity or is not the one expected at that
address); 5 the peer refused the file.
"""

from __future__ import annotations

import enum

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
NOT_ADMITTED = 4
REFUSED = 5


class ResultCode(enum.StrEnum):
    """How a transfer, a target or a connection attempt ended."""

    OK = "ok"
    LOCAL = "local"  # a local problem: bad request, unreadable file
    UNREACHABLE = "unreachable"
    HANDSHAKE = "handshake"  # CURVE handshake failed: wrong network key
    NOT_ADMITTED = "not-admitted"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    VERIFY = "verify"  # the stored file's hash differs
    # The receiver's whole-file hash (or its check of a copy it held) differs
    # from the sender's: it stored nothing (a kept part is discarded).
    HASH_MISMATCH = "hash-mismatch"
    IO = "io"  # the receiver cannot write
    NO_SPACE = "no-space"  # the receiver's disk filled mid-transfer (its part is kept)
    ABORTED = "aborted"  # the other side gave up
    PROTOCOL = "protocol"  # the peer broke the protocol
    CANCELLED = "cancelled"
    FAILED = "failed"  # a multicast target reported a failure
    IMPOSTOR = "impostor"  # the receiver could not prove the identity it named
    UNTRUSTED = "untrusted"  # a proven identity, but not the one expected there
    # A send without targets to a node whose default mode is multicast: the
    # CLI asks again as a multicast (peercrypt.cli.fast).
    MULTICAST_DEFAULT = "multicast-default"


# Outcomes that say nothing of the peer's reliability (health's score): a
# send refused for a local reason or cancelled; a refusal of the file (busy,
# a quota, its policy: it answered at once); its word that a newer offer of
# this node's own took the transfer over; an identity other than the one
# expected at that address, or none it could prove (not the member's doing).
NOT_THE_PEERS: frozenset[str] = frozenset(
    {
        ResultCode.CANCELLED,
        ResultCode.LOCAL,
        ResultCode.MULTICAST_DEFAULT,
        ResultCode.REFUSED,
        ResultCode.ABORTED,
        ResultCode.UNTRUSTED,
        ResultCode.IMPOSTOR,
    }
)


EXIT_CODES: dict[ResultCode, int] = {
    ResultCode.OK: OK,
    ResultCode.LOCAL: USAGE,
    ResultCode.MULTICAST_DEFAULT: USAGE,
    ResultCode.UNREACHABLE: UNREACHABLE,
    ResultCode.HANDSHAKE: NOT_ADMITTED,
    ResultCode.NOT_ADMITTED: NOT_ADMITTED,
    ResultCode.IMPOSTOR: NOT_ADMITTED,
    ResultCode.UNTRUSTED: NOT_ADMITTED,
    ResultCode.REFUSED: REFUSED,
}


class CommandError(Exception):
    """A command ended without its result (the node stopped, the user
    interrupted it): one line for the user and the exit status. The CLI
    prints it as ``peercrypt: error: LINE``."""

    def __init__(self, line: str, exit_code: int) -> None:
        super().__init__(line)
        self.exit_code = exit_code


def exit_code(code: str) -> int:
    """The exit status for a result code as received (unknown text: 1)."""
    try:
        return EXIT_CODES.get(ResultCode(code), FAILED)
    except ValueError:
        return FAILED
