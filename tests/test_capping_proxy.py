"""Tests for CappingProxy: a TCP proxy that caps every connection on its own.

Real sockets on loopback, no nodes: two clients send through the proxy at
once, a server answers each with the BLAKE3 of what it got. The cap is
checked from below only (a capped connection can never be faster than its
rate allows, however loaded the machine); how close it comes to the rate is
for ``scripts/bench_parallel.py``.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import blake3
import pytest

from peercrypt.testing.faults import CappingProxy

RATE = 2 * 2**20  # bytes/s per connection
BURST = 64 * 1024
SIZE = 512 * 1024


def _serve(server: socket.socket, connections: int) -> None:
    """Answer each connection with the BLAKE3 of everything it sent."""

    def answer(conn: socket.socket) -> None:
        with conn:
            hasher = blake3.blake3()
            while chunk := conn.recv(65536):
                hasher.update(chunk)
            conn.sendall(hasher.digest())

    for _ in range(connections):
        conn, _ = server.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def _send(port: int, payload: bytes, out: dict[int, tuple[float, bytes]], slot: int) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while len(reply) < 32 and (chunk := sock.recv(64)):
            reply += chunk
    out[slot] = (time.monotonic() - started, reply)


def test_each_connection_is_capped_and_bytes_pass_intact_both_ways() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    payloads = [os.urandom(SIZE), os.urandom(SIZE)]
    threading.Thread(target=_serve, args=(server, 2), daemon=True).start()
    results: dict[int, tuple[float, bytes]] = {}
    with CappingProxy(server.getsockname(), RATE, burst=BURST) as proxy:
        clients = [
            threading.Thread(target=_send, args=(proxy.port, p, results, i))
            for i, p in enumerate(payloads)
        ]
        for c in clients:
            c.start()
        for c in clients:
            c.join(30)
        assert sorted(proxy.forwarded) == [SIZE, SIZE]
        assert proxy.connections == 2
    server.close()
    for i, payload in enumerate(payloads):
        seconds, reply = results[i]
        assert reply == blake3.blake3(payload).digest()  # the reply came back unpaced, intact
        assert seconds >= (SIZE - BURST) / RATE  # never faster than the cap allows


def test_a_backend_that_refuses_closes_the_client_and_the_proxy_goes_on() -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens there any more
    with CappingProxy(("127.0.0.1", dead_port), RATE) as proxy:
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
                sock.settimeout(10)
                assert sock.recv(1) == b""  # closed at once, not left hanging
        assert proxy.connections == 0


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate"):
        CappingProxy(("127.0.0.1", 1), 0)
