"""Strict msgpack encoding of typed messages.

Design rules:
- Every message is a frozen dataclass registered under a short type name.
- On the wire a message is the msgpack array ``[VERSION, TYPE, {field: value}]``.
- Decoding is strict: wrong version, unknown type, a missing or extra field,
  a value of the wrong type or out of its declared bounds, or a frame over the
  size limit is a :class:`DecodeError` that names its *kind*, so callers can
  count and log it once per peer and kind. Decoding never raises anything else.
- The version is the protocol's (:data:`VERSION`): nodes interoperate only on
  the same one. The envelope and the ``error`` message (``ErrorReply``: code,
  reason) never change, so a node meeting another version answers in that
  version's envelope (:func:`mismatch_reply`) and each side says, in one line,
  which versions met (:class:`VersionMismatch`, :func:`mismatch_of`,
  :func:`mismatch_text`; docs/security.md, "Protocol versions").
- Bulk chunk bytes never travel inside msgpack: they are a frame of their own.
- Encoding clips: the field metadata that bounds what we accept also bounds
  what we write. A string, list or map over its bound is cut (a reason in
  its middle, so that its end is kept), an int is
  clamped, a string under its minimum is padded with ``?``. This is the one
  place a node maps what it writes (a refusal reason quoting a peer's name, a
  URL from a gossip record) to the wire bound, so no field a peer influences
  can make encoding fail.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, Union

import msgpack

from peercrypt.core.names import shortened

# The protocol version every message carries. Any change to a message that
# a node of the previous version would refuse or misread (a field added,
# removed, retyped or bounded tighter) comes with the next number; the
# schema digest in tests/test_codec.py fails until it does.
# 1: up to the receiver's choice of chunk size; 2: OfferDetails.min_chunk and
# Accept.chunk_size (the receiver chooses the chunk size).
VERSION = 2
# The envelope's version on the local control socket (a command and its own
# node: one install), which is not the protocol between nodes: a command of
# this release still asks a node of an older one (the benchmarks' --tree
# nodes) for its status. Its messages' changes have gone without it so far.
LOCAL_VERSION = 1
# Versions a peer may name that this node answers in their own envelope (any
# other is dropped as malformed): the first, and a few thousand ahead.
MAX_PEER_VERSION = 4096
# ErrorReply.code of a node that met another version: this prefix, then its own.
MISMATCH_CODE = "protocol-"
# Default upper bound of one encoded message; sockets may pass a smaller one.
MAX_MESSAGE_BYTES = 64 * 1024
# Default bounds of variable-size fields, overridable per field by metadata.
DEFAULT_MAX_STR = 4096
DEFAULT_MAX_BYTES = 4096
DEFAULT_MAX_LIST = 1024
# What a listing's rows (`transfers`, `peers`) may take of one message: the
# rest of it (its request, names) fits in what is left.
ROWS_BUDGET = MAX_MESSAGE_BYTES - 4096


class DecodeError(ValueError):
    """A frame that is not a valid message. ``kind`` is a short stable label."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class VersionMismatch(DecodeError):
    """A well-formed envelope of another protocol version, ``theirs`` (kind
    ``version``), than ``ours``: the peer runs another release."""

    def __init__(self, theirs: int, ours: int = VERSION) -> None:
        super().__init__("version", f"protocol {theirs}, this node {ours}")
        self.theirs = theirs


def mismatch_text(peer: str, theirs: int) -> str:
    """The one line either side of a mixed-version pair shows."""
    return (
        f"{peer} speaks protocol {theirs}, this node {VERSION}: nodes interoperate "
        "only on the same protocol version (run the same release on both)"
    )


def mismatch_reply(theirs: int, ours: int = VERSION) -> bytes:
    """An ``error`` message in protocol ``theirs``'s envelope, which any
    version decodes: its code names this node's version ``ours``
    (:func:`mismatch_of`), its reason says both, for a node too old to read
    the code."""
    reason = (
        f"this node speaks protocol {ours}, yours {theirs}: nodes interoperate "
        "only on the same protocol version (run the same release on both)"
    )
    fields = {"code": f"{MISMATCH_CODE}{ours}", "reason": reason}
    data: bytes = msgpack.packb([theirs, "error", fields], use_bin_type=True)
    return data


