"""One actor of a node, run as its own process and attached to the node(s).

``peercrypt actor KIND --attach HOST:PORT`` builds an :class:`AttachedActor`:
the actor KIND, the actors it takes along (``COMPANIONS``: a receiver's
space ledger) and a ``link`` actor (:mod:`actors.link`) under one
supervisor, in their own ZeroMQ context. The link stands in for the node's
other actors; the node stands a proxy in for KIND (:mod:`actors.attach`).
Like :class:`peercrypt.node.Node`: ``start()`` returns once both said READY,
``run_until`` restarts a crashed actor, ``stop()`` cannot hang.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import zmq

from actors.link import LinkActor
from peercrypt.attachable import ATTACHABLE_ACTORS, COMPANIONS, attachable_factory
from peercrypt.runtime.actor import ActorEnv, node_context
from peercrypt.runtime.memory import limit_malloc_arenas
from peercrypt.runtime.stop_flag import StopFlag
from peercrypt.runtime.supervisor import Supervisor
from peercrypt.settings import IN_NODE_ONLY, NodeSettings

__all__ = ["AttachedActor"]


class AttachedActor:
    def __init__(
        self,
        kind: str,
        settings: NodeSettings,
        nodes: list[tuple[str, int]],
        companions: tuple[str, ...] | None = None,
        endpoint: str = "",
    ) -> None:
        """``companions``: the actors KIND takes along (default ``COMPANIONS``'s);
        ``()`` for the node's own data-plane process, whose inbox is the node's
        (its receiver asks the node's one space ledger, peercrypt/data_plane.py).
        ``endpoint``: that process's node's private endpoint, instead of ``nodes``."""
        if kind not in ATTACHABLE_ACTORS:
            raise ValueError(f"not an attachable actor: {kind!r}")
        if kind in IN_NODE_ONLY:
            raise ValueError(IN_NODE_ONLY[kind])
        if not nodes and not endpoint:
            raise ValueError("attach to at least one node")
        limit_malloc_arenas()
        self.kind = kind
        self.refused = ""  # why a node refused the attachment (then the process should end)
        self.refused_event = threading.Event()
        self.context: zmq.Context[Any] = node_context()
        self.env = ActorEnv(
            context=self.context, node_uid=uuid.uuid4().hex[:12], reports_inbound=False
        )
        if companions is None:
            companions = COMPANIONS.get(kind, ())
        self.supervisor = Supervisor(
            self.env,
            [
                (
                    "link",
                    lambda env: LinkActor(
                        env,
                        settings,
                        kind,
                        nodes,
                        self._on_refused,
                        local=companions,
                        endpoint=endpoint,
                    ),
                ),
                *((name, attachable_factory(name, settings)) for name in companions),
                (kind, attachable_factory(kind, settings)),
            ],
        )
        self._stopped = False

    def _on_refused(self, reason: str) -> None:
        # Called in the link's thread; the main thread only reads it after the event.
        self.refused = reason
        self.refused_event.set()
        self.supervisor.wake()

    def start(self) -> None:
        try:
            self.supervisor.start()
        except BaseException:
            self.context.term()
            raise

    def run_until(self, stop: StopFlag | threading.Event) -> None:
        self.supervisor.run_until(lambda: stop.is_set() or self.refused_event.is_set())

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.supervisor.stop():
            self.context.term()
