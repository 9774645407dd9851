"""The pure resume model: source tags, manifests, which part an offer
continues, which leftovers a sweep reclaims."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.bitmap import MAX_RANGES, ChunkBitmap
from peercrypt.core.resume import (
    MAX_RECHUNK_RUNS,
    SAMPLE_BYTES,
    KeptPart,
    Manifest,
    ManifestError,
    ResumeKey,
    accept_ranges,
    expired,
    plan_resume,
    rechunked,
    sample_offsets,
    source_tag,
)

ALICE, MALLORY = b"a" * 32, b"m" * 32


def key(
    peer: bytes = ALICE,
    name: str = "f.bin",
    size: int = 10_000,
    chunk: int = 1000,
    source: bytes = b"s" * 32,
) -> ResumeKey:
    return ResumeKey(peer, name, size, chunk, source)


def manifest(k: ResumeKey, part: str, held: list[int], updated: float = 0.0) -> Manifest:
    bitmap = ChunkBitmap(k.total)
    for i in held:
        bitmap.add(i)
    return Manifest(k, b"t" * 16, part, bitmap.to_bytes(), updated)


def test_sample_offsets_cover_start_middle_end() -> None:
    assert sample_offsets(0) == []
    assert sample_offsets(10) == [0]
    size = 10 * SAMPLE_BYTES + 5
    offsets = sample_offsets(size)
    assert offsets[0] == 0 and offsets[-1] == size - SAMPLE_BYTES and len(offsets) == 3


def test_source_tag_changes_with_every_input() -> None:
    base = (100, 1_700_000_000_000_000_000, 42, 7, [b"head", b"mid", b"tail"])
    tag = source_tag(*base)
    assert len(tag) == 32 and tag == source_tag(*base)
    variants = [
        (101, *base[1:]),
        (base[0], base[1] + 1, *base[2:]),
        (*base[:2], 43, *base[3:]),
        (*base[:3], 8, base[4]),
        (*base[:4], [b"head", b"MID", b"tail"]),
        (*base[:4], [b"head", b"midtail"]),  # the same bytes split otherwise
    ]
    tags = {source_tag(*v) for v in variants}
    assert tag not in tags and len(tags) == len(variants)


@given(
    size=st.integers(0, 2**40),
    chunk=st.integers(1, 2**24),
    held=st.sets(st.integers(0, 200), max_size=50),
    updated=st.floats(0, 2e9),
)
def test_manifest_round_trip(size: int, chunk: int, held: set[int], updated: float) -> None:
    k = key(size=min(size, chunk * 200), chunk=chunk)
    m = manifest(k, ".f.bin.abc.part", [i for i in held if i < k.total], updated)
    assert Manifest.decode(m.encode()) == m


def test_held_bytes_counts_the_short_last_chunk() -> None:
    k = key(size=2500, chunk=1000)  # chunks of 1000, 1000, 500
    assert manifest(k, "p", [0]).held_bytes() == 1000
    assert manifest(k, "p", [0, 2]).held_bytes() == 1500
    assert manifest(k, "p", [0, 1, 2]).held_bytes() == 2500


@given(st.binary(max_size=300))
def test_manifest_decode_raises_only_manifest_error(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        Manifest.decode(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", 1),
        ("peer", b"short"),
        ("source", b""),
        ("tid", b"x"),
        ("chunk_size", 0),
        ("size", -1),
        ("name", "a/b"),
        ("part", "../escape"),
        ("part", ".."),
        ("written", b"\x00" * 100),
        ("updated", "yesterday"),
        ("size", True),
    ],
)
def test_manifest_decode_refuses_inconsistent_fields(field: str, value: object) -> None:
    record = msgpack.unpackb(manifest(key(), "p", [1]).encode(), raw=False)
    record[field] = value
    with pytest.raises(ManifestError):
        Manifest.decode(msgpack.packb(record, use_bin_type=True))
    record.pop(field)
    with pytest.raises(ManifestError):
        Manifest.decode(msgpack.packb(record, use_bin_type=True))


def test_plan_reuses_the_fullest_matching_part_and_drops_older_versions() -> None:
    k = key()
    kept = [
        manifest(k, "few", [0]),
        manifest(k, "most", [0, 1, 2]),
        manifest(dataclasses.replace(k, source=b"o" * 32), "old-version", [0, 1, 2, 3]),
        manifest(dataclasses.replace(k, size=9_000), "other-size", [0]),
        manifest(dataclasses.replace(k, chunk_size=500), "other-chunks", [0]),
        manifest(dataclasses.replace(k, peer=MALLORY), "mallory", [0, 1, 2, 3, 4]),
        manifest(dataclasses.replace(k, name="g.bin"), "other-name", [0, 1, 2, 3, 4]),
    ]
    plan = plan_resume(k, kept)
    assert plan.reuse is not None and plan.reuse.part == "most"
    assert {m.part for m in plan.obsolete} == {"old-version", "other-size", "other-chunks"}


def test_plan_never_touches_parts_in_use() -> None:
    k = key()
    kept = [manifest(k, "running", [0, 1]), manifest(dataclasses.replace(k, size=5), "older", [])]
    plan = plan_resume(k, kept, in_use=["running", "older"])
    assert plan.reuse is None and plan.obsolete == ()


def test_plan_for_another_identity_finds_nothing() -> None:
    """A member posing with another key cannot continue (or delete) alice's part."""
    k = key()
    plan = plan_resume(dataclasses.replace(k, peer=MALLORY), [manifest(k, "alice", [0, 1])])
    assert plan.reuse is None and plan.obsolete == ()