def mismatch_of(msg: Message, ours: int = VERSION) -> int | None:
    """The version a peer's ``error`` reply says it speaks (it met ``ours``
    and answered in our envelope: :func:`mismatch_reply`), else None."""
    if getattr(msg, "TYPE", "") != "error":
        return None
    code = str(getattr(msg, "code", ""))
    number = code.removeprefix(MISMATCH_CODE)
    if number == code or not (number.isascii() and number.isdigit()) or len(number) > 9:
        return None
    theirs = int(number)
    return theirs if theirs != ours else None


@dataclasses.dataclass(frozen=True)
class Message:
    """Base of all wire messages. Subclasses set ``TYPE``."""

    TYPE: ClassVar[str] = ""


M = TypeVar("M", bound=Message)

_Check = Callable[[Any], bool]
_Clip = Callable[[Any], Any]
_REGISTRY: dict[str, type[Message]] = {}
_CHECKS: dict[type[Message], dict[str, _Check]] = {}
_CLIPS: dict[type[Message], dict[str, _Clip]] = {}


def bounded(maximum: int, minimum: int = 0) -> dict[str, int]:
    """Field metadata: for str/bytes/list the length, for int the value."""
    return {"max": maximum, "min": minimum}


def bounded_text(maximum: int) -> dict[str, int]:
    """Field metadata of a text for people (a reason): encoding clips a long
    one in its middle, not at its end, so that what ends it is kept: "cannot
    send PATH: deeper than 64 levels" with a long PATH lost its reason."""
    return {"max": maximum, "min": 0, "middle": 1}


def bounded_list(maximum: int, item: typing.Mapping[str, Any]) -> dict[str, Any]:
    """Field metadata of a list: its length, and each item's bounds (the
    metadata of another message's field: a column of those)."""
    return {"max": maximum, "min": 0, "item": item}


def _checker(tp: Any, meta: typing.Mapping[str, Any]) -> _Check:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        parts = [_checker(a, meta) for a in typing.get_args(tp)]
        return lambda v: any(p(v) for p in parts)
    if tp is type(None):
        return lambda v: v is None
    lo = meta.get("min", 0)
    if tp is bool:
        return lambda v: isinstance(v, bool)
    if tp is int:
        hi_int = meta.get("max", 2**63 - 1)
        lo_int = meta.get("min", -(2**63))
        return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo_int <= v <= hi_int
    if tp is float:
        return lambda v: isinstance(v, float | int) and not isinstance(v, bool)
    if tp is str:
        hi = meta.get("max", DEFAULT_MAX_STR)
        return lambda v: isinstance(v, str) and lo <= len(v) <= hi and _utf8(v)
    if tp is bytes:
        hi = meta.get("max", DEFAULT_MAX_BYTES)
        return lambda v: isinstance(v, bytes) and lo <= len(v) <= hi
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        item = _checker(item_tp, meta.get("item", {}))
        hi = meta.get("max", DEFAULT_MAX_LIST)
        return lambda v: isinstance(v, list) and lo <= len(v) <= hi and all(item(x) for x in v)
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        key, val = _checker(key_tp, {}), _checker(val_tp, {})
        hi = meta.get("max", DEFAULT_MAX_LIST)
        return lambda v: (
            isinstance(v, dict) and len(v) <= hi and all(key(k) and val(x) for k, x in v.items())
        )
    raise TypeError(f"unsupported field type {tp!r}")


