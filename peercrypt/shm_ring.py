"""Chunks through shared memory when both nodes run on one host.

Over a Unix socket (peercrypt/local_ipc.py) every sealed byte still crosses
the kernel twice, once per ZeroMQ I/O thread. Here the receiving node lends
the sender a ring of chunk slots instead, per transfer: an anonymous shared
file (``memfd_create``, named ``peercrypt-ring-`` and 16 random bytes in
hex) of ``slots`` x (chunk + tag) bytes, sealed against shrinking and
growing (so no peer can make the other's mapping fault), mapped by both.
Its Accept names it as ``/proc/PID/fd/N`` with the random name (``data_ring``,
``ring_token``, ``ring_slots``), next to the Unix socket's path and under
the same host tag. The sender seals each chunk straight into a free slot
(peercrypt/core/slot_ring.py) and sends over its data connection only a
:class:`~peercrypt.wire.messages.SlotHeader` (the chunk's header and the
slot's sequence number), those of the chunks sealed in one go as the frames
of one message (at most :data:`MAX_BATCH`); the receiver gives the slots
back as soon as it has copied them out (an Ack's ``released``: one goes for
that alone after a read of its data socket that copied any), not once the
chunks are written, so a ring of a few slots keeps up with a credit of
many. A chunk sealed for want of a slot goes over the socket after the
descriptors of the chunks sealed before it (ahead of them, the receiver
would ack it first and the sender take theirs for lost).

What either side trusts of the other:

- The receiver COPIES a slot into its own buffer before it authenticates
  and decrypts it: the sender may rewrite shared memory at any moment, and
  AES-GCM reads its input more than once. A slot is never hashed, decrypted
  or written from the mapping. A descriptor names only a sequence number:
  the slot and its offset follow from it, the length from the chunk's index;
  an old sequence number or a chunk of the wrong length is dropped like a
  forged chunk, and a copy that does not authenticate moves nothing.
- The sender only writes the ring, never reads it back, and uses it only
  when :func:`open_ring` finds it to be exactly what the Accept named: the
  host tag of this host, a path of the shape ``/proc/PID/fd/N``, a regular
  shared-memory file of this user with no name in any folder, of exactly
  the named size, sealed against shrinking and growing, whose name is the
  token. Anything else: the chunks go over the socket as before.
- A ring full of slots the receiver has not released does not stop the
  sender: that chunk goes over the socket (with its ciphertext).

Off by default: ``--shm-ring`` / ``PEERCRYPT_SHM_RING=true`` on both nodes
turns it on (without it on either, the chunks go over the Unix socket);
``--no-local-ipc`` / ``PEERCRYPT_NO_LOCAL_IPC=true`` turns it off with the
Unix socket, on either side. Memory: a ring holds at most
:data:`RING_SLOTS` chunks (fewer for a file of fewer chunks), all rings of a
receiving node together at most a quarter of its ``receive_buffer`` (8 MiB
of chunks by default: one ring; a transfer beyond it sends over the
socket), and a sending node writes into one ring at a time; its pages
count in the RSS of both nodes, and once in their PSS together. Only
single-lane transfers use one (parallel lanes send over their sockets).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import re
import stat

from peercrypt.core.slot_ring import MAX_SLOTS as MAX_SLOTS
from peercrypt.core.slot_ring import SlotIntake, SlotRing

# The tag each sealed chunk carries (peercrypt.crypto.transfer.TAG_BYTES,
# not imported: `peercrypt send` imports this module and no key library).
TAG_BYTES = 16

PREFIX = "peercrypt-ring-"
TOKEN_BYTES = 16
MAX_PATH = 48
SLACK = 4  # slots beyond the credit (a file of a few chunks needs no more)
# Slots of one ring at most: slots go back to the sender as soon as they are
# copied out (an Ack after each read of the data socket that copied any,
# before the chunks are written), so a ring covers the copy, not the credit;
# chunks beyond it go over the socket.
RING_SLOTS = 8
MAX_BATCH = 64  # descriptors in one message
MAX_RING_BYTES = 256 * 1024 * 1024
_PATH = re.compile(r"/proc/[1-9][0-9]{0,9}/fd/[0-9]{1,9}")
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


def node_budget(receive_buffer: int) -> int:
    """Chunk bytes all the rings a receiving node lends may hold together:
    a quarter of its receive buffer (8 MiB by default: one ring of 1 MiB
    chunks). A ring's pages count in the RSS of both nodes, on top of the
    chunks its credit holds in the receiver's own buffers."""
    return receive_buffer // 4


