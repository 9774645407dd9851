"""Hypothesis strategies for well-typed messages at every extreme.

Shared by the actor fuzz test and ``scripts/soak.py``: every registered
message type, each field within its wire bounds but drawn at the edges
(empty, the longest, the largest and smallest integers), strings of every
Unicode category.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from hypothesis import strategies as st

from actors.gateway import ROUTES
from peercrypt.wire import codec

REGISTRY = codec.all_types()
INTS = (0, 1, 2**31, 2**32 - 1, 2**62, 2**63 - 1)


def extreme(tp: Any, meta: typing.Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Values of ``tp`` within its bounds, biased to the edges."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return st.one_of(*[extreme(a, meta) for a in typing.get_args(tp)])
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    lo = meta.get("min", 0)
    if tp is int:
        lo_i, hi_i = meta.get("min", -(2**63)), meta.get("max", 2**63 - 1)
        edges = [v for v in (lo_i, hi_i, *INTS, -1) if lo_i <= v <= hi_i]
        return st.one_of(st.sampled_from(edges), st.integers(lo_i, hi_i))
    if tp is float:
        return st.sampled_from([0.0, -1.0, 1e308, -1e308, 5e-324, float("inf")])
    if tp is str:
        hi = min(meta.get("max", codec.DEFAULT_MAX_STR), 2048)
        return st.one_of(
            st.just("" if lo == 0 else "a" * lo),
            st.builds(lambda c: c * hi, st.characters()),
            st.text(min_size=lo, max_size=max(lo, 12)),
        )
    if tp is bytes:
        hi = min(meta.get("max", codec.DEFAULT_MAX_BYTES), 4096)
        return st.one_of(
            st.just(b"\0" * lo), st.just(b"\xff" * hi), st.binary(min_size=lo, max_size=max(lo, 40))
        )
    if origin is list:
        (item,) = typing.get_args(tp)
        size = min(meta.get("max", codec.DEFAULT_MAX_LIST), 8)
        return st.lists(extreme(item, meta.get("item", {})), min_size=min(lo, size), max_size=size)
    if origin is dict:
        key, val = typing.get_args(tp)
        return st.dictionaries(extreme(key, {"max": 40}), extreme(val, {}), max_size=4)
    raise TypeError(tp)


def message_strategy(cls: type[codec.Message]) -> st.SearchStrategy[codec.Message]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: extreme(hints[f.name], f.metadata) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


# What the gateway hands to an actor is drawn most; every other type too.
ROUTED = [*sorted(cls.TYPE for cls in ROUTES), "hello", "ping", "chunk", "sealed"]
any_message = st.one_of(st.sampled_from(ROUTED), st.sampled_from(sorted(REGISTRY))).flatmap(
    lambda t: message_strategy(REGISTRY[t])
)
