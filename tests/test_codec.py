"""Tests for the strict msgpack codec (peercrypt.wire.codec) and the messages it carries."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Union

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import peercrypt.wire.messages as messages
from peercrypt.core.bitmap import MAX_RANGES
from peercrypt.wire import codec
from peercrypt.wire.codec import VERSION, DecodeError, decode, decode_as, encode
from peercrypt.wire.multicast_messages import McRefuse

REGISTRY: dict[str, type[codec.Message]] = codec.all_types()
MESSAGE_TYPES = sorted(REGISTRY)

# Cap generated sizes so the suite stays fast; exact upper bounds get explicit tests.
_GEN_CAP = 70


def _strategy(tp: Any, meta: typing.Mapping[str, Any]) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return st.one_of(*[_strategy(a, meta) for a in typing.get_args(tp)])
    if tp is type(None):
        return st.none()
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(meta.get("min", -(2**63)), meta.get("max", 2**63 - 1))
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    lo = meta.get("min", 0)
    if tp is str:
        hi = meta.get("max", codec.DEFAULT_MAX_STR)
        return st.text(min_size=lo, max_size=min(hi, max(lo, _GEN_CAP)))
    if tp is bytes:
        hi = meta.get("max", codec.DEFAULT_MAX_BYTES)
        return st.binary(min_size=lo, max_size=min(hi, max(lo, _GEN_CAP)))
    if origin is list:
        (item,) = typing.get_args(tp)
        hi = meta.get("max", codec.DEFAULT_MAX_LIST)
        return st.lists(
            _strategy(item, meta.get("item", {})), min_size=lo, max_size=min(hi, max(lo, 20))
        )
    if origin is dict:
        key, val = typing.get_args(tp)
        hi = meta.get("max", codec.DEFAULT_MAX_LIST)
        return st.dictionaries(
            _strategy(key, {"max": 40}), _strategy(val, {}), max_size=min(hi, 20)
        )
    raise TypeError(tp)


def field_specs(cls: type[codec.Message]) -> list[tuple[str, dataclasses.Field[Any]]]:
    """(name, Field) pairs in the codec's order."""
    specs = {f.name: f for f in dataclasses.fields(cls)}
    return [(name, specs[name]) for name in codec.field_checks(cls)]


def message_strategy(cls: type[codec.Message]) -> st.SearchStrategy[codec.Message]:
    hints = typing.get_type_hints(cls)
    fields = {name: _strategy(hints[name], f.metadata) for name, f in field_specs(cls)}
    return st.builds(cls, **fields)


any_message = st.sampled_from(MESSAGE_TYPES).flatmap(lambda t: message_strategy(REGISTRY[t]))


