"""Exit codes of the CLI, by the failure codes that travel in SendResult.

0 success; 1 the transfer failed (timeout, verification, the peer aborted, an
I/O error); 2 a usage error or a local problem (bad option, unreadable file,
no network key); 3 the peer is unreachable; 4 not admitted (wrong network key
or not on the peer's allow-list); 5 the peer refused the file.
"""

from __future__ import annotations

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
NOT_ADMITTED = 4
REFUSED = 5

EXIT_CODES: dict[str, int] = {
    "ok": OK,
    "local": USAGE,
    "unreachable": UNREACHABLE,
    "handshake": NOT_ADMITTED,
    "not-admitted": NOT_ADMITTED,
    "refused": REFUSED,
}


def exit_code(code: str) -> int:
    return EXIT_CODES.get(code, FAILED)
