"""The CLI's hand-spoken DEALER (peercrypt/zmtp.py) against a real libzmq
ROUTER: messages both ways (short and long frames, several frames), a
command from the ROUTER's side skipped, a lost connection made again, a
frame over the bound refused, no node at all."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from peercrypt import zmtp

WAIT = 10.0  # seconds; generous, the machine may be loaded


@pytest.fixture
def router() -> Iterator[tuple[zmq.Socket[Any], int]]:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    sock.rcvtimeo = int(WAIT * 1000)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, port
    sock.close()
    ctx.term()


def test_messages_both_ways(router: tuple[zmq.Socket[Any], int]) -> None:
    sock, port = router
    dealer = zmtp.Dealer("127.0.0.1", port)
    try:
        long = bytes(range(256)) * 300  # a long frame (8-byte size)
        dealer.send([b"token", long, b""])
        route, *frames = sock.recv_multipart()
        assert frames == [b"token", long, b""]
        sock.send_multipart([route, b"short", long])
        assert dealer.recv(WAIT) == b"short"
        assert dealer.recv(WAIT) == long
        started = time.monotonic()
        assert dealer.recv(0.2) is None  # nothing more: waits its timeout
        assert time.monotonic() - started >= 0.19
    finally:
        dealer.close()


def test_a_lost_connection_is_made_again() -> None:
    """The node's socket goes away and comes back on the same port (as a
    restarting node's would): the next recv connects again and what is
    sent then arrives."""
    ctx: zmq.Context[Any] = zmq.Context()
    first = ctx.socket(zmq.ROUTER)
    first.linger = 0
    port = first.bind_to_random_port("tcp://127.0.0.1")
    dealer = zmtp.Dealer("127.0.0.1", port)
    second = None
    try:
        assert dealer.ready
        first.close()
        assert dealer.recv(0.3) is None
        second = ctx.socket(zmq.ROUTER)
        second.linger = 0
        second.rcvtimeo = int(WAIT * 1000)
        second.bind(f"tcp://127.0.0.1:{port}")
        assert dealer.recv(0.5) is None  # connected again meanwhile
        assert dealer.sock is not None and dealer.ready
        dealer.send([b"again"])
        route, frame = second.recv_multipart()
        assert frame == b"again"
        second.send_multipart([route, b"answer"])
        assert dealer.recv(WAIT) == b"answer"
    finally:
        dealer.close()
        if second is not None:
            second.close()
        ctx.term()


def test_a_frame_over_the_bound_ends_the_connection() -> None:
    """A peer that greets and then announces a frame over MAX_FRAME: the
    connection is dropped, nothing returned, no memory taken for it."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(WAIT)
    port = listener.getsockname()[1]
    ready = b"\x05READY\x0bSocket-Type\x00\x00\x00\x06ROUTER"
    dealer = None
    try:
        conn = None

        def serve() -> None:
            nonlocal conn
            conn, _ = listener.accept()
            conn.sendall(zmtp.GREETING + bytes([0x04, len(ready)]) + ready)

        server = threading.Thread(target=serve)
        server.start()
        dealer = zmtp.Dealer("127.0.0.1", port)
        server.join(WAIT)
        assert conn is not None and dealer.ready
        conn.sendall(b"\x02" + (zmtp.MAX_FRAME + 1).to_bytes(8, "big") + b"x" * 1000)
        assert dealer.recv(0.5) is None
        conn.settimeout(WAIT)
        seen = b""
        while chunk := conn.recv(4096):  # until the dealer closed it
            seen += chunk
        assert seen == zmtp.GREETING + zmtp.READY
        assert len(dealer.buffer) < 4096  # what it held of that frame: one read at most
        conn.close()
    finally:
        if dealer is not None:
            dealer.close()
        listener.close()


def test_no_node() -> None:
    """Nothing listens: no connection, sends dropped, recv times out."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    dealer = zmtp.Dealer("127.0.0.1", port)
    assert dealer.sock is None
    dealer.send([b"lost"])
    assert dealer.recv(0.3) is None
    dealer.close()


def test_a_descriptor_above_1024_works(router: tuple[zmq.Socket[Any], int]) -> None:
    """A process with many files open (the shell, a library user) gets a
    socket numbered 1024 or more; waiting on it must not fail (select()
    refuses such a descriptor with ValueError)."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit of open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    fillers = []
    try:
        while True:
            fd = os.dup(0)
            fillers.append(fd)
            if fd >= 1030:
                break
        sock, port = router
        dealer = zmtp.Dealer("127.0.0.1", port)
        try:
            assert dealer.sock is not None and dealer.sock.fileno() >= 1024
            dealer.send([b"token", b"ping"])
            route, *frames = sock.recv_multipart()
            assert frames == [b"token", b"ping"]
            sock.send_multipart([route, b"pong"])
            assert dealer.recv(WAIT) == b"pong"
        finally:
            dealer.close()
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_wake_descriptor_ends_the_wait_at_once(router: tuple[zmq.Socket[Any], int]) -> None:
    """The shell's watcher waits for a reply its node may hold for 30 s
    (StatusWait); a byte on ``wake`` ends that wait at once, on a live
    connection and while one is being made again (its pause between
    attempts), with nothing returned."""
    import os

    sock, port = router
    r, w = os.pipe()
    dealer = zmtp.Dealer("127.0.0.1", port)
    try:
        timer = threading.Timer(0.2, os.write, (w, b"w"))
        timer.start()
        started = time.monotonic()
        assert dealer.recv(WAIT, wake=r) is None
        assert time.monotonic() - started < WAIT / 2
        timer.join()
        sock.close()  # the node goes: the dealer waits between attempts
        assert dealer.recv(0.3) is None and dealer.sock is None
        dealer.next_attempt = time.monotonic() + 3600.0
        started = time.monotonic()
        assert dealer.recv(WAIT, wake=r) is None  # (the byte is still there)
        assert time.monotonic() - started < WAIT / 2
    finally:
        dealer.close()
        os.close(r)
        os.close(w)


def test_the_answer_to_a_request_is_not_awaited_on_another_connection() -> None:
    """``once``: the node's socket goes away while its answer is awaited (a
    control that restarts binds another port): None at once, not a wait
    for a connection made again, which cannot bring it."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    dealer = zmtp.Dealer("127.0.0.1", port)
    try:
        assert dealer.ready
        timer = threading.Timer(0.2, sock.close)
        timer.start()
        started = time.monotonic()
        assert dealer.recv(WAIT, once=True) is None
        assert time.monotonic() - started < WAIT / 2
        timer.join()
        assert dealer.recv(WAIT, once=True) is None  # no connection: nothing to await
        assert time.monotonic() - started < WAIT / 2
    finally:
        dealer.close()
        ctx.term()