def valid(cls: type[codec.Message]) -> codec.Message:
    """A minimal valid instance (every field at its smallest legal value)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in field_specs(cls):
        tp, lo = hints[name], f.metadata.get("min", 0)
        if typing.get_origin(tp) in (Union, types.UnionType):
            tp = typing.get_args(tp)[0]
        if tp is bool:
            values[name] = False
        elif tp is int:
            values[name] = lo
        elif tp is float:
            values[name] = 0.0
        elif tp is str:
            values[name] = "x" * lo
        elif tp is bytes:
            values[name] = b"\x01" * lo
        elif typing.get_origin(tp) is list:
            values[name] = [0] * lo
        elif typing.get_origin(tp) is dict:
            values[name] = {}
        else:
            values[name] = None
    return cls(**values)


def raw_fields(msg: codec.Message) -> dict[str, Any]:
    return {name: getattr(msg, name) for name, _ in field_specs(type(msg))}


def pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def kind_of(data: bytes, max_bytes: int = codec.MAX_MESSAGE_BYTES) -> str:
    with pytest.raises(DecodeError) as info:
        decode(data, max_bytes)
    return info.value.kind


# ---- registry ---------------------------------------------------------------------


def test_registry_holds_the_documented_messages() -> None:
    for name in (
        "hello",
        "ping",
        "offer",
        "accept",
        "chunk",
        "sealed",
        "ack",
        "done",
        "verified",
        "failed",
        "send-request",
        "status-reply",
        "inbound",
        "announce",
    ):
        assert name in REGISTRY
    for name, cls in REGISTRY.items():
        assert name == cls.TYPE


def test_registering_a_type_twice_is_refused() -> None:
    with pytest.raises(TypeError):

        @codec.message
        @dataclasses.dataclass(frozen=True, kw_only=True)
        class Again(codec.Message):
            TYPE = "ping"


# ---- round trips --------------------------------------------------------------------


@pytest.mark.parametrize("type_name", MESSAGE_TYPES)
def test_minimal_message_round_trips(type_name: str) -> None:
    msg = valid(REGISTRY[type_name])
    assert decode(encode(msg)) == msg
    assert decode_as(encode(msg), REGISTRY[type_name]) == msg


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_message)
def test_every_message_round_trips(msg: codec.Message) -> None:
    data = encode(msg)
    back = decode(data)
    assert type(back) is type(msg)
    assert back == msg
    assert encode(back) == data


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**40), st.booleans(), st.binary(min_size=12, max_size=12))
def test_chunk_header_fits_the_receivers_header_limit(index: int, last: bool, nonce: bytes) -> None:
    h = messages.ChunkHeader(tid=b"t" * 16, index=index, last=last, nonce=nonce)
    assert decode(encode(h), 512) == h


def test_fields_at_their_exact_bounds_round_trip() -> None:
    details = messages.OfferDetails(
        name="\U0001f600" * messages.MAX_NAME,  # 4 bytes each in UTF-8
        size=2**62,
        chunk_size=64 * 1024 * 1024,
        hash_alg="b" * 16,
        mode="m" * 32,
        source=b"s" * 32,
    )
    assert decode(encode(details)) == details
    sealed = encode(details) + bytes(16)  # what the sender seals, with the AEAD tag
    offer = messages.Offer(tid=b"\0" * 16, eph_pub=b"k" * 32, details=sealed)
    assert len(sealed) <= messages.MAX_DETAILS and decode(encode(offer)) == offer
    accept = messages.Accept(
        tid=b"\0" * 16,
        eph_pub=b"k" * 32,
        static_pub=b"s" * 32,
        proof=b"p" * 32,
        data_host="h" * 255,
        data_port=65535,
        window=4096,
        have=list(range(128)),
    )
    assert decode(encode(accept)) == accept


def test_decode_accepts_memoryview() -> None:
    msg = messages.Ping(seq=7)
    assert decode(memoryview(encode(msg))) == msg


def test_decode_as_rejects_another_type() -> None:
    with pytest.raises(DecodeError) as info:
        decode_as(encode(messages.Ping(seq=1)), messages.Pong)
    assert info.value.kind == "unexpected-type"


# ---- encode refuses what decode would refuse -----------------------------------------


def test_encode_clips_what_is_out_of_bounds() -> None:
    assert decode(encode(messages.Ping(seq=-1))) == messages.Ping(seq=0)
    assert decode(encode(messages.Ping(seq=2**70))) == messages.Ping(seq=2**62)
    tid = b"t" * messages.TID_BYTES
    refuse = decode(encode(messages.Refuse(tid=tid, code="", reason="\U0001d11e" * 9000)))
    assert isinstance(refuse, messages.Refuse)
    assert refuse.code == "?" and refuse.reason == "\U0001d11e" * 255 + "…" + "\U0001d11e" * 256
    # A reason over its bound loses its middle: what ends it (the why) stays.
    long = decode(encode(messages.Refuse(tid=tid, code="x", reason="p/" * 400 + ": too deep")))
    assert isinstance(long, messages.Refuse) and len(long.reason) == 512
    assert long.reason == "p/" * 127 + "p…" + ("p/" * 400 + ": too deep")[-256:]
    assert long.reason.endswith("/p/: too deep")
    listed = decode(encode(messages.Ack(cumulative=0, sack=list(range(1000)), window=10**9)))
    assert isinstance(listed, messages.Ack)
    assert listed.sack == list(range(2 * MAX_RANGES)) and listed.window == 4096


def test_encode_still_refuses_wrong_types_and_short_bytes() -> None:
    with pytest.raises(ValueError):
        encode(messages.ChunkHeader(tid=b"short", index=0))
    with pytest.raises(ValueError):
        encode(messages.Ping(seq=True))
    with pytest.raises(ValueError):
        encode(messages.Ping(seq="1"))  # type: ignore[arg-type]


def _beyond(tp: Any, meta: typing.Mapping[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a scalar field's type at and beyond its bounds, in every
    Unicode category (containers stay small and in bounds)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return st.one_of(*[_beyond(a, meta) for a in typing.get_args(tp)])
    if tp is int:
        lo, hi = meta.get("min", -(2**63)), meta.get("max", 2**63 - 1)
        return st.one_of(st.sampled_from([lo - 1, lo, hi, hi + 1, -(2**64), 2**64]), st.integers())
    if tp is str:
        hi = meta.get("max", codec.DEFAULT_MAX_STR)
        return st.one_of(
            st.just(""),
            st.text(max_size=30),
            st.builds(lambda c, extra: c * (hi + extra), st.characters(), st.integers(0, 3)),
        )
    return _strategy(tp, meta)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MESSAGE_TYPES), st.data())
def test_every_field_a_node_writes_is_clipped_to_its_bound(name: str, data: st.DataObject) -> None:
    cls = REGISTRY[name]
    hints = typing.get_type_hints(cls)
    values = {
        fname: data.draw(_beyond(hints[fname], f.metadata), label=fname)
        for fname, f in field_specs(cls)
    }
    msg = cls(**values)
    try:
        back = decode(encode(msg))
    except ValueError as exc:
        # only a fixed-size bytes field drawn short (our own bug, never peer text)
        assert "out of bounds" in str(exc)
        assert any(
            isinstance(values[f], bytes) and len(values[f]) < m.metadata.get("min", 0)
            for f, m in field_specs(cls)
        )
        return
    assert type(back) is cls
    for fname, _ in field_specs(cls):
        sent, got = values[fname], getattr(back, fname)
        if isinstance(sent, str):
            if "…" in got and len(sent) > len(got):  # a reason: cut in its middle
                head, tail = got.split("…", 1)
                assert sent.startswith(head) and sent.endswith(tail)
            else:
                assert sent.startswith(got.rstrip("?")) or got.startswith(sent)


def test_encode_refuses_unregistered_messages() -> None:
    @dataclasses.dataclass(frozen=True)
    class Stray(codec.Message):
        TYPE = "stray"

    with pytest.raises(TypeError):
        encode(Stray())


# ---- rejection kinds ------------------------------------------------------------------


def test_oversize_frame() -> None:
    data = encode(messages.Ping(seq=1))
    assert kind_of(data, max_bytes=len(data) - 1) == "oversize"
    assert decode(data, max_bytes=len(data)) == messages.Ping(seq=1)
    assert kind_of(b"\x90" * (codec.MAX_MESSAGE_BYTES + 1)) == "oversize"


@pytest.mark.parametrize(
    "version", [0, VERSION - 1, VERSION + 1, -1, "1", None, True, [1], 2**64 - 1, -(2**63)]
)
def test_wrong_version(version: object) -> None:
    assert kind_of(pack([version, "ping", {"seq": 1}])) in ("version", "malformed")


@pytest.mark.parametrize("version", [0, VERSION - 1, VERSION + 1, "1", None, True])
def test_wrong_version_kind_is_version(version: object) -> None:
    assert kind_of(pack([version, "ping", {"seq": 1}])) == "version"


@pytest.mark.parametrize("version", [1, VERSION + 1, codec.MAX_PEER_VERSION])
def test_another_version_is_told_apart_from_garbage(version: int) -> None:
    """A version a node of another release may speak is a VersionMismatch
    naming it; an answer in its envelope is an ``error`` that decodes in it,
    whose code names this node's version."""
    with pytest.raises(codec.VersionMismatch) as raised:
        decode(pack([version, "ping", {"seq": 1}]))
    assert raised.value.theirs == version and raised.value.kind == "version"
    reply = msgpack.unpackb(codec.mismatch_reply(version), raw=False)
    assert reply[:2] == [version, "error"] and reply[2]["code"] == f"protocol-{VERSION}"
    assert decode(pack([VERSION, *reply[1:]])).TYPE == "error"  # what its codec reads
    theirs = decode(pack([VERSION, "error", {"code": f"protocol-{version}", "reason": ""}]))
    assert codec.mismatch_of(theirs) == version
    for code in ("protocol-x", "protocol-", "protocol-²", "protocol-1234567890", "version"):
        other = decode(pack([VERSION, "error", {"code": code, "reason": ""}]))
        assert codec.mismatch_of(other) is None, code


