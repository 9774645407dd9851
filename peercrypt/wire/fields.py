"""Field makers shared by every message module.

Each returns a new ``dataclasses.field`` (one must not be shared between
classes) whose metadata carries the codec's bounds, so a limit used by many
messages (a result code, a port, a counter, ack ranges) is written once.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from peercrypt.core.bitmap import MAX_RANGES
from peercrypt.wire.codec import bounded, bounded_text

MAX_COUNTER = 2**62  # request ids, byte counts, sizes
MAX_REASON = 512  # characters of a human-readable reason


def fixed(size: int) -> Any:
    """Bytes of exactly ``size`` (ids, keys, session ids)."""
    return field(metadata=bounded(size, size))


def counter(default: int | None = None) -> Any:
    """A non-negative integer below 2**62 (``default=0`` makes it optional)."""
    if default is None:
        return field(metadata=bounded(MAX_COUNTER))
    return field(default=default, metadata=bounded(MAX_COUNTER))


def code() -> Any:
    """A result code (:class:`peercrypt.errors.ResultCode`) as text."""
    return field(metadata=bounded(32, 1))


def reason(default: str | None = None) -> Any:
    """A human-readable reason, at most :data:`MAX_REASON` characters (a
    longer one loses its middle)."""
    if default is None:
        return field(metadata=bounded_text(MAX_REASON))
    return field(default=default, metadata=bounded_text(MAX_REASON))


def port() -> Any:
    """A TCP/UDP port, 1-65535."""
    return field(metadata=bounded(65535, 1))


def ranges(*, optional: bool = False) -> Any:
    """Flattened [start, end) chunk ranges, at most :data:`MAX_RANGES` pairs
    (SACKs, resume ranges and NAKs share the bound)."""
    if optional:
        made: Any = field(default_factory=list, metadata=bounded(2 * MAX_RANGES))
    else:
        made = field(metadata=bounded(2 * MAX_RANGES))
    return made
