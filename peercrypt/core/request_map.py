"""Request ids of several nodes in one actor's id space.

An actor attached to several nodes (one scheduler shared by two nodes) gets
requests numbered by each node's control actor: two nodes may both use
request 7. :class:`RequestMap` gives each (link, request) pair its own local
id on the way in and restores the pair on the way out, like the control
actor does for its clients.

- :meth:`inward` ``(link, request) -> local``: the same pair always gets the
  same local id while it is remembered; distinct pairs never share one.
- :meth:`outward` ``local -> (link, request)`` or None (unknown, forgotten).
- Memory is bounded: at most ``capacity`` pairs; the least recently used
  pair is forgotten first (an old, finished transfer).
- :meth:`forget_link` drops every pair of a link (it was lost).

Pure: no sockets, no clock; never raises on any input.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

L = TypeVar("L", bound=Hashable)

DEFAULT_CAPACITY = 4096


class RequestMap(Generic[L]):
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = max(1, capacity)
        self._local: OrderedDict[tuple[L, int], int] = OrderedDict()
        self._remote: dict[int, tuple[L, int]] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._local)

    def inward(self, link: L, request: int) -> int:
        key = (link, request)
        local = self._local.get(key)
        if local is not None:
            self._local.move_to_end(key)
            return local
        local = self._next
        self._next += 1
        self._local[key] = local
        self._remote[local] = key
        while len(self._local) > self.capacity:
            _, old = self._local.popitem(last=False)
            del self._remote[old]
        return local

    def outward(self, local: int) -> tuple[L, int] | None:
        key = self._remote.get(local)
        if key is not None:
            self._local.move_to_end(key)
        return key

    def forget_link(self, link: L) -> None:
        for key in [k for k in self._local if k[0] == link]:
            del self._remote[self._local.pop(key)]