def test_float_version_is_rejected() -> None:
    assert kind_of(pack([1.0, "ping", {"seq": 1}])) == "version"


@pytest.mark.parametrize("type_name", ["nope", "", "PING", 7, None, b"ping"])
def test_unknown_type(type_name: object) -> None:
    assert kind_of(pack([VERSION, type_name, {"seq": 1}])) == "unknown-type"


@pytest.mark.parametrize(
    "envelope",
    [
        {"v": 1},
        [VERSION, "ping"],
        [VERSION, "ping", {"seq": 1}, "extra"],
        [],
        "ping",
        7,
        None,
        b"bytes",
    ],
)
def test_envelope_that_is_not_a_three_element_list(envelope: object) -> None:
    assert kind_of(pack(envelope)) == "malformed"


@pytest.mark.parametrize("fields", [[1], "seq", None, 5])
def test_fields_not_a_map(fields: object) -> None:
    assert kind_of(pack([VERSION, "ping", fields])) == "malformed"


@pytest.mark.parametrize("type_name", MESSAGE_TYPES)
def test_missing_field(type_name: str) -> None:
    fields = raw_fields(valid(REGISTRY[type_name]))
    if not fields:
        pytest.skip("message without fields")
    for name in fields:
        partial = {k: v for k, v in fields.items() if k != name}
        assert kind_of(pack([VERSION, type_name, partial])) == "fields"


