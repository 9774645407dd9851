"""The CLI's end of a node's control socket: a ZeroMQ ``DEALER`` spoken by
hand over one TCP connection (ZMTP 3.0, the ``NULL`` mechanism: what a
libzmq ``DEALER`` says to the control actor's ``ROUTER`` on loopback).

Importing pyzmq and starting its context (an I/O thread) was a fifth of a
``peercrypt send`` or ``status``'s CPU; this needs only ``socket``. The
bytes on the wire are the same as a libzmq ``DEALER``'s, so the node sees
no difference. What it does not do, since a command needs none of it: other
mechanisms, socket types, heartbeats (a ``PING`` or any other command from
the node is skipped), more than one peer.

Unlike a ``DEALER``, connecting waits for the node's greeting (at most
:data:`HANDSHAKE`; libzmq answers from its I/O thread at once). Like one,
:meth:`Dealer.send` never fails (a message it cannot hand over is dropped:
the reply never comes, which is how a command sees a node that is gone)
and a lost connection is made again by the next :meth:`Dealer.recv`.
Frames from the node are bounded (:data:`MAX_FRAME`): a larger one ends
the connection.
"""

from __future__ import annotations

import math
import select
import socket
import struct
import time

# signature, version 3.0, mechanism NULL, as-server 0, filler
GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)
_READY = b"\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER"  # name, one property
READY = bytes([0x04, len(_READY)]) + _READY  # a short command frame
MORE, LONG, COMMAND = 0x01, 0x02, 0x04
MAX_FRAME = 16 * 1024 * 1024  # bytes of one frame from the node (its replies are < 64 KiB)
RECONNECT = 0.1  # seconds between attempts to connect again (libzmq's default)
HANDSHAKE = 2.0  # seconds the node has to greet (libzmq answers at once, whatever its actor does)


class Closed(Exception):
    """The connection ended, or the node spoke something else than ZMTP."""


def frame(data: bytes, more: bool) -> bytes:
    """One message frame on the wire."""
    flags = MORE if more else 0
    if len(data) < 256:
        return bytes([flags, len(data)]) + data
    return bytes([flags | LONG]) + struct.pack(">Q", len(data)) + data


def _woken(wake: int | None, timeout: float) -> bool:
    """Sleep ``timeout`` seconds, or until descriptor ``wake`` turns
    readable (then True)."""
    if wake is None:
        time.sleep(timeout)
        return False
    poller = select.poll()
    poller.register(wake, select.POLLIN)
    return bool(poller.poll(math.ceil(timeout * 1000)))


class Dealer:
    """A ``DEALER`` connected to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock: socket.socket | None = None
        self.buffer = bytearray()
        self.greeted = False  # the node's greeting arrived
        self.ready = False  # and its READY
        self.frames: list[bytes] = []  # received, not yet returned
        self.next_attempt = 0.0
        # True while it only waits (for the node's bytes, or to connect
        # again): an exception raised then (a Ctrl-C) loses nothing the node
        # sent. A command that follows a send interrupts it only then
        # (peercrypt/cli/follow.py): raised as a reply was read, the reply was lost.
        self.waiting = False
        self._connect()

    def _connect(self, timeout: float = HANDSHAKE) -> None:
        """Connect and greet: ours, then the node's greeting and READY before
        any message (libzmq drops a connection whose first bytes run past
        the greeting before it sent its own)."""
        self.next_attempt = time.monotonic() + RECONNECT
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock, self.buffer, self.greeted, self.ready = sock, bytearray(), False, False
        deadline = time.monotonic() + timeout
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            sock.connect(self.address)
            sock.sendall(GREETING + READY)
            while not self.ready:
                self._read(deadline - time.monotonic())
        except (OSError, Closed):
            self._drop()

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def send(self, frames: list[bytes]) -> None:
        """Send one message (its frames); dropped if there is no connection."""
        if self.sock is None and time.monotonic() >= self.next_attempt:
            self._connect()
        if self.sock is None:
            return
        wire = b"".join(frame(f, i < len(frames) - 1) for i, f in enumerate(frames))
        try:
            self.sock.sendall(wire)
        except OSError:
            self._drop()

    def recv(self, timeout: float, wake: int | None = None, once: bool = False) -> bytes | None:
        """The next frame from the node, or None after ``timeout`` seconds,
        or at once when descriptor ``wake`` (a pipe's end) turns readable.
        ``once``: what is awaited is the answer to a request sent on this
        connection, which another cannot bring: None at once when there is
        none, or it is lost (else it is made again, and waited on)."""
        deadline = time.monotonic() + timeout
        while not self.frames:
            left = deadline - time.monotonic()
            if self.sock is None:
                if left <= 0 or once:
                    return None
                wait = self.next_attempt - time.monotonic()
                if wait > 0:
                    self.waiting = True
                    try:
                        if _woken(wake, min(wait, left)):
                            return None
                    finally:
                        self.waiting = False
                    continue
                self._connect(min(HANDSHAKE, left))
                continue
            try:
                if not self._read(left, wake):
                    return None
            except (OSError, Closed):
                self._drop()
        return self.frames.pop(0)

    def _read(self, timeout: float, wake: int | None = None) -> bool:
        """Read what the node sent within ``timeout`` seconds into frames
        (False: nothing came, or ``wake`` turned readable). Raises Closed or
        OSError."""
        assert self.sock is not None
        # poll, not select: select refuses a descriptor of 1024 or more (a
        # shell or a library user with many files open).
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        if wake is not None:
            poller.register(wake, select.POLLIN)
        self.waiting = True
        try:
            events = poller.poll(math.ceil(timeout * 1000)) if timeout > 0 else []
        finally:
            self.waiting = False
        if wake is not None and any(fd == wake for fd, _ in events):
            return False
        if not events:
            if not self.ready:
                raise Closed("the node did not greet")
            return False
        data = self.sock.recv(65536)
        if not data:
            raise Closed("the node closed the connection")
        self.buffer += data
        self._parse()
        return True

    def _parse(self) -> None:
        """Take what is complete from the buffer: the greeting, commands
        (skipped), message frames (kept). Raises Closed on anything else."""
        buf = self.buffer
        if not self.greeted:
            if len(buf) < 64:
                return
            if buf[0] != 0xFF or buf[9] != 0x7F or buf[10] < 3 or buf[12:16] != b"NULL":
                raise Closed("not a ZMTP 3 NULL peer")
            del buf[:64]
            self.greeted = True
        while len(buf) >= 2:
            flags = buf[0]
            if flags & LONG:
                if len(buf) < 9:
                    return
                (size,) = struct.unpack_from(">Q", buf, 1)
                start = 9
            else:
                size, start = buf[1], 2
            if size > MAX_FRAME or flags & ~(MORE | LONG | COMMAND):
                raise Closed("frame out of bounds")
            if len(buf) < start + size:
                return
            if not flags & COMMAND:
                if not self.ready:
                    raise Closed("a message before the handshake")
                self.frames.append(bytes(buf[start : start + size]))
            elif buf[start : start + 6] == b"\x05READY":
                self.ready = True
            del buf[: start + size]

    def close(self) -> None:
        """Close the connection (what was sent is already with the kernel)."""
        self._drop()
