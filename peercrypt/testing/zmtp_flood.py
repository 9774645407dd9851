"""A hostile ZeroMQ peer that speaks ZMTP 3.1 by hand, for tests.

libzmq 4.3.5 aborts the process (``Assertion failed: !_io_error
(src/stream_engine_base.cpp:310)``) when a connection's input was stopped
by a full receive queue with bytes still in its read buffer, the peer then
resets the connection (the engine marks it failed and stops polling it),
and the application drains its queue: the engine decodes the rest of the
buffer, and a heartbeat ``PING`` in it makes the engine write its ``PONG``
on the failed connection. Any peer can send PINGs, whatever the heartbeat
options of the socket it talks to. :func:`flood_and_reset` does exactly
that: many tiny messages with a PING between every few, then a reset
(``SO_LINGER`` 0).

:class:`RawDataPeer` is one such connection to a data port, greeted by
hand, that does what no ZeroMQ socket does: stop in the middle of a frame
(:func:`frame_header` announces one of any size), or send a multipart
message that never ends (libzmq keeps every frame of a message until its
last one, whatever ``ZMQ_MAXMSGSIZE`` says per frame).

Only to hosts and ports the caller gives (tests use loopback), every
operation with a timeout.
"""

from __future__ import annotations

import os
import socket
import struct
import time

from nacl.public import Box, PrivateKey, PublicKey

WAIT = 10.0

# ZMTP 3.1 greeting: signature, version 3.1, mechanism NULL, as-server 0.
GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31)
PING = b"\x04\x07\x04PING\x00\x00"  # command frame: name, TTL 0, no context


def _command(name: bytes, body: bytes) -> bytes:
    payload = bytes([len(name)]) + name + body
    if len(payload) < 256:
        return bytes([0x04, len(payload)]) + payload
    return b"\x06" + struct.pack(">Q", len(payload)) + payload


def _ready(socket_type: bytes) -> bytes:
    prop = b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    return _command(b"READY", prop)


def _tiny(topic: bytes = b"") -> bytes:
    """A message of one byte after ``topic``, one last frame."""
    return bytes([0x00, len(topic) + 1]) + topic + b"x"