@pytest.mark.parametrize("type_name", MESSAGE_TYPES)
def test_extra_field(type_name: str) -> None:
    fields = raw_fields(valid(REGISTRY[type_name]))
    assert kind_of(pack([VERSION, type_name, {**fields, "extra": 1}])) == "fields"
    assert kind_of(pack([VERSION, type_name, {**fields, b"bin-key": 1}])) == "fields"


@pytest.mark.parametrize(
    ("type_name", "field", "bad"),
    [
        ("ping", "seq", True),  # bool is not an int
        ("ping", "seq", False),
        ("ping", "seq", 1.0),
        ("ping", "seq", "1"),
        ("ping", "seq", None),
        ("ping", "seq", -1),
        ("ping", "seq", 2**62 + 1),
        ("chunk", "index", 2**40 + 1),
        ("chunk", "last", 1),  # int is not a bool
        ("chunk", "last", 0),
        ("chunk", "tid", b"x" * 15),
        ("chunk", "tid", b"x" * 17),
        ("chunk", "tid", "x" * 16),  # str is not bytes
        ("chunk", "nonce", b"n" * 11),
        ("offer-details", "name", ""),
        ("offer-details", "name", "n" * (messages.MAX_NAME + 1)),
        ("offer-details", "chunk_size", 0),
        ("offer-details", "name", b"name"),
        ("offer", "details", b"d" * (messages.MAX_DETAILS + 1)),
        ("accept", "data_port", 0),
        ("accept", "data_port", 65536),
        ("accept", "window", 4097),
        ("accept", "have", list(range(129))),
        ("accept", "have", [1, "2"]),
        ("accept", "have", [True]),
        ("ack", "sack", [0.5]),
        ("ack", "sack", "01"),
        ("status-reply", "counters", {"a": "1"}),
        ("status-reply", "counters", {"a": True}),
        ("status-reply", "node", {"a": 1}),
        ("announce", "facts", {str(i): "x" for i in range(33)}),
        ("send-request", "timeout", "10"),
        ("send-request", "timeout", True),
        ("send-request", "chunk_size", 4095),
        ("verified", "digest", b"d" * 31),
    ],
)
def test_wrong_type_or_out_of_bounds_field(type_name: str, field: str, bad: object) -> None:
    fields = raw_fields(valid(REGISTRY[type_name]))
    assert field in fields
    assert decode(pack([VERSION, type_name, fields])) is not None  # the base is valid
    assert kind_of(pack([VERSION, type_name, {**fields, field: bad}])) == "field-type"


def test_nested_garbage_and_extension_types_are_malformed() -> None:
    assert kind_of(b"\xc1") == "malformed"  # never-used byte
    assert kind_of(pack([VERSION, "ping", {"seq": 1}]) + b"\x00") == "malformed"  # trailing
    assert kind_of(msgpack.packb(msgpack.ExtType(1, b"x"))) == "malformed"
    assert kind_of(b"\x91" * 5000) == "malformed"  # deep nesting
    assert kind_of(b"") == "malformed"
    assert kind_of(pack({1: 2})) == "malformed"  # int map key (strict_map_key)


# ---- fuzz -------------------------------------------------------------------------------

