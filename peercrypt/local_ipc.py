"""Chunks over a Unix socket when both nodes run on one host.

A receiving node binds its data ROUTER on ``tcp://`` as always and also on
``ipc://DATA_DIR/ipc/data.sock`` (the folder 0700, the socket 0600, a stale
one replaced at start, removed at stop unless another node's bind replaced
it). Its Accept names that path and this host's identity (:func:`host_id`)
keyed with a secret of the transfer's key exchange (:func:`host_tag`; not
with the transfer id, which the sender picks: a peer elsewhere learns
neither the boot id nor whether two
transfers, or two nodes it offers one transfer id to, are on one host). A
sender whose own tag is the same connects its data lanes to the path instead
of the TCP data port, after :func:`usable_target` checked that the path is
one such socket of its own user, reached through no symlink nor a
folder another user may change; on anything
else (another host, another user, no listener, a path of any other shape)
it uses TCP as before. Once connected, a lane whose Unix connection drops
before or after its handshake moves to TCP
(actors/sender.py). The path only saves the kernel's TCP stack: what goes
over it is the same ZeroMQ connection with the same sealed chunks
(AES-256-GCM with the transfer's keys, the lanes named from them), so a
wrong path can make a transfer slower, never make it go to another peer.

``--no-local-ipc`` / ``PEERCRYPT_NO_LOCAL_IPC=true`` turns it off on either
side (a receiver then names no path, a sender ignores one).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import posixpath
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peercrypt.crypto.handshake import SessionSecrets

SOCKET_DIR = "ipc"
SOCKET_NAME = "data.sock"
# In the same folder: the node's private endpoint, where its own data-plane
# processes attach (``--isolate-data-plane``, peercrypt/data_plane.py).
ATTACH_NAME = "attach.sock"
# sun_path holds 108 bytes on Linux (104 elsewhere), with the final NUL.
MAX_PATH = 100
MAX_HOST_ID = 128
MAX_HOST_TAG = 64


def host_id() -> str:
    """What two nodes must share to reach one another's socket by its path:
    the same boot of the same kernel (``boot_id``), the same mount namespace
    (the same files under the same path) and the same network namespace.
    "" where any of it cannot be read (then no Unix socket is used)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        mnt = os.stat("/proc/self/ns/mnt").st_ino
        net = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return ""
    found = f"{boot}/{mnt}/{net}"
    return found if boot and len(found) <= MAX_HOST_ID else ""


TAG_LABEL = b"peercrypt host tag v1\0"


def host_tag(host: str, tid: bytes, secrets: SessionSecrets) -> str:
    """``host`` (a :func:`host_id`) keyed with a secret of transfer ``tid``'s
    key exchange (fresh on both sides): equal for two nodes of one host in
    one transfer, different across transfers and no clue to the boot id.
    Not keyed with the transfer id alone: the sender picks that, and one id
    offered to two nodes would tell whether they share a host. "" for no
    host identity."""
    if not host:
        return ""
    msg = TAG_LABEL + tid + host.encode()
    return hmac.new(secrets.to_initiator, msg, hashlib.sha256).hexdigest()


def socket_path(data_dir: Path, name: str = SOCKET_NAME) -> Path | None:
    """Where a node of ``data_dir`` binds its Unix socket ``name`` (its data
    socket unless named); None when the path is too long for a socket
    address."""
    path = data_dir.resolve() / SOCKET_DIR / name
    return path if len(os.fsencode(path)) <= MAX_PATH else None


def prepare(path: Path) -> bool:
    """Make the socket's folder (0700, ours) and remove a stale socket left
    by an earlier run. False when the folder is not private to this user or
    something other than a socket holds the name."""
    folder = path.parent
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            return False
        os.chmod(folder, 0o700)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                return False
            os.unlink(path)
    except OSError:
        return False
    return True


def bound_as(path: Path) -> tuple[int, int]:
    """Which file the socket just bound at ``path`` is (device, inode), for
    :func:`remove`. Raises OSError."""
    info = os.lstat(path)
    return info.st_dev, info.st_ino


def remove(path: Path, bound: tuple[int, int]) -> None:
    """Remove the node's socket at stop if it still is the one it bound
    (:func:`bound_as`): a node started since on the same data dir replaced
    it with its own, which a stopping node must not take away. (Its own
    listener, still open, holds its inode: the new one's differs.)"""
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if stat.S_ISSOCK(info.st_mode) and (info.st_dev, info.st_ino) == bound:
            os.unlink(path)


def well_formed(path: str, claimed_host: str, own_host: str) -> bool:
    """A peer's claim as text (no file system): the same non-empty host
    identity, and an absolute, normalized path ``.../ipc/data.sock`` that
    fits a socket address."""
    if not own_host or claimed_host != own_host:
        return False
    if "\0" in path or not path.startswith("/") or posixpath.normpath(path) != path:
        return False
    if len(os.fsencode(path)) > MAX_PATH:
        return False
    folder, name = posixpath.split(path)
    return name == SOCKET_NAME and posixpath.basename(folder) == SOCKET_DIR


def usable_target(path: str, claimed_host: str, own_host: str) -> str | None:
    """The ``ipc://`` endpoint for a path a peer named in its Accept, or None
    (use TCP). Beyond :func:`well_formed`: the folder is a real folder of this
    user, closed to everyone else, the name a socket of this user, and
    something listens on it. A peer's claim can thus only point at a data
    socket of a node this user runs on this host."""
    if not well_formed(path, claimed_host, own_host):
        return None
    return checked_target(path)


def checked_target(path: str) -> str | None:
    """:func:`usable_target` for a path already :func:`well_formed`: the
    file system's checks and the probe (a sender runs them when it dials
    the path, not for each transfer that reuses the connection)."""
    me = os.geteuid()
    if not private_folder(path):
        return None
    try:
        sock = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(sock.st_mode) or sock.st_uid != me:
        return None
    return f"ipc://{path}" if answers(path) else None  # else a stale socket


def answers(path: str) -> bool:
    """Whether something listens on the Unix socket at ``path`` (a connect
    that is accepted, or queued: a stopped process's listener too; one whose
    queue is full does not refuse either, it makes the connect wait)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError):
        return False  # nothing listens there (a stale socket, or none)
    except OSError:
        return True  # (timed out: a listener that does not accept now)
    finally:
        probe.close()
    return True


def private_folder(path: str) -> bool:
    """Whether the folder of ``path`` (absolute, resolved) is this user's
    alone, reached through no symlink nor a folder another user may change:
    then only this user (or root) can have put a socket at ``path``."""
    me = os.geteuid()
    try:
        # No symlink anywhere on the way (a receiver names its path resolved):
        # a folder above that another user may swap after these checks would
        # send the connect to any socket this user can reach.
        if os.path.realpath(path) != path:
            return False
        # Nor a folder on the way that another user owns or may write in
        # (rename what it holds) unless it is sticky (/tmp: only a name's
        # owner moves it): the same swap.
        above = posixpath.dirname(posixpath.dirname(path))
        while True:
            info = os.lstat(above)
            if info.st_uid not in (0, me):
                return False
            if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
                return False
            if above == "/":
                break
            above = posixpath.dirname(above)
        folder = os.lstat(posixpath.dirname(path))
    except OSError:
        return False
    return stat.S_ISDIR(folder.st_mode) and folder.st_uid == me and not folder.st_mode & 0o077