def _flood(messages: int, ping_every: int, topic: bytes = b"") -> bytes:
    """``messages`` messages of one byte after ``topic`` with a PING after
    every ``ping_every``."""
    block = _tiny(topic) * ping_every + PING
    return block * (messages // ping_every)


def flood_and_reset(
    host: str,
    port: int,
    messages: int = 50_000,
    ping_every: int = 3,
    timeout: float = WAIT,
    socket_type: bytes = b"DEALER",
) -> None:
    """Connect to the socket at ``host:port`` (a ROUTER; as ``SUB``, to a
    PUB or XPUB, whose subscriptions are such messages) as a
    ``socket_type``, send ``messages`` tiny messages with PINGs among them
    as fast as the peer takes them, and reset the connection."""
    sock = socket.create_connection((host, port), timeout=timeout)
    flood_and_reset_on(sock, messages, ping_every, timeout, socket_type)


def flood_and_reset_on(
    sock: socket.socket,
    messages: int = 50_000,
    ping_every: int = 3,
    timeout: float = WAIT,
    socket_type: bytes = b"DEALER",
    topic: bytes = b"",
) -> None:
    """:func:`flood_and_reset` on a connection made already (one a node
    made to us: as ``PUB``, to its SUB, each message after ``topic``, which
    its subscription takes)."""
    sock.settimeout(timeout)
    try:
        sock.sendall(GREETING + _ready(socket_type))
        # The peer's greeting and READY: its engine is up and reading (a
        # flood and reset that beat it there would test nothing).
        _exactly(sock, len(GREETING))
        _read_command(sock)
        deadline = time.monotonic() + timeout
        data = memoryview(_flood(messages, ping_every, topic))
        while data and time.monotonic() < deadline:
            sent = sock.send(data[: 1 << 16])
            data = data[sent:]
    except OSError:
        pass  # the peer may drop the connection first: nothing to reset then
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class _CurveClient:
    """The client side of a CURVE handshake (ZMTP 3.1, RFC 26) over a raw
    socket, then MESSAGE commands sealed with the session's keys."""

    def __init__(self, sock: socket.socket, server_public: bytes, client: PrivateKey) -> None:
        self.sock, self.nonce = sock, 0
        transient = PrivateKey.generate()
        server = PublicKey(server_public)
        sock.sendall(GREETING.replace(b"NULL".ljust(20, b"\0"), b"CURVE".ljust(20, b"\0")))
        _exactly(sock, len(GREETING))
        nonce = self._nonce(b"CurveZMQHELLO---")
        hello = Box(transient, server).encrypt(bytes(64), nonce).ciphertext
        body = b"\x01\x00" + bytes(72) + bytes(transient.public_key) + nonce[16:] + hello
        sock.sendall(_command(b"HELLO", body))
        welcome = _read_command(sock)
        assert welcome.startswith(b"\x07WELCOME"), welcome[:16]
        long_nonce = welcome[8:24]
        opened = Box(transient, server).decrypt(welcome[24:], b"WELCOME-" + long_nonce)
        server_transient, cookie = PublicKey(opened[:32]), opened[32:]
        vouch_nonce = os.urandom(16)
        vouch = Box(client, server_transient).encrypt(
            bytes(transient.public_key) + server_public, b"VOUCH---" + vouch_nonce
        )
        metadata = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
        self.box = Box(transient, server_transient)
        inner = bytes(client.public_key) + vouch_nonce + vouch.ciphertext + metadata
        nonce = self._nonce(b"CurveZMQINITIATE")
        initiate = self.box.encrypt(inner, nonce).ciphertext
        sock.sendall(_command(b"INITIATE", cookie + nonce[16:] + initiate))
        ready = _read_command(sock)
        assert ready.startswith(b"\x05READY"), ready[:16]

    def _nonce(self, prefix: bytes) -> bytes:
        self.nonce += 1
        return prefix + struct.pack(">Q", self.nonce)

    def message(self, flags: int, payload: bytes) -> bytes:
        """One MESSAGE frame: ``flags`` 0 (a last frame) or 2 (a command)."""
        nonce = self._nonce(b"CurveZMQMESSAGEC")
        sealed = self.box.encrypt(bytes([flags]) + payload, nonce).ciphertext
        body = b"\x07MESSAGE" + nonce[16:] + sealed
        return bytes([0x00, len(body)]) + body


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise ConnectionError("the peer closed during the handshake")
        data += more
    return data


def _read_command(sock: socket.socket) -> bytes:
    flags = _exactly(sock, 1)[0]
    size = struct.unpack(">Q", _exactly(sock, 8))[0] if flags & 0x02 else _exactly(sock, 1)[0]
    return _exactly(sock, size)


def curve_flood_and_reset(
    host: str,
    port: int,
    server_public: bytes,
    messages: int = 30_000,
    ping_every: int = 3,
    timeout: float = WAIT,
    source: str = "",
) -> None:
    """:func:`flood_and_reset` against a CURVE server (a node's gateway),
    as a client with a fresh key, from the local address ``source`` if
    given; ``server_public`` is the server's 32-byte public key (what the
    network key gives every member)."""
    sock = socket.create_connection(
        (host, port), timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        client = _CurveClient(sock, server_public, PrivateKey.generate())
        block = []
        for i in range(messages):
            block.append(client.message(0, b"x"))
            if i % ping_every == ping_every - 1:
                block.append(client.message(2, PING[2:]))
        data = memoryview(b"".join(block))
        deadline = time.monotonic() + timeout
        while data and time.monotonic() < deadline:
            sent = sock.send(data[: 1 << 16])
            data = data[sent:]
    except OSError:
        pass
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class CurveMember:
    """One connection to a CURVE server (a node's gateway) as a member with
    a fresh key, from the local address ``source`` if given: it floods
    messages of one byte while the node reads them, and sees whether the
    node closed it."""

    def __init__(self, host: str, port: int, server_public: bytes, source: str = "") -> None:
        self.sock = socket.create_connection(
            (host, port), timeout=WAIT, source_address=(source, 0) if source else None
        )
        self.client = _CurveClient(self.sock, server_public, PrivateKey.generate())

    def flood(self, messages: int, seconds: float = WAIT, block: int = 65_536) -> int:
        """Send ``messages`` one-byte messages (sealed one by one, as the
        node needs) for at most about ``seconds``; how many were sent
        before the node closed the connection, or time was up."""
        sent = 0
        deadline = time.monotonic() + seconds
        while sent < messages and time.monotonic() < deadline:
            count = min(block, messages - sent)
            data = b"".join(self.client.message(0, b"x") for _ in range(count))
            try:
                self.sock.sendall(data)
            except OSError:
                return sent
            sent += count
        return sent

    def closed_by_node(self, timeout: float) -> bool:
        """Whether the node closed this connection within ``timeout`` s."""
        return _closed_by_peer(self.sock, timeout)

    def close(self) -> None:
        self.sock.close()


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the peer closed ``sock`` within ``timeout`` s (what it sends
    meanwhile is read and thrown away)."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                return True
    except TimeoutError:
        return False
    except OSError:
        return True
    return False


def frame_header(size: int, more: bool) -> bytes:
    """The header of a long data frame of ``size`` bytes."""
    return bytes([0x02 | (0x01 if more else 0)]) + struct.pack(">Q", size)


class RawDataPeer:
    """One TCP connection to a data port, greeted by hand as a DEALER (NULL
    mechanism; or as ``socket_type``), from the local address ``source`` if
    given."""

    def __init__(
        self, host: str, port: int, source: str = "", socket_type: bytes = b"DEALER"
    ) -> None:
        self.sock = socket.create_connection(
            (host, port), timeout=WAIT, source_address=(source, 0) if source else None
        )
        self.socket_type = socket_type

    @classmethod
    def accepted(cls, sock: socket.socket, socket_type: bytes = b"ROUTER") -> RawDataPeer:
        """A connection a node made to a port of ours, greeted by hand as
        ``socket_type`` (what a data port is)."""
        peer = cls.__new__(cls)
        sock.settimeout(WAIT)
        peer.sock, peer.socket_type = sock, socket_type
        return peer

    def greet(self) -> None:
        """Our greeting and READY (the node's greeting is left unread)."""
        self.sock.sendall(GREETING + _ready(self.socket_type))

    def handshake(self) -> None:
        """Greet, and read the node's greeting and READY: its engine is up
        and reading (frames that beat it there get the connection reset)."""
        self.greet()
        _exactly(self.sock, len(GREETING))
        _read_command(self.sock)

    def send(self, data: bytes) -> bool:
        """Send ``data``; False if the node closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:  # reset, broken pipe, or a timeout against a closed window
            return False
        return True

    def closed_by_node(self, timeout: float) -> bool:
        """Whether the node closed this connection within ``timeout`` s
        (everything it sends is read and thrown away)."""
        return _closed_by_peer(self.sock, timeout)

    def close(self) -> None:
        self.sock.close()


MiB = 1 << 20


def flood_until_closed(peer: RawDataPeer, megabytes: int = 64, topic: bytes = b"") -> int | None:
    """Handshake, then one-byte messages (3 bytes on the wire each; after
    ``topic``, which a SUB's subscription takes) in blocks of a MiB until the
    node closes ``peer`` or ``megabytes`` were sent (22 million messages for
    64); the MiB sent before the node closed it, None if it did not."""
    one = _tiny(topic)
    block = one * (MiB // len(one))  # 349,525 messages of one byte
    try:
        peer.handshake()
        sent = 0
        while sent < megabytes and peer.send(block):
            sent += 1
        return sent if peer.closed_by_node(WAIT) else None
    finally:
        peer.close()
