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
what arrives meanwhile, so it asks for a receive buffer larger than the
sender's window (``multicast_rcvbuf``, docs/multicast.md "The datagram
path"): ``SO_RCVBUFFORCE`` when the process may (root, CAP_NET_ADMIN), else
``SO_RCVBUF``, which the kernel caps at ``net.core.rmem_max``. The receiver
actor logs once what it got when that is less; losses are repaired either
way (NAKs), a small buffer just costs repairs.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import queue
import select
import socket
import struct
import sys
import termios
import threading
from array import array
from collections.abc import Callable
from typing import NamedTuple

from peercrypt.core import fragments
from peercrypt.runtime.actor import name_native_thread

log = logging.getLogger("peercrypt.msender")

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
SEND_TIMEOUT = 0.2  # seconds one datagram may wait for send-buffer space
IP_MTU = getattr(socket, "IP_MTU", 14)
SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO = getattr(socket, "UDP_GRO", 104)
IP_UDP_HEADERS = 28  # IPv4 (no options) + UDP
GSO_MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS (64 before 6.9, then 128)
GRO_BUFFER = 65536  # a GRO buffer holds at most 64 KiB (the IPv4 length field)
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: the enum's & costs ~1 us a read
# Errors with which the kernel refuses a GSO batch but would take the same
# datagrams one by one: EMSGSIZE, a segment larger than the path's MTU (the
# interface's MTU was lowered under a running session); EIO, a device or
# route that cannot take GSO (IPsec; before Linux 6.x, a device without
# checksum offload); EINVAL, UDP checksums off on the socket.
GSO_REFUSED = frozenset((errno.EMSGSIZE, errno.EIO, errno.EINVAL))
# Sends waiting for a session's sending thread (each a chunk, or the part of
# one a paced session may send): the actor blocks beyond, as it blocked in
# sendmsg before; so a session holds at most this many sealed chunks here.
SEND_QUEUE = 8
CLOSE_WAIT = 1.0  # seconds close() waits for the sending (receiving) thread
# Chunks a session's receiving thread completed, waiting for the actor to
# check and open them (the thread waits beyond: the socket's buffer holds
# what arrives meanwhile).
READY_CHUNKS = 4
RECV_BATCH = 16  # receive buffers (datagrams or GRO buffers of 64 KiB) per recvmmsg
IDLE_WAIT_MS = 200  # a receiving thread with nothing to read looks whether to stop this often
ERROR_WAIT_MS = 10  # after a socket error, before the next read


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


class Send(NamedTuple):
    """The datagrams of a sealed chunk (``blob``: the sealed bytes and the
    signature, back to back), their headers tagged with ``key``, from
    offset ``start`` (a fragment boundary): all of them, or (``budget``,
    paced) whole datagrams until at least that many bytes left."""

    sid: bytes
    chunk: int  # its index
    last: bool
    nonce: bytes
    blob: fragments.Blob
    key: bytes
    start: int = 0
    budget: int | None = None


