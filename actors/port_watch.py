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
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import socket
import stat
import struct
import termios
from collections.abc import Callable, Hashable, Iterable, Mapping
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
    read often (``busy``) once a quarter of the bound is held, and at
    ``idle`` after a reading that found nothing read since the one before
    and nothing held. A reading costs ~15-20 us of CPU per connection, so
    the interval is at least ``cost`` per connection."""

    interval: float
    busy: float
    cost: float
    idle: float


# The data port: loopback carries ~1.5 GB/s of chunks; at most ~20% of a
# core (51 ms with 512 connections). Its connections live while transfers run.
DATA_PORT_SAMPLING = Sampling(interval=0.02, busy=0.002, cost=0.0001, idle=0.02)
# The public port: CURVE, which libzmq opens at ~0.2 GiB/s at most, and
# members' connections that live as long as they do (several per member),
# so it is read less often: at most ~2% of a core under a flood, and
# members that say nothing cost ~15 us a connection every 0.2 s.
PUBLIC_PORT_SAMPLING = Sampling(interval=0.05, busy=0.005, cost=0.001, idle=0.2)
GRID_STEP = 0.0005  # seconds between watches' readings on the grid (PortWatch._on_grid)
GRID_SLOTS = 8  # ... of as many watches; the next ones take the same slots again
# A reading due sooner than this (a rounding error short of a point) waits for the next.
GRID_MIN = 1e-6
_GRID_SLOTS = itertools.count()  # the process's watches, in the order they were made
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
        self._grid_offset = 0.0  # (set with the actor: _on_grid)

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
        # Readings of different watches on the grid follow each other, in
        # the order the watches were made, rather than wake together (which
        # has them wait for each other's interpreter lock): 0-3.5 ms after
        # each point.
        self._grid_offset = (next(_GRID_SLOTS) % GRID_SLOTS) * GRID_STEP

    def _on_monitor(self, monitor: zmq.Socket[Any]) -> None:
        self.on_monitor(monitor)
        self._arm()

    def _arm(self) -> None:
        if self._actor is not None and self._timer is None and self.watching:
            self._timer = self._actor.call_later(self.next_sample(), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.sample()
        if self._actor is not None and self.watching:
            self._timer = self._actor.call_later(self.next_sample(), self._on_timer)

    def _on_grid(self) -> float:
        """Seconds to the next point of a grid of the clock shared by every
        watch of the process (``idle`` apart; this watch ``_grid_offset``
        after each): never more than ``idle``, never none. Three actors of a
        node with a member watch its links and its port; each reading alone
        woke a thread whose caches had gone cold (~0.3 ms of CPU here),
        while readings that follow each other within a millisecond find
        them warm: 0.90-1.01% of a core became 0.58-0.65%
        (docs/benchmarks.md)."""
        idle = self.sampling.idle
        if self._actor is None:
            return idle
        due = idle - (self._actor.now() - self._grid_offset) % idle
        # On a point (or a rounding error short of one: 1001.0 % 0.2 is
        # 0.2 - 6e-14): the next one, not at once again.
        return due if due >= GRID_MIN else idle

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
        if held == 0 and self._quiet and least < self.sampling.idle:
            return self._on_grid()  # (quiet: on the grid, never later than idle)
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

    def forget_owner(self, owner: Hashable) -> None:
        """The dialled socket ``owner`` is closed: its connection goes."""
        for inode in [i for i, o in self._owner.items() if o == owner]:
            self._forget(inode)
        self._dialled.pop(owner, None)

    def _forget(self, inode: int) -> None:
        self._fds.pop(inode, None)
        self._owner.pop(inode, None)
        self.guard.closed(inode)

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

    def sample(self) -> None:
        reads: dict[int, int] = {}
        for inode, fd in list(self._fds.items()):
            read = _bytes_read(inode, fd)
            if read is None:
                self._forget(inode)
            elif read >= 0:
                reads[inode] = read
        self._quiet = reads == self._last_reads
        self._last_reads = reads
        close = self.guard.sample(reads)
        if close:
            self.count("closed-unread", len(close))
            self._close(close)

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
            fd = self._fds.pop(inode, None)
            owner = self._owner.pop(inode, None)
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
        """A duplicate of ``fd`` if it is still the socket ``inode`` (else
        None), closed on leaving."""
        try:
            copy = os.dup(fd)
        except OSError:
            yield None
            return
        try:
            dup = socket.socket(fileno=copy)
        except OSError:  # no longer a socket
            os.close(copy)
            yield None
            return
        try:
            yield dup if os.fstat(dup.fileno()).st_ino == inode else None
        finally:
            dup.close()


def _bytes_read(inode: int, fd: int) -> int | None:
    """What libzmq took off the TCP connection ``fd`` (the bytes received
    less those still waiting), read through a duplicate of ``fd`` checked to
    be the socket ``inode``: None if it no longer is (closed, the number
    reused), -1 if its counters cannot be read.

    The same checks as :meth:`PortWatch._same_socket` without its context
    manager, and the socket object made with its family and type named (it
    only reads options, which do not depend on them), not probed (three
    system calls): this runs for every watched connection every
    ``Sampling.interval``, 13 us a connection before, 7 us now."""
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
            return -1
        finally:
            dup.detach()  # the duplicate is closed below, once
    finally:
        os.close(copy)
    if len(info) < TCPI_BYTES_RECEIVED + 8:
        return -1
    received: int = struct.unpack_from("<Q", info, TCPI_BYTES_RECEIVED)[0]
    return received - waiting
