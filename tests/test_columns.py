"""Batched local messages (peercrypt/wire/columns.py): one ``StatsSamples``
per tick carries every running transfer's ``StatsSample``, one
``Progresses`` every send's ``Progress``; split where a bound would be
crossed, and unpacked back to exactly the items sent (a hostile or broken
batch loses only its bad items)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peercrypt.wire import codec, columns
from peercrypt.wire.columns import MAX_BATCH
from peercrypt.wire.local_messages import Progress, Progresses
from peercrypt.wire.stats_messages import StatsSample, StatsSamples, batches, unpack


def sample(i: int, peer: str = "") -> StatsSample:
    return StatsSample(
        session=f"{i:032x}",
        side="send" if i % 2 else "receive",
        peer=peer or f"127.0.0.1:{1000 + i}",
        t=i / 10,
        done_bytes=i * 65536,
        window=i,
        rate=float(i * 1000),
        rtt=0.001 * i,
        credit=i % 64,
    )


def through_the_wire(samples: list[StatsSample]) -> list[StatsSamples]:
    sent = list(batches(samples))
    return [codec.decode_as(codec.encode(b), StatsSamples) for b in sent]


def test_one_message_carries_every_sample_of_a_tick() -> None:
    samples = [sample(i) for i in range(64)]
    (batch,) = through_the_wire(samples)
    assert unpack(batch) == (samples, 0)


def test_no_samples_no_message() -> None:
    assert list(batches([])) == []


def test_more_than_the_bound_is_split_in_order() -> None:
    samples = [sample(i) for i in range(2 * MAX_BATCH + 88)]
    received = through_the_wire(samples)
    assert [len(b.session) for b in received] == [MAX_BATCH, MAX_BATCH, 88]
    assert [s for b in received for s in unpack(b)[0]] == samples


def test_long_names_are_split_to_stay_under_the_message_limit() -> None:
    # 256 samples of 300 three-byte characters would be ~240 KiB in one message
    samples = [sample(i, peer="ü" * 300) for i in range(MAX_BATCH)]
    received = through_the_wire(samples)  # encode raises if one is over the limit
    assert len(received) > 1
    assert [s for b in received for s in unpack(b)[0]] == samples


def raw(type_name: str, fields: dict[str, Any]) -> bytes:
    """A message as a hostile or broken sender could encode it: unclipped."""
    data: bytes = msgpack.packb([codec.VERSION, type_name, fields], use_bin_type=True)
    return data


def test_values_out_of_bounds_are_clipped_on_encode_and_refused_on_decode() -> None:
    good = [sample(1), sample(2)]
    bad = StatsSample(session="", side="send", peer="p", done_bytes=-1, credit=2**62)
    batch = through_the_wire([good[0], bad, good[1]])
    # clipped as the sample alone would be, not dropped
    alone = codec.decode_as(codec.encode(bad), StatsSample)
    assert unpack(batch[0]) == ([good[0], alone, good[1]], 0)
    assert alone.session == "?" and alone.done_bytes == 0 and alone.credit == 2**40
    fields = codec.clip_fields(next(batches([good[0], alone, good[1]])))
    for name, value in (("session", ""), ("done_bytes", -1), ("credit", 2**62), ("side", "x")):
        column = list(fields[name])
        column[1] = value
        with pytest.raises(codec.DecodeError):
            codec.decode(raw("stats-samples", {**fields, name: column}))
    uneven = StatsSamples(**{**fields, "rtt": [0.0]})  # columns of unequal length
    assert unpack(codec.decode_as(codec.encode(uneven), StatsSamples)) == ([], 3)


@given(
    st.lists(
        st.builds(
            StatsSample,
            session=st.text(min_size=1, max_size=64),
            side=st.sampled_from(["send", "receive"]),
            peer=st.text(max_size=300),
            t=st.floats(allow_nan=False),
            done_bytes=st.integers(0, 2**40),
            window=st.integers(0, 2**40),
            rate=st.floats(allow_nan=False),
            rtt=st.floats(allow_nan=False),
            credit=st.integers(0, 2**40),
        ),
        max_size=600,
    )
)
def test_any_samples_arrive_as_sent(samples: list[StatsSample]) -> None:
    received = through_the_wire(samples)
    assert all(len(b.session) <= MAX_BATCH for b in received)
    assert [s for b in received for s in unpack(b)[0]] == samples


def test_values_over_a_bound_are_clipped_as_a_lone_sample_would_be() -> None:
    wide = StatsSample(session="ab" * 40, side="send", peer="p" * 400, done_bytes=2**70)
    (batch,) = through_the_wire([wide])
    alone = codec.decode_as(codec.encode(wide), StatsSample)
    assert unpack(batch) == ([alone], 0)
    assert len(alone.peer) == 300 and len(alone.session) == 64


def test_every_sends_progress_of_a_tick_in_one_message() -> None:
    progress = [
        Progress(request=i, done_bytes=i * 1000, total_bytes=10**9, phase="sending")
        for i in range(1, 17)
    ]
    progress.append(Progress(request=99, done_bytes=0, total_bytes=0, phase="waiting"))
    progress.append(Progress(request=100, done_bytes=5, total_bytes=9, note="n" * 600))
    progress.append(Progress(request=101, done_bytes=7, total_bytes=9, done_files=2, total_files=3))
    (batch,) = columns.batches(progress, Progresses)
    received = codec.decode_as(codec.encode(batch), Progresses)
    # each as control would have decoded it alone (the note clipped to its bound)
    alone = [codec.decode_as(codec.encode(p), Progress) for p in progress]
    assert columns.unpack(received, Progress) == (alone, 0)
    assert len(alone[-2].note) < 600
    # A field control sets on its way (the send's id in the node) has no column.
    assert "transfer" not in columns.names(Progresses)
    assert {p.transfer for p in columns.unpack(received, Progress)[0]} == {0}
    fields = codec.clip_fields(received)
    with pytest.raises(codec.DecodeError):  # a phase over its bound of 16
        codec.decode(raw("progresses", {**fields, "phase": ["x" * 17] * len(progress)}))