def _utf8(text: str) -> bool:
    """Whether ``text`` can go on the wire: a lone surrogate (e.g. from a
    file name that is not UTF-8, decoded with surrogateescape) cannot."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _as_utf8(text: str) -> str:
    """``text`` with every character UTF-8 cannot carry replaced by '?'."""
    return text if _utf8(text) else text.encode("utf-8", "replace").decode()


def _clipper(tp: Any, meta: typing.Mapping[str, Any]) -> _Clip:
    """The function mapping a value of type ``tp`` into its bounds (a value
    of another type is returned as it is, and encode then refuses it)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        parts = [(_checker(a, meta), _clipper(a, meta)) for a in typing.get_args(tp)]

        def clip_union(v: Any) -> Any:
            for ok, clip in parts:
                clipped = clip(v)
                if ok(clipped):
                    return clipped
            return v

        return clip_union
    lo = meta.get("min", 0)
    if tp is int:
        hi_int = meta.get("max", 2**63 - 1)
        lo_int = meta.get("min", -(2**63))
        return lambda v: (
            min(hi_int, max(lo_int, v)) if isinstance(v, int) and not isinstance(v, bool) else v
        )
    if tp is str:
        hi = meta.get("max", DEFAULT_MAX_STR)
        if meta.get("middle"):
            return lambda v: _as_utf8(shortened(v, hi)) if isinstance(v, str) else v
        return lambda v: (_as_utf8(v[:hi]) + "?" * (lo - len(v))) if isinstance(v, str) else v
    if tp is bytes:
        hi = meta.get("max", DEFAULT_MAX_BYTES)
        return lambda v: v[:hi] if isinstance(v, bytes) else v
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        item = _clipper(item_tp, meta.get("item", {}))
        hi = meta.get("max", DEFAULT_MAX_LIST)
        return lambda v: [item(x) for x in v[:hi]] if isinstance(v, list) else v
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        key, val = _clipper(key_tp, {}), _clipper(val_tp, {})
        hi = meta.get("max", DEFAULT_MAX_LIST)
        return lambda v: (
            {key(k): val(x) for k, x in list(v.items())[:hi]} if isinstance(v, dict) else v
        )
    return lambda v: v


def clip_fields(msg: Message, strict: bool = False) -> dict[str, Any]:
    """The fields of ``msg``, each mapped into its wire bound. ``strict``:
    raise ValueError for a field that is out of bounds even so (a value of
    the wrong type, bytes under their minimum length). A value within its
    bounds is checked once: only a clipped one is checked again."""
    cls = type(msg)
    checks, clips = field_checks(cls), _CLIPS[cls]
    fields = {}
    for name, ok in checks.items():
        value = getattr(msg, name)
        if not ok(value):
            value = clips[name](value)
            if strict and not ok(value):
                raise ValueError(f"{cls.TYPE}.{name} out of bounds: {value!r:.80}")
        fields[name] = value
    return fields


# The modules that define message types; each registers its own as it is
# imported. A command imports only the ones it uses (their dataclasses cost
# a tenth of a short command's time); a decoder that meets a type not
# registered yet imports them all, once, so what it accepts never depends on
# what some other code happened to import first.
MESSAGE_MODULES = (
    "local_messages",
    "messages",
    "actor_messages",
    "multicast_messages",
    "network_messages",
    "space_messages",
    "stats_messages",
)
_all_loaded = False


def all_types() -> dict[str, type[Message]]:
    """Every message type (their modules imported first), by type name."""
    global _all_loaded
    if not _all_loaded:
        for name in MESSAGE_MODULES:
            importlib.import_module(f"peercrypt.wire.{name}")
        _all_loaded = True
    return dict(_REGISTRY)


def message(cls: type[M]) -> type[M]:
    """Class decorator: register a frozen message dataclass under ``cls.TYPE``.
    Its field checks are built when the type is first encoded or decoded (a
    command that uses three of the seventy types does not build the rest)."""
    if not cls.TYPE or cls.TYPE in _REGISTRY:
        raise TypeError(f"message type {cls.TYPE!r} missing or registered twice")
    _REGISTRY[cls.TYPE] = cls
    return cls


def field_checks(cls: type[Message]) -> dict[str, _Check]:
    """The field checks of registered message type ``cls``, in field order."""
    checks = _CHECKS.get(cls)
    if checks is None:
        if _REGISTRY.get(getattr(cls, "TYPE", "")) is not cls:
            raise TypeError(f"{cls.__name__} is not a registered message")
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        _CLIPS[cls] = {f.name: _clipper(hints[f.name], f.metadata) for f in fields}
        checks = _CHECKS[cls] = {f.name: _checker(hints[f.name], f.metadata) for f in fields}
    return checks


