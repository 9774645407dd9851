"""A node's settings: what the CLI (and later layered config) decides.

Defaults are the documented ones; every bound that keeps memory independent
of file size lives here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from peercrypt.chunking import MAX_CHUNK, MiB
from peercrypt.core.fragments import DEFAULT_FRAGMENT
from peercrypt.core.modes import RECEIVER_IDLE, Policy
from peercrypt.core.resume import DEFAULT_PART_EXPIRY

if TYPE_CHECKING:  # a key pair's libraries load only where keys are made
    from peercrypt.crypto.identity import KeyPair

DEFAULT_PORT = 7400
# The actors that may also run as their own process (`peercrypt actor KIND`);
# peercrypt.node maps each to its class (named here so the CLI need not import them).
ATTACHABLE_KINDS = ("sender", "receiver", "scheduler", "discovery", "health")
# Kinds that must run in the node after all, with the one line saying why: the
# membership record names the node's address and identity and is signed with
# the node's identity key, which never leaves the node (docs/architecture.md,
# "Attached actors"). Their `actor KIND` and `--remote-actor KIND` are refused.
IN_NODE_ONLY = {
    "discovery": "discovery must run in the node: it signs the node's membership record "
    "with the node's identity key, which never leaves the node",
}


# Upper bounds of the byte settings that had none (peercrypt/config.py
# SETTINGS): a value past them bounds nothing, and is more likely a typo (a
# P for a T) than a wish; 0 still means "none" or "the default".
# Quotas of parts and of bytes still to write (--peer-quota, --part-quota,
# --pending-quota): 1 PiB, beyond the largest disk an inbox sits on.
MAX_QUOTA = 1 << 50
# Bytes a port's connections may hold in memory (--data-port-memory,
# --control-port-memory): 64 GiB, more memory than this kind of host has,
# and far above the data port's own bound at the largest receive buffer
# (1 GiB: twice it and two of the largest chunks, about 2 GiB).
MAX_PORT_MEMORY = 64 << 30


def process_umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


# Modes of received files and of an inbox the node creates: what the umask
# allows a new file (directory), or owner-only for an inbox the user named
# (``private_modes``), since where it is and who can read there is unknown.
def default_modes() -> tuple[int, int]:
    mask = process_umask()
    return 0o666 & ~mask, 0o777 & ~mask


def private_modes() -> tuple[int, int]:
    mask = process_umask()
    return 0o600 & ~mask, 0o700 & ~mask


@dataclass(frozen=True)
class NodeSettings:
    data_dir: Path
    inbox: Path
    identity: KeyPair
    server_keys: KeyPair  # the network's CURVE server key pair
    open_network: bool = False
    allow: frozenset[str] = field(default_factory=frozenset)  # fingerprints; empty: any member
    host: str = "0.0.0.0"
    port: int | None = DEFAULT_PORT  # None: no public sockets (a send-only node)
    data_port: int = 0  # 0: any free port, advertised in every Accept
    advertise_data_host: str = ""  # "": the host the sender reached
    advertise_data_port: int = 0  # 0: the bound data port
    # Chunks over a Unix socket between two nodes of one host (local_ipc.py).
    local_ipc: bool = True
    # ... and through a shared-memory ring (shm_ring.py), with local_ipc.
    shm_ring: bool = False
    # The writer writes chunks with O_DIRECT where the inbox's filesystem
    # takes it (actors/file_writer.py); off: through the page cache.
    direct_writes: bool = True
    # A part created in this run is checked as it is written (hashed as
    # written, actors/read_back.py); off: all of it read back after the last chunk.
    check_as_written: bool = True
    control_port: int = 0
    control_file: Path | None = None  # None: DATA_DIR/control.json
    window: int = 16  # chunks in flight per transfer (receiver credit)
    # Bytes all incoming transfers together may have in flight (queued to be
    # written): each transfer's credit is its share of it and no more than
    # the others leave, down to 1 chunk (docs/architecture.md, "Bounds").
    receive_buffer: int = 32 * MiB
    max_outgoing: int = 16  # sends running at once; more wait in line
    max_transfers: int = 64  # incoming at once
    max_transfers_per_peer: int = 8  # per proven identity (CURVE key)
    max_transfers_per_host: int = 16  # per address: fresh identities cost nothing
    # Finished transfers remembered (about an hour: core/completed.py) to
    # answer a sender's repeated Done when the Verified was lost.
    completed_memory: int = 4096
    # An incoming transfer with no new chunk this long is dropped (a paced
    # sender keeps its chunks within it: core/modes.py, paced_chunk_seconds).
    idle_timeout: float = RECEIVER_IDLE
    # Resume (docs/resume.md): a kept part waits this long for its sender to
    # come back; byte quotas of parts (running and kept) per sender identity
    # and in all (0: only the disk's free space limits them).
    part_expiry: float = DEFAULT_PART_EXPIRY
    peer_part_quota: int = 0
    part_quota: int = 0
    # Bytes running transfers of one sender identity, and of one address, may
    # still have to write (0: no quota; the free space is reserved anyway).
    pending_quota: int = 0
    max_chunk: int = MAX_CHUNK
    # Bytes libzmq may hold of the data port's TCP connections, read and not
    # yet delivered (core/port_guard.py; 0: held_limit's default).
    data_port_memory: int = 0
    # ... of the public port's (the gateway's) CURVE connections.
    control_port_memory: int = 32 << 20
    # Entries (files and folders) of one incoming folder transfer; its
    # manifest may take core.tree.manifest_limit() of it in bytes.
    tree_max_files: int = 100_000
    file_mode: int = 0o644  # a received file once verified (see default_modes)
    inbox_mode: int = 0o755  # the inbox when the node creates it
    # Scheduler (transfer modes): the node's default policy and rate cap.
    policy: Policy = field(default_factory=Policy)
    max_rate: int = 0  # bytes/s for all outgoing transfers together; 0: no cap
    # Discovery and health monitoring (docs/membership.md).
    bootstrap: tuple[tuple[str, int], ...] = ()  # members to join through at start
    advertise_host: str = ""  # "": --host, or the outgoing interface's address for 0.0.0.0
    gossip_enabled: bool = True
    gossip_interval: float = 5.0  # seconds between gossip rounds
    gossip_fanout: int = 3  # peers per gossip round (reliability-weighted)
    health_interval: float = 10.0  # seconds between health checks of every member
    max_retries: int = 3  # retries of one-shot network operations (join, checks)
    connect_timeout: float = 3.0  # seconds each attempt waits for an answer
    max_members: int = 256
    member_expiry: float = 300.0  # dead/left members are forgotten after this long
    # Multicast (docs/multicast.md): the sender's PUB port (0: any free port,
    # advertised in every announce), the receiver's unicast repair port range
    # ((0, 0): any free port; `multicast-receive LOW-HIGH` rebinds it live) and
    # the chunks published ahead of the slowest multicast receiver.
    multicast_pub_port: int = 0
    multicast_repair_ports: tuple[int, int] = (0, 0)
    multicast_window: int = 64
    # UDP/IP multicast transport (docs/multicast.md, "Transports"): the group
    # ("GROUP:PORT"; "": chunks go over PUB/SUB), hops (1: this link), the
    # datagram payload per fragment, and the kernel buffers asked for.
    multicast_group: str = ""
    multicast_ttl: int = 1
    multicast_fragment: int = DEFAULT_FRAGMENT
    # More than the sender's window (64 chunks of 1 MiB, ahead of the
    # slowest receiver's written point) can take with the kernel's overhead:
    # only the receiver that gets the original of each datagram holds the
    # sender back through its send buffer, the others get clones, so a
    # receiver that falls behind overflows a smaller buffer (repairs).
    multicast_rcvbuf: int = 64 * MiB
    # As large as a receiver's: a datagram stays charged to the sender's
    # buffer until the receivers took it off their queues (the socket is kept
    # across namespaces), so this bounds the data in flight to the group.
    multicast_sndbuf: int = 32 * MiB
    # Actors attached across hosts (docs/architecture.md, "Attached actors"):
    # the actors this node does not run itself (each is a `peercrypt actor NAME
    # --attach` process elsewhere) and the fingerprints allowed to attach.
    remote_actors: tuple[str, ...] = ()
    attach_allow: frozenset[str] = field(default_factory=frozenset)
    # The sender and the receiver as processes of their own, attached to this
    # node (peercrypt/data_plane.py); the remote actors that are such
    # processes: they attach on the node's private endpoint alone (an ipc://
    # socket in a directory only the node's user can enter, set by the node),
    # never through its public port, whatever --attach-allow lists.
    isolate_data_plane: bool = False
    isolated_actors: tuple[str, ...] = ()
    isolated_endpoint: str = ""
    # Statistics history (DATA_DIR/stats.sqlite, `peercrypt stats`): kept for
    # this many days (0: no age limit), at most this many transfers (0: no limit).
    stats_enabled: bool = True
    stats_keep_days: float = 90.0
    stats_max_transfers: int = 10_000
