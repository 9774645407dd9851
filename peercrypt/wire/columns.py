"""Many small local messages of one type as one message of columns.

An actor that reports on each of its transfers every tick (statistics
samples, progress) sends one message per destination and tick, not one per
transfer: a message type ``B`` whose fields are named as those of the item
type ``M``, each a bounded list (column ``i`` of every list is item ``i``)
whose values have the bounds of ``M``'s field (:func:`column`), so the codec
checks and clips each as it would ``M`` alone. :func:`batches` packs items
(split at ``MAX_BATCH`` items or ``BATCH_BYTES`` of strings, under the
codec's message limit); :func:`unpack` gives them back (a batch whose
columns differ in length is dropped whole).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from peercrypt.wire.codec import Message, bounded_list

MAX_BATCH = 256  # items in one batch
BATCH_BYTES = 48 * 1024  # and their strings' UTF-8 bytes: under the codec's 64 KiB
ITEM_OVERHEAD = 64  # msgpack headers and the numbers of one item, at most

M = TypeVar("M", bound=Message)
B = TypeVar("B", bound=Message)


def names(item: type[Message]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(item))


def shared(item: type[Message], batch: type[Message]) -> tuple[str, ...]:
    """``item``'s fields that ``batch`` has a column of: an item field it
    has none of (one set further on, ``Progress.transfer``) takes its
    default when unpacked. Every column must be an item field (a column
    named wrong would otherwise be dropped unseen)."""
    found = _SHARED.get((item, batch))
    if found is None:  # (two fixed types: worked out once, not every tick)
        columns = set(names(batch))
        stray = columns - set(names(item))
        if stray:
            raise TypeError(
                f"{batch.__name__} has columns {item.__name__} has no field of: {stray}"
            )
        found = _SHARED[item, batch] = tuple(c for c in names(item) if c in columns)
    return found


_SHARED: dict[tuple[type[Message], type[Message]], tuple[str, ...]] = {}


def column(item: type[Message], name: str) -> Any:
    """The batch's field for ``item``'s field ``name``: a list of at most
    ``MAX_BATCH`` values, each within that field's bounds (the codec checks
    them on decode and clips them on encode, as for ``item`` alone)."""
    (f,) = [f for f in dataclasses.fields(item) if f.name == name]
    return dataclasses.field(default_factory=list, metadata=bounded_list(MAX_BATCH, f.metadata))


def batches(items: Sequence[M], batch: type[B]) -> Iterator[B]:
    """``items`` as few ``batch`` messages as fit the bounds (none for none)."""
    cols = shared(type(items[0]), batch) if items else ()
    rows: list[M] = []
    size = 0
    for item in items:
        cost = ITEM_OVERHEAD + sum(
            _utf8_len(v) for v in (getattr(item, c) for c in cols) if isinstance(v, str)
        )
        if rows and (len(rows) >= MAX_BATCH or size + cost > BATCH_BYTES):
            yield _pack(rows, cols, batch)
            rows, size = [], 0
        rows.append(item)
        size += cost
    if rows:
        yield _pack(rows, cols, batch)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def _pack(rows: list[M], cols: tuple[str, ...], batch: type[B]) -> B:
    return batch(**{c: [getattr(row, c) for row in rows] for c in cols})


def unpack(batch: Message, item: type[M]) -> tuple[list[M], int]:
    """The items of a decoded ``batch`` (the codec checked each value
    against ``item``'s bounds), and how many were dropped: all of them if
    its columns differ in length."""
    cols = shared(item, type(batch))
    columns = [getattr(batch, c) for c in cols]
    n = len(columns[0])
    if any(len(col) != n for col in columns):
        return [], max(len(col) for col in columns)
    return [item(**dict(zip(cols, row, strict=True))) for row in zip(*columns, strict=True)], 0