def encode(msg: Message, version: int = VERSION) -> bytes:
    """Encode a registered message, each field clipped to its bound (see the
    module rules), in the envelope of ``version`` (LOCAL_VERSION on the
    control socket). Raises ValueError only for a value of the wrong type, a
    bytes field under its minimum length, or a message that still exceeds
    MAX_MESSAGE_BYTES (bugs on our side: we never send what we would refuse)."""
    cls = type(msg)
    fields = clip_fields(msg, strict=True)
    data: bytes = msgpack.packb([version, cls.TYPE, fields], use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{cls.TYPE} encodes to {len(data)} bytes > {MAX_MESSAGE_BYTES}")
    return data


def decode(
    data: bytes | memoryview,
    max_bytes: int = MAX_MESSAGE_BYTES,
    version: int = VERSION,
    *,
    lenient: bool = False,
) -> Message:
    """Decode one message of ``version``'s envelope (LOCAL_VERSION on the
    control socket), strictly. Raises only :class:`DecodeError`.

    ``lenient`` (a command reading its own node's replies, never a peer's
    message nor a request to the node): a field the message lacks takes its
    default if it has one, and a field this release does not know is left
    out; every value present is checked as strictly. So a command reads a
    node of the release before or after it (updated while the node ran)
    wherever the fields it needs are there."""
    if len(data) > max_bytes:
        raise DecodeError("oversize", f"{len(data)} bytes > {max_bytes}")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=DEFAULT_MAX_LIST * 2,
            max_map_len=DEFAULT_MAX_LIST,  # fields' own bounds are checked below
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types on garbage
        raise DecodeError("malformed", type(exc).__name__) from None
    if not (isinstance(obj, list) and len(obj) == 3):
        raise DecodeError("malformed", "envelope is not [version, type, fields]")
    envelope, type_name, fields = obj
    if type(envelope) is not int or not 1 <= envelope <= MAX_PEER_VERSION:
        raise DecodeError("version", f"unsupported version {envelope!r:.20}")
    if envelope != version:
        raise VersionMismatch(envelope, version)
    if not isinstance(type_name, str):
        raise DecodeError("unknown-type", f"{type_name!r:.40}")
    cls = _REGISTRY.get(type_name)
    if cls is None and not _all_loaded:
        cls = all_types().get(type_name)
    if cls is None:
        raise DecodeError("unknown-type", f"{type_name!r:.40}")
    if not isinstance(fields, dict):
        raise DecodeError("malformed", "fields is not a map")
    checks = field_checks(cls)
    if lenient and fields.keys() != checks.keys():
        fields = {k: v for k, v in fields.items() if k in checks}
        fields.update(_defaults(cls, checks.keys() - fields.keys()))
    if fields.keys() != checks.keys():
        missing = sorted(checks.keys() - fields.keys())
        extra = sorted(str(k) for k in fields.keys() - checks.keys())
        raise DecodeError("fields", f"{type_name}: missing {missing} extra {extra}"[:200])
    for name, ok in checks.items():
        if not ok(fields[name]):
            raise DecodeError("field-type", f"{type_name}.{name}")
    return cls(**fields)


def _defaults(cls: type[Message], missing: typing.Iterable[str]) -> dict[str, Any]:
    """The defaults of ``cls``'s fields ``missing`` that have one."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in missing:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def by_id(row: dict[str, str]) -> tuple[int, str]:
    """A listing's row's place: by its numeric ``id`` (others last, by text)."""
    ident = str(row.get("id", ""))
    return (int(ident), "") if ident.isascii() and ident.isdigit() else (1 << 62, ident)


def rows_within(rows: list[dict[str, str]], budget: int = ROWS_BUDGET) -> list[dict[str, str]]:
    """The longest first part of ``rows`` whose encoding fits ``budget``
    bytes. A count of rows does not bound their bytes: a thousand sends
    waiting, or some 210 members, made a listing that failed to encode, and
    `transfers` said none ran, `peers` that the node did not answer."""
    total = 5  # (the list's own header, at most)
    for k, row in enumerate(rows):
        total += len(msgpack.packb(row, use_bin_type=True))
        if total > budget:
            return rows[:k]
    return rows


def decode_as(data: bytes | memoryview, cls: type[M], max_bytes: int = MAX_MESSAGE_BYTES) -> M:
    """Decode and require a given message class."""
    msg = decode(data, max_bytes)
    if not isinstance(msg, cls):
        raise DecodeError("unexpected-type", f"{msg.TYPE} where {cls.TYPE} was expected")
    return msg
