"""The actors that may run as a process of their own (``peercrypt actor
KIND``, a node's isolated data plane), and what makes each.

Its own module, apart from :mod:`peercrypt.node`: an attached process
imports the one actor it runs (and its companions), not every actor of a
node (about 4 MiB less private memory per process).
"""

from __future__ import annotations

import importlib
from typing import Any

from peercrypt.runtime.supervisor import ActorFactory
from peercrypt.settings import ATTACHABLE_KINDS, NodeSettings

# The actors that may also run as their own process (`peercrypt actor NAME`):
# module and class, imported when made (see `_actor_class`).
ATTACHABLE_ACTORS: dict[str, str] = {
    "sender": "actors.sender:SenderActor",
    "receiver": "actors.receiver:ReceiverActor",
    "scheduler": "actors.scheduler:SchedulerActor",
    "discovery": "actors.discovery:DiscoveryActor",
    "health": "actors.health:HealthActor",
}
assert tuple(ATTACHABLE_ACTORS) == ATTACHABLE_KINDS


# Actors an attached actor takes along into its own process, in the order
# they start before it: an attached receiver's space ledger checks the free
# space and the quotas of its own inbox, on its host (not the node's).
COMPANIONS: dict[str, tuple[str, ...]] = {"receiver": ("space",)}
_COMPANION_ACTORS: dict[str, str] = {"space": "actors.space:SpaceActor"}


def _actor_class(where: str) -> Any:
    """The class at ``module:Class``, imported when made."""
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)


def attachable_factory(name: str, settings: NodeSettings) -> ActorFactory:
    """Makes the node's actor ``name`` (one of :data:`ATTACHABLE_ACTORS`, or a
    companion of one: :data:`COMPANIONS`)."""
    cls = _actor_class(ATTACHABLE_ACTORS.get(name) or _COMPANION_ACTORS[name])
    return lambda env: cls(env, settings)
