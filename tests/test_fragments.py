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
    """The tag covers every header field but the offset: an outsider (no
    content key) can neither make a header nor change one it saw, except
    to move a real fragment to another offset (which racing a copy with
    other bytes gives it anyway: the chunk fails its signature)."""
    d = bytearray(fragments.header(SID, 7, False, NONCE, 1234, 512, key=KEY))
    assert not fragments.authentic(fragments.parse(bytes(d))[0], fragments.header_key(b"x" * 32))
    offset = range(fragments.FIELDS.size, fragments.FIELDS.size + fragments.OFFSET.size)
    for position in range(4, fragments.HEADER_BYTES):
        changed = bytearray(d)
        changed[position] ^= 1
        try:
            frag, _ = fragments.parse(bytes(changed))
        except FragmentError:
            continue  # e.g. flags
        assert fragments.authentic(frag, KEY) == (position in offset), position


def test_the_header_check_hashes_once_per_chunk_and_never_trusts_a_change() -> None:
    """HeaderCheck remembers the last authentic header of a chunk: the other
    fragments of that seal pass without a hash; a changed field or tag, or
    another key's header, is checked anew and fails."""
    check = fragments.HeaderCheck(KEY)
    first, second = (
        fragments.parse(fragments.header(SID, 3, False, NONCE, 4000, offset, key=KEY))[0]
        for offset in (0, 1000)
    )
    assert check(first) and check.last == (first.fields, first.tag)
    check.key = b"\0" * 32  # a hash now would fail: the cached pair is what passes
    assert check(second)
    check.key = KEY
    for bad in (
        fragments.header(SID, 4, False, NONCE, 4000, 0, key=fragments.header_key(b"x" * 32)),
        fragments.header(SID, 3, False, NONCE, 4000, 0, key=KEY)[:-1] + b"?",
    ):
        assert not check(fragments.parse(bad)[0])
    assert check.last == (first.fields, first.tag)  # a failure is never remembered


def _intake(total: int, expected: Callable[[int], int], frag: int) -> fragments.Intake:
    return fragments.Intake(SID, KEY, Reassembler(total, expected, frag, max_pending=total))


def _feed_all(
    intake: fragments.Intake,
    buffers: list[tuple[bytes, int]],
    have: set[int],
    *,
    scatter: bool,
    land: bool = False,
) -> tuple[dict[int, bytes], list[str], int]:
    """Feed GRO buffers (bytes, segment size) to ``intake`` as the receiver
    does: scattered where they have the session's size (``scatter``; with
    ``land``, the first payloads straight into the chunk the reassembler
    guesses, as GroupReceiver reads), else linearly. The chunks completed,
    the kinds refused, the buffers scattered."""
    done: dict[int, bytes] = {}
    refused: list[str] = []
    scattered = 0
    reads = fragments.ReadBuffers(intake.reassembler.frag, 65536)
    for buf, step in buffers:
        if land:
            got = _read(reads, buf, step, intake.reassembler.landing(reads.slots))
        else:
            got = _scatter(buf, step, intake.reassembler.frag) if scatter else None
        if got is None:
            events = intake.feed(memoryview(buf), step, have)
        else:
            scattered += 1
            events = intake.feed_scattered(got, have)
        for event in events:
            if isinstance(event, FragmentError):
                refused.append(event.kind)
            else:
                assert event.nonce in (NONCE, b"o" * 12)
                assert event.last == (event.index == intake.reassembler.total - 1)
                done[event.index] = bytes(event.blob)
                have.add(event.index)
                intake.reassembler.recycle(event.blob)  # as the actor does: reused
    return done, refused, scattered


def _gro_buffers(
    datagrams: list[bytes], rng: random.Random, most: int = 0
) -> list[tuple[bytes, int]]:
    """Consecutive datagrams of equal size coalesced as GRO does (a shorter
    one ends a buffer; at most 64 KiB, and ``most`` datagrams if given),
    cut at random points too. Like the sender's GSO batches, a buffer of
    several starts with a full-size one (a chunk's short last datagram
    followed by the next chunk's first is never one batch)."""
    out: list[tuple[bytes, int]] = []
    run: list[bytes] = []
    whole = max(map(len, datagrams))

    def flush() -> None:
        if run:
            out.append((b"".join(run), len(run[0]) if len(run) > 1 else 0))
            run.clear()

    for d in datagrams:
        full = bool(run) and (
            len(d) > len(run[0])
            or len(run[0]) < whole
            or sum(map(len, run)) + len(d) > 65535
            or len(run) == most
        )
        if full or rng.random() < 0.1:
            flush()
        run.append(d)
        if len(d) < len(run[0]):
            flush()
    flush()
    return out