@given(
    keys=st.lists(
        st.tuples(
            st.sampled_from([ALICE, MALLORY]),
            st.sampled_from(["a", "b"]),
            st.sampled_from([1000, 2000]),
            st.sampled_from([b"s" * 32, b"t" * 32]),
        ),
        max_size=12,
    ),
    offer=st.tuples(
        st.sampled_from([ALICE, MALLORY]),
        st.sampled_from(["a", "b"]),
        st.sampled_from([1000, 2000]),
        st.sampled_from([b"s" * 32, b"t" * 32]),
    ),
)
def test_plan_laws(
    keys: list[tuple[bytes, str, int, bytes]], offer: tuple[bytes, str, int, bytes]
) -> None:
    kept = [
        manifest(ResumeKey(p, n, s, 100, src), f"p{i}", [0])
        for i, (p, n, s, src) in enumerate(keys)
    ]
    k = ResumeKey(offer[0], offer[1], offer[2], 100, offer[3])
    plan = plan_resume(k, kept)
    if plan.reuse is not None:
        assert plan.reuse.key == k
    else:
        assert all(m.key != k for m in kept)
    for m in plan.obsolete:
        assert m.key.peer == k.peer and m.key.name == k.name and m.key != k


def test_accept_ranges_are_bounded() -> None:
    held = ChunkBitmap(1000)
    for i in range(0, 1000, 2):
        held.add(i)
    ranges = accept_ranges(held)
    assert len(ranges) == MAX_RANGES and ranges[0] == (0, 1)
    assert all(b - a == 1 and a % 2 == 0 for a, b in ranges)


