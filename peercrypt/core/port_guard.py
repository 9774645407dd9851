"""Which TCP connections of a node's listening port it closes, and why.

Pure: no sockets, no clock; the actor that owns the port feeds it what the
kernel and libzmq say and closes what it returns (actors/port_watch.py).
Two ports are guarded: the receiver's data port and the gateway's public
port.

The data port is plain TCP (the bulk is sealed per transfer, not
CURVE-authenticated), so anyone who can reach it can connect, greet and
send frames; the public port takes any member (CURVE with the network key,
any fresh identity). libzmq reads every connection as fast as bytes come
(a capped receive queue lets a peer abort the process: runtime/actor.py,
``PEER_RCVHWM``) and keeps what it read until the actor takes it:
``ZMQ_MAXMSGSIZE`` bounds one frame, nothing bounds the frames of one
message, the messages queued, or the number of connections. Without this
guard one connection sending a multipart message that never ends,
thousands each stopping in the middle of a large frame, or one sending
tiny messages faster than the actor takes them, make the node hold any
amount of memory.

What a connection makes the node hold is measured from outside libzmq:

- ``reads``: per connection, the bytes libzmq has read from it so far
  (TCP's bytes received minus what still waits in the kernel);
- ``delivered``: per address, the bytes the actor took off the socket
  (each frame as it crossed the wire: its ZMTP framing, and under CURVE
  its MESSAGE command's box). libzmq names the address a message came
  from, never the connection, so the account is kept per address.

A connection's handshake is read and never delivered: the owner gives it
as the connection's ``allowance`` (:meth:`PortGuard.accepted`), which its
reads must pass before they count.

At each :meth:`PortGuard.sample`, an address's ``held`` grows by what
its connections' reads grew by and shrinks by what was delivered from it,
never below zero (bytes delivered late build no credit). What it costs in
memory is ``held`` times the address's ratio of memory to wire bytes, from
what was delivered from it lately (:func:`held_memory`, measured: libzmq
keeps every frame in a 64-byte slot, so a flood of one-byte frames costs 21
times its bytes on the wire, 4 times under CURVE, where each box stays in
the engine's read buffer; a chunk's frames cost about their size). Closing frees
what libzmq held of an unfinished message, but whole messages it already
queued stay until the receiver takes them: so when an address's last
connection goes, what it holds becomes its debt, which deliveries from it
pay first; a debt is forgotten once nothing was delivered from the address
for ``DEBT_SAMPLES`` samples (what is left was an unfinished message, which
the close freed), whether or not the address connected again meanwhile.
While the memory held for all addresses together exceeds
:attr:`GuardLimits.held`, every connection of the address costing the most
(its debt included) is closed, costliest first, until the rest fits, but
only of addresses costing more than their share: the bound divided by the
number of addresses with connections that hold anything. An address within
its share is never closed: debts (one's own beyond the share closes its new
connections) cannot get others closed, and what the addresses with
connections hold stays within the bound beside the debts of those without.
Honest senders hold at most their credit (bounded by the receive buffer)
plus a message in progress per connection; a sender whose connection was
closed reconnects and resends what was not acknowledged.

Connections are capped too (:meth:`PortGuard.accepted`): at most
:attr:`GuardLimits.per_address` from one address (a new one beyond it is
closed) and :attr:`GuardLimits.connections` in all (beyond it, the newest
connection of the address with the most is closed), so that a flood of idle
connections costs bounded libzmq state and cannot keep others out for long.

ZMTP commands (the greeting, a sender's heartbeats) are read and never
delivered, so they count as held: 9 bytes a heartbeat, 18 bytes a second
(1.5 MiB a day) per connection at a sender's 500 ms heartbeat, until its
address has no connection left; an address whose connections live for
weeks may be closed once for it, and reconnects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "CURVE_HANDSHAKE",
    "DATA_HANDSHAKE",
    "ENGINE_BUFFER",
    "NULL_HANDSHAKE",
    "GuardLimits",
    "PortGuard",
    "curve_framed_size",
    "framed_size",
    "held_limit",
    "held_memory",
]

Conn = int  # a connection's identity (the receiver uses its socket's inode)


def framed_size(length: int) -> int:
    """Bytes a ZMTP 3 data frame of ``length`` bytes takes on the wire."""
    return length + (2 if length < 256 else 9)


def curve_framed_size(length: int) -> int:
    """Bytes a data frame of ``length`` bytes takes on the wire under CURVE
    (RFC 26): a MESSAGE command of its name, an 8-byte nonce and a box of
    16 bytes of tag, a flags byte and the frame."""
    return framed_size(length + 33)


# What a plain ZMTP connection's handshake takes on the wire, read and never
# delivered: greeting 64, READY ~40 with its socket type.
NULL_HANDSHAKE = 128
# ... a sender's data connection: greeting 64, READY 63 with a DEALER's type
# and its 20-byte routing id (actors/data_pipes.py), room for a few PINGs.
DATA_HANDSHAKE = 192
# What a CURVE connection's handshake takes on the wire, read and never
# delivered: greeting 64, HELLO 202, INITIATE ~301 with a DEALER's metadata.
CURVE_HANDSHAKE = 1024


# The engine's read buffer (libzmq's ZMQ_IN_BATCH_SIZE): a frame that fits
# in it is kept there, not copied out (below).
ENGINE_BUFFER = 8192


def held_memory(length: int, wire: int | None = None) -> int:
    """Bytes of RSS libzmq holds for a queued frame of ``length`` bytes that
    took ``wire`` bytes on the wire (default: plain ZMTP,
    :func:`framed_size`); an over-approximation of what
    ``scripts/bench_queue_memory.py`` measures, docs/benchmarks.md.

    Every frame has a 64-byte message slot. A frame whose body fits in the
    engine's 8 KiB read buffer is kept in that buffer (zero copy) until every
    frame read into it is taken, so it pins about twice its wire bytes (the
    buffer's reference counters, and the message straddling its end copied
    apart: a 4 KiB frame holds a whole buffer), unless it is under 33 bytes
    (copied into its slot, plain ZMTP only; under CURVE the box is what
    stays in the buffer, plus the opened frame: 145 bytes for one byte).
    A larger frame is allocated on its own, with its header."""
    wire = framed_size(length) if wire is None else wire
    if wire > ENGINE_BUFFER:
        return length + 192
    body = wire - (2 if wire < 258 else 9)
    if body < 33:
        return 64
    return 128 + 2 * wire


# Weight of what was delivered before, per message delivered since: an
# address that turns from chunks to a flood of tiny frames is charged for
# them after some hundreds of them.
RATIO_DECAY = 0.99
# Samples (2-20 ms apart) without a delivery from an address after which its
# debt is forgotten, whether or not it has connected again.
DEBT_SAMPLES = 50


def held_limit(receive_buffer: int, max_message: int) -> int:
    """The default bound: the credit the receiver can have out (twice its
    receive buffer while credits shrink) and two messages in progress."""
    return 2 * receive_buffer + 2 * max_message


@dataclass(frozen=True)
class GuardLimits:
    held: int  # memory of what was read from data connections and not delivered, in all
    connections: int = 512  # TCP data connections at once, in all
    # ... from one address: a parallel send's lanes (up to 65), and more
    per_address: int = 128


class PortGuard:
    """Accounts for the data port's TCP connections (see the module docs).
    Never raises on any input."""

    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self._address: dict[Conn, str] = {}  # live connection -> its address, oldest first
        self._reads: dict[Conn, int] = {}  # ... -> its reads at the last sample
        self._held: dict[str, int] = {}  # address -> bytes it holds
        self._delivered: dict[str, int] = {}  # address -> delivered since the last sample
        # address -> decayed sums of the wire bytes and memory it delivered
        self._ratio: dict[str, tuple[float, float]] = {}
        # address -> what it held when its last connection went, not delivered since
        self._debt: dict[str, int] = {}
        self._idle: dict[str, int] = {}  # address with a debt -> samples without delivery

    @property
    def connections(self) -> int:
        return len(self._address)

    @property
    def held(self) -> int:
        """Memory held for all addresses at the last sample, debts included."""
        return sum(self.cost(a) for a in self._held)

    @property
    def debts(self) -> int:
        """Memory held for the addresses without a connection (their debts)."""
        live = self.live()
        return sum(self.cost(a) for a in self._held if a not in live)

    def live(self) -> set[str]:
        """The addresses with a connection."""
        return set(self._address.values())

    @property
    def watching(self) -> bool:
        """Whether any address has a connection or a debt (sample on)."""
        return bool(self._held)

    def cost(self, address: str) -> int:
        """The memory ``address`` holds: its held bytes at its ratio."""
        held = self._held.get(address, 0)
        wire, memory = self._ratio.get(address, (0.0, 0.0))
        return held if wire <= 0 else int(held * max(1.0, memory / wire))

    def accepted(self, conn: Conn, address: str, allowance: int = 0) -> list[Conn]:
        """A new connection from ``address`` whose first ``allowance`` bytes
        read are not counted (its handshake): the connections to close now
        (it, or the newest of the address with the most, or none)."""
        if conn in self._address:
            return []
        if self._count(address) >= self.limits.per_address:
            return [conn]
        self._address[conn] = address
        self._reads[conn] = max(0, allowance)
        self._held.setdefault(address, 0)
        if len(self._address) <= self.limits.connections:
            return []
        counts: dict[str, int] = {}
        for a in self._address.values():
            counts[a] = counts.get(a, 0) + 1
        most = max(counts, key=lambda a: (counts[a], a == address))
        newest = next(c for c in reversed(self._address) if self._address[c] == most)
        self.closed(newest)
        return [newest]

    def closed(self, conn: Conn) -> None:
        """``conn`` is gone (closed by either side); unknown ones are ignored.
        Its address keeps what it holds (see the module docs)."""
        address = self._address.pop(conn, None)
        self._reads.pop(conn, None)
        if address is not None and self._held.get(address, 0) > 0 and self._count(address) == 0:
            self._debt[address] = self._held[address]
            self._idle.setdefault(address, 0)  # a new debt does not renew an old one

    def delivered(self, address: str, nbytes: int, memory: int | None = None) -> None:
        """The receiver took ``nbytes`` (framed) of a message from
        ``address``, which libzmq held in ``memory`` bytes (default: as many)."""
        if address in self._held:
            self._delivered[address] = self._delivered.get(address, 0) + nbytes
            wire, held = self._ratio.get(address, (0.0, 0.0))
            self._ratio[address] = (
                wire * RATIO_DECAY + nbytes,
                held * RATIO_DECAY + (nbytes if memory is None else memory),
            )

    def sample(self, reads: Mapping[Conn, int]) -> list[Conn]:
        """Each live connection's reads so far (one missing from ``reads``
        is taken as unchanged); the connections to close now."""
        for conn, total in reads.items():
            source = self._address.get(conn)
            if source is None:
                continue
            self._held[source] += max(0, total - self._reads[conn])
            self._reads[conn] = max(total, self._reads[conn])
        live = self.live()
        for address in list(self._held):
            delivered = self._delivered.pop(address, 0)
            held = self._held[address] = max(0, self._held[address] - delivered)
            # A debt: whole messages libzmq queued before the close are
            # delivered in turn (they pay it first); once none came for
            # DEBT_SAMPLES samples, what is left was an unfinished message,
            # which the close freed. A new connection does not stop the count.
            debt = min(held, max(0, self._debt.get(address, 0) - delivered))
            idle = 0 if delivered else self._idle.get(address, 0) + 1
            if debt and idle >= DEBT_SAMPLES:
                held = self._held[address] = held - debt
                debt = 0
            if debt:
                self._debt[address] = debt
                self._idle[address] = idle
            else:
                self._debt.pop(address, None)
                self._idle.pop(address, None)
            if address not in live and held == 0:
                self._forget(address)
        close: list[Conn] = []
        total = self.held
        if total <= self.limits.held:
            return close
        # Closing frees no debt at once (see the module docs): an address is
        # closed only for costing more than its share of the bound, debt
        # included, costliest first, until the rest fits.
        holding = [a for a in live if self._held.get(a, 0) > 0]
        share = self.limits.held // max(1, len(holding))
        for worst in sorted(holding, key=self.cost, reverse=True):
            if self.cost(worst) <= share:
                break
            total -= self.cost(worst) - self._debt_cost(worst)
            conns = [c for c, a in self._address.items() if a == worst]
            for conn in conns:
                self.closed(conn)
            close.extend(conns)
            if total <= self.limits.held:
                break
        return close

    def _debt_cost(self, address: str) -> int:
        debt = self._debt.get(address, 0)
        return 0 if debt == 0 else self.cost(address) * debt // max(1, self._held[address])

    def _forget(self, address: str) -> None:
        for table in (self._held, self._delivered, self._ratio, self._debt, self._idle):
            table.pop(address, None)

    def _count(self, address: str) -> int:
        return sum(1 for a in self._address.values() if a == address)