def ring_slots(credit: int, chunk_size: int, budget: int) -> int:
    """Slots of a new ring for chunks of ``chunk_size`` bytes (and a tag
    each): the transfer's credit plus :data:`SLACK`, at most
    :data:`RING_SLOTS`, as many chunks as ``budget`` bytes hold; 0 (no ring)
    when fewer than two fit."""
    if chunk_size < 1:
        return 0
    slot_size = chunk_size + TAG_BYTES
    slots = min(
        credit + SLACK, RING_SLOTS, MAX_SLOTS, budget // chunk_size, MAX_RING_BYTES // slot_size
    )
    return slots if slots >= 2 else 0


class ReceiverRing:
    """The receiving node's ring of one transfer: it creates, maps (read
    only) and closes it. Raises OSError when it cannot be made."""

    def __init__(self, slots: int, slot_size: int) -> None:
        self.intake = SlotIntake(slots, slot_size)
        self.size = slots * slot_size
        self.taken = 0  # chunks that came through it and authenticated
        self.copied = 0  # slots copied out (a replayed nonce's never is)
        self._told = 0  # ``released`` as the sender was last told it
        self.token = os.urandom(TOKEN_BYTES)
        self._fd = os.memfd_create(PREFIX + self.token.hex(), os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(self._fd, self.size)
            fcntl.fcntl(self._fd, fcntl.F_ADD_SEALS, _SEALS | fcntl.F_SEAL_SEAL)
            self._map = mmap.mmap(self._fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ)
        except OSError:
            os.close(self._fd)
            raise
        self._view = memoryview(self._map)
        self.path = f"/proc/{os.getpid()}/fd/{self._fd}"

    @property
    def release_due(self) -> bool:
        """Slots were copied out since the sender last heard: tell it now (an
        Ack, once per read of the data socket), not only once those chunks
        are written."""
        return self.intake.released > self._told

    def told(self) -> int:
        """``released`` for an Ack about to go (and so known to the sender)."""
        self._told = self.intake.released
        return self._told

    def copy_out(self, offset: int, out: memoryview) -> None:
        """Copy ``len(out)`` bytes of the slot at ``offset`` (checked by the
        intake) into the receiver's own buffer ``out``."""
        out[:] = self._view[offset : offset + len(out)]

    def close(self) -> None:
        if self._fd < 0:
            return
        self._view.release()
        self._map.close()
        os.close(self._fd)
        self._fd = -1


class SenderRing:
    """The sending node's mapping of a receiver's ring (write only)."""

    def __init__(self, fd: int, slots: int, slot_size: int) -> None:
        self.slots = SlotRing(slots, slot_size)
        self._map = mmap.mmap(fd, slots * slot_size, mmap.MAP_SHARED, mmap.PROT_WRITE)
        self._view = memoryview(self._map)

    def slot(self, offset: int, length: int) -> memoryview:
        """Where to seal a chunk of ``length`` bytes (from :meth:`SlotRing.take`)."""
        return self._view[offset : offset + length]

    def close(self) -> None:
        if self._map.closed:
            return
        self._view.release()
        self._map.close()


def well_formed(path: str, token: bytes, slots: int, claimed_host: str, own_host: str) -> bool:
    """A peer's claim as text (no file system): this host, a path
    ``/proc/PID/fd/N``, a token, a slot count a ring may have."""
    if not own_host or claimed_host != own_host:
        return False
    return (
        _PATH.fullmatch(path) is not None and len(token) == TOKEN_BYTES and 2 <= slots <= MAX_SLOTS
    )


def _is_ring(info: os.stat_result, size: int) -> bool:
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_uid == os.geteuid()
        and info.st_nlink == 0  # in no folder: a memfd, not a file someone named
        and info.st_size == size
    )


def open_ring(
    path: str, token: bytes, slots: int, slot_size: int, claimed_host: str, own_host: str
) -> SenderRing | None:
    """The ring an Accept named, mapped for writing, or None (send over the
    socket). Beyond :func:`well_formed`: what the path leads to is checked
    before it is opened (a file of this user, in no folder, of the size the
    slots make) and again once open (the same file, its name the token, sealed
    against shrinking and growing), so no claim makes the sender write into
    anything but such a ring."""
    size = slots * slot_size
    if not well_formed(path, token, slots, claimed_host, own_host) or size > MAX_RING_BYTES:
        return None
    try:
        before = os.stat(path)
        if not _is_ring(before, size):
            return None
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except (OSError, ValueError):
        return None
    try:
        info = os.fstat(fd)
        name = os.readlink(f"/proc/self/fd/{fd}")
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        if (
            not _is_ring(info, size)
            or (info.st_dev, info.st_ino) != (before.st_dev, before.st_ino)
            or name != f"/memfd:{PREFIX}{token.hex()} (deleted)"
            or seals & _SEALS != _SEALS
        ):
            return None
        return SenderRing(fd, slots, slot_size)
    except (OSError, ValueError):
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
