"""Tests for DelayProxy: a TCP proxy that delays each byte stream a fixed time.

Real sockets on loopback, no nodes. Delays and rate caps are checked from
below only (a delayed byte can never arrive sooner than the delay allows,
however loaded the machine); how close to it a path comes is for
``scripts/bench_wan.py``. Every wait has a timeout.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time

import blake3
import pytest

from peercrypt.testing.faults import DELAY_READ, DelayProxy, WanLink
from peercrypt.testing.nodes import wait_until

MiB = 2**20
# Monotonic clocks of two threads of one process agree; this only absorbs
# the rounding of a timer's wake-up.
EPSILON = 0.002


def _server() -> socket.socket:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    return server


def _echo(server: socket.socket) -> None:
    """Echo one connection's bytes back until it half-closes."""
    conn, _ = server.accept()
    with conn:
        while chunk := conn.recv(65536):
            conn.sendall(chunk)
        conn.shutdown(socket.SHUT_WR)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(65536, n - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def test_each_way_is_delayed_and_the_bytes_pass_intact() -> None:
    delay = 0.05
    server = _server()
    threading.Thread(target=_echo, args=(server,), daemon=True).start()
    payload = os.urandom(4 * MiB)
    with DelayProxy(server.getsockname(), WanLink(delay)) as proxy:
        connected = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
            # A TCP handshake: the server sees the connection and the
            # client's first byte 1.5 round trips after the connect, its
            # answer comes back half a round trip later.
            sock.sendall(b"p")
            assert sock.recv(1) == b"p"
            assert time.monotonic() - connected >= 4 * delay - EPSILON
            # On the open connection, a round trip is two delays.
            started = time.monotonic()
            sock.sendall(b"q")
            assert sock.recv(1) == b"q"
            assert time.monotonic() - started >= 2 * delay - EPSILON
            # Megabytes both ways at once, in order and intact.
            sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
            sender.start()
            echoed = _recv_exactly(sock, len(payload))
            sender.join(30)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""  # the half close passed both ways
        assert blake3.blake3(echoed).digest() == blake3.blake3(payload).digest()
        assert proxy.forwarded == [2 + len(payload)]
    server.close()


def test_a_full_line_holds_its_bound_and_pushes_back_on_the_sender() -> None:
    """A backend that reads nothing: the proxy holds at most its buffer
    (and one read) per direction; the rest waits in the sender's socket."""
    bound = 1 * MiB
    total = 64 * MiB
    payload = os.urandom(total)
    server = _server()
    sent = [0]

    def send(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            view = memoryview(payload)
            while sent[0] < total:
                sent[0] += sock.send(view[sent[0] : sent[0] + 65536])
            sock.shutdown(socket.SHUT_WR)
            sock.recv(1)  # until the proxy closes (or the test's end)

    with DelayProxy(server.getsockname(), WanLink(0.01), buffer=bound) as proxy:
        client = threading.Thread(target=send, args=(proxy.port,), daemon=True)
        client.start()
        conn, _ = server.accept()
        # Until the sender is stuck: nothing more left it for a while. The
        # kernel's buffers on the way take a few MiB; the proxy only its bound.
        previous = [-1]

        def stalled() -> bool:
            now = sent[0]
            same = now == previous[0] and now > 0
            previous[0] = now
            return same

        wait_until(stalled, timeout=30, what="the sender to stall", interval=0.3)
        assert sent[0] < total  # pushed back, not read into memory
        assert proxy.peak_held <= bound + DELAY_READ
        # Then everything arrives intact.
        hasher = blake3.blake3()
        got = 0
        with conn:
            conn.settimeout(30)
            while chunk := conn.recv(1 << 20):
                hasher.update(chunk)
                got += len(chunk)
        assert got == total
        assert hasher.digest() == blake3.blake3(payload).digest()
        assert proxy.peak_held <= bound + DELAY_READ
    client.join(10)
    server.close()


def test_a_rate_cap_is_shared_by_the_connections_of_the_link() -> None:
    rate = 4 * MiB
    size = 1 * MiB
    link = WanLink(0.0, rate)
    server = _server()
    for _ in range(2):
        threading.Thread(target=_echo, args=(server,), daemon=True).start()
    payloads = [os.urandom(size), os.urandom(size)]
    replies: dict[int, bytes] = {}

    def send(port: int, slot: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(payloads[slot])  # the proxy's lines hold it all: no deadlock
            sock.shutdown(socket.SHUT_WR)
            replies[slot] = _recv_exactly(sock, size)

    with DelayProxy(server.getsockname(), link) as proxy:
        started = time.monotonic()
        clients = [threading.Thread(target=send, args=(proxy.port, i)) for i in range(2)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(60)
        seconds = time.monotonic() - started
    server.close()
    for i, payload in enumerate(payloads):
        assert blake3.blake3(replies[i]).digest() == blake3.blake3(payload).digest()
    # Both connections' bytes took one link: never faster than its rate
    # (less the first reads, which the link's slack lets go at once).
    assert seconds >= (2 * size - 2 * DELAY_READ) / rate


def test_stop_cannot_hang() -> None:
    """Stop with a connection waiting for its handshake delay, and one whose
    line is full towards a backend that reads nothing (its writer blocked
    in a send): it returns within its bound and every thread has ended."""
    server = _server()
    slow = DelayProxy(server.getsockname(), WanLink(30.0)).start()
    stuck = DelayProxy(server.getsockname(), WanLink(0.0), buffer=256 * 1024).start()
    clients = [socket.create_connection(("127.0.0.1", p.port), timeout=30) for p in (slow, stuck)]
    for c in clients:
        c.setblocking(False)
    pushed = 0
    deadline = time.monotonic() + 30
    block = os.urandom(65536)
    while stuck.peak_held < 256 * 1024 and time.monotonic() < deadline:
        for c in clients:
            try:
                pushed += c.send(block)
            except BlockingIOError:  # full: wait until it takes more (or the deadline)
                select.select([], [c], [], 0.1)
    assert stuck.peak_held >= 256 * 1024  # its line is full: the writer is blocked
    for proxy in (slow, stuck):
        started = time.monotonic()
        proxy.stop(timeout=5.0)
        assert time.monotonic() - started < 10.0  # loose: a loaded machine's joins
        assert not [t.name for t in proxy._threads if t.is_alive()]
    for c in clients:
        c.close()
    server.close()


def test_a_backend_that_refuses_closes_the_client() -> None:
    # Bound, never listening: a connect is refused, and the port stays ours
    # (a port closed again was taken by another test's listener meanwhile,
    # which then accepted the proxy's connect: this waited out its 30 s).
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    dead = holder.getsockname()
    with (
        holder,
        DelayProxy(dead, WanLink(0.001)) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock,
    ):
        sock.sendall(b"hello")
        assert sock.recv(1) == b""


@pytest.mark.parametrize(("delay", "rate", "buffer"), [(-1.0, 0.0, 1), (0.0, -1.0, 1)])
def test_bad_arguments_are_refused(delay: float, rate: float, buffer: int) -> None:
    with pytest.raises(ValueError):
        DelayProxy(("127.0.0.1", 1), WanLink(delay, rate), buffer=buffer)


def test_a_buffer_below_one_byte_is_refused() -> None:
    with pytest.raises(ValueError):
        DelayProxy(("127.0.0.1", 1), WanLink(0.0), buffer=0)
