"""The receiver's data port seen from the kernel: its TCP connections, what
libzmq read from each, and closing the ones the guard names.

Part of the receiver actor, not an actor of its own: a thin shell over
:class:`~peercrypt.core.data_port_guard.DataPortGuard` (which says why).

libzmq gives a bound socket no handle on its connections, only the file
descriptor of each in its monitor's events (accepted, disconnected). The
watch records each TCP connection by its socket's inode (unique while the
socket lives, so a descriptor number closed and reused meanwhile is never
mistaken for it), reads TCP's counters through a duplicate of the
descriptor, and closes a connection with ``shutdown()`` on such a
duplicate, checked to be the same socket: libzmq then sees the connection
end as if the peer had closed it, and frees what it held for it. libzmq's
own descriptor is never closed here. Unix-socket connections (the local
one, ``local_ipc``) are not watched: only users of this host reach them.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import os
import socket
import stat
import struct
import termios
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from peercrypt.core.data_port_guard import (
    DataPortGuard,
    GuardLimits,
    framed_size,
    held_memory,
)

EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
# Seconds between readings of the connections' counters: a connection can
# grow what it holds by what loopback carries in that time (~1.5 GB/s here),
# so they are read often once a quarter of the bound is held. A reading costs
# ~20 us per connection, so the interval is at least SAMPLE_COST per
# connection (at most ~20% of a core, 51 ms with 512 connections).
SAMPLE_INTERVAL = 0.02
SAMPLE_INTERVAL_BUSY = 0.002
SAMPLE_COST = 0.0001
TCPI_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received in struct tcp_info (Linux >= 4.1)
TCP_INFO_LEN = 136
INQ = struct.Struct("i")


@functools.lru_cache(maxsize=1024)
def address_of(text: str) -> str:
    """One spelling per address, whether libzmq or the kernel gave it
    (cached: it is asked for every message taken off the data socket)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed


class DataPortWatch:
    """The data socket's TCP connections, from its monitor's events
    (:meth:`on_monitor`), the messages taken off it (:meth:`delivered`) and
    their counters (:meth:`sample`); closes what the guard names and counts
    each decision with ``count(key, n)``."""

    def __init__(self, limits: GuardLimits, count: Callable[[str, int], None]) -> None:
        self.guard = DataPortGuard(limits)
        self.count = count
        self._fds: dict[int, int] = {}  # inode -> libzmq's descriptor of it

    @property
    def connections(self) -> int:
        return self.guard.connections

    @property
    def watching(self) -> bool:
        """Whether to keep sampling: a connection, or a debt, is left."""
        return self.guard.watching

    def next_sample(self) -> float:
        """Seconds until the counters should be read again."""
        busy = self.guard.held * 4 > self.guard.limits.held
        least = SAMPLE_COST * self.guard.connections
        return max(SAMPLE_INTERVAL_BUSY if busy else SAMPLE_INTERVAL, least)

    def on_monitor(self, monitor: zmq.Socket[Any]) -> None:
        for _ in range(256):
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                if bytes(event["endpoint"]).startswith(b"tcp://"):
                    self._accepted(fd)
            else:  # disconnected or closed: that descriptor's socket is gone
                gone = [inode for inode, d in self._fds.items() if d == fd]
                for inode in gone:
                    del self._fds[inode]
                    self.guard.closed(inode)

    def delivered(self, frames: list[zmq.Frame]) -> None:
        """A message the receiver took off the data socket (with the
        routing id the ROUTER put first, which never crossed the wire)."""
        if not self.guard.watching or len(frames) < 2:
            return
        try:
            peer = frames[1].get("Peer-Address")
        except zmq.ZMQError:
            return
        size = memory = 0
        for frame in frames[1:]:
            length = len(frame)
            size += framed_size(length)
            memory += held_memory(length)
        self.guard.delivered(address_of(str(peer)), size, memory)

    def sample(self) -> None:
        reads: dict[int, int] = {}
        for inode, fd in list(self._fds.items()):
            with self._same_socket(inode, fd) as dup:
                if dup is None:
                    del self._fds[inode]
                    self.guard.closed(inode)
                    continue
                try:
                    info = dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
                    waiting = INQ.unpack(fcntl.ioctl(dup.fileno(), termios.FIONREAD, bytes(4)))[0]
                except OSError:
                    continue
                if len(info) >= TCPI_BYTES_RECEIVED + 8:
                    received = struct.unpack_from("<Q", info, TCPI_BYTES_RECEIVED)[0]
                    reads[inode] = received - waiting
        close = self.guard.sample(reads)
        if close:
            self.count("data-closed-unread", len(close))
            self._close(close)

    def _accepted(self, fd: int) -> None:
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
        close = self.guard.accepted(st.st_ino, address_of(peer))
        if close:
            self.count("data-closed-over-cap", len(close))
            self._close(close)

    def _close(self, inodes: list[int]) -> None:
        self.count("data-closed-connections", len(inodes))
        for inode in inodes:
            fd = self._fds.pop(inode, None)
            if fd is None:
                continue
            with self._same_socket(inode, fd) as dup:
                if dup is not None:
                    with contextlib.suppress(OSError):
                        dup.shutdown(socket.SHUT_RDWR)

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
