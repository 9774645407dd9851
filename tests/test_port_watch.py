"""The watch's bookkeeping of connections against real TCP sockets
(actors/port_watch.py): which connection a monitor's event names when
descriptor numbers are reused."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq

from actors.port_watch import (
    DATA_PORT_SAMPLING,
    GRID_MIN,
    GRID_SLOTS,
    GRID_STEP,
    PUBLIC_PORT_SAMPLING,
    PortWatch,
    Sampling,
)
from peercrypt.core.port_guard import GuardLimits
from peercrypt.runtime.actor import Actor, ActorEnv
from peercrypt.testing.clock import FakeClock


@contextmanager
def listener() -> Iterator[socket.socket]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(10)
        yield server


def connected(server: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A client connected to ``server`` and the server's side of it."""
    client = socket.create_connection(server.getsockname(), timeout=10)
    accepted, _ = server.accept()
    return client, accepted


def reuse(number: int, sock: socket.socket) -> None:
    """Descriptor ``number`` (its socket closed by it) is ``sock`` now, as
    when the kernel gives a freed number to the next connection."""
    os.dup2(sock.fileno(), number)


def event(kind: int, fd: int) -> dict[str, Any]:
    return {"event": kind, "value": fd, "endpoint": b"tcp://127.0.0.1:1"}


def test_a_late_disconnect_forgets_only_the_connection_of_its_own_socket() -> None:
    """Two dialled sockets, each with a monitor: the first one's connection
    ends and its descriptor's number is taken at once by the second one's
    new connection, whose connect event is read first (another monitor). The
    first one's late disconnect, naming that number, forgets the first
    connection and leaves the second watched (forgotten by number, both went:
    every byte the second read from then on was charged to no one)."""
    watch = PortWatch(GuardLimits(held=1 << 30), lambda key, n: None)
    with listener() as server:
        first, first_peer = connected(server)
        number = first.detach()
        watch.on_event(event(zmq.EVENT_CONNECTED, number), owner="first")
        assert watch.connections == 1
        second, second_peer = connected(server)
        try:
            reuse(number, second)
            watch.on_event(event(zmq.EVENT_CONNECTED, number), owner="second")
            assert watch.connections == 2
            watch.on_event(event(zmq.EVENT_DISCONNECTED, number), owner="first")
            assert watch.connections == 1, "the second socket's connection was forgotten"
            watch.sample()
            assert watch.connections == 1
            watch.on_event(event(zmq.EVENT_DISCONNECTED, number), owner="second")
            assert watch.connections == 0
        finally:
            os.close(number)
            for s in (second, first_peer, second_peer):
                s.close()


def test_one_monitor_in_order_forgets_the_old_connection_and_keeps_the_new() -> None:
    """One listening socket's monitor: libzmq reports a disconnect before it
    closes the descriptor, so its events name a reused number only after the
    old connection's disconnect; the new connection stays watched."""
    watch = PortWatch(GuardLimits(held=1 << 30), lambda key, n: None)
    with listener() as server:
        client, old = connected(server)
        number = old.detach()
        watch.on_event(event(zmq.EVENT_ACCEPTED, number))
        watch.on_event(event(zmq.EVENT_DISCONNECTED, number))
        assert watch.connections == 0
        other, new = connected(server)
        try:
            reuse(number, new)
            watch.on_event(event(zmq.EVENT_ACCEPTED, number))
            assert watch.connections == 1
            watch.sample()
            assert watch.connections == 1
        finally:
            os.close(number)
            for s in (client, other, new):
                s.close()


def test_a_sample_reads_what_was_taken_off_each_connection() -> None:
    """A reading charges a connection with the bytes taken off it (received
    less those still waiting in the kernel), not with all it received."""
    watch = PortWatch(GuardLimits(held=1 << 30), lambda key, n: None)
    with listener() as server:
        client, accepted = connected(server)
        try:
            watch.on_event(event(zmq.EVENT_ACCEPTED, accepted.fileno()))
            client.sendall(b"x" * 5000)
            taken = 0
            while taken < 3000:
                taken += len(accepted.recv(3000 - taken))
            watch.sample()
            assert watch.guard.held == 3000
        finally:
            client.close()
            accepted.close()


def test_a_sample_forgets_a_connection_whose_number_names_another_socket() -> None:
    """The descriptor's number now names another socket (its close was not
    reported yet): the reading does not take that socket's counters for the
    connection's, it forgets the connection."""
    watch = PortWatch(GuardLimits(held=1 << 30), lambda key, n: None)
    with listener() as server:
        client, old = connected(server)
        number = old.detach()
        watch.on_event(event(zmq.EVENT_ACCEPTED, number))
        other, new = connected(server)
        try:
            reuse(number, new)
            watch.sample()
            assert watch.connections == 0
        finally:
            os.close(number)
            for s in (client, other, new):
                s.close()


class Named(Actor):
    """An actor of a name, never started: its clock is what the watch reads."""

    def __init__(self, env: ActorEnv, name: str) -> None:
        super().__init__(env)
        self.name = name  # type: ignore[misc]


@pytest.mark.parametrize("sampling", [PUBLIC_PORT_SAMPLING, DATA_PORT_SAMPLING])
def test_quiet_readings_of_every_watch_fall_on_one_grid_never_later_than_due(
    sampling: Sampling,
) -> None:
    """After a quiet reading the next is due ``idle`` later; it comes at the
    next point of a grid shared by the process's watches instead (never
    later: that interval bounds what a flood makes the node hold unseen;
    never at once, even a rounding error short of a point), each watch a
    little after the point in turn, so their readings follow each other
    while the caches are warm. Other readings are left alone."""
    idle = sampling.idle
    clock = FakeClock(start=1000.0)
    context = zmq.Context()
    try:
        env = ActorEnv(context=context, node_uid="grid", clock=clock)
        watches = []
        for name in ("gateway", "discovery", "health", "receiver"):
            watch = PortWatch(GuardLimits(held=1 << 20), lambda key, n: None, sampling=sampling)
            watch.attach(Named(env, name))
            watch._quiet = True  # (its last reading found nothing read and nothing held)
            watches.append(watch)
        offsets = [w._grid_offset for w in watches]
        assert len(set(offsets)) == len(offsets), offsets  # in turn after each point
        assert all(0 <= o <= (GRID_SLOTS - 1) * GRID_STEP for o in offsets), offsets
        for step in (0.0, 0.0137, 1.0, 0.05, 0.0001, 0.1999, 0.2001, 3.3, 1.0):
            clock.advance(step)
            due = [clock() + w.next_sample() for w in watches]
            assert all(GRID_MIN / 2 < d - clock() <= idle + 1e-9 for d in due), (clock(), due)
            for watch, when in zip(watches, due, strict=True):
                points = (when - watch._grid_offset) / idle
                assert abs(points - round(points)) < 1e-6, (when, watch._grid_offset)
        watches[0]._quiet = False  # (bytes were read since the reading before)
        assert watches[0].next_sample() == sampling.interval  # (not on the grid)
    finally:
        context.term()
