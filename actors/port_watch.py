"""A socket's TCP connections seen from the kernel: what libzmq read from
each, and closing the ones the guard names.

Part of the actor that owns the sockets, not an actor of its own: a thin
shell over :class:`~peercrypt.core.port_guard.PortGuard` (which says why).
Two kinds are watched: a listening port's connections (the receiver's data
port, the gateway's public port, a multicast sender's publishing port:
:meth:`PortWatch.start` monitors the socket), and connections the node
dials out (the sender's data connections to a receiver's data port): each
such socket has a monitor of its own, whose owner passes the watch its
events (:meth:`PortWatch.on_event`, naming the socket by an ``owner``), and
is told when the guard closed one (``on_closed``): libzmq would connect
again at once, so the owner gives up on that socket instead.

libzmq gives a socket no handle on its connections, only the file
descriptor of each in its monitor's events (accepted or connected,
disconnected). The watch records each TCP connection by its socket's inode
(unique while the socket lives, so a descriptor number closed and reused
meanwhile is never mistaken for it; a disconnect, which names a descriptor,
forgets only the connection of the socket whose monitor reported it, since
another socket's newer connection may already have that number), reads
TCP's counters through a duplicate of
the descriptor, and closes a connection with ``shutdown()`` on such a
duplicate, checked to be the same socket: libzmq then sees the connection
end as if the peer had closed it, and frees what it held for it. libzmq's
own descriptor is never closed here. Unix-socket connections (the local
one, ``local_ipc``) are not watched: only users of this host reach them.

A watch whose connections went quiet stops reading them: the kernel tells
its actor of the next byte that arrives (:class:`Arrivals`, which says
why this needs a signal), so an idle node's watches cost no wake-ups.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import os
import signal
import socket
import stat
import struct
import sys
import termios
import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq

from peercrypt.core.address import peer_address
from peercrypt.core.port_guard import (
    GuardLimits,
    PortGuard,
    framed_size,
    held_memory,
)

if TYPE_CHECKING:
    from peercrypt.runtime.actor import Actor, Timer

EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
# What a dialled socket's monitor passes on (:meth:`PortWatch.on_event`).
DIAL_EVENTS = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED


def parse_monitor_message(frames: list[bytes]) -> dict[str, Any]:
    """One event of a ZeroMQ socket monitor: ``event``, ``value`` and
    ``endpoint``, as pyzmq's ``zmq.utils.monitor`` parses it. That module
    imports ``zmq.asyncio`` and so asyncio (~25 ms of every process's start,
    a one-off `peercrypt send`'s temporary node included); nothing here is
    asynchronous."""
    if len(frames) != 2 or len(frames[0]) != 6:
        raise RuntimeError(f"Invalid event message format: {frames}")
    event_id, value = struct.unpack("=hi", frames[0])
    return {"event": zmq.Event(event_id), "value": zmq.Event(value), "endpoint": frames[1]}


def recv_monitor_message(socket: zmq.Socket[Any], flags: int = 0) -> dict[str, Any]:
    """The next event of the monitor ``socket`` (raises zmq.Again with NOBLOCK)."""
    return parse_monitor_message(socket.recv_multipart(flags))


@dataclass(frozen=True)
class Sampling:
    """Seconds between readings of the connections' counters: a connection
    can grow what it holds by what it delivers in that time, so they are
    read often (``busy``) once a quarter of the bound is held. After a
    reading that found nothing read since the one before and nothing held,
    none until the kernel tells of an arrival (:class:`Arrivals`), or,
    where it cannot, one ``idle`` later. A reading costs ~15-20 us of CPU
    per connection, so the interval is at least ``cost`` per connection."""

    interval: float
    busy: float
    cost: float
    idle: float


# The data port: loopback carries ~1.5 GB/s of chunks; at most ~20% of a
# core (51 ms with 512 connections). Its connections live while transfers run.
DATA_PORT_SAMPLING = Sampling(interval=0.02, busy=0.002, cost=0.0001, idle=0.02)
# The public port: CURVE, which libzmq opens at ~0.2 GiB/s at most, and
# members' connections that live as long as they do (several per member),
# so it is read less often: at most ~2% of a core under a flood. Members that
# say nothing cost nothing: their connections are not read, the kernel says
# when bytes arrive (Arrivals); where it cannot, every 0.2 s (~15 us a
# connection and a wake-up of the actor: ~0.3 ms here).
PUBLIC_PORT_SAMPLING = Sampling(interval=0.05, busy=0.005, cost=0.001, idle=0.2)
# Asking the kernel to tell of arrivals on a connection, and undoing it,
# cost about this many readings of it (PortWatch._rest).
LISTEN_READINGS = 4
TCPI_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received in struct tcp_info (Linux >= 4.1)
TCP_INFO_LEN = 136
INQ = struct.Struct("i")


class PortWatch:
    """A bound socket's TCP connections, from its monitor's events
    (:meth:`on_monitor`), the messages taken off it (:meth:`delivered`) and
    their counters (:meth:`sample`); closes what the guard names and counts
    each decision with ``count(prefix + key, n)``. ``framing`` is what a
    frame of a length takes on the wire, ``allowance`` what a connection's
    handshake takes (never delivered)."""

    def __init__(
        self,
        limits: GuardLimits,
        count: Callable[[str, int], None],
        *,
        prefix: str = "",
        framing: Callable[[int], int] = framed_size,
        allowance: int = 0,
        sampling: Sampling = DATA_PORT_SAMPLING,
        on_closed: Callable[[Hashable], None] | None = None,
    ) -> None:
        self.guard = PortGuard(limits)
        self.on_closed = on_closed  # a dialled socket's owner, told the guard closed it
        self._count = count
        self.prefix = prefix
        self.framing = framing
        self.allowance = allowance
        self.sampling = sampling
        self._fds: dict[int, int] = {}  # inode -> libzmq's descriptor of it
        self._owner: dict[int, Hashable] = {}  # inode of a dialled connection -> its socket's owner
        self._dialled: dict[Hashable, str] = {}  # owner -> the address its connection reached
        self._actor: Actor | None = None
        self._timer: Timer | None = None
        self._last_reads: dict[int, int] = {}  # at the last reading
        self._quiet = False  # the last reading found nothing read since the one before
        # Resting: connections whose arrivals the kernel tells (inode -> fd);
        # no timer then (_rest).
        self._listening: dict[int, int] = {}
        self._listened: set[int] = set()  # connections ever listened to (counted once each)
        self._woken = False  # an arrival woke it; a delivery may end the wake (_after_delivery)
        self._settle = False  # the next reading may rest whatever it finds new
        self._next_listen = 0.0  # no rest is tried before (_rest)

    def start(self, actor: Actor, sock: zmq.Socket[Any], name: str) -> zmq.Socket[Any]:
        """Watch ``sock`` (before it binds) from ``actor``'s loop: its
        monitor's events, and the counters read as :meth:`next_sample` says
        while a connection or a debt is left. ``name`` names the monitor.
        Returns the monitor's socket: hand it to :meth:`stop` when ``sock``
        closes before the actor does (a socket bound anew)."""
        address = f"inproc://pc-{actor.env.node_uid}/{name}-monitor"
        sock.monitor(address, EVENTS)
        monitor = actor.socket(zmq.PAIR)
        monitor.rcvhwm = 0  # inproc: no event is ever dropped
        monitor.connect(address)
        self._set_actor(actor)
        actor.watch(monitor, self._on_monitor)
        return monitor

    def stop(self, sock: zmq.Socket[Any], monitor: zmq.Socket[Any], bound: bool = True) -> None:
        """``sock``, watched since :meth:`start` returned ``monitor``, is
        closing: close its monitor too (each is a socket of the actor's, and
        its descriptor, until the actor stops). ``bound``: it was the one
        bound socket this watch watched, whose connections are forgotten
        (closed with it; their events may never be read); False: it never
        bound (no connection of its own)."""
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()
        if self._actor is not None:
            self._actor.close_socket(monitor)
        if bound:
            for inode in [i for i in self._fds if self._owner.get(i) is None]:
                self._forget(inode)

    def attach(self, actor: Actor) -> None:
        """Sample from ``actor``'s loop: the connections come from
        :meth:`on_event` (dialled sockets' monitors)."""
        self._set_actor(actor)

    def _set_actor(self, actor: Actor) -> None:
        self._actor = actor

    def _on_monitor(self, monitor: zmq.Socket[Any]) -> None:
        self.on_monitor(monitor)
        self._arm()

    def _arm(self) -> None:
        if self._actor is not None and self.watching:
            self._read_within(self.next_sample())

    def _read_within(self, delay: float) -> None:
        """A reading ``delay`` s from now at the latest (one due sooner stays)."""
        assert self._actor is not None
        if self._timer is not None:
            if self._timer.due <= self._actor.now() + delay:
                return
            self._timer.cancel()
        self._timer = self._actor.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        settle, self._settle = self._settle, False
        self._woken = False
        self.sample()
        if self._actor is None or not self.watching:
            return
        # Resting is tried after a quiet reading (nothing read since the one
        # before), or once a message that an arrival announced was taken
        # (settle), not at every reading of a busy port.
        if not ((self._quiet or settle) and self._rest()):
            self._stop_listening()  # (a new connection's first reading: it reads on)
            self._timer = self._actor.call_later(self.next_sample(), self._on_timer)

    def _rest(self) -> bool:
        """After a reading that left nothing held: have the kernel tell the
        actor of the next byte that arrives on any connection (Arrivals),
        read once more, and, if nothing came meanwhile and nothing waits in
        the kernel for libzmq to read (bytes that came before it asked are
        no word of it), read no more until a byte comes: an idle member's
        connections cost no wake-up. Whether it rests (no timer then). A
        flood that begins then is read within ``interval`` of its first
        byte (:meth:`_on_arrival`).

        Asking and undoing it cost a dozen system calls a connection, about
        four readings: it is done at most once per ``interval``, and per
        ``LISTEN_READINGS`` times the least interval of a reading of all the
        connections (:meth:`next_sample`), so that messages that come one by
        one cost at most what readings at that interval would."""
        if self._actor is None or self.guard.held or not self._fds:
            return False
        now = self._actor.now()
        if now < self._next_listen:
            return False
        arrivals = Arrivals.of(self._actor)
        if arrivals is None:
            return False
        least = self.sampling.cost * self.guard.connections
        self._next_listen = now + max(self.sampling.interval, LISTEN_READINGS * least)
        arrivals.watches.add(self)
        for inode, fd in self._fds.items():
            if inode not in self._listening:
                if not arrivals.listen(inode, fd):
                    self._stop_listening()
                    return False
                self._listening[inode] = fd
        before = self._last_reads
        drained = self.sample()
        if not drained or self._last_reads != before or self.guard.held or not self._fds:
            self._stop_listening()
            return False
        for inode in self._listening.keys() - self._listened:
            self._listened.add(inode)
            self.count("connections-listened", 1)
        return True

    def _stop_listening(self) -> None:
        if not self._listening:
            return
        arrivals = Arrivals.of(self._actor) if self._actor is not None else None
        if arrivals is not None:
            for inode, fd in self._listening.items():
                arrivals.unlisten(inode, fd)
        self._listening.clear()

    def _on_arrival(self) -> None:
        """The kernel told the actor that bytes arrived on a connection of
        one of its resting watches (or a full send buffer drained): read
        now (the message may be taken already), and rest again if nothing
        is held; else read within ``interval`` (the message is taken before
        that in the usual case: :meth:`_after_delivery`)."""
        if not self._listening:
            return  # (this watch was not resting: another's connection, or told late)
        self._stop_listening()
        self.sample()
        self._quiet = False  # (bytes came)
        if self._actor is None or not self.watching or self._rest():
            return
        self._woken = True
        self._read_within(self.next_sample())

    def _after_delivery(self) -> None:
        """A message was taken after an arrival woke the watch: what woke it
        was most likely that message, so read at once, after the handler
        that took it (a reading may close a connection, which its owner's
        handler must not see in the middle), and rest again if nothing is
        held: one wake-up for the arrival, one for the message, none for a
        reading after it."""
        self._woken = False
        if self._actor is not None and self.watching:
            self._settle = True
            self._read_within(0.0)

    def count(self, key: str, n: int) -> None:
        self._count(self.prefix + key, n)

    @property
    def connections(self) -> int:
        return self.guard.connections

    @property
    def watching(self) -> bool:
        """Whether to keep sampling: a connection, or a debt, is left."""
        return self.guard.watching

    def next_sample(self) -> float:
        """Seconds until the counters should be read again."""
        held = self.guard.held
        least = self.sampling.cost * self.guard.connections
        if held * 4 > self.guard.limits.held:
            return max(self.sampling.busy, least)
        if held == 0 and self._quiet:
            return max(self.sampling.idle, least)  # (where the kernel cannot tell arrivals)
        return max(self.sampling.interval, least)

    def on_monitor(self, monitor: zmq.Socket[Any]) -> None:
        for _ in range(256):
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            self.on_event(event)

    def on_event(
        self, event: Mapping[str, Any], owner: Hashable = None, allowance: int | None = None
    ) -> None:
        """One monitor event: a connection accepted (or, of the dialled
        socket ``owner``, connected; its handshake takes ``allowance``
        bytes, default the watch's), or one gone (disconnected, closed)."""
        fd = int(event["value"])
        if event["event"] in (zmq.EVENT_ACCEPTED, zmq.EVENT_CONNECTED):
            if bytes(event["endpoint"]).startswith(b"tcp://"):
                self._accepted(fd, owner, self.allowance if allowance is None else allowance)
                self._arm()
        elif event["event"] in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
            # That descriptor's connection is gone. One monitor's events come
            # in the order libzmq made them (it reports a disconnect before
            # it closes the descriptor), so the connection of that socket
            # recorded last under that number is the one; another socket's
            # connection may already have the number (its monitor was read
            # first) and stays.
            for inode in [
                i for i, d in self._fds.items() if d == fd and self._owner.get(i) == owner
            ]:
                self._forget(inode)

    def delivered_to(self, owner: Hashable, lengths: Iterable[int]) -> None:
        """A message of frames of ``lengths`` bytes the owner of the dialled
        socket ``owner`` took off it."""
        address = self._dialled.get(owner)
        if address is None or not self.guard.watching:
            return
        size = memory = 0
        for length in lengths:
            wire = self.framing(length)
            size += wire
            memory += held_memory(length, wire)
        self.guard.delivered(address, size, memory)
        if self._woken:
            self._after_delivery()

    def forget_owner(self, owner: Hashable) -> None:
        """The dialled socket ``owner`` is closed: its connection goes."""
        for inode in [i for i, o in self._owner.items() if o == owner]:
            self._forget(inode)
        self._dialled.pop(owner, None)

    def _forget(self, inode: int) -> None:
        self._untrack(inode)
        self.guard.closed(inode)

    def _untrack(self, inode: int) -> tuple[int | None, Hashable]:
        """Drop connection ``inode`` from the watch's books (listened to or
        not: gone or being shut down, nothing to undo); its descriptor and
        owner, if it had them."""
        self._listening.pop(inode, None)
        self._listened.discard(inode)
        return self._fds.pop(inode, None), self._owner.pop(inode, None)

    def delivered(self, frames: list[zmq.Frame], first: int = 1) -> None:
        """A message the owner took off the socket: its frames from
        ``first`` on crossed the wire (before it, a ROUTER's routing id)."""
        if not self.guard.watching or len(frames) <= first:
            return
        try:
            peer = frames[first].get("Peer-Address")
        except zmq.ZMQError:
            return
        size = memory = 0
        for frame in frames[first:]:
            wire = self.framing(len(frame))
            size += wire
            memory += held_memory(len(frame), wire)
        self.guard.delivered(peer_address(str(peer)), size, memory)
        if self._woken:
            self._after_delivery()

    def sample(self) -> bool:
        """Read every connection's counters and close what the guard names;
        whether nothing waited in the kernel on any of them (libzmq had read
        all that came) and every one could be read."""
        reads: dict[int, int] = {}
        drained = True
        for inode, fd in list(self._fds.items()):
            counters = _counters(inode, fd)
            if counters is None:
                self._forget(inode)
                continue
            received, waiting = counters
            if received < 0:
                drained = False
            else:
                reads[inode] = received - waiting
                drained = drained and waiting == 0
        self._quiet = reads == self._last_reads
        self._last_reads = reads
        close = self.guard.sample(reads)
        if close:
            self.count("closed-unread", len(close))
            self._close(close)
        return drained

    def _accepted(self, fd: int, owner: Hashable, allowance: int) -> None:
        try:
            st = os.fstat(fd)
        except OSError:
            return
        if not stat.S_ISSOCK(st.st_mode) or st.st_ino in self._fds:
            return
        with self._same_socket(st.st_ino, fd) as dup:
            if dup is None or dup.family not in (socket.AF_INET, socket.AF_INET6):
                return
            try:
                peer = dup.getpeername()[0]
            except OSError:
                return
        self._fds[st.st_ino] = fd
        self._quiet = False  # (its first reading is due within interval, not idle)
        if owner is not None:
            self._owner[st.st_ino] = owner
            self._dialled[owner] = peer_address(peer)
        close = self.guard.accepted(st.st_ino, peer_address(peer), allowance)
        if close:
            self.count("closed-over-cap", len(close))
            self._close(close)

    def _close(self, inodes: list[int]) -> None:
        self.count("closed-connections", len(inodes))
        owners: list[Hashable] = []
        for inode in inodes:
            fd, owner = self._untrack(inode)  # (shut down below)
            if owner is not None and owner not in owners:
                owners.append(owner)
            if fd is None:
                continue
            with self._same_socket(inode, fd) as dup:
                if dup is not None:
                    with contextlib.suppress(OSError):
                        dup.shutdown(socket.SHUT_RDWR)
        for owner in owners:
            self._dialled.pop(owner, None)
            if self.on_closed is not None:
                self.on_closed(owner)

    @contextlib.contextmanager
    def _same_socket(self, inode: int, fd: int) -> Any:
        """A socket object on a duplicate of ``fd`` if it is still the
        socket ``inode`` (else None), closed on leaving."""
        with _same_file(inode, fd) as copy:
            if copy is None:
                yield None
                return
            try:
                dup = socket.socket(fileno=copy)  # (its family and type probed)
            except OSError:
                yield None
                return
            try:
                yield dup
            finally:
                dup.detach()  # (the duplicate is closed once, by _same_file)


class Arrivals:
    """The kernel's word that bytes arrived on a connection, given to the
    actor (the thread) that made it, however soon libzmq read them.

    A reading of a connection's counters costs little; waking an idle
    actor's thread to make it costs ~0.3 ms here, so a node with a member,
    whose actors read their quiet connections every 0.2 s, spent ~0.5% of a
    core on it (docs/benchmarks.md). Waiting for the bytes instead needs a
    signal that keeps "bytes arrived" once another reader took them: a
    socket's readiness (poll, epoll, even edge-triggered) is checked when
    looked at, and libzmq's I/O thread reads what arrives within
    microseconds, so the wake-up is lost. Signal-driven I/O is not checked
    again: with ``O_ASYNC`` on a socket the kernel sends its owner a
    ``SIGIO`` at every arrival (and when a send buffer that was full
    drains: no harm, a reading finds nothing new). Its owner is this thread
    (``F_SETOWN_EX``, ``F_OWNER_TID``: no other thread of the process ever
    gets it), which blocks ``SIGIO`` and reads it from a ``signalfd`` the
    actor polls: a standard signal stays pending once however many come.

    ``O_ASYNC`` and the owner belong to the open file, which libzmq's
    descriptor shares with the duplicate they are set through; libzmq never
    uses either. Made in the actor's thread (:meth:`of`), closed when the
    actor stops. Linux only: elsewhere :meth:`of` gives None and quiet
    connections are read every ``Sampling.idle``."""

    def __init__(self, actor: Actor) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO})
        mask = bytearray(SIGSET_BYTES)
        mask[(signal.SIGIO - 1) // 8] |= 1 << ((signal.SIGIO - 1) % 8)
        buffer = (ctypes.c_char * SIGSET_BYTES).from_buffer(mask)
        fd = _libc().signalfd(-1, buffer, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "signalfd")
        self.fd: int = fd
        self.owner = struct.pack("ii", F_OWNER_TID, threading.get_native_id())  # this thread
        self.watches: weakref.WeakSet[PortWatch] = weakref.WeakSet()  # resting ones it wakes
        self._actor = weakref.ref(actor)  # (a strong one would keep _ARRIVALS' entry for ever)
        actor.watch(fd, self._on_ready)
        actor.on_exit(self.close)

    @classmethod
    def of(cls, actor: Actor) -> Arrivals | None:
        """The actor's (made at the first call, in its thread), or None where
        the kernel cannot tell (then never tried again)."""
        if actor not in _ARRIVALS:
            made: Arrivals | None = None
            if sys.platform.startswith("linux"):
                with contextlib.suppress(OSError, AttributeError, ValueError):
                    made = cls(actor)
            _ARRIVALS[actor] = made
        arrivals = _ARRIVALS[actor]
        return arrivals if arrivals is not None and arrivals.fd >= 0 else None  # (stopped)

    def listen(self, inode: int, fd: int) -> bool:
        """Have the kernel tell of bytes arriving on connection ``fd`` (if
        it is still the socket ``inode``): whether it will."""
        return self._set_async(inode, fd, True)

    def unlisten(self, inode: int, fd: int) -> None:
        self._set_async(inode, fd, False)

    def _set_async(self, inode: int, fd: int, on: bool) -> bool:
        with _same_file(inode, fd) as copy:
            if copy is None:
                return False
            try:
                flags = fcntl.fcntl(copy, fcntl.F_GETFL)
                if on:
                    fcntl.fcntl(copy, F_SETSIG, 0)  # SIGIO itself: pending once, never queued
                    fcntl.fcntl(copy, F_SETOWN_EX, self.owner)  # before O_ASYNC: never the process
                    fcntl.fcntl(copy, fcntl.F_SETFL, flags | os.O_ASYNC)
                elif flags & os.O_ASYNC:
                    fcntl.fcntl(copy, fcntl.F_SETFL, flags & ~os.O_ASYNC)
            except OSError:
                return False
            return True

    def drain(self) -> bool:
        """Whether an arrival was told since the last call."""
        told = False
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self.fd, SIGINFO_BYTES * 8):
                told = True
        return told

    def _on_ready(self, _fd: int) -> None:
        actor = self._actor()
        if self.drain() and actor is not None:
            for watch in list(self.watches):  # (one failing leaves the others told)
                actor.contain("arrival", watch._on_arrival)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_ARRIVALS: weakref.WeakKeyDictionary[Actor, Arrivals | None] = weakref.WeakKeyDictionary()
