"""Typed messages and their codec.

Each message module registers its types with the codec as it is imported;
a decoder that meets a type not registered yet imports every message module
first (:data:`peercrypt.wire.codec.MESSAGE_MODULES`), so it never depends on
which modules some other code happened to import. Message modules import
only ``codec``, ``fields`` and ``messages`` (shared sizes), never the other
way round.
"""