class GroupSender:
    """One session's socket to the group, and how it sends a chunk's datagrams.

    ``datagram`` is the largest datagram the node may send (the setting
    ``--multicast-datagram``). With UDP GSO (``UDP_SEGMENT``, Linux >= 4.18)
    datagrams are sized to the interface's MTU (no IP fragments) and up to
    ``batch`` of them leave in one ``sendmsg``: the kernel carries the batch
    as one packet through the stack, the veth and the bridge, and cuts it
    into datagrams only where a device needs it (a receiver's socket with
    GRO takes it whole). Without GSO, one datagram per ``sendmsg`` of up to
    ``datagram`` bytes (IP fragments on a smaller MTU: measured cheaper than
    MTU-sized datagrams without GSO). :attr:`fragment` is the payload per
    datagram, announced to the receivers. The actor hands sends to
    :meth:`submit`; they leave from the session's sending thread, the only
    one that touches the socket until :meth:`close`.
    """

    def __init__(
        self, interface: str, group: tuple[str, int], ttl: int, sndbuf: int, datagram: int
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            _buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
            sock.connect(group)  # the route is looked up once, not per datagram
            mtu = sock.getsockopt(socket.IPPROTO_IP, IP_MTU)
            # A full send buffer (receivers not reading what is charged to it)
            # must not block the actor: a datagram not sent in time is dropped
            # and repaired like any loss.
            sock.settimeout(SEND_TIMEOUT)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.mtu = mtu
        wire = min(datagram, fragments.MAX_DATAGRAM)
        self.gso = False
        path = mtu - IP_UDP_HEADERS
        if wire > path >= fragments.HEADER_BYTES + fragments.MIN_FRAGMENT:
            try:
                sock.setsockopt(SOL_UDP, UDP_SEGMENT, path)
                self.gso = True
                wire = path
            except OSError:  # no GSO: IP fragments it is
                pass
        self.datagram = wire
        self.fragment = wire - fragments.HEADER_BYTES
        self.packed_offsets: list[bytes] = []  # OFFSET.pack of each fragment's offset
        # datagrams per send: the kernel's segment limit, and 64 KiB in all
        self.batch = min(GSO_MAX_SEGMENTS, fragments.MAX_DATAGRAM // wire) if self.gso else 1
        # The sending thread (started by the first submit) and what it did.
        self.jobs: queue.Queue[Send | None] = queue.Queue(SEND_QUEUE)
        self.thread: threading.Thread | None = None
        self.closing = False
        self.sent = 0  # datagrams sent (written by the sending thread only)
        self.unsent = 0  # datagrams not sent: their chunks are NAKed and repaired
        self.failed: tuple[int, bytes] | None = None  # (index, nonce) of the last failed seal

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Stop the sending thread (what it still holds is dropped: the
        session is over) and close the socket: here, or by the thread as it
        ends if it is still inside a send (never closed under it: a number
        reused meanwhile would get its datagrams)."""
        if self.thread is not None:
            self.closing = True
            with contextlib.suppress(queue.Full):
                self.jobs.put(None, timeout=CLOSE_WAIT)
            self.thread.join(CLOSE_WAIT)
            if self.thread.is_alive():
                return
        self.sock.close()  # (twice is harmless: a socket object closes its descriptor once)

    def submit(self, job: Send) -> int:
        """Have the sending thread send what :meth:`send_range` would; returns
        the offset it will reach (whole datagrams: known before they leave).
        The actor's thread only seals and signs; the system calls, and on one
        host the kernel's delivery to every receiver that they carry, run on
        a thread of their own (as ZeroMQ's I/O thread does for PUB/SUB).
        Blocks while :data:`SEND_QUEUE` sends wait. A send that fails counts
        the rest of its chunk as unsent, and later parts of that seal are
        dropped (the chunk is NAKed and repaired)."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="pc-datagrams", daemon=True)
            self.thread.start()
        self.jobs.put(job)
        size, start = fragments.blob_len(job.blob), job.start
        stop = size if job.budget is None else min(size, start + max(job.budget, 1))
        return min(size, start + -(-(stop - start) // self.fragment) * self.fragment)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if self.closing:  # (close() may have given up waiting for this send)
                self.sock.close()

    def _loop(self) -> None:
        name_native_thread()
        while True:
            job = self.jobs.get()
            if job is None or self.closing:
                return
            if self.failed == (job.chunk, job.nonce):
                continue  # counted as unsent when that seal failed
            try:
                _, sent, unsent = self.send_range(job)
            except Exception as exc:  # no error may stop the thread: submit would block
                log.error("multicast: sending chunk %d failed: %s", job.chunk, exc)
                left = fragments.blob_len(job.blob) - job.start
                sent, unsent = 0, fragments.fragment_count(left, self.fragment)
            self.sent += sent
            if unsent:
                self.unsent += unsent
                self.failed = (job.chunk, job.nonce)

    def send_range(self, job: Send) -> tuple[int, int, int]:
        """Send ``job`` now (on the sending thread). Returns the offset
        reached, the datagrams sent, and how many of the chunk's were not sent after a failure (the
        rest of the chunk is useless without them: it is NAKed and repaired)."""
        sid, index, last, nonce, blob, key, start, budget = job
        size = fragments.blob_len(blob)
        stop = size if budget is None else min(size, start + max(budget, 1))
        fields, tag = fragments.chunk_header(sid, index, last, nonce, size, key=key)
        frag = self.fragment
        count = -(-(stop - start) // frag)  # datagrams from start up to stop
        number = start // frag
        offsets = self._offsets(number + count)
        sent = k = 0
        while k < count:
            # Four pieces per datagram, put in place by slice (no Python per
            # datagram): the chunk's header fields and tag are the same
            # objects throughout, the offsets are packed once per session.
            # self.batch is read each time: after a refused GSO send it is 1
            # (several datagrams in one send without GSO are one datagram).
            # The payload views of one send at a time: a chunk's ~750 views
            # alive at once outlived young collections and cost the garbage
            # collector (0.03 CPU s per 256 MiB at MTU 1500).
            lo = start + k * frag
            part = fragments.payload_views(blob, frag, lo, min(stop, lo + self.batch * frag))
            n = len(part)
            iov: list[bytes | memoryview] = [fields] * (4 * n)
            iov[1::4] = offsets[number + k : number + k + n]
            iov[2::4] = [tag] * n
            iov[3::4] = part
            if self.closing or not self._send_batch(iov):
                first = start + k * frag
                return first, sent, fragments.fragment_count(size, frag) - first // frag
            sent += n
            k += n
        return min(size, start + sent * frag), sent, 0

    def _offsets(self, count: int) -> list[bytes]:
        """The packed offsets of fragments 0..count-1 (made once, as needed)."""
        packed, frag = self.packed_offsets, self.fragment
        while len(packed) < count:
            packed.append(fragments.OFFSET.pack(len(packed) * frag))
        return packed

    def _send_batch(self, iov: list[bytes | memoryview]) -> bool:
        """Datagrams of four pieces each (header fields, offset, tag,
        payload) in one send: a GSO batch when there are several."""
        try:
            self.sock.sendmsg(iov)
        except OSError as exc:
            if not self.gso or exc.errno not in GSO_REFUSED:
                return False
            # The kernel refuses GSO batches on this path now: one datagram
            # per send from now on, of the same size (it was announced; the
            # IP layer fragments it if the MTU became smaller).
            self.gso, self.batch = False, 1
            log.info(
                "multicast: the kernel refuses UDP GSO on this path now (%s); "
                "sending %d-byte datagrams one by one",
                errno.errorcode.get(exc.errno, exc.errno),
                self.datagram,
            )
            with contextlib.suppress(OSError):
                self.sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
            return all(
                not self.closing and self._send(iov[k : k + 4]) for k in range(0, len(iov), 4)
            )
        return True

    def _send(self, iov: list[bytes | memoryview]) -> bool:
        try:
            self.sock.sendmsg(iov)
        except OSError:
            return False
        return True


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("hdr", _Msghdr), ("len", ctypes.c_uint))


def _libc_recvmmsg() -> Callable[[int, int, int, int, None], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
    fn.restype = ctypes.c_int
    return fn


RECVMMSG = _libc_recvmmsg()  # None: the C library has none (one recvmsg per read)
MSG_DONTWAIT = int(socket.MSG_DONTWAIT)
_HDR = ctypes.sizeof(_Mmsghdr)
# what recvmmsg writes back per message: the control length, the flags, the length
_RESULT = struct.Struct(
    f"=Q{_Msghdr.flags.offset - _Msghdr.controllen.offset - 8}x"
    f"i{_Mmsghdr.len.offset - _Msghdr.flags.offset - 4}xI"
)
_CMSG = struct.Struct("=iii")  # cmsg_level, cmsg_type (after cmsg_len), data (aligned to 8)
_CMSG_AT = ctypes.sizeof(ctypes.c_size_t)
_CMSG_DATA = socket.CMSG_LEN(0)
_IOVEC = ctypes.sizeof(_Iovec)
# Reads straight into a chunk (BatchReader, "landing"): the iovecs are
# written as 8-byte words (base, length), and each message's iov pointer too.
_LANDING = _IOVEC == 16 and _Iovec.len.offset == 8 and _Msghdr.iov.offset % 8 == 0 and _HDR % 8 == 0
# Chunk buffers whose iovecs a reader keeps (the reassembler reuses ~6), and
# at most so many bytes of them (one per 16 MiB chunk at MTU 1500 is 386 KiB).
CHUNK_IOVECS = 8
CHUNK_IOVEC_BYTES = 1024 * 1024


class BatchReader:
    """Up to ``messages`` receive buffers (datagrams, or GRO buffers) in one
    ``recvmmsg`` (the C library's, through ctypes: Python's socket has
    none), scattered into :class:`fragments.BatchBuffers` by iovecs made
    once: a receiver behind by several GSO batches catches up with one
    system call and one pass of Python for all of them."""

    def __init__(self, fileno: int, fragment: int, messages: int) -> None:
        assert RECVMMSG is not None
        datagram = fragment + fragments.HEADER_BYTES
        batch = max(1, min(GSO_MAX_SEGMENTS, fragments.MAX_DATAGRAM // datagram))
        spare = max(GRO_BUFFER - batch * datagram, datagram)
        self.fileno = fileno
        self.messages = messages
        self.buffers = fragments.BatchBuffers(fragment, batch, messages, spare)
        self.control = bytearray(messages * GRO_CMSG_SPACE)
        per = len(self.buffers.iovs[0])
        iovs = (_Iovec * (messages * per))()
        self._keep: list[object] = [iovs]
        for m, views in enumerate(self.buffers.iovs):
            for k, view in enumerate(views):
                iovs[m * per + k].base = self._address(view)
                iovs[m * per + k].len = len(view)
        self.raw = bytearray(_HDR * messages)
        headers = (_Mmsghdr * messages).from_buffer(self.raw)
        control = self._address(memoryview(self.control))
        for m in range(messages):
            hdr = headers[m].hdr
            hdr.iov = ctypes.addressof(iovs) + m * per * ctypes.sizeof(_Iovec)
            hdr.iovlen = per
            hdr.control = control + m * GRO_CMSG_SPACE
            hdr.controllen = GRO_CMSG_SPACE
        self._keep.append(headers)
        self.address = ctypes.addressof(headers)
        self.pristine = bytes(self.raw)  # the control lengths, before the kernel's writes
        self.per = per
        # Reads straight into a chunk: per chunk buffer (by address and
        # length, no reference kept) an iovec of all its whole GSO batches,
        # each batch's headers into `heads` at its fragments' numbers and a
        # spare slot of its own; a message's iov pointer is set to one of them.
        self.words = memoryview(self.raw).cast("Q")  # the mmsghdrs, as 8-byte words
        self.heads = bytearray()
        self.spares = bytearray(len(self.buffers.spares))
        self.chunk_iovs: collections.OrderedDict[tuple[int, int], ctypes.Array[_Iovec]] = (
            collections.OrderedDict()
        )
        self.landed = 0  # messages the kernel put straight into their chunk

    def _address(self, view: memoryview, keep: bool = True) -> int:
        block = (ctypes.c_char * len(view)).from_buffer(view)
        if keep:
            self._keep.append(block)
        return ctypes.addressof(block)

    def _result(self, m: int) -> tuple[int, int, int]:
        """Message ``m`` of the last read: its flags, its length and its GRO
        segment size (0: one datagram)."""
        clen, flags, n = _RESULT.unpack_from(self.raw, m * _HDR + _Msghdr.controllen.offset)
        if clen >= _CMSG_DATA + 4:
            level, kind, size = _CMSG.unpack_from(self.control, m * GRO_CMSG_SPACE + _CMSG_AT)
            if level == SOL_UDP and kind == UDP_GRO:
                return flags, n, size
        return flags, n, 0

    def _landed(self, landing: fragments.Landing, read: int) -> int:
        """After a read whose first ``read`` messages went into ``landing``'s
        chunk: how many of them, from the first, came full with datagrams of
        the session's size (they stay where they are, for
        :meth:`_landed_run`); every later one is moved out to the read's own
        buffers (header, payload and spare slots) as if read there."""
        batch, frag = self.buffers.batch, self.buffers.frag
        datagram, full = self.buffers.datagram, self.buffers.full
        whole = 0
        while whole < read:
            flags, n, size = self._result(whole)
            if (
                flags & MSG_TRUNC
                or n != full
                or not (size == datagram or (size == 0 and batch == 1))
            ):
                break
            whole += 1
        head, bufs = fragments.HEADER_BYTES, self.buffers
        chunk = memoryview(landing.pending.buf)
        spare = len(self.spares) // self.messages
        for m in range(whole, read):
            slot = landing.number // batch + m  # the chunk's batch it was read into
            number = slot * batch
            bufs.heads[m * batch * head : (m + 1) * batch * head] = self.heads[
                number * head : (number + batch) * head
            ]
            bufs.payloads[m * batch * frag : (m + 1) * batch * frag] = chunk[
                number * frag : (number + batch) * frag
            ]
            s = slot % self.messages * spare
            bufs.spares[m * spare : (m + 1) * spare] = self.spares[s : s + spare]
        self.landed += whole
        return whole

    def _landed_run(self, landing: fragments.Landing, whole: int) -> fragments.Scattered:
        """The first ``whole`` messages, read full into ``landing``'s chunk:
        their headers lie in :attr:`heads` at their fragments' numbers; the
        read's own payload slots are where they go if they are not the
        chunk's."""
        bufs = self.buffers
        count = whole * bufs.batch
        head = fragments.HEADER_BYTES
        heads = memoryview(self.heads)[landing.number * head : (landing.number + count) * head]
        return fragments.Scattered(
            heads,
            bufs.payloads,
            bufs.frag,
            count,
            bufs.datagram,
            fragments.Landing(landing.index, landing.pending, landing.number, count),
        )

    def _chunk_iov(self, buf: bytearray | memoryview) -> int:
        """The address of ``buf``'s iovec: GSO batch ``s`` of it (fragments
        ``s * batch``..) at ``s * per`` entries, as a message's own iovec
        would be (header, payload per datagram, then a spare slot)."""
        block = (ctypes.c_char * len(buf)).from_buffer(buf)
        base = ctypes.addressof(block)
        del block  # no reference kept: the chunk's pending entry holds it
        key = (base, len(buf))
        iov = self.chunk_iovs.get(key)
        if iov is not None:
            self.chunk_iovs.move_to_end(key)
            return ctypes.addressof(iov)
        batch, frag, per = self.buffers.batch, self.buffers.frag, self.per
        slots = len(buf) // frag // batch  # whole batches of whole fragments
        head = fragments.HEADER_BYTES
        if len(self.heads) < slots * batch * head:
            self.heads = bytearray(slots * batch * head)  # addresses change: iovecs anew
            self.chunk_iovs.clear()
        heads = self._address(memoryview(self.heads), keep=False)
        spares = self._address(memoryview(self.spares), keep=False)
        spare = len(self.spares) // self.messages
        words = array("Q", bytes(16 * slots * per))
        for b in range(slots):
            o, first = 2 * b * per, b * batch
            words[o : o + 4 * batch : 4] = array(
                "Q", range(heads + first * head, heads + (first + batch) * head, head)
            )
            words[o + 1 : o + 4 * batch : 4] = array("Q", [head]) * batch
            words[o + 2 : o + 4 * batch : 4] = array(
                "Q", range(base + first * frag, base + (first + batch) * frag, frag)
            )
            words[o + 3 : o + 4 * batch : 4] = array("Q", [frag]) * batch
            if per > 2 * batch:
                words[o + 4 * batch] = spares + (b % self.messages) * spare
                words[o + 4 * batch + 1] = spare
        iov = (_Iovec * (slots * per)).from_buffer(words)
        self.chunk_iovs[key] = iov
        kept = len(self.chunk_iovs) * ctypes.sizeof(iov)  # (one session: one chunk size)
        while len(self.chunk_iovs) > 1 and (
            len(self.chunk_iovs) > CHUNK_IOVECS or kept > CHUNK_IOVEC_BYTES
        ):
            self.chunk_iovs.popitem(last=False)
            kept -= ctypes.sizeof(iov)
        return ctypes.addressof(iov)

    def read(
        self, landing: fragments.Landing | None = None
    ) -> list[fragments.Scattered | tuple[bytes, int] | fragments.FragmentError]:
        """What one ``recvmmsg`` got (see :meth:`fragments.BatchBuffers.split`;
        a datagram larger than any of ours as ``FragmentError("oversize")``).
        The views are into buffers the next read reuses. Raises
        ``BlockingIOError`` when nothing is queued, other ``OSError`` as the
        socket does.

        ``landing`` (:meth:`fragments.Reassembler.landing`, at a GSO batch's
        first fragment): the first messages are read straight into that
        chunk, one whole batch of its missing fragments each (the kernel's
        copy is the only one). Those that came full with datagrams of the
        session's size lead the result as one :class:`fragments.Scattered`
        carrying the landing: they count as placed only if their headers are
        exactly the sender's for those fragments, else they are moved out
        first (:meth:`fragments.Intake.feed_scattered`). Any other message
        read into the chunk is moved out to its own buffers here, before
        anything else sees it. A fragment the chunk holds is never written
        over, and its places stay missing until their own fragments come."""
        assert RECVMMSG is not None
        raw = self.raw
        raw[:] = self.pristine
        batch = self.buffers.batch
        aimed = 0
        # Between chunks (no landing) one message: the chunk it starts is
        # then being assembled, and the next read lands in it. With a
        # landing, its batches and one more (the chunk's short last one):
        # the next chunk's first batch is read once that one is complete.
        messages = 1 if landing is None else self.messages
        if landing is not None and _LANDING and landing.number % batch == 0:
            aimed = min(landing.count // batch, self.messages)
            messages = min(aimed + 1, self.messages)
        if aimed:
            assert landing is not None
            size = self.per * _IOVEC
            start = self._chunk_iov(landing.pending.buf) + landing.number // batch * size
            stride, at = _HDR // 8, _Msghdr.iov.offset // 8
            self.words[at : aimed * stride : stride] = array(
                "Q", range(start, start + aimed * size, size)
            )
        got = RECVMMSG(self.fileno, self.address, messages, MSG_DONTWAIT, None)
        if got < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        out: list[fragments.Scattered | tuple[bytes, int] | fragments.FragmentError] = []
        reads: list[tuple[int, int]] = []
        first = 0
        if aimed:
            assert landing is not None
            whole = self._landed(landing, min(aimed, got))
            if whole:
                out.append(self._landed_run(landing, whole))
            first = whole
        for m in range(first, got):
            flags, n, size = self._result(m)
            if flags & MSG_TRUNC or (size == 0 and n > fragments.MAX_DATAGRAM):
                out += self.buffers.split(reads, first)
                out.append(fragments.FragmentError("oversize"))
                reads, first = [], m + 1
                continue
            reads.append((n, size))
        out += self.buffers.split(reads, first)
        return out


class GroupReceiver:
    """A non-blocking socket on ``group:port`` joined on ``interface``, and
    (once the session's key is known, :meth:`start`) a thread of its own
    that reads it and reassembles the chunks.

    It asks for GRO (``UDP_GRO``): the datagrams of a GSO batch then arrive
    as one buffer (one ``recvmsg`` instead of dozens) with their segment
    size; with ``recvmmsg`` (:class:`BatchReader`, :data:`RECV_BATCH`) up to
    16 such buffers come in one system call. Each read is scattered by the
    kernel: every datagram's header into one buffer, its payload
    (``fragment`` bytes, the session's) into another, so a run of a chunk's
    fragments lies contiguous, ready for one copy
    (:class:`fragments.Scattered`). ``got``: the receive buffer the kernel
    granted (bytes).

    The receiving thread (``pc-mrecv``; as the sender's datagrams leave from
    a thread of their own) is the only one that reads the socket and touches
    the :class:`fragments.Intake` and its reassembler until :meth:`close`:
    the system calls, the kernel's copies and the reassembly run beside the
    actor, which only checks and opens complete chunks. It hands them over
    on a queue of :data:`READY_CHUNKS` (it waits beyond, and the socket's
    buffer holds what arrives meanwhile), each announced on an eventfd the
    actor watches (:meth:`fileno`); the actor takes them with :meth:`take`,
    with the datagrams refused since (counter names and counts), and gives
    back through :meth:`forget` and :meth:`recycle` (queued to the thread,
    applied before its next read)."""

    def __init__(self, group: str, port: int, interface: str, rcvbuf: int, fragment: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.got = _buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
            sock.bind((group, port))
            mreq = struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(interface))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        try:
            sock.setsockopt(SOL_UDP, UDP_GRO, 1)
            self.gro = True
        except OSError:  # before Linux 5.0: one datagram per read
            self.gro = False
        self.sock = sock
        self.fragment = fragment
        self.datagram = fragment + fragments.HEADER_BYTES
        self.buffers = fragments.ReadBuffers(fragment, GRO_BUFFER)
        self.batch = (
            BatchReader(sock.fileno(), fragment, RECV_BATCH) if RECVMMSG is not None else None
        )
        # The receiving thread and what it shares with the actor.
        self.thread: threading.Thread | None = None
        self.intake: fragments.Intake | None = None
        self.have: fragments.Held = frozenset()
        self.ready: queue.Queue[fragments.Assembled] = queue.Queue(READY_CHUNKS)
        try:
            self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # the actor watches it
            try:
                self.stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # close() wakes it
            except OSError:
                os.close(self.wake)
                raise
        except OSError:  # (out of descriptors) the socket is not left open either
            sock.close()
            raise
        self.closing = False
        self._released = False  # the socket and eventfds are closed
        self._lock = threading.Lock()  # guards dropped, signalled, released and closing set
        self.dropped: dict[str, int] = {}  # counter name -> datagrams, since the last take()
        self._signalled = False  # the wake eventfd was written since the last take()
        self._forget: collections.deque[int] = collections.deque()
        self._spare: collections.deque[bytearray] = collections.deque()
        # The landing and iovec of the next read, kept while the socket is
        # empty (most reads find it empty once the one before was taken).
        self._plan: tuple[fragments.Landing | None, list[memoryview]] | None = None

    def fileno(self) -> int:
        """The eventfd that is readable when :meth:`take` has something."""
        return self.wake

    def start(self, intake: fragments.Intake, have: fragments.Held) -> None:
        """Start reading (the session's key is known): datagrams go to
        ``intake``; those of chunks in ``have`` are skipped. A second call
        (the key sent again) only replaces the intake."""
        self.have = have
        self.intake = intake
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="pc-mrecv", daemon=True)
            self.thread.start()

    def close(self) -> None:
        """Stop the receiving thread (what it holds is dropped: the session
        is over or goes on without the group) and close the socket. Once."""
        with self._lock:
            if self.closing:
                return
            self.closing = True
            if self.thread is not None:
                # Under the lock: a thread that sees ``closing`` on its own
                # (its idle poll timed out) closes the eventfds in _release,
                # which takes the lock, so only after this write. Written
                # after they were closed, it would fail, or land in whatever
                # descriptor took the number meanwhile.
                os.eventfd_write(self.stop, 1)
        if self.thread is not None:
            self.thread.join(CLOSE_WAIT)
            if self.thread.is_alive():
                return  # it releases them itself as it ends (no descriptor closed under it)
        self._release()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self.sock.close()
        os.close(self.wake)
        os.close(self.stop)

    def take(self) -> tuple[list[fragments.Assembled], dict[str, int]]:
        """(On the actor's thread) the chunks completed and the datagrams
        refused (counter name -> count) since the last call."""
        with self._lock:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self.wake)
            self._signalled = False
            dropped, self.dropped = self.dropped, {}
        chunks: list[fragments.Assembled] = []
        with contextlib.suppress(queue.Empty):
            while True:
                chunks.append(self.ready.get_nowait())
        return chunks, dropped

    def backlog(self) -> bool:
        """(On the actor's thread) whether datagrams wait to be read, or
        complete chunks to be taken: the receiving thread is behind."""
        if self.closing:
            return False
        if not self.ready.empty():
            return True
        try:
            return fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0") != bytes(4)
        except OSError:
            return False

    def forget(self, index: int) -> None:
        """(On the actor's thread) chunk ``index`` came whole another way
        (a unicast repair): stop assembling it."""
        self._forget.append(index)

    def recycle(self, buf: bytearray) -> None:
        """(On the actor's thread) give back the buffer of a chunk :meth:`take`
        gave, once no view of it is used any more (Reassembler.recycle)."""
        self._spare.append(buf)

    def read(
        self, landing: fragments.Landing | None = None, iov: list[memoryview] | None = None
    ) -> fragments.Scattered | tuple[bytes, int]:
        """One read: the datagrams scattered (views into buffers the next
        read reuses; the first payloads into ``landing``'s chunk, see
        :class:`fragments.ReadBuffers`) when they have the session's size
        (all but the last of a GRO buffer); else the bytes as they came and
        the GRO segment size (0: one datagram), for
        :meth:`fragments.Intake.feed`. Raises ``BlockingIOError`` when
        nothing is queued, other ``OSError`` as the socket does, and
        ``FragmentError("oversize")`` for a datagram larger than any of ours
        (it was truncated). ``iov``: ``self.buffers.iov_for(landing)``, if
        made already."""
        if iov is None:
            iov = self.buffers.iov_for(landing)
        n, ancillary, flags, _ = self.sock.recvmsg_into(iov, GRO_CMSG_SPACE)
        if flags & MSG_TRUNC:
            raise fragments.FragmentError("oversize")
        size = 0
        for level, kind, data in ancillary:
            if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
                size = int.from_bytes(data[:4], sys.byteorder)
        if size == 0 and n > fragments.MAX_DATAGRAM:
            raise fragments.FragmentError("oversize")
        if size == self.datagram or (size == 0 and n <= self.datagram):
            return self.buffers.scattered(n, landing)
        return b"".join(iov)[:n], size  # another size: not ours, checked the slow way

    # -- the receiving thread ------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if self.closing:
                self._release()

    def _loop(self) -> None:
        # Not made nicer than the rest of the node (as the writer is): a
        # reader that waits for a core while the sender goes on loses what
        # overflows the socket's buffer, and that costs repairs.
        name_native_thread()
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.stop, select.POLLIN)
        while not self.closing:
            try:
                self._receive()
            except (BlockingIOError, InterruptedError):
                poller.poll(IDLE_WAIT_MS)  # nothing queued: wait for a datagram (or close)
            except OSError as exc:
                if self.closing:
                    return
                self._drop("datagram-error")
                log.debug("multicast socket: %s", exc)
                poller.poll(ERROR_WAIT_MS)  # at most so many errors a second
            except Exception as exc:  # no error may stop the thread: the session would stall
                self._drop("datagram-error")
                log.error("multicast: receiving failed: %s", exc)
                # An error that repeats on every read must not spin a core.
                poller.poll(ERROR_WAIT_MS)

    def _receive(self) -> None:
        """One read, into the reassembly; complete chunks to the actor."""
        intake = self.intake
        assert intake is not None  # set before the thread starts
        asm = intake.reassembler
        while self._forget:
            asm.forget(self._forget.popleft())
        while self._spare:
            asm.recycle(self._spare.popleft())
        if self.batch is not None:
            # The rest of the chunk being received most likely comes next:
            # whole GSO batches of it are read straight into its buffer.
            landing = asm.landing(self.batch.messages * self.batch.buffers.batch)
            for read in self.batch.read(landing):
                if isinstance(read, fragments.FragmentError):
                    self._drop(f"datagram-dropped-{read.kind}")
                else:
                    self._feed(intake, read)
            return
        if self._plan is None:
            # The rest of the chunk being received most likely comes next:
            # its payloads are read straight into its buffer. (A plan made
            # before a wait may have gone stale: add_landed checks it anew.)
            landing = asm.landing(self.buffers.slots)
            self._plan = landing, self.buffers.iov_for(landing)
        landing, iov = self._plan
        try:
            read = self.read(landing, iov)
        except fragments.FragmentError as exc:
            self._plan = None
            self._drop(f"datagram-dropped-{exc.kind}")
            return
        self._plan = None
        self._feed(intake, read)

    def _feed(
        self, intake: fragments.Intake, read: fragments.Scattered | tuple[bytes, int]
    ) -> None:
        """A read into the reassembly; complete chunks to the actor."""
        if isinstance(read, fragments.Scattered):
            events = intake.feed_scattered(read, self.have)
        else:
            events = intake.feed(memoryview(read[0]), read[1], self.have)
        for got in events:
            if isinstance(got, fragments.FragmentError):
                self._drop(f"datagram-dropped-{got.kind}")
            else:
                self._hand(got)

    def _hand(self, chunk: fragments.Assembled) -> None:
        while not self.closing:
            try:
                self.ready.put(chunk, timeout=IDLE_WAIT_MS / 1000)
                break
            except queue.Full:  # the actor is behind: the socket's buffer holds the rest
                continue
        self._signal()

    def _drop(self, name: str) -> None:
        with self._lock:
            self.dropped[name] = self.dropped.get(name, 0) + 1
        self._signal()

    def _signal(self) -> None:
        """Wake the actor (once until it takes what there is: a flood of
        refused datagrams costs it one wake, not one each)."""
        with self._lock:
            if self._signalled or self.closing:
                return
            self._signalled = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self.wake, 1)
