"""The UDP multicast datagram format and reassembly (peercrypt/core/fragments.py)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core import fragments
from peercrypt.core.fragments import FragmentError, Reassembler

SID = bytes(range(16))
KEY = fragments.header_key(b"k" * 32)
NONCE = b"n" * 12
CHUNK = 10_000
TAG = 16


def _sealed_len(total: int, size: int) -> Callable[[int], int]:
    def expected(index: int) -> int:
        return min(CHUNK, size - index * CHUNK) + TAG

    return expected


def _datagrams(
    index: int, last: bool, sealed: bytes, frag: int, nonce: bytes = NONCE
) -> list[bytes]:
    return [
        fragments.header(SID, index, last, nonce, len(sealed), offset, key=KEY) + sealed[offset:end]
        for offset, end in fragments.split(len(sealed), frag)
    ]


def _feed(asm: Reassembler, datagram: bytes) -> tuple[bytes, bytearray] | None:
    frag, payload = fragments.parse(datagram)
    return asm.add(frag, payload)


def test_header_round_trip() -> None:
    d = fragments.header(SID, 2**40, True, NONCE, 1234, 512, key=KEY) + b"abc"
    frag, payload = fragments.parse(d)
    assert (frag.sid, frag.index, frag.last, frag.nonce, frag.sealed_len, frag.offset) == (
        SID,
        2**40,
        True,
        NONCE,
        1234,
        512,
    )
    assert bytes(payload) == b"abc"
    assert fragments.authentic(frag, KEY)
    assert len(fragments.header(SID, 0, False, NONCE, 0, 0, key=KEY)) == fragments.HEADER_BYTES
    assert fragments.HEADER_BYTES == 65


def test_only_the_header_key_makes_an_authentic_header() -> None:
    """The tag covers every header field: an outsider (no content key) can
    neither make a header nor change one it saw."""
    d = bytearray(fragments.header(SID, 7, False, NONCE, 1234, 512, key=KEY))
    assert not fragments.authentic(fragments.parse(bytes(d))[0], fragments.header_key(b"x" * 32))
    for position in range(4, fragments.HEADER_BYTES):
        changed = bytearray(d)
        changed[position] ^= 1
        try:
            frag, _ = fragments.parse(bytes(changed))
        except FragmentError:
            continue  # e.g. flags
        assert not fragments.authentic(frag, KEY), position


@pytest.mark.parametrize(
    ("datagram", "kind"),
    [
        (b"", "short"),
        (b"PCm2" + b"\0" * 20, "short"),
        (b"XXXX" + b"\0" * 80, "magic"),
        (fragments.FIELDS.pack(b"PCm2", SID, 0, 2, NONCE, 16, 0) + b"t" * 16 + b"x" * 16, "flags"),
    ],
)
def test_parse_rejects(datagram: bytes, kind: str) -> None:
    with pytest.raises(FragmentError) as err:
        fragments.parse(datagram)
    assert err.value.kind == kind


def test_split_covers_the_sealed_chunk_exactly() -> None:
    assert list(fragments.split(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(fragments.split(8, 4)) == [(0, 4), (4, 8)]
    assert list(fragments.split(0, 4)) == [(0, 0)]
    assert fragments.fragment_count(10, 4) == 3 and fragments.fragment_count(0, 4) == 1


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(0, 5 * CHUNK),
    frag=st.integers(fragments.MIN_FRAGMENT, 4000),
    seed=st.integers(0, 2**32),
    duplicate=st.floats(0, 0.5),
)
def test_any_order_with_duplicates_reassembles_each_chunk_exactly_once(
    size: int, frag: int, seed: int, duplicate: float
) -> None:
    total = max(1, -(-size // CHUNK))
    expected = _sealed_len(total, size)
    rng = random.Random(seed)
    sealed = {i: rng.randbytes(expected(i)) for i in range(total)}
    datagrams = [d for i in range(total) for d in _datagrams(i, i == total - 1, sealed[i], frag)]
    datagrams += [d for d in datagrams if rng.random() < duplicate]
    rng.shuffle(datagrams)
    asm = Reassembler(total, expected, frag, max_pending=total)
    done: dict[int, bytes] = {}
    for d in datagrams:
        frag_, payload = fragments.parse(d)
        if frag_.index in done:
            continue  # the actor skips chunks it already has
        out = asm.add(frag_, payload)
        if out is not None:
            assert out[0] == NONCE
            done[frag_.index] = bytes(out[1])
    assert done == sealed
    assert asm.pending == {}


def test_pending_chunks_are_bounded_lowest_given_up() -> None:
    size = 10 * CHUNK
    total = 10
    expected = _sealed_len(total, size)
    asm = Reassembler(total, expected, 1000, max_pending=3)
    for index in range(6):  # the first fragment of six chunks
        sealed = os.urandom(expected(index))
        assert _feed(asm, _datagrams(index, False, sealed, 1000)[0]) is None
    assert sorted(asm.pending) == [3, 4, 5]
    assert asm.given_up == 3
    held = sum(len(p.buf) for p in asm.pending.values())
    assert held <= 3 * (CHUNK + TAG)


def test_a_new_nonce_starts_the_chunk_over() -> None:
    """A repair is sealed anew: fragments of two publications never mix."""
    total, size = 1, CHUNK
    expected = _sealed_len(total, size)
    asm = Reassembler(total, expected, 1000, max_pending=4)
    old = os.urandom(expected(0))
    new = os.urandom(expected(0))
    first_half = _datagrams(0, True, old, 1000)[:5]
    for d in first_half:
        assert _feed(asm, d) is None
    out = None
    for d in _datagrams(0, True, new, 1000, nonce=b"o" * 12):
        out = _feed(asm, d) or out
    assert out is not None and out[0] == b"o" * 12 and bytes(out[1]) == new
    assert asm.restarted == 1


def test_an_earlier_nonce_does_not_start_the_chunk_over() -> None:
    """A late or replayed copy of an earlier seal cannot undo what is pending."""
    total, size = 1, CHUNK
    expected = _sealed_len(total, size)
    asm = Reassembler(total, expected, 1000, max_pending=4)
    new = os.urandom(expected(0))
    current = _datagrams(0, True, new, 1000, nonce=b"o" * 12)
    for d in current[:5]:
        assert _feed(asm, d) is None
    for d in _datagrams(0, True, os.urandom(expected(0)), 1000, nonce=b"n" * 12):
        assert _feed(asm, d) is None
    assert asm.stale == 11 and asm.restarted == 0
    out = None
    for d in current[5:]:
        out = _feed(asm, d) or out
    assert out is not None and bytes(out[1]) == new


@pytest.mark.parametrize(
    ("index", "last", "sealed_len", "offset", "length", "kind"),
    [
        (5, False, CHUNK + TAG, 0, 1000, "index"),  # beyond the last chunk
        (0, True, CHUNK + TAG, 0, 1000, "last"),  # chunk 0 is not the last
        (1, False, CHUNK + TAG, 0, 1000, "last"),  # chunk 1 is
        (0, False, CHUNK + TAG + 1, 0, 1000, "length"),
        (0, False, CHUNK + TAG, 500, 1000, "offset"),  # not aligned
        (0, False, CHUNK + TAG, 20_000, 1000, "offset"),  # beyond the chunk
        (0, False, CHUNK + TAG, 0, 999, "fragment-length"),
        (0, False, CHUNK + TAG, 10_000, 15, "fragment-length"),  # the tail is 16
    ],
)
def test_fragments_that_cannot_belong_are_rejected(
    index: int, last: bool, sealed_len: int, offset: int, length: int, kind: str
) -> None:
    total, size = 2, 2 * CHUNK
    asm = Reassembler(total, _sealed_len(total, size), 1000, max_pending=4)
    d = fragments.header(SID, index, last, NONCE, sealed_len, offset, key=KEY) + b"x" * length
    with pytest.raises(FragmentError) as err:
        _feed(asm, d)
    assert err.value.kind == kind
    assert asm.pending == {}


def test_fragment_size_bounds() -> None:
    with pytest.raises(ValueError):
        Reassembler(1, lambda i: 16, fragments.MIN_FRAGMENT - 1, 4)
    with pytest.raises(ValueError):
        Reassembler(1, lambda i: 16, fragments.MAX_FRAGMENT + 1, 4)
    assert fragments.HEADER_BYTES + fragments.MAX_FRAGMENT == fragments.MAX_DATAGRAM


def test_an_empty_file_is_one_datagram() -> None:
    asm = Reassembler(1, lambda i: TAG, 1000, 4)
    sealed = os.urandom(TAG)
    (d,) = _datagrams(0, True, sealed, 1000)
    out = _feed(asm, d)
    assert out is not None and bytes(out[1]) == sealed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("239.255.80.67:7480", ("239.255.80.67", 7480)),
        (" 224.0.0.251:5353 ", ("224.0.0.251", 5353)),
    ],
)
def test_parse_group(text: str, expected: tuple[str, int]) -> None:
    assert fragments.parse_group(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("239.255.80.67", "GROUP:PORT"),
        ("239.255.80.67:0", "GROUP:PORT"),
        ("239.255.80.67:70000", "GROUP:PORT"),
        ("10.0.0.1:7480", "not a multicast address"),
        ("localhost:7480", "not an IPv4 address"),
        ("[ff02::1]:7480", "not an IPv4 address"),
    ],
)
def test_parse_group_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fragments.parse_group(text)
