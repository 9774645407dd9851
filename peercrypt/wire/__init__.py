"""Typed messages and their codec.

Importing the package registers every message type with the codec (each
module registers its classes as it is imported), so a decoder never depends
on which modules some other code happened to import first. Message modules
import only ``codec``, ``fields`` and ``messages`` (shared sizes), never the
other way round.
"""

from peercrypt.wire import (  # noqa: F401  (each module registers its types)
    actor_messages,
    codec,
    messages,
    multicast_messages,
    network_messages,
    stats_messages,
)
