"""The data port's guard (peercrypt/core/data_port_guard.py) in memory: caps
on connections, and the bytes read from them and never delivered.
tests/test_hostile_peers.py attacks a real node's data port."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from peercrypt.core.data_port_guard import DataPortGuard, GuardLimits, framed_size, held_limit

SMALL = GuardLimits(held=1000, connections=6, per_address=3)


def test_connections_beyond_the_cap_of_their_address_are_closed_at_once() -> None:
    guard = DataPortGuard(SMALL)
    assert [guard.accepted(c, "a") for c in (1, 2, 3)] == [[], [], []]
    assert guard.accepted(4, "a") == [4]
    assert guard.connections == 3
    guard.closed(2)
    assert guard.accepted(5, "a") == []


def test_beyond_the_cap_in_all_the_address_with_the_most_loses_its_newest() -> None:
    guard = DataPortGuard(SMALL)
    for conn, address in [(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "c"), (6, "d")]:
        assert guard.accepted(conn, address) == []
    assert guard.accepted(7, "e") == [3]  # "a" has the most: its newest goes
    assert guard.accepted(8, "f") == [2]
    assert guard.accepted(9, "e") == [9]  # "e" has as many as any: the newcomer goes
    assert guard.connections == SMALL.connections


def test_bytes_read_and_not_delivered_close_the_address_holding_most() -> None:
    guard = DataPortGuard(SMALL)
    guard.accepted(1, "honest")
    guard.accepted(2, "hoarder")
    guard.accepted(3, "hoarder")
    guard.delivered("honest", 5000)
    assert guard.sample({1: 5000, 2: 300, 3: 300}) == []  # all of honest's reads delivered
    assert guard.held == 600
    guard.delivered("honest", 3900)
    assert guard.sample({1: 9000, 2: 800}) == [2, 3]  # honest holds 100, the hoarder 1100
    assert guard.held == 100 and guard.connections == 1
    assert guard.sample({1: 10_000}) == [1]  # honest's reads stopped being delivered


def test_deliveries_build_no_credit_and_a_new_address_starts_at_zero() -> None:
    guard = DataPortGuard(SMALL)
    guard.accepted(1, "a")
    guard.delivered("a", 10_000)  # read before the first sample: clamped
    assert guard.sample({1: 0}) == []
    assert guard.sample({1: 900}) == [] and guard.held == 900
    guard.delivered("nobody", 10**9)  # no connection from there: ignored
    assert guard.sample({1: 1001}) == [1]
    guard.accepted(2, "a")
    assert guard.held == 0


def test_the_default_bound_covers_the_credit_and_two_messages() -> None:
    assert held_limit(32 << 20, 16 << 20) == 96 << 20
    assert framed_size(255) == 257 and framed_size(256) == 265


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["accept", "close", "read", "deliver", "sample"]),
            st.integers(0, 15),
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 700),
        ),
        max_size=80,
    )
)
def test_after_every_sample_the_bounds_hold(steps: list[tuple[str, int, str, int]]) -> None:
    guard = DataPortGuard(SMALL)
    reads: dict[int, int] = {}
    for action, conn, address, n in steps:
        if action == "accept":
            for gone in guard.accepted(conn, address):
                reads.pop(gone, None)
        elif action == "close":
            guard.closed(conn)
        elif action == "read":
            reads[conn] = reads.get(conn, 0) + n
        elif action == "deliver":
            guard.delivered(address, n)
        else:
            guard.sample(reads)
            assert guard.held <= SMALL.held
        assert guard.connections <= SMALL.connections