@pytest.mark.parametrize(
    ("scatter", "land"), [(False, False), (True, False), (True, True)],
    ids=["linear", "scattered", "landed"],
)  # fmt: skip
@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(0, 5 * CHUNK),
    frag=st.integers(fragments.MIN_FRAGMENT, 3000),
    seed=st.integers(0, 2**32),
)
def test_gro_buffers_of_any_cut_reassemble_every_chunk_exactly(
    scatter: bool, land: bool, size: int, frag: int, seed: int
) -> None:
    """The datagrams of a GSO batch come back (with GRO) as one buffer of
    equal segments, the last shorter; runs of consecutive datagrams, in any
    order and some repeated, give every chunk exactly, read linearly or
    scattered into headers and payloads as the receiver reads them (or
    with the first payloads read straight into the chunk guessed next, the
    guess right or wrong)."""
    total = max(1, -(-size // CHUNK))
    expected = _sealed_len(total, size)
    rng = random.Random(seed)
    sealed = {i: rng.randbytes(expected(i)) for i in range(total)}
    stream = [d for i in range(total) for d in _datagrams(i, i == total - 1, sealed[i], frag)]
    buffers = _gro_buffers(stream, rng)
    buffers += rng.sample(buffers, len(buffers) // 4)  # duplicates
    rng.shuffle(buffers)
    done, refused, scattered = _feed_all(
        _intake(total, expected, frag), buffers, set(), scatter=scatter, land=land
    )
    assert done == sealed and refused == []
    assert scattered == (len(buffers) if scatter else 0)  # all of the session's size


def _read_batch(
    buffers: fragments.BatchBuffers, messages: list[tuple[bytes, int]]
) -> list[fragments.Scattered | tuple[bytes, int]]:
    """What BatchReader.read gives for ``messages`` (each bytes and GRO
    segment size): the kernel fills each message's iovec in order."""
    for m, (buf, _) in enumerate(messages):
        pos = 0
        for piece in buffers.iovs[m]:
            part = buf[pos : pos + len(piece)]
            piece[: len(part)] = part
            pos += len(part)
        assert pos == len(buf)  # never truncated: a message holds 64 KiB
    return buffers.split([(len(buf), size) for buf, size in messages])


def _feed_batches(
    intake: fragments.Intake, calls: list[list[tuple[bytes, int]]], buffers: fragments.BatchBuffers
) -> tuple[dict[int, bytes], list[str], int]:
    """Feed each call's messages as the receiving thread does with
    ``recvmmsg``: the chunks completed, the kinds refused, and the number of
    scattered runs made of more than one message."""
    done: dict[int, bytes] = {}
    refused: list[str] = []
    joined = 0
    for messages in calls:
        for got in _read_batch(buffers, messages):
            if isinstance(got, fragments.Scattered):
                joined += got.count > buffers.batch
                events = intake.feed_scattered(got, set(done))
            else:
                events = intake.feed(memoryview(got[0]), got[1], set(done))
            for event in events:
                if isinstance(event, FragmentError):
                    refused.append(event.kind)
                else:
                    done[event.index] = bytes(event.blob)
                    intake.reassembler.recycle(event.blob)
    return done, refused, joined


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(0, 5 * CHUNK),
    frag=st.integers(fragments.MIN_FRAGMENT, 3000),
    batch=st.integers(1, 6),
    seed=st.integers(0, 2**32),
)
def test_receive_buffers_read_several_at_a_time_reassemble_every_chunk_exactly(
    size: int, frag: int, batch: int, seed: int
) -> None:
    """recvmmsg: receive buffers (GRO buffers of up to ``batch`` datagrams,
    some of one more: they spill into the message's spare bytes) read 1-8
    at a time into one BatchBuffers, in any order and some repeated, give
    every chunk exactly; consecutive full buffers are taken as one run."""
    total = max(1, -(-size // CHUNK))
    expected = _sealed_len(total, size)
    rng = random.Random(seed)
    sealed = {i: rng.randbytes(expected(i)) for i in range(total)}
    stream = [d for i in range(total) for d in _datagrams(i, i == total - 1, sealed[i], frag)]
    messages = _gro_buffers(stream, rng, most=batch + 1)
    messages += rng.sample(messages, len(messages) // 4)  # duplicates
    if rng.random() < 0.5:
        rng.shuffle(messages)
    calls = []
    while messages:
        n = rng.randint(1, 8)
        calls.append(messages[:n])
        messages = messages[n:]
    buffers = fragments.BatchBuffers(frag, batch, 8, frag + fragments.HEADER_BYTES)
    done, refused, _ = _feed_batches(_intake(total, expected, frag), calls, buffers)
    assert done == sealed and refused == []


def test_full_receive_buffers_of_one_read_are_one_run_and_a_forged_datagram_in_it_is_refused() -> (
    None
):
    """Three full GSO batches of a chunk read at once are one scattered run
    (their payloads back to back); a buffer of another datagram size
    between two batches ends the run and comes back as bytes. A datagram
    made under another key inside a run is refused (``tag``): the run's
    header comparison fails, so each datagram is checked on its own, the
    genuine ones are placed, and the chunk completes exactly once the
    genuine datagram comes."""
    frag, batch = 600, 3
    sealed = os.urandom(10 * frag + 50)
    good = _datagrams(0, True, sealed, frag)  # 11 datagrams, the last of 115 bytes
    step = len(good[0])
    gso = [(b"".join(good[k : k + batch]), step) for k in range(0, 9, batch)]
    buffers = fragments.BatchBuffers(frag, batch, 8, step)
    split = _read_batch(buffers, gso)
    assert len(split) == 1 and isinstance(split[0], fragments.Scattered)
    assert (split[0].count, split[0].last_len) == (9, step)
    assert bytes(split[0].payloads[: 9 * frag]) == sealed[: 9 * frag]
    foreign = (b"PCm3" + bytes(1000), 0)  # one datagram larger than the session's
    split = _read_batch(buffers, [gso[0], foreign, gso[1]])
    assert [type(s).__name__ for s in split] == ["Scattered", "tuple", "Scattered"]
    assert split[1] == foreign
    other = fragments.header_key(b"x" * 32)
    forged = fragments.header(SID, 0, True, NONCE, len(sealed), 4 * frag, key=other)
    forged += b"z" * frag
    middle = (good[3] + forged + good[5], step)
    intake = _intake(1, lambda i: len(sealed), frag)
    done, refused, joined = _feed_batches(
        intake, [[gso[0], middle, gso[2]], [(good[9] + good[10], step)]], buffers
    )
    assert refused == ["tag"] and done == {} and joined == 1
    assert intake.reassembler.pending[0].missing == {4}  # the genuine bytes around it placed
    done, refused, _ = _feed_batches(intake, [[(good[4], 0)]], buffers)
    assert done == {0: sealed} and refused == []


def test_a_hostile_or_truncated_segment_in_a_gro_buffer_is_refused_and_counted() -> None:
    """Each segment of a GRO buffer is checked: one with the chunk's fields
    but another key's tag, one cut short, one shorter than a header are
    refused by kind (nothing of theirs is placed); a segment of another
    session is skipped; the genuine segments around them still make the
    exact chunk."""
    frag = 600
    sealed = os.urandom(3000)
    good = _datagrams(0, True, sealed, frag)  # 5 datagrams of 665 bytes
    step = len(good[0])
    other_key = fragments.header_key(b"x" * 32)
    forged = fragments.header(SID, 0, True, NONCE, 3000, 600, key=other_key) + b"z" * frag
    other_session = fragments.header(b"s" * 16, 0, True, NONCE, 3000, 1200, key=KEY) + b"z" * frag
    intake = _intake(1, lambda i: 3000, frag)
    buffers = [
        (good[0] + forged + good[1], step),  # the forgery races the real fragment 1
        (good[2] + good[3][:-1], step),  # the last segment cut short
        (other_session, 0),
        (good[3][:40], 0),  # shorter than a header
        (good[3] + good[4], step),
    ]
    done, refused, _ = _feed_all(intake, buffers, set(), scatter=False)
    assert refused == ["tag", "fragment-length", "short"]
    assert done == {0: sealed}


def test_the_fast_path_takes_only_the_same_seal_at_the_next_offset() -> None:
    """After a datagram is parsed and checked in full, the following ones of
    its run are taken by comparing header bytes; a repeated offset, a later
    seal (a repair, new nonce) or a different chunk inside the run go back
    to the full checks."""
    frag = 600
    sealed = os.urandom(1800 - TAG)
    sealed = sealed + b"t" * TAG
    first = _datagrams(0, False, sealed, frag)
    resealed = _datagrams(0, False, sealed, frag, nonce=b"o" * 12)
    chunk1 = _datagrams(1, True, sealed, frag)
    step = len(first[0])
    intake = _intake(2, lambda i: 1800, frag)
    buffers = [(first[0] + first[0] + resealed[0] + resealed[1] + chunk1[0], step)]
    done, refused, _ = _feed_all(intake, buffers, set(), scatter=False)
    assert refused == [] and done == {}
    assert intake.reassembler.restarted == 1  # the new seal started chunk 0 over
    assert intake.reassembler.pending[0].missing == {2}
    assert intake.reassembler.pending[1].missing == {1, 2}
    more = [(resealed[2], 0), (chunk1[1] + chunk1[2], step)]
    done, _, _ = _feed_all(intake, more, set(), scatter=False)
    assert done == {0: sealed, 1: sealed}


@pytest.mark.parametrize(
    ("datagram", "kind"),
    [
        (b"", "short"),
        (b"PCm3" + b"\0" * 20, "short"),
        (b"PCm2" + b"\0" * 80, "magic"),  # the format before the offset left the tag
        (b"XXXX" + b"\0" * 80, "magic"),
        (fragments.FIELDS.pack(b"PCm3", SID, 0, 2, NONCE, 16) + bytes(4) + b"t" * 16, "flags"),
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
            asm.recycle(out[1])  # the next chunk is assembled over these bytes
    assert done == sealed
    assert asm.pending == {}


def test_a_reused_buffer_never_hands_out_its_old_bytes() -> None:
    """Buffers given back are reused (at most SPARE_BUFFERS kept), and a chunk
    assembled in one completes only with every fragment written over it: a
    fragment still missing keeps it pending, whatever the old bytes were."""
    total, frag = 6, 1000
    expected = _sealed_len(total, total * CHUNK)
    asm = Reassembler(total, expected, frag, max_pending=total)
    for _ in range(fragments.SPARE_BUFFERS + 3):
        asm.recycle(bytearray(b"\xaa" * expected(0)))
    assert len(asm.spare) == fragments.SPARE_BUFFERS
    stale = asm.spare[0]
    sealed = os.urandom(expected(0))
    datagrams = _datagrams(0, False, sealed, frag)
    for d in datagrams[:-1]:
        assert _feed(asm, d) is None  # one fragment still missing
    assert asm.pending[0].buf is stale  # assembled in a spare buffer, not a new one
    assert _feed(asm, datagrams[-1]) == (NONCE, bytearray(sealed))


@settings(max_examples=200, deadline=None)
@given(
    sealed_len=st.integers(0, 3 * 4000),
    frag=st.integers(fragments.MIN_FRAGMENT, 4000),
    parts=st.integers(1, 2),
    data=st.data(),
)
def test_payload_views_cut_the_blob_at_every_fragment(
    sealed_len: int, frag: int, parts: int, data: st.DataObject
) -> None:
    """What the sender puts in each datagram: the blob's bytes from each
    fragment offset in [start, stop), across the sealed chunk and the
    signature, the sealed part without a copy."""
    sealed, signature = os.urandom(sealed_len), os.urandom(64)
    blob: fragments.Blob = (sealed, signature) if parts == 2 else (sealed + signature,)
    whole = sealed + signature
    start = frag * data.draw(st.integers(0, (len(whole) - 1) // frag))
    stop = data.draw(st.integers(start + 1, len(whole)))
    views = fragments.payload_views(blob, frag, start, stop)
    assert [bytes(v) for v in views] == [whole[o : o + frag] for o in range(start, stop, frag)]
    head = blob[0]
    for o, v in zip(range(start, stop, frag), views, strict=True):
        if o + frag <= len(head) or (parts == 1 and o < len(head)):
            assert isinstance(v, memoryview) and v.obj is head  # a view: no copy


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


def _scatter(buf: bytes, step: int, frag: int) -> fragments.Scattered | None:
    """What GroupReceiver.read gives for ``buf``: each datagram's header and
    payload scattered into two buffers, the way the kernel fills its iovec;
    None when the datagrams are not of the session's size (read linearly)."""
    head, whole, n = fragments.HEADER_BYTES, frag + fragments.HEADER_BYTES, len(buf)
    if not (step == whole or (step == 0 and n <= whole)):
        return None
    count = max(1, -(-n // whole))
    heads, payloads = bytearray(count * head), bytearray(count * frag)
    pos = 0
    for k in range(count):
        part = buf[pos : pos + head]
        heads[k * head : k * head + len(part)] = part
        pos += len(part)
        part = buf[pos : pos + frag]
        payloads[k * frag : k * frag + len(part)] = part
        pos += len(part)
    last = n - (count - 1) * whole
    return fragments.Scattered(memoryview(heads), memoryview(payloads), frag, count, last)


def test_a_scattered_run_is_taken_whole_only_when_every_header_is_the_senders() -> None:
    """A run is placed with one copy only if all its headers are exactly the
    next ones of the seal and none of its fragments is held: a forged or cut
    segment in it, or a held fragment, sends the run through the checks one
    by one (refused by kind; the first copy of a fragment wins)."""
    frag = 600
    sealed = os.urandom(6000)  # 10 fragments
    good = _datagrams(0, True, sealed, frag)
    step = len(good[0])
    forged = bytearray(good[3])
    forged[-1] ^= 1  # the sender's header, other bytes: not refused, but not taken over good[3]
    other_key = fragments.header_key(b"x" * 32)
    foreign = fragments.header(SID, 0, True, NONCE, 6000, 1800, key=other_key) + b"z" * frag
    intake = _intake(1, lambda i: 6000, frag)
    buffers = [
        (good[0] + good[1] + foreign + good[2], step),  # a wrong tag mid-run
        (good[3], 0),
        (good[2] + bytes(forged) + good[4] + good[5][:-1], step),  # held, then cut short
        (good[5] + good[6] + good[7] + good[8] + good[9], step),
    ]
    done, refused, scattered = _feed_all(intake, buffers, set(), scatter=True)
    assert scattered == 4
    assert refused == ["tag", "fragment-length"]
    assert done == {0: sealed}  # good[3] came first; the forged copy changed nothing


@pytest.mark.parametrize("wrong", ["tag", "offset"])
def test_a_scattered_run_checks_the_tag_and_offset_of_every_datagram(wrong: str) -> None:
    """Mid-run, with every other header right, a datagram with another key's
    tag (bytes of its own) or the sender's datagram of another offset: the
    run is not taken whole, the first is refused as ``tag``, the second
    placed at its own offset; the chunk is exact either way."""
    frag = 600
    sealed = os.urandom(6000)  # 10 fragments
    good = _datagrams(0, True, sealed, frag)
    step = len(good[0])
    if wrong == "tag":
        other = fragments.header(
            SID, 0, True, NONCE, 6000, 1200, key=fragments.header_key(b"x" * 32)
        )
        odd, refusals = other + b"z" * frag, ["tag"]
    else:
        odd, refusals = good[5], []  # offset 3000 where 1200 comes next
    intake = _intake(1, lambda i: 6000, frag)
    buffers = [(good[0] + good[1] + odd + good[3], step), (b"".join(good[2:]), step)]
    done, refused, _ = _feed_all(intake, buffers, set(), scatter=True)
    assert refused == refusals
    assert done == {0: sealed}


def _read(
    reads: fragments.ReadBuffers, buf: bytes, step: int, landing: fragments.Landing | None
) -> fragments.Scattered | None:
    """What GroupReceiver.read does with ``buf``: the kernel fills the
    iovec (``reads.iov_for(landing)``: the first payload slots maybe in a
    chunk's buffer) in order; scattered when the datagrams have the
    session's size, else None (read linearly: the bytes as they came)."""
    iov = reads.iov_for(landing)
    pos = 0
    for piece in iov:
        part = buf[pos : pos + len(piece)]
        piece[: len(part)] = part
        pos += len(part)
    assert pos == len(buf)  # never truncated: the iovec holds 64 KiB
    n, whole = len(buf), reads.datagram
    if not (step == whole or (step == 0 and n <= whole)):
        assert b"".join(iov)[:n] == buf  # what read() returns then
        return None
    return reads.scattered(n, landing)


def test_a_chunks_gso_batches_in_order_land_in_its_buffer_without_a_copy() -> None:
    """After a chunk's first batch, each following one is read straight
    into the chunk's buffer and taken as it lies (the headers checked at
    once); the short last fragment goes the usual way; the chunk is exact."""
    frag, sealed = 600, os.urandom(600 * 25 + 123)  # 26 fragments, the last short
    good = _datagrams(0, True, sealed, frag)
    step = len(good[0])
    intake = _intake(1, lambda i: len(sealed), frag)
    asm = intake.reassembler
    batches = [(b"".join(good[k : k + 8]), step) for k in range(0, 26, 8)]  # 8, 8, 8, 2
    reads = fragments.ReadBuffers(frag, 8 * step)
    done: list[bytes] = []
    guesses: list[tuple[int, int] | None] = []
    for buf, step in batches:
        landing = asm.landing(reads.slots)
        guesses.append(None if landing is None else (landing.number, landing.count))
        got = _read(reads, buf, step, landing)
        assert got is not None
        for event in intake.feed_scattered(got, set()):
            assert not isinstance(event, FragmentError)
            done.append(bytes(event.blob))
    assert guesses == [None, (8, 8), (16, 8), (24, 1)]  # never the short last fragment
    assert done == [sealed]
    assert asm.landed == 17  # of 26: all but the first batch and the short last one


def test_a_wrong_guess_moves_the_read_out_and_leaves_the_chunk_missing_there() -> None:
    """The read after chunk 0's first datagrams is another seal of chunk 0
    (a repair), chunk 1, or a forgery under another key: the bytes that
    went into chunk 0's buffer are not taken there; they are moved out and
    checked one by one (placed where they belong, or refused), and chunk 0
    ends exact once its own fragments come."""
    frag = 600
    sealed = [os.urandom(3000), os.urandom(3000)]  # 5 fragments each
    first = [_datagrams(i, i == 1, sealed[i], frag) for i in range(2)]
    resealed = _datagrams(0, False, sealed[0], frag, nonce=b"o" * 12)
    other = fragments.header_key(b"x" * 32)
    forged = [
        fragments.header(SID, 0, False, NONCE, 3000, o, key=other) + b"z" * frag
        for o in (1200, 1800)
    ]
    step = len(first[0][0])
    for wrong, refusals in (
        (first[1][0] + first[1][1], []),  # chunk 1, placed in its own buffer
        (forged[0] + forged[1], ["tag", "tag"]),  # refused, nothing of theirs placed
    ):
        intake = _intake(2, lambda i: 3000, frag)
        batches = [(first[0][0] + first[0][1], step), (wrong, step)]
        batches += [(b"".join(first[0][2:]), step), (b"".join(first[1]), step)]
        done, refused, _ = _feed_all(intake, batches, set(), scatter=True, land=True)
        assert refused == refusals
        assert done == {0: sealed[0], 1: sealed[1]}
    intake = _intake(2, lambda i: 3000, frag)
    batches = [(first[0][0] + first[0][1], step), (resealed[2] + resealed[3], step)]
    done, refused, _ = _feed_all(intake, batches, set(), scatter=True, land=True)
    assert refused == [] and done == {}
    assert intake.reassembler.pending[0].nonce == b"o" * 12  # started over for the new seal
    assert intake.reassembler.pending[0].missing == {0, 1, 4}
    assert intake.reassembler.landed == 0


def test_no_guess_writes_over_a_fragment_already_held() -> None:
    """The first copy of a fragment wins: with a fragment ahead already held
    no read lands there (another copy with other bytes, as a co-receiver
    may send, changes nothing), and a read whose last datagram is cut short
    is not taken whole (the cut one is refused)."""
    frag = 600
    sealed = os.urandom(6000)  # 10 fragments
    good = _datagrams(0, True, sealed, frag)
    step = len(good[0])
    other = bytearray(good[3])
    other[-1] ^= 1  # the sender's header, other bytes
    intake = _intake(1, lambda i: 6000, frag)
    asm = intake.reassembler
    batches = [(good[3], 0), (good[0] + good[1] + good[2], step)]
    done, _, _ = _feed_all(intake, batches, set(), scatter=True, land=True)
    assert asm.landing(8) is None  # fragment 3, next, is held
    more = [(bytes(other) + good[4], step), (good[5] + good[6] + good[7][:-1], step)]
    done, refused, _ = _feed_all(intake, more, set(), scatter=True, land=True)
    assert refused == ["fragment-length"] and asm.pending[0].missing == {7, 8, 9}
    done, _, _ = _feed_all(intake, [(b"".join(good[7:]), step)], set(), scatter=True, land=True)
    assert done == {0: sealed}


def test_a_run_reaching_past_the_chunk_s_last_fragment_is_never_missing() -> None:
    """A chunk's held fragments are bytes: a run is missing only if every
    one of its fragments is the chunk's and none is held (as a set of the
    missing numbers said), so no run past the end is taken and counted."""
    frag = 600
    sealed = os.urandom(6000)  # 10 fragments
    good = _datagrams(0, True, sealed, frag)
    asm = Reassembler(1, lambda i: 6000, frag, max_pending=1)
    assert _feed(asm, good[0]) is None
    p = asm.pending[0]
    assert p.lacks(range(1, 10)) and p.lacks(range(5, 5))
    assert not p.lacks(range(0, 2))  # fragment 0 is held
    assert not p.lacks(range(5, 11)) and not p.lacks(range(9, 12))  # past the last
    for d in good[1:4]:
        assert _feed(asm, d) is None
    assert p.missing == set(range(4, 10)) and p.left == 6
    assert not p.lacks(range(3, 5)) and p.lacks(range(4, 10))
    assert _feed(asm, b"".join(good[4:5])) is None and p.left == 5
    done = None
    for d in good[5:]:
        done = _feed(asm, d)
    assert done is not None and bytes(done[1]) == sealed and 0 not in asm.pending


# -- the record of the fragments held, against a model (a set of numbers) ---------


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(1, 40),
    runs=st.lists(st.tuples(st.integers(-5, 50), st.integers(-5, 50)), max_size=60),
)
def test_the_held_record_is_a_set_of_held_numbers_whatever_the_runs(
    count: int, runs: list[tuple[int, int]]
) -> None:
    """A chunk's held fragments (one byte each and a count) against a set
    of the numbers held, for runs of any bounds (negative, empty, reversed,
    past the chunk's last fragment), each taken when the record says it is
    all missing, as the reassembler's callers do: a run is missing only if
    it is within the chunk and none of it is held, and the record never
    grows, never counts a fragment twice and is complete only when every
    fragment is held."""
    p = fragments._Pending(NONCE, bytearray(count * 600), bytearray(count), count)
    held: set[int] = set()
    for start, stop in runs:
        numbers = range(start, stop)
        within = start >= 0 and stop <= count
        if numbers:
            assert p.lacks(numbers) == (within and held.isdisjoint(numbers)), (start, stop)
        if p.lacks(numbers):
            p.take(numbers)
            held.update(numbers)
        assert len(p.held) == count
        assert p.left == count - len(held) >= 0
        assert p.missing == set(range(count)) - held


_FORGED = st.sampled_from(["genuine", "forged", "cut", "long"])


@pytest.mark.parametrize(("scatter", "land"), [(False, False), (True, False), (True, True)])
@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 12),
    tail=st.integers(1, 600),
    reads=st.lists(
        st.tuples(st.integers(-1, 14), st.lists(_FORGED, min_size=1, max_size=6)), max_size=40
    ),
    resealed=st.integers(0, 60),
)
def test_the_first_copy_of_each_fragment_wins_and_a_chunk_completes_only_when_all_held(
    scatter: bool,
    land: bool,
    count: int,
    tail: int,
    reads: list[tuple[int, list[str]]],
    resealed: int,
) -> None:
    """A co-receiver (it can make headers) sends runs of a chunk's
    fragments from any number on (some past its last), each datagram the
    sender's bytes, other bytes under the same header, cut short or one
    byte long; from datagram ``resealed`` on, of a later seal (which starts
    the chunk over). Read linearly, scattered or landed, the chunk
    completes exactly when the model (the numbers held, the first copy of
    each) says so, with the first copies' bytes, and is never given twice."""
    frag = 600
    size = (count - 1) * frag + tail
    seals = {NONCE: os.urandom(size), b"o" * 12: os.urandom(size)}
    whole = {n: _datagrams(0, True, s, frag, n) for n, s in seals.items()}
    model: dict[int, bytes] = {}  # number -> the first copy's bytes, for the pending seal
    nonce: bytes | None = None
    completed: bytes | None = None
    buffers: list[tuple[bytes, int]] = []
    sent = 0
    for first, kinds in reads:
        run: list[bytes] = []
        for number, kind in enumerate(kinds, first):
            seal = b"o" * 12 if sent >= resealed else NONCE
            sent += 1
            offset = number * frag
            if not 0 <= number < count:  # past the last: the header says so, refused
                head = fragments.header(SID, 0, True, seal, size, max(offset, size), key=KEY)
                run.append(head + bytes(frag))
                continue
            d = bytearray(whole[seal][number])
            if kind == "forged":
                d[fragments.HEADER_BYTES :] = bytes(b ^ 0xFF for b in d[fragments.HEADER_BYTES :])
            elif kind == "cut":
                d = d[:-1]
            elif kind == "long":
                d += b"x"
            run.append(bytes(d))
            if completed is not None or kind in ("cut", "long"):
                continue  # held already (skipped) or refused
            if nonce is not None and seal < nonce:
                continue  # a copy of an earlier seal: stale
            if seal != nonce:
                model, nonce = {}, seal  # (started) over
            model.setdefault(number, bytes(d[fragments.HEADER_BYTES :]))
            if len(model) == count:
                completed = b"".join(model[k] for k in range(count))
        # As GRO coalesces them: equal sizes, a shorter one ends a buffer.
        group: list[bytes] = []
        for d in run:
            if group and (len(d) > len(group[0]) or len(group[-1]) < len(group[0])):
                buffers.append((b"".join(group), len(group[0]) if len(group) > 1 else 0))
                group = []
            group.append(d)
        if group:
            buffers.append((b"".join(group), len(group[0]) if len(group) > 1 else 0))
    intake = _intake(1, lambda i: size, frag)
    done, _, _ = _feed_all(intake, buffers, set(), scatter=scatter, land=land)
    if completed is None:
        assert done == {}
        p = intake.reassembler.pending.get(0)
        assert (set() if p is None else set(range(count)) - p.missing) == set(model)
        if p is not None:
            assert p.left == count - len(model)
            for number, payload in model.items():
                assert bytes(p.buf[number * frag : number * frag + len(payload)]) == payload
    else:
        assert done == {0: completed}


def test_chunks_started_over_or_given_up_cost_no_new_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A co-receiver (it can make authentic headers) sends one datagram for
    each new seal of a chunk, and one for each of many chunks: the buffers
    of the chunks started over or given up are assembled in again, so once
    the pending ones and the spares exist no chunk's buffer is allocated
    (each was, a chunk's zeroing per datagram); what completes is still
    exactly the sender's chunk."""
    total = 64
    size = total * CHUNK
    expected = _sealed_len(total, size)
    asm = Reassembler(total, expected, 1000, max_pending=4)
    made: list[int] = []

    def counted(*args: object) -> bytearray:
        out = bytearray(*args)  # type: ignore[call-overload]
        if len(out) >= CHUNK:
            made.append(len(out))
        return out

    monkeypatch.setattr(fragments, "bytearray", counted, raising=False)
    junk = os.urandom(expected(0))
    for n in range(200):  # new seals of chunk 62, and a fragment of each of chunks 0..59
        nonce = n.to_bytes(12, "big")
        assert _feed(asm, _datagrams(62, False, junk, 1000, nonce=nonce)[0]) is None
        assert _feed(asm, _datagrams(n % 60, False, junk, 1000)[n % 10]) is None
    assert asm.restarted == 199 and asm.given_up > 100
    assert len(made) <= asm.max_pending + fragments.SPARE_BUFFERS, len(made)
    real = os.urandom(expected(5))
    out = None
    for d in _datagrams(5, False, real, 1000, nonce=b"\xff" * 12):
        out = _feed(asm, d) or out
    assert out is not None and bytes(out[1]) == real