F_SETSIG = 10  # fcntl(2), Linux
F_SETOWN_EX = 15
F_OWNER_TID = 0
SIGSET_BYTES = 128  # glibc's sigset_t
SIGINFO_BYTES = 128  # struct signalfd_siginfo


@contextlib.contextmanager
def _same_file(inode: int, fd: int) -> Iterator[int | None]:
    """A duplicate of ``fd`` (sharing its open file) if it is still the
    socket ``inode``, else None; closed on leaving."""
    try:
        copy = os.dup(fd)
    except OSError:
        yield None
        return
    try:
        st = os.fstat(copy)
        yield copy if st.st_ino == inode and stat.S_ISSOCK(st.st_mode) else None
    finally:
        os.close(copy)


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _counters(inode: int, fd: int) -> tuple[int, int] | None:
    """The TCP connection ``fd``'s bytes received and bytes still waiting
    in the kernel (what libzmq took off it is their difference), read
    through a duplicate of ``fd`` checked to be the socket ``inode``: None
    if it no longer is (closed, the number reused), ``(-1, 0)`` if its
    counters cannot be read.

    The same checks as :func:`_same_file` without its context manager, and
    the socket object made with its family and type named (it only reads
    options, which do not depend on them), not probed (three system calls):
    this runs for every watched connection every ``Sampling.interval``, 13
    us a connection before, 7 us now."""
    try:
        copy = os.dup(fd)
    except OSError:
        return None
    try:
        st = os.fstat(copy)
        if st.st_ino != inode or not stat.S_ISSOCK(st.st_mode):
            return None
        dup = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, copy)
        try:
            info = dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
            waiting: int = INQ.unpack(fcntl.ioctl(copy, termios.FIONREAD, bytes(4)))[0]
        except OSError:
            return -1, 0
        finally:
            dup.detach()  # the duplicate is closed below, once
    finally:
        os.close(copy)
    if len(info) < TCPI_BYTES_RECEIVED + 8:
        return -1, 0
    received: int = struct.unpack_from("<Q", info, TCPI_BYTES_RECEIVED)[0]
    return received, waiting
