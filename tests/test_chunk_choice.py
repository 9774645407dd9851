"""The chunk size a receiver chooses (core/receive_window.py,
``choose_chunk``) within what an offer allows, what the sender takes from
an accept (core/outgoing.py), which offers the receiver refuses
(actors/inbox.py, ``offered_chunks``) and which kept part an offer of a
range continues (core/resume.py). Pure: no node, no socket."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.inbox import Refusal, offered_chunks
from peercrypt.chunking import DEFAULT_MAX_CHUNK, DEFAULT_MIN_CHUNK, MAX_CHUNK, MIN_CHUNK, MiB
from peercrypt.core.modes import Policy
from peercrypt.core.outgoing import OutgoingTransfer, SendChunk
from peercrypt.core.receive_window import (
    CHUNKS_PER_SHARE,
    MIN_FILE_CHUNKS,
    choose_chunk,
    node_credit,
)
from peercrypt.core.resume import Manifest, ResumeKey, plan_resume
from peercrypt.crypto.identity import KeyPair, network_server_keys
from peercrypt.settings import NodeSettings

BUFFER = 32 * MiB  # the default receive buffer
WINDOW = 16

sizes = st.integers(MIN_CHUNK, MAX_CHUNK)


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int]:
    low = draw(sizes)
    return low, draw(st.integers(low, MAX_CHUNK))


@given(
    ranges(),
    st.integers(0, 2**40),
    st.integers(MIN_CHUNK, 256 * MiB),
    st.integers(1, 64),
)
def test_the_choice_is_offered_and_fits_the_share_and_the_file_whenever_one_does(
    offered: tuple[int, int], size: int, buffer: int, running: int
) -> None:
    """Within the offer, always; a share of the buffer holds CHUNKS_PER_SHARE
    of it and the file MIN_FILE_CHUNKS of it, unless not even the smallest
    offered fits (then the smallest); no larger offered size (halving from
    the top) would have fit."""
    low, high = offered
    chunk = choose_chunk(low, high, size, buffer, running)
    assert low <= chunk <= high
    candidates = {high >> k for k in range(64) if high >> k > low} | {low}
    assert chunk in candidates

    def fits(c: int) -> bool:
        return c * CHUNKS_PER_SHARE <= buffer // running and c * MIN_FILE_CHUNKS <= size

    if chunk != low:
        assert fits(chunk)  # (the guarding line)
    assert not any(fits(c) for c in candidates if c > chunk)


@given(ranges(), st.integers(MAX_CHUNK, 2**40), st.integers(1, 63))
def test_more_transfers_never_get_larger_chunks(
    offered: tuple[int, int], size: int, running: int
) -> None:
    low, high = offered
    assert choose_chunk(low, high, size, BUFFER, running + 1) <= choose_chunk(
        low, high, size, BUFFER, running
    )


@pytest.mark.parametrize(
    ("running", "chunk", "credit"),
    [
        (1, 4 * MiB, 8),
        (2, 4 * MiB, 4),
        (4, 4 * MiB, 2),
        (8, 2 * MiB, 2),
        (16, MiB, 2),
        (64, MiB, 1),
    ],
)
def test_the_default_range_by_load(running: int, chunk: int, credit: int) -> None:
    """With the default buffer (32 MiB) and window: 4 MiB chunks for up to
    4 transfers receiving, 2 MiB for 8, 1 MiB (the old default) for 16; the
    credit of each then holds 2 chunks or more of its share until the
    smallest offered is over it (64 transfers: one chunk, as with 1 MiB
    chunks before the choice). A transfer's credit in bytes is at most its
    share, up to that one chunk."""
    got = choose_chunk(DEFAULT_MIN_CHUNK, DEFAULT_MAX_CHUNK, 1 << 30, BUFFER, running)
    assert got == chunk
    share = BUFFER // running
    got_credit = node_credit(WINDOW, got, BUFFER, running, 0, current=WINDOW)
    assert got_credit == credit
    assert got_credit * got <= max(share, got)


def test_a_file_of_few_chunks_takes_the_smallest_offered() -> None:
    """Alone on the node: 4 MiB chunks from 512 MiB (128 of them) up, 2 MiB
    from 256 MiB, 1 MiB below (and for a file of one chunk or none)."""
    for size, chunk in ((1 << 40, 4 * MiB), (512 * MiB, 4 * MiB), (512 * MiB - 1, 2 * MiB)):
        assert choose_chunk(MiB, 4 * MiB, size, BUFFER, 1) == chunk
    assert choose_chunk(MiB, 4 * MiB, 256 * MiB, BUFFER, 1) == 2 * MiB
    for size in (256 * MiB - 1, 128 * MiB, 32 * MiB, 3 * MiB, 1000, 0):
        assert choose_chunk(MiB, 4 * MiB, size, BUFFER, 1) == MiB


def settings(max_chunk: int = MAX_CHUNK) -> NodeSettings:
    return NodeSettings(
        data_dir=Path("/nonexistent"),
        inbox=Path("/nonexistent/inbox"),
        identity=KeyPair.from_seed(bytes(32)),
        server_keys=network_server_keys(None),
        max_chunk=max_chunk,
    )


@pytest.mark.parametrize(
    ("chunk_size", "min_chunk", "expected"),
    [
        (4 * MiB, 0, (4 * MiB, 4 * MiB)),  # send --chunk-size: that size only
        (4 * MiB, MiB, (MiB, 4 * MiB)),
        (64 * MiB, MiB, (MiB, MAX_CHUNK)),  # over this node's --max-chunk: up to it
        (MIN_CHUNK, MIN_CHUNK, (MIN_CHUNK, MIN_CHUNK)),
    ],
)
def test_the_chunks_an_offer_allows(
    chunk_size: int, min_chunk: int, expected: tuple[int, int]
) -> None:
    assert offered_chunks(settings(), chunk_size, min_chunk) == expected


@pytest.mark.parametrize(
    ("chunk_size", "min_chunk"),
    [
        (4 * MiB, 1),  # below the smallest chunk a node takes
        (4 * MiB, MIN_CHUNK - 1),
        (MiB, 4 * MiB),  # the smallest above the largest: nothing to choose
        (64 * MiB, 32 * MiB),  # nothing within this node's --max-chunk
    ],
)
def test_an_absurd_range_is_refused(chunk_size: int, min_chunk: int) -> None:
    with pytest.raises(Refusal) as refused:
        offered_chunks(settings(), chunk_size, min_chunk)
    assert refused.value.code == "bad-offer"


def flow(size: int = 10 * MiB, min_chunk: int = MiB) -> OutgoingTransfer:
    return OutgoingTransfer(
        policy=Policy(), size=size, chunk_size=4 * MiB, min_chunk=min_chunk, timeout=30, now=0
    )


@pytest.mark.parametrize("chosen", [0, MiB, 2 * MiB, 3 * MiB + 4096, 4 * MiB])
def test_the_sender_cuts_the_chunks_the_receiver_chose(chosen: int) -> None:
    t = flow()
    assert t.allows_chunk(chosen)
    t.on_accept([], 64, 0.0, chosen)
    chunk = chosen or 4 * MiB
    assert (t.chunk_size, t.total) == (chunk, -(-10 * MiB // chunk))
    sent = [o for o in t.poll(0.0) if isinstance(o, SendChunk)]
    assert [o.index for o in sent] == list(range(t.total))
    assert [o.last for o in sent] == [False] * (t.total - 1) + [True]


@pytest.mark.parametrize(
    ("min_chunk", "chosen"),
    [
        (MiB, MiB - 1),  # below what was offered
        (MiB, 4 * MiB + 1),  # above it
        (MiB, 64 * MiB),
        (MiB, 1),
        (0, MiB),  # a fixed size: that one only
    ],
)
def test_a_chunk_size_not_offered_is_not_taken(min_chunk: int, chosen: int) -> None:
    t = flow(min_chunk=min_chunk)
    assert not t.allows_chunk(chosen)
    with pytest.raises(ValueError, match="not offered"):
        t.on_accept([], 4, 0.0, chosen)
    assert (t.chunk_size, t.window) == (4 * MiB, None)


def key(chunk: int, source: bytes = b"s" * 32) -> ResumeKey:
    return ResumeKey(b"a" * 32, "f.bin", 40 * MiB, chunk, source)


def kept(chunk: int, part: str, source: bytes = b"s" * 32) -> Manifest:
    k = key(chunk, source)
    return Manifest(k, b"t" * 16, part, bytes((k.total + 7) // 8), 1.0)


def test_an_offer_of_a_range_continues_a_part_in_any_size_of_it() -> None:
    """A part written in 1 MiB chunks (an older send, or one chosen under
    load) continues in them when the offer allows 1..4 MiB; one in chunks
    outside the range holding no whole chunk of the receiver's choice, or of
    another version, is obsolete (deleted, the file sent again from
    nothing); one holding some continues rechunked (core/resume.py)."""
    offer = key(4 * MiB)
    one, eight, small = kept(MiB, "a"), kept(8 * MiB, "b"), kept(64 * 1024, "c")
    other = kept(MiB, "d", source=b"x" * 32)
    plan = plan_resume(offer, [one, eight, small, other], low=MiB, chosen=2 * MiB)
    assert plan.reuse == one
    assert set(plan.obsolete) == {eight, small, other}  # (these hold nothing)
    fixed = plan_resume(offer, [one], low=0, chosen=4 * MiB)  # send --chunk-size 4194304
    assert (fixed.reuse, fixed.obsolete) == (None, (one,))
    full = written(8 * MiB, "f", 2)  # 16 MiB held: four whole 4 MiB chunks
    again = plan_resume(offer, [full], low=0, chosen=4 * MiB).reuse
    assert again is not None and again.key.chunk_size == 4 * MiB
    assert again.held().ranges() == [(0, 4)]
    assert plan_resume(key(4 * MiB), [kept(4 * MiB, "e")]).reuse is not None


def written(chunk: int, part: str, chunks: int) -> Manifest:
    """A kept part of the 40 MiB file in ``chunk``-byte chunks holding its
    first ``chunks``."""
    k = key(chunk)
    bits = bytearray((k.total + 7) // 8)
    for i in range(chunks):
        bits[i // 8] |= 1 << (i % 8)
    return Manifest(k, b"t" * 16, part, bytes(bits), 1.0)


def test_of_two_kept_parts_in_other_chunk_sizes_the_one_holding_more_bytes_continues() -> None:
    """Ten 1 MiB chunks are fewer bytes than eight of 4 MiB: counting chunks
    would continue the 10 MiB part and send 22 MiB again."""
    small, large = written(MiB, "a", 10), written(4 * MiB, "b", 8)
    assert (small.held_bytes(), large.held_bytes()) == (10 * MiB, 32 * MiB)
    for kept_parts in ([small, large], [large, small]):
        assert plan_resume(key(4 * MiB), kept_parts, low=MiB).reuse == large
