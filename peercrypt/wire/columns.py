"""Many small local messages of one type as one message of columns.

An actor that reports on each of its transfers every tick (statistics
samples, progress) sends one message per destination and tick, not one per
transfer: a message type ``B`` whose fields are named as those of the item
type ``M``, each a bounded list (column ``i`` of every list is item ``i``).
:func:`batches` packs items (each clipped to ``M``'s bounds first, as
encoding it alone would; split at ``MAX_BATCH`` items or ``BATCH_BYTES`` of
strings, under the codec's message limit); :func:`unpack` gives them back,
dropping an item whose values are out of ``M``'s bounds (a batch whose
columns differ in length is dropped whole).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from peercrypt.wire.codec import Message, clip_fields, field_checks

MAX_BATCH = 256  # items in one batch
BATCH_BYTES = 48 * 1024  # and their strings' UTF-8 bytes: under the codec's 64 KiB
ITEM_OVERHEAD = 64  # msgpack headers and the numbers of one item, at most

M = TypeVar("M", bound=Message)
B = TypeVar("B", bound=Message)


def names(item: type[Message]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(item))


def batches(items: Sequence[M], batch: type[B]) -> Iterator[B]:
    """``items`` as few ``batch`` messages as fit the bounds (none for none)."""
    rows: list[dict[str, Any]] = []
    size = 0
    for item in items:
        row = clip_fields(item)
        cost = ITEM_OVERHEAD + sum(_utf8_len(v) for v in row.values() if isinstance(v, str))
        if rows and (len(rows) >= MAX_BATCH or size + cost > BATCH_BYTES):
            yield _pack(rows, batch)
            rows, size = [], 0
        rows.append(row)
        size += cost
    if rows:
        yield _pack(rows, batch)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def _pack(rows: list[dict[str, Any]], batch: type[B]) -> B:
    return batch(**{c: [row[c] for row in rows] for c in rows[0]})


def unpack(batch: Message, item: type[M]) -> tuple[list[M], int]:
    """The items of ``batch`` that are within ``item``'s bounds, and how
    many were dropped."""
    cols = names(item)
    columns = [getattr(batch, c) for c in cols]
    n = len(columns[0])
    if any(len(col) != n for col in columns):
        return [], max(len(col) for col in columns)
    checks = field_checks(item)
    kept: list[M] = []
    for row in zip(*columns, strict=True):
        values = dict(zip(cols, row, strict=True))
        if all(checks[c](values[c]) for c in cols):
            kept.append(item(**values))
    return kept, n - len(kept)
