"""A node: its actors under one supervisor, one ZeroMQ context.

``Node.start()`` returns once every actor said READY (or raises);
``Node.stop()`` cannot hang: actors close their own sockets, then the
context is terminated. ``run_until`` keeps the supervisor restarting crashed
actors until a stop is requested (SIGINT/SIGTERM in the CLI).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from actors.control import ControlActor, ControlMemory, new_token
from actors.health import HealthActor
from actors.multicast_sender import MulticastSenderActor
from actors.scheduler import SchedulerActor
from actors.sender import SenderActor
from actors.stats import StatsActor
from peercrypt.runtime.actor import ActorEnv, node_context
from peercrypt.runtime.memory import limit_malloc_arenas
from peercrypt.runtime.stop_flag import StopFlag
from peercrypt.runtime.supervisor import ActorFactory, Supervisor
from peercrypt.settings import IN_NODE_ONLY, NodeSettings

if TYPE_CHECKING:
    from peercrypt.data_plane import DataPlaneProcesses

log = logging.getLogger("peercrypt.node")


class Node:
    def __init__(self, settings: NodeSettings) -> None:
        for name in settings.remote_actors:
            if name in IN_NODE_ONLY:
                raise ValueError(IN_NODE_ONLY[name])
        limit_malloc_arenas()
        self.settings = settings
        self.token = new_token()
        self.context: zmq.Context[Any] = node_context()
        self.env = ActorEnv(context=self.context, node_uid=uuid.uuid4().hex[:12])
        s = settings
        # Control's numbering and its sends' ends outlive a restart of it.
        memory = ControlMemory()
        factories: list[tuple[str, ActorFactory]] = [
            ("control", lambda env: ControlActor(env, s, self.token, memory)),
            # The statistics history (docs/statistics.md): started second so
            # it stops next to last, after every actor that records into it
            # (the sender's teardown ends its sends with their final records).
            ("stats", lambda env: StatsActor(env, s)),
            ("scheduler", lambda env: SchedulerActor(env, s)),
            ("sender", lambda env: SenderActor(env, s)),
            ("health", lambda env: HealthActor(env, s)),  # pre-send checks, probes
            ("msender", lambda env: MulticastSenderActor(env, s)),  # docs/multicast.md
        ]
        if s.port is not None:
            factories += _receiving_factories(s)
        # An actor attached from elsewhere is stood in for by a proxy of its name.
        factories = [
            (name, _proxy_factory(name) if name in s.remote_actors else factory)
            for name, factory in factories
        ]
        self.supervisor = Supervisor(self.env, factories)
        # The sender and receiver as child processes (--isolate-data-plane),
        # started just before the node's actors (peercrypt/cli/node.py: run_node).
        self.data_plane: DataPlaneProcesses | None = None
        # The data dir's lock, held while it runs (peercrypt/cli/node.py): let
        # go at a clean stop, kept until the process ends after a stuck one.
        self.release_lock: Callable[[], None] = lambda: None
        self.keep_lock: Callable[[], None] = lambda: None
        self._stopped = False

    def start(self) -> None:
        """Start all actors. Raises StartError or zmq.ZMQError (e.g. port in use)."""
        try:
            self.supervisor.start()
        except BaseException:
            self._term()
            raise

    def run_until(self, stop: StopFlag | threading.Event) -> None:
        """Supervise until ``stop`` is set by a signal handler of the main
        thread (the signal wakes the wait), or by another thread that then
        calls ``supervisor.wake()``."""
        self.supervisor.run_until(stop.is_set)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.data_plane is not None:  # first: their sends' last reports reach control
            self.data_plane.stop()
        if self.supervisor.stop():
            self._term()
            self.release_lock()  # last: a node started now finds everything of ours gone
        else:
            log.error("leaving the ZeroMQ context open: an actor is stuck")
            self.keep_lock()  # (it may still work in the data dir)

    def _term(self) -> None:
        self.context.term()

    def tell_attach_ended(self, kind: str) -> None:
        """Tell the attach actor that the data-plane process of ``kind`` ended
        (peercrypt/data_plane.py: from its watcher thread, with a socket of
        its own for the one message)."""
        from peercrypt.wire import codec
        from peercrypt.wire.actor_messages import DataPlaneEnded

        if self._stopped:
            return
        try:
            sock = self.context.socket(zmq.PUSH)
        except zmq.ZMQError:
            return  # (the node has just stopped)
        try:
            sock.connect(self.env.address("attach"))
            sock.send(codec.encode(DataPlaneEnded(actor=kind)), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # (the context ends: the node stops. While attach restarts, the
            # message waits for the next one, which has no link to lose: the
            # silence loses it then, as before.)
        finally:
            sock.close(linger=1000)

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _receiving_factories(s: NodeSettings) -> list[tuple[str, ActorFactory]]:
    """The actors of a node that listens (``s.port`` set), imported here: a
    temporary send-only node never imports them."""
    from actors.admission import AdmissionActor
    from actors.attach import AttachActor
    from actors.discovery import DiscoveryActor
    from actors.gateway import GatewayActor
    from actors.multicast_receiver import MulticastReceiverActor
    from actors.receiver import ReceiverActor
    from actors.space import SpaceActor

    return [
        ("admission", lambda env: AdmissionActor(env, s.allow)),
        ("space", lambda env: SpaceActor(env, s)),  # the inbox's one space ledger
        ("receiver", lambda env: ReceiverActor(env, s)),
        ("gateway", lambda env: GatewayActor(env, s)),
        ("discovery", lambda env: DiscoveryActor(env, s)),  # gossip membership
        ("mreceiver", lambda env: MulticastReceiverActor(env, s)),  # docs/multicast.md
        ("attach", lambda env: AttachActor(env, s)),  # actors attached across hosts
    ]


def _proxy_factory(name: str) -> ActorFactory:
    from actors.attach import proxy_for

    cls = proxy_for(name)
    return lambda env: cls(env)
