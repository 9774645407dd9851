"""Anti-replay window over the nonces of one transfer direction.

Pure. A sealed frame's nonce is ``lane (32 bits) || counter (64 bits)``
(:mod:`peercrypt.crypto.transfer`): every seal takes the next counter of its
lane, retransmissions included, so an honest sender never uses a nonce twice
and, on one connection per lane, delivers them nearly in order. A frame whose
nonce was already accepted, or is more than ``WINDOW`` counters behind the
highest seen on its lane, is a replay (or hopelessly late) and is refused, as
in IPsec's ESP (RFC 4303, 3.4.3). Lanes above ``MAX_LANES`` are refused, so
the state is bounded: ``MAX_LANES`` x ``WINDOW`` bits at most.

Use: :meth:`ReplayWindow.fresh` before opening (cheap refusal), and
:meth:`ReplayWindow.accept` only once the frame authenticated, so forged
frames can never move the window.
"""

from __future__ import annotations

import struct

WINDOW = 4096  # counters behind the highest seen that are still told apart
MAX_LANES = 256  # lane numbers 0..MAX_LANES-1 (parallel mode uses at most 65)
_NONCE = struct.Struct(">IQ")


class ReplayWindow:
    __slots__ = ("_lanes",)

    def __init__(self) -> None:
        # lane -> (highest counter seen, bitmask: bit i = highest - i seen)
        self._lanes: dict[int, tuple[int, int]] = {}

    @staticmethod
    def _split(nonce: bytes) -> tuple[int, int] | None:
        if len(nonce) != _NONCE.size:
            return None
        lane, counter = _NONCE.unpack(nonce)
        return (lane, counter) if lane < MAX_LANES else None

    def fresh(self, nonce: bytes) -> bool:
        """Whether a frame with ``nonce`` may be new (not yet accepted)."""
        parts = self._split(nonce)
        if parts is None:
            return False
        lane, counter = parts
        state = self._lanes.get(lane)
        if state is None:
            return True
        highest, seen = state
        if counter > highest:
            return True
        behind = highest - counter
        return behind < WINDOW and not (seen >> behind) & 1

    def accept(self, nonce: bytes) -> bool:
        """Record an authenticated frame's nonce; False if it was a replay."""
        if not self.fresh(nonce):
            return False
        parts = self._split(nonce)
        assert parts is not None  # fresh() checked it
        lane, counter = parts
        highest, seen = self._lanes.get(lane, (counter, 0))
        if counter > highest:
            seen = (seen << (counter - highest)) if counter - highest < WINDOW else 0
            highest = counter
        seen |= 1 << (highest - counter)
        self._lanes[lane] = (highest, seen & ((1 << WINDOW) - 1))
        return True
