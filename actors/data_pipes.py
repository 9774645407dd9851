"""The sender's data connections, shared by its transfers to one receiver.

Part of the sender actor, not an actor of its own. Every transfer to the
same receiving data endpoint takes the same connection per lane (a
:class:`DataPipe`: one DEALER and its socket monitor), so a node with many
transfers in flight polls a socket pair per receiver and lane, not per
transfer, and the chunks of all of them share one TCP stream (or Unix
socket) and its I/O thread's batches. Each transfer keeps its own keys,
credit, congestion state and timers; its frames carry its transfer id (the
chunk and sealed headers always did), so the replies that come back on the
shared connection are told apart by that id and opened with that
transfer's keys only.

The connection's routing id is random (:func:`new_route_id`), not derived
from one transfer's keys: the receiver learns it from each transfer's own
sealed :class:`~peercrypt.wire.messages.Attach` (sent first on the
connection, and again after a reconnect), which names that very id, and
takes the transfer's frames from that connection only from then on
(crypto/transfer.py, "Routes"; docs/security.md).

A pipe lives while a transfer uses it and :data:`~actors.sender.IDLE_KEEP`
seconds after the last one left (:attr:`DataPipe.idle`: a transfer to the
same receiver in that time takes it, without a new connection's round
trips); then it leaves the table (a later transfer connects afresh) and is
closed :data:`~actors.sender.CLOSE_GRACE` later, so that transfer's last
Failed can still leave. One that breaks while idle is closed at once
(libzmq would redial it every :data:`~actors.sender.DATA_RECONNECT_MS`
until then, for nothing), and a transfer takes one only after its pending
monitor events are read (a break the loop has not read yet closes it then).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from actors.peer_link import ConnectProbe

if TYPE_CHECKING:
    from actors.sender import Outgoing
    from peercrypt.runtime.actor import Timer

ROUTE_PREFIX = b"s"  # never a zero byte first (those ids are the ROUTER's own)
ROUTE_RANDOM = 15  # random bytes of a shared connection's routing id

# (the receiver's TCP data url, its Unix socket url or "", lane, the receiver's
# proven fingerprint): a member that names another receiver's data port in its
# accept gets a connection of its own there, never that receiver's.
PipeKey = tuple[str, str, int, str]


def new_route_id(lane: int) -> bytes:
    """A fresh routing id for a shared data connection of lane ``lane``."""
    return ROUTE_PREFIX + os.urandom(ROUTE_RANDOM) + lane.to_bytes(4, "big")


@dataclass(eq=False)
class DataPipe:
    """One data connection of the sender and the transfers that use it."""

    key: PipeKey
    sock: zmq.Socket[Any]
    monitor: zmq.Socket[Any]
    route: bytes  # its routing id (what each transfer's Attach names)
    url: str  # where it is connected now (the Unix socket, or after a fallback TCP)
    tcp_url: str
    address: tuple[str, int]  # the receiver's TCP data endpoint (what a probe connects to)
    users: dict[bytes, Outgoing] = field(default_factory=dict)  # transfer id -> transfer
    broken: bool = False  # dropped, not back yet
    probe: ConnectProbe | None = None  # why it does not come back
    idle: Timer | None = None  # no transfer uses it: closes it unless one comes
