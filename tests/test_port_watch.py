"""The watch's bookkeeping of connections against real TCP sockets
(actors/port_watch.py): which connection a monitor's event names when
descriptor numbers are reused; the kernel's word of bytes arriving on a
quiet connection, and the watch's rest until it comes."""

from __future__ import annotations

import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq

from actors.port_watch import (
    DATA_PORT_SAMPLING,
    PUBLIC_PORT_SAMPLING,
    Arrivals,
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


def in_a_thread(body: Callable[[], None]) -> None:
    """Run ``body`` in a thread of its own, as an actor would (the kernel's
    word of arrivals goes to the thread that asked, which blocks ``SIGIO``:
    never the test runner's), and raise what it raised."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the thread did not finish"
    if failed:
        raise failed[0]


class Reader:
    """libzmq's part: a thread reading a socket as soon as bytes arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.read = 0
        self.changed = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.changed:
                self.read += len(data)
                self.changed.notify_all()
            if not data:
                return

    def wait_for(self, total: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.read >= total, 10), self.read

    def stop(self) -> None:
        self._stop = True
        self._thread.join(10)


def told(arrivals: Arrivals, timeout: float) -> bool:
    readable, _, _ = select.select([arrivals.fd], [], [], timeout)
    return bool(readable) and arrivals.drain()


def test_the_kernel_tells_of_bytes_another_thread_read_at_once() -> None:
    """Asked for a connection (``listen``), the kernel tells the asking
    thread of every arrival even when another reader took the bytes before
    anyone looked (libzmq's I/O thread does within microseconds: a socket's
    readiness is gone by then); not once asked to stop, and never of a
    socket that took the descriptor's number since."""

    def body() -> None:
        context = zmq.Context()
        try:
            actor = Named(ActorEnv(context=context, node_uid="told", clock=FakeClock()), "gateway")
            arrivals = Arrivals.of(actor)
            assert arrivals is not None
            with listener() as server:
                client, accepted = connected(server)
                reader = Reader(accepted)
                try:
                    inode = os.fstat(accepted.fileno()).st_ino
                    assert arrivals.listen(inode, accepted.fileno())
                    assert not told(arrivals, 0)
                    client.sendall(b"x" * 10)
                    reader.wait_for(10)
                    assert told(arrivals, 10), "the arrival was not told"
                    arrivals.unlisten(inode, accepted.fileno())
                    client.sendall(b"y" * 10)
                    reader.wait_for(20)  # (a word of it would be pending by now)
                    assert not told(arrivals, 0), "told after unlisten"
                    assert not arrivals.listen(inode + 1, accepted.fileno())
                finally:
                    reader.stop()
                    client.close()
                    accepted.close()
            arrivals.close()
        finally:
            context.term()

    in_a_thread(body)


class Rig:
    """A watch of a never-started actor on a fake clock (its timers run by
    hand, as the loop would after the handler) over one dialled TCP
    connection (owner ``link``) whose bytes a :class:`Reader` takes, or
    nobody (``reader=False``: they wait in the kernel)."""

    def __init__(self, held: int = 1 << 20, reader: bool = True) -> None:
        self.context = zmq.Context()
        self.clock = FakeClock(start=1000.0)
        env = ActorEnv(context=self.context, node_uid="rest", clock=self.clock)
        self.actor = Named(env, "discovery")
        self.closed: list[object] = []
        self.watch = PortWatch(
            GuardLimits(held=held),
            lambda key, n: None,
            framing=lambda n: n,
            sampling=PUBLIC_PORT_SAMPLING,
            on_closed=self.closed.append,
        )
        self.watch.attach(self.actor)
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.client, self.accepted = connected(self.server)
        self.reader = Reader(self.accepted) if reader else None
        self.watch.on_event(event(zmq.EVENT_CONNECTED, self.accepted.fileno()), owner="link")

    def send(self, n: int, total: int) -> None:
        """``n`` more bytes from the peer, ``total`` in all, taken by libzmq's part."""
        self.client.sendall(b"m" * n)
        if self.reader is not None:
            self.reader.wait_for(total)

    def arrive(self, n: int, total: int) -> None:
        """:meth:`send`, the kernel's word of it, and the actor's handling."""
        arrivals = Arrivals.of(self.actor)
        assert arrivals is not None
        self.send(n, total)
        assert told(arrivals, 10), "no word of the arrival"
        self.watch._on_arrival()

    def run_timers(self, advance: float = 0.0) -> None:
        self.clock.advance(advance)
        self.actor._run_timers()

    def rest(self) -> None:
        """The connection's first reading, then one that finds nothing new."""
        interval = PUBLIC_PORT_SAMPLING.interval
        self.run_timers(interval)
        assert not self.resting(), "rested at once"
        assert self.due_in() == pytest.approx(interval)
        self.run_timers(interval)
        assert self.resting(), "not resting"

    def resting(self) -> bool:
        return self.watch._timer is None and bool(self.watch._listening)

    def due_in(self) -> float:
        assert self.watch._timer is not None, "no reading due"
        return self.watch._timer.due - self.clock()

    def close(self) -> None:
        arrivals = Arrivals.of(self.actor)
        if arrivals is not None:
            arrivals.close()
        if self.reader is not None:
            self.reader.stop()
        for s in (self.client, self.accepted, self.server):
            s.close()
        self.context.term()


def on_a_rig(body: Callable[[Rig], None], **kwargs: Any) -> None:
    def run() -> None:
        rig = Rig(**kwargs)
        try:
            body(rig)
        finally:
            rig.close()

    in_a_thread(run)


def test_a_resting_watch_wakes_at_an_arrival_and_rests_again_once_it_is_taken() -> None:
    """A reading that finds nothing new and nothing held ends in rest: no
    timer, the kernel to tell of the next byte (the connection's first
    reading, which found its handshake, does not). An arrival wakes it (a
    reading: the bytes are held, so the next is due within ``interval``);
    the message taken ends the wake with one more reading, made after the
    handler that took it, and it rests again without waiting ``interval``.
    Bytes that came between a reading and the asking keep it from resting."""

    def body(rig: Rig) -> None:
        watch = rig.watch
        rig.rest()
        arrivals = Arrivals.of(rig.actor)
        assert arrivals is not None
        rig.clock.advance(5.0)  # (a member's next message, seconds later)
        rig.send(100, 100)
        assert told(arrivals, 10)
        watch._on_arrival()
        assert watch.guard.held > 0 and not watch._listening
        assert rig.due_in() == pytest.approx(PUBLIC_PORT_SAMPLING.interval)
        rig.send(50, 150)  # (the rest of the message, read after that reading)
        watch.delivered_to("link", [150])  # (the message taken)
        assert rig.due_in() == 0, "no reading after the message was taken"
        rig.run_timers()
        assert watch.guard.held == 0
        assert rig.resting(), "not resting again"
        watch._stop_listening()
        watch.sample()
        rig.send(50, 200)
        rig.clock.advance(1.0)  # (past the rest's own spacing)
        assert not watch._rest(), "rested over bytes that came before it asked"
        assert watch.guard.held > 0 and not watch._listening

    on_a_rig(body)


def test_bytes_waiting_in_the_kernel_keep_a_watch_from_resting() -> None:
    """Bytes that arrived before the watch asked and that libzmq has not
    read yet (its I/O thread behind on a loaded machine) will be read
    without a word from the kernel: while any wait, the watch reads on."""

    def body(rig: Rig) -> None:
        rig.run_timers(PUBLIC_PORT_SAMPLING.interval)  # (the first reading)
        rig.send(64 * 1024, 0)  # (nobody reads: they wait in the kernel)
        rig.run_timers(1.0)
        assert rig.watch._quiet and rig.watch.guard.held == 0
        assert not rig.resting(), "rested with bytes waiting in the kernel"
        assert rig.due_in() <= PUBLIC_PORT_SAMPLING.idle + 1e-9

    on_a_rig(body, reader=False)


def test_rests_are_spaced_so_messages_one_by_one_cost_no_more_than_readings() -> None:
    """Asking the kernel and undoing it cost about four readings a
    connection: a watch woken again before ``interval`` (and four times
    the least interval of its readings) passed since it last asked reads on
    instead of asking again, and rests at its next reading after that."""

    def body(rig: Rig) -> None:
        watch = rig.watch
        rig.rest()
        rig.arrive(10, 10)
        watch.delivered_to("link", [10])
        rig.run_timers()
        assert not rig.resting(), "asked again within interval of the last time"
        assert rig.due_in() <= PUBLIC_PORT_SAMPLING.idle + 1e-9
        rig.run_timers(PUBLIC_PORT_SAMPLING.idle)
        assert rig.resting(), "not resting once the spacing passed"

    on_a_rig(body)


def test_a_connection_made_while_resting_is_read_within_interval() -> None:
    """A new connection, and an arrival, bring the next reading within
    ``interval`` (not ``idle``: a flood on the new one is read as soon as a
    busy connection's)."""

    def body(rig: Rig) -> None:
        watch = rig.watch
        rig.rest()
        other, other_peer = connected(rig.server)
        try:
            watch.on_event(event(zmq.EVENT_CONNECTED, other_peer.fileno()), owner="other")
            assert rig.due_in() == pytest.approx(PUBLIC_PORT_SAMPLING.interval)
        finally:
            other.close()
            other_peer.close()

    on_a_rig(body)


def test_a_message_taken_never_closes_a_connection_inside_its_owners_handler() -> None:
    """The reading that a message taken after an arrival brings is made
    after the handler that took it: a connection it closes (its owner told
    ``on_closed``, which closes its socket) is never closed under that
    handler, which may go on reading the socket."""

    def body(rig: Rig) -> None:
        watch = rig.watch
        rig.rest()
        rig.arrive(10, 10)
        rig.send(8000, 8010)  # (beyond the bound, read before the next reading)
        watch.delivered_to("link", [10])
        assert rig.closed == [], "closed inside the handler that took the message"
        rig.run_timers()
        assert rig.closed == ["link"]

    on_a_rig(body, held=4096)


@pytest.mark.parametrize("sampling", [PUBLIC_PORT_SAMPLING, DATA_PORT_SAMPLING])
def test_where_the_kernel_cannot_tell_quiet_connections_are_read_every_idle(
    sampling: Sampling,
) -> None:
    """Without an actor (nor so the kernel's word), a reading that found
    nothing read and nothing held is followed by one ``idle`` later (that
    interval bounds what a flood then makes the node hold unseen); any
    other by one ``interval`` later."""
    watch = PortWatch(GuardLimits(held=1 << 20), lambda key, n: None, sampling=sampling)
    watch._quiet = True
    assert watch.next_sample() == sampling.idle
    watch._quiet = False
    assert watch.next_sample() == sampling.interval