KINDS = {"malformed", "version", "unknown-type", "fields", "field-type", "oversize"}


def check_decodes_or_rejects(data: bytes) -> None:
    """decode() either rejects with a known kind or returns a message that re-encodes
    (anything it accepts satisfies the bounds encode() enforces)."""
    try:
        msg = decode(data)
    except DecodeError as exc:
        assert exc.kind in KINDS
    else:
        assert isinstance(msg, codec.Message)
        assert decode(encode(msg)) == msg


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    check_decodes_or_rejects(data)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(MESSAGE_TYPES),
    st.dictionaries(st.text(max_size=12), _msgpack_values, max_size=6),
)
def test_arbitrary_fields_raise_only_decode_error(type_name: str, fields: dict[str, Any]) -> None:
    try:
        data = msgpack.packb([VERSION, type_name, fields], use_bin_type=True)
    except (OverflowError, ValueError):
        return
    check_decodes_or_rejects(data)


@settings(max_examples=150, deadline=None)
@given(any_message, st.data())
def test_mutated_valid_frames_raise_only_decode_error(
    msg: codec.Message, data: st.DataObject
) -> None:
    frame = bytearray(encode(msg))
    pos = data.draw(st.integers(0, len(frame) - 1))
    frame[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    check_decodes_or_rejects(bytes(frame[:cut]))


# ---- bugs found ---------------------------------------------------------------------------


def test_status_reply_with_many_counters_round_trips() -> None:
    reply = messages.StatusReply(
        request=1, node={}, counters={f"actor.counter-{i}": i for i in range(100)}
    )
    assert decode(encode(reply)) == reply


def test_message_at_its_field_bounds_is_decodable_with_default_limit() -> None:
    msg = messages.Outbound(route=b"r" * 256, payload=b"p" * messages.MAX_WRAPPED)
    assert decode(encode(msg)) == msg


def test_encode_refuses_what_decode_would_refuse() -> None:
    big = messages.StatusReply(
        request=1, node={f"k{i:02}": "v" * 4000 for i in range(20)}, counters={}
    )
    with pytest.raises(ValueError, match="bytes >"):
        encode(big)


def test_dataclass_fields_report_the_declared_names() -> None:
    for cls in REGISTRY.values():
        assert [f.name for f in dataclasses.fields(cls)] == list(codec.field_checks(cls))
    reply = messages.HelloReply(node_id=b"n" * 32, version="1", proof=b"p" * 32)
    assert dataclasses.replace(reply, version="2").version == "2"


def test_status_reply_carries_many_counters_within_the_frame_limit() -> None:
    counters = {f"actor{i % 9}.some-counter-name-{i:04}": i for i in range(1000)}
    reply = messages.StatusReply(request=1, node={"k": "v"}, counters=counters)
    assert decode(encode(reply)) == reply


def test_an_unregistered_message_type_is_refused() -> None:
    @dataclasses.dataclass(frozen=True)
    class Stray(codec.Message):
        TYPE = "stray-never-registered"
        x: int = 0

    with pytest.raises(TypeError, match="not a registered message"):
        encode(Stray())
    with pytest.raises(TypeError, match="not a registered message"):
        codec.field_checks(Stray)


def test_every_message_module_is_known_to_the_decoder() -> None:
    """A module missing from MESSAGE_MODULES would be unknown to a decoder
    until something else imported it."""
    wire = Path(codec.__file__).parent
    modules = {p.stem for p in wire.glob("*.py") if p.stem.endswith("messages")}
    assert modules == set(codec.MESSAGE_MODULES)


SAMPLE = McRefuse(sid=bytes(16), code="busy", reason="a reason")


def test_a_decoder_knows_every_type_whatever_was_imported_first() -> None:
    """A process that imported only the codec still decodes a type defined in
    a module it never imported (the decoder loads them all on first need)."""
    probe = (
        "import sys\n"
        "from peercrypt.wire import codec\n"
        "assert 'peercrypt.wire.multicast_messages' not in sys.modules\n"
        f"msg = codec.decode(bytes.fromhex({encode(SAMPLE).hex()!r}))\n"
        "print(type(msg).__module__, msg.TYPE)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [type(SAMPLE).__module__, SAMPLE.TYPE]


def test_a_name_that_is_not_utf8_is_sent_with_its_odd_bytes_replaced() -> None:
    """A file name of bytes that are not UTF-8 arrives as lone surrogates
    (surrogateescape); msgpack cannot carry them, so encoding would raise in
    the actor that writes the message. They become '?' instead."""
    name = os.fsdecode(b"caf\xe9-\xff.bin")
    assert "\udce9" in name
    back = decode(encode(messages.ErrorReply(code="io", reason=f"cannot read {name}")))
    assert isinstance(back, messages.ErrorReply)
    assert back.reason == "cannot read caf?-?.bin"


# The messages that cross between nodes (control plane, data plane, multicast,
# gossip, attached actors): what two nodes of one protocol version must agree on.
BETWEEN_NODES = (
    "hello", "hello-reply", "ping", "pong", "offer", "offer-details", "accept", "refuse",
    "chunk", "slot", "sealed", "attach", "ack", "done", "verifying", "verified", "failed",
    "error", "gossip", "gossip-reply", "mc-announce", "mc-details", "mc-join", "mc-refuse",
    "mc-key", "mc-ack", "mc-status", "mc-done", "mc-chunk", "attach-hello", "attach-reply",
    "actor-mail", "attach-beat",
)  # fmt: skip
# The schema of BETWEEN_NODES under each protocol version (docs/security.md,
# "Protocol versions"): a change a node of the previous version would refuse
# comes with a new codec.VERSION and its schema here.
SCHEMAS = {2: "a335511fe5c0"}
# Types added within a version: a node of the same version that does not know
# one refuses it where the protocol falls back for it (docs/security.md,
# "Protocol versions"): McFileDetails inside a sealed announce (the receiver
# answers "malformed sealed details", and the sender announces McDetails
# again), McHeld only in answer to it.
ADDED = {2: (("mc-file-details", "mc-held"), "de73614382d9")}


def _accepted(meta: Any) -> Any:
    """Field metadata as far as it decides what a node accepts: where a node
    cuts a long text it writes (``middle``) changes nothing another takes."""
    if not isinstance(meta, typing.Mapping):
        return meta
    kept = {k: _accepted(v) for k, v in meta.items() if k != "middle"}
    return types.MappingProxyType(kept) if isinstance(meta, types.MappingProxyType) else kept


def _schema(types: tuple[str, ...] = BETWEEN_NODES) -> str:
    import hashlib

    parts = []
    for type_name in types:
        cls = REGISTRY[type_name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = sorted((k, repr(_accepted(v))) for k, v in _accepted(f.metadata).items())
            parts.append(f"{type_name}.{f.name}:{hints[f.name]}:{meta}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def test_the_messages_between_nodes_change_only_with_the_protocol_version() -> None:
    """A field added, removed, retyped or bounded otherwise in a message two
    nodes exchange makes the older node refuse it (its codec is strict):
    such a change needs the next codec.VERSION, so that a mixed pair meets
    the version's one clear error at its first contact, not an obscure
    refusal later (OfferDetails.min_chunk and Accept.chunk_size came
    without it)."""
    assert _schema() == SCHEMAS.get(VERSION), (
        f"the messages between nodes changed ({_schema()}): bump codec.VERSION, "
        "record the new schema in SCHEMAS and say what changed in docs/security.md"
    )
    added, schema = ADDED.get(VERSION, ((), ""))
    assert _schema(added) == schema, (
        f"a message added within version {VERSION} changed ({_schema(added)}): "
        "a node that knows it refuses the other form"
    )


# The schema of every other message: the mail between a node's actors, which
# crosses inside actor-mail to an actor attached from another process, maybe
# of the build before (docs/architecture.md, "Attached actors"). JoinResult
# and GossipState gained `live` and `gone`: they go from discovery to control,
# neither of which is ever attached, and a command reads them leniently.
# Proven is a new message (health -> discovery): one of the build before
# drops it as unknown, and its discovery then keeps no members to rejoin.
# CancelAnswer is a new message (control -> a command, which reads it
# leniently; no attached actor gets it): control answers `cancel ID` with
# how the send ended instead of a SettingReply.
# StatusWait is a new message (a command -> control, never attached; a node
# of the release before refuses it, and the shell then polls), and
# StatusReply's new field ``changes`` goes only to commands, which read it
# leniently (0 from a node without it).
# SendProven (sender -> control) and ProvenOutcome (control -> health) are
# new messages, each dropped as unknown by an actor of the build before (a
# bad-mail count): a node of that build with a newer attached sender
# scores verified sends by their address as before; a newer node with a
# health of that build attached scores no verified send.
# ActorRestarted (a proxy -> its attached actor: the node's actor NAME
# restarted; a link -> its receiver at its first attachment: the node's
# space ledger is new to it) is a new message: an attached actor of the
# build before drops it as unknown and misses the news, as before.
# DataPlaneEnded (a node's watcher of its data-plane process -> its attach
# actor) is new and never crosses a link (LINK_CONTROL).
ACTOR_MAIL_SCHEMA = "81c23acdafea"


def test_the_mail_between_actors_changes_only_on_purpose() -> None:
    """An actor attached from another build decodes its mail strictly: a
    field added to a message it knows makes it drop that message (a new
    `rate` field of FlowPacing stalled a send whose cap was lifted). A new
    message type is dropped as unknown instead: prefer one. Either way,
    record the new schema here."""
    import importlib

    for module in ("actor", "local", "multicast", "network", "space", "stats", ""):
        importlib.import_module(f"peercrypt.wire.{module}_messages".replace("._", "."))
    # The wire's own modules only (a test may register messages of its own).
    wire = [t for t, cls in REGISTRY.items() if cls.__module__.startswith("peercrypt.wire.")]
    others = tuple(sorted(t for t in wire if t not in BETWEEN_NODES))
    assert _schema(others) == ACTOR_MAIL_SCHEMA, (
        f"the mail between actors changed ({_schema(others)}): an attached actor of the "
        "previous build refuses a changed message; add a message type rather than a field "
        "where you can, and record the new schema in ACTOR_MAIL_SCHEMA"
    )


def test_only_a_lenient_decode_takes_a_field_less_or_more_and_it_checks_what_is_there() -> None:
    """A command reading its node's replies (``lenient``) takes a message of
    the release before or after it: a missing field that has a default, an
    unknown one left out. Everything else, a peer's message above all,
    stays strict; and a lenient decode still checks every value present and
    refuses a missing field that has no default."""
    from peercrypt.wire.local_messages import Progress

    local = codec.LOCAL_VERSION
    fields = {"request": 3, "done_bytes": 5, "total_bytes": 9, "note": "", "done_files": 0,
              "total_files": 0, "phase": "sending"}  # fmt: skip
    older = msgpack.packb([local, "progress", fields])  # no `transfer`
    newer = msgpack.packb([local, "progress", {**fields, "transfer": 2, "later": "x"}])
    assert decode(older, version=local, lenient=True) == Progress(
        request=3, done_bytes=5, total_bytes=9, transfer=0
    )
    assert decode(newer, version=local, lenient=True) == Progress(
        request=3, done_bytes=5, total_bytes=9, transfer=2
    )
    for frame in (older, newer):
        with pytest.raises(DecodeError, match="fields"):
            decode(frame, version=local)
    required = {k: v for k, v in fields.items() if k != "done_bytes"}
    with pytest.raises(DecodeError, match=r"missing \['done_bytes'\]"):
        decode(msgpack.packb([local, "progress", required]), version=local, lenient=True)
    wrong = {**fields, "done_bytes": "five"}
    with pytest.raises(DecodeError, match="field-type"):
        decode(msgpack.packb([local, "progress", wrong]), version=local, lenient=True)


_ROW_TEXT = st.text(max_size=300)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from("abcdefgh"), _ROW_TEXT, max_size=8), max_size=1024))
@example([{"file": "q" * 200, "peer": "127.0.0.1:7400", "id": str(k)} for k in range(1000)])
@example([{"id": "é" * 150} for _ in range(500)])
def test_a_listing_s_rows_are_cut_to_what_one_message_holds(rows: list[dict[str, str]]) -> None:
    """`transfers` and `peers` rows: the longest first part that encodes
    within one message (a thousand rows of a few hundred bytes made the
    reply fail to encode, and the listing went unanswered)."""
    kept = codec.rows_within(rows)
    assert kept == rows[: len(kept)] and len(msgpack.packb(kept)) <= codec.ROWS_BUDGET
    reply = messages.TransfersReply(request=1, transfers=kept, actor="sender")
    assert len(encode(reply)) <= codec.MAX_MESSAGE_BYTES
    if len(kept) < len(rows):  # cut only where one more would not fit
        assert len(msgpack.packb(rows[: len(kept) + 1])) > codec.ROWS_BUDGET