def test_expired_spares_running_and_recent_parts() -> None:
    kept = [
        KeptPart("old", "old.manifest", True, updated=0.0),
        KeptPart("recent", "recent.manifest", True, updated=950.0),
        KeptPart("running", "running.manifest", True, updated=0.0),
        KeptPart("orphan", None, True, updated=100.0),
        KeptPart("lost-part", "lost-part.manifest", False, updated=800.0),
    ]
    gone = expired(kept, now=1000.0, expiry=200.0, in_use=["running"])
    assert [k.part for k in gone] == ["old", "orphan", "lost-part"]


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 5000),
    old=st.integers(1, 700),
    new=st.integers(1, 700),
    data=st.data(),
)
def test_rechunked_holds_exactly_the_new_chunks_whose_bytes_were_held(
    size: int, old: int, new: int, data: st.DataObject
) -> None:
    """A new chunk is held iff every byte of it lies in an old chunk held:
    never a byte the part does not hold (it would be skipped, then fail the
    final hash), and nothing held thrown away but the edges of a run."""
    k = ResumeKey(ALICE, "f.bin", size, old, b"s" * 32)
    held = ChunkBitmap(k.total)
    for index in data.draw(st.sets(st.integers(0, max(0, k.total - 1)))) if k.total else ():
        held.add(index)
    again = rechunked(Manifest(k, b"t" * 16, "p", held.to_bytes(), 1.0), new)
    assert again.key == dataclasses.replace(k, chunk_size=new)
    assert (again.part, again.tid, again.updated) == ("p", b"t" * 16, 1.0)
    got = again.held()
    for j in range(again.key.total):
        first, end = j * new, min((j + 1) * new, size)
        covered = all(i in held for i in range(first // old, -(-end // old)))
        assert (j in got) == covered, (j, first, end)


def test_rechunking_walks_a_bounded_number_of_runs() -> None:
    """Every other chunk held (a run each): only the lowest
    MAX_RECHUNK_RUNS runs are converted; the rest is sent again. Unbounded,
    a member offering one file in turn in two chunk sizes made the
    receiver's thread walk millions of runs each time."""
    total = 4 * MAX_RECHUNK_RUNS
    k = ResumeKey(ALICE, "f.bin", total * 4096, 4096, b"s" * 32)
    held = ChunkBitmap(total)
    for index in range(0, total, 2):
        held.add(index)
    again = rechunked(Manifest(k, b"t" * 16, "p", held.to_bytes(), 1.0), 2048)
    assert again.held().count == 2 * MAX_RECHUNK_RUNS  # two halves of each of the first runs
    assert again.held().ranges()[-1] == (4 * MAX_RECHUNK_RUNS - 4, 4 * MAX_RECHUNK_RUNS - 2)


def test_a_part_in_chunks_the_offer_does_not_allow_continues_rechunked() -> None:
    """A paced send's part in 100 KiB chunks, sent again unpaced (the offer
    allows 1..4 MiB, the receiver chose 2 MiB): its held bytes continue as
    whole 2 MiB chunks; one holding no whole chunk of them is obsolete."""
    k = ResumeKey(ALICE, "f.bin", 10_000_000, 100_000, b"s" * 32)
    prefix = ChunkBitmap(k.total)
    prefix.add_range(0, 45)  # 4.5 MB: two whole 2 MiB chunks
    part = Manifest(k, b"t" * 16, "paced", prefix.to_bytes(), 1.0)
    offer = dataclasses.replace(k, chunk_size=4 * 1024 * 1024)
    plan = plan_resume(offer, [part], low=1024 * 1024, chosen=2 * 1024 * 1024)
    assert plan.obsolete == () and plan.reuse is not None
    assert plan.reuse.key.chunk_size == 2 * 1024 * 1024
    assert plan.reuse.held().ranges() == [(0, 2)]
    few = ChunkBitmap(k.total)
    few.add_range(0, 20)  # 2.0 MB: not one whole 2 MiB chunk
    scant = Manifest(k, b"t" * 16, "scant", few.to_bytes(), 1.0)
    plan = plan_resume(offer, [scant], low=1024 * 1024, chosen=2 * 1024 * 1024)
    assert (plan.reuse, plan.obsolete) == (None, (scant,))
    # Without the receiver's choice (as before): obsolete.
    assert plan_resume(offer, [part], low=1024 * 1024).obsolete == (part,)
    # Another version is never continued, whatever its chunks.
    other = Manifest(
        dataclasses.replace(k, source=b"o" * 32), b"t" * 16, "o", prefix.to_bytes(), 1.0
    )
    plan = plan_resume(offer, [other], low=1024 * 1024, chosen=2 * 1024 * 1024)
    assert (plan.reuse, plan.obsolete) == (None, (other,))
