"""The one member-state enum: its precedence order is the order gossip,
the failure detector, the health actor and the wire agree on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from peercrypt.core.member_state import ORDER, MemberState, worst
from peercrypt.wire.network_messages import pack_digest_entry, unpack_digest_entry


def test_the_order_is_alive_suspect_dead_left() -> None:
    assert [s.value for s in ORDER] == ["alive", "suspect", "dead", "left"]
    assert [s.rank for s in ORDER] == [0, 1, 2, 3]


@given(st.sampled_from(ORDER), st.sampled_from(ORDER))
def test_worst_is_the_later_state(a: MemberState, b: MemberState) -> None:
    w = worst(a, b)
    assert w in (a, b)
    assert MemberState(w).rank == max(a.rank, b.rank)
    assert worst(a, "no-such-state") == a


@given(st.sampled_from(ORDER), st.integers(0, 2**64 - 1))
def test_the_digest_carries_the_state_as_its_rank(state: MemberState, inc: int) -> None:
    raw = pack_digest_entry(b"n" * 32, inc, state, b"t" * 8)
    assert raw[40] == state.rank
    assert unpack_digest_entry(raw) == (b"n" * 32, inc, state, b"t" * 8)
