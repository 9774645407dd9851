"""UDP/IP multicast sockets for the multicast actors (docs/multicast.md, "Transports").

The datagram format and the reassembly are pure (peercrypt/core/fragments.py);
this module only opens, sizes and uses the kernel sockets:

- the sender's socket sends to the group through one interface (the one that
  routes to the targets), with ``IP_MULTICAST_TTL`` hops (1: this link only)
  and loopback on, so receivers on the sender's own host get the datagrams;
- a receiver's socket is bound to the group's address and port (so it sees
  only that group; several sockets of one host may bind it, each gets every
  datagram) and joins the group on the interface that routes to the sender.

Buffers: a receiver that is descheduled for a few milliseconds must not lose
what arrives meanwhile, so it asks for a large receive buffer
(``multicast_rcvbuf``): ``SO_RCVBUFFORCE`` when the process may (root,
CAP_NET_ADMIN), else ``SO_RCVBUF``, which the kernel caps at
``net.core.rmem_max``. The receiver actor logs once what it got when that
is less; losses are repaired either way (NAKs), a small buffer just costs
repairs.
"""

from __future__ import annotations

import socket
import struct

from peercrypt.core import fragments

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
SEND_TIMEOUT = 0.2  # seconds one datagram may wait for send-buffer space


def interface_toward(host: str) -> str:
    """The local IPv4 address of the route toward ``host`` ("0.0.0.0" when
    there is none). Connecting a UDP socket sends no packet."""
    try:
        infos = socket.getaddrinfo(host, 9, socket.AF_INET, socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(infos[0][4])
            return str(s.getsockname()[0])
    except (OSError, IndexError, UnicodeError):
        return "0.0.0.0"


def _buffer(sock: socket.socket, force: int, normal: int, size: int) -> int:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:  # not privileged: capped by net.core.[rw]mem_max
        sock.setsockopt(socket.SOL_SOCKET, normal, size)
    return sock.getsockopt(socket.SOL_SOCKET, normal) // 2  # the kernel reports double


def open_sender(interface: str, ttl: int, sndbuf: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        _buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
        # A full send buffer (receivers not reading what is charged to it)
        # must not block the actor: a datagram not sent in time is dropped
        # and repaired like any loss.
        sock.settimeout(SEND_TIMEOUT)
    except OSError:
        sock.close()
        raise
    return sock


def open_receiver(group: str, port: int, interface: str, rcvbuf: int) -> tuple[socket.socket, int]:
    """A non-blocking socket on ``group:port`` joined on ``interface``; and the
    receive buffer it got (bytes)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        got = _buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
        sock.bind((group, port))
        mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock, got


def send_sealed(
    sock: socket.socket,
    dest: tuple[str, int],
    sid: bytes,
    index: int,
    last: bool,
    nonce: bytes,
    blob: fragments.Blob,
    frag: int,
    key: bytes,
) -> int:
    """Send one sealed chunk (``blob``: the sealed bytes and the signature,
    back to back) as datagrams, their headers tagged with ``key``; returns
    how many were not sent (a full or failing interface: the chunk is NAKed
    and repaired later)."""
    size = fragments.blob_len(blob)
    parts = list(fragments.split(size, frag))
    for n, (offset, end) in enumerate(parts):
        head = fragments.header(sid, index, last, nonce, size, offset, key=key)
        if not send_datagram(sock, dest, head, fragments.blob_slice(blob, offset, end)):
            return len(parts) - n  # the rest of this chunk is useless without it
    return 0


def send_datagram(
    sock: socket.socket, dest: tuple[str, int], head: bytes, payload: list[memoryview]
) -> bool:
    """Send one datagram (header + payload pieces); False when it could not be sent."""
    try:
        sock.sendmsg([head, *payload], (), 0, dest)
    except OSError:
        return False
    return True
