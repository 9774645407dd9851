"""The guard of a node's listening ports (peercrypt/core/port_guard.py) in
memory: caps on connections, and the bytes read from them and never
delivered. tests/test_hostile_peers.py attacks a real node's data port and
gateway."""

from __future__ import annotations

from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from peercrypt.core.port_guard import (
    DEBT_SAMPLES,
    GuardLimits,
    PortGuard,
    curve_framed_size,
    framed_size,
    held_limit,
    held_memory,
)

SMALL = GuardLimits(held=1000, connections=6, per_address=3)


def test_connections_beyond_the_cap_of_their_address_are_closed_at_once() -> None:
    guard = PortGuard(SMALL)
    assert [guard.accepted(c, "a") for c in (1, 2, 3)] == [[], [], []]
    assert guard.accepted(4, "a") == [4]
    assert guard.connections == 3
    guard.closed(2)
    assert guard.accepted(5, "a") == []


def test_beyond_the_cap_in_all_the_address_with_the_most_loses_its_newest() -> None:
    guard = PortGuard(SMALL)
    for conn, address in [(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "c"), (6, "d")]:
        assert guard.accepted(conn, address) == []
    assert guard.accepted(7, "e") == [3]  # "a" has the most: its newest goes
    assert guard.accepted(8, "f") == [2]
    assert guard.accepted(9, "e") == [9]  # "e" has as many as any: the newcomer goes
    assert guard.connections == SMALL.connections


def test_bytes_read_and_not_delivered_close_the_address_holding_most() -> None:
    guard = PortGuard(SMALL)
    guard.accepted(1, "honest")
    guard.accepted(2, "hoarder")
    guard.accepted(3, "hoarder")
    guard.delivered("honest", 5000)
    assert guard.sample({1: 5000, 2: 300, 3: 300}) == []  # all of honest's reads delivered
    assert guard.held == 600
    guard.delivered("honest", 3900)
    assert guard.sample({1: 9000, 2: 800}) == [2, 3]  # honest holds 100, the hoarder 1100
    # The hoarder's 1100 stay as its debt: what libzmq queued is still there.
    assert guard.held == 1200 and guard.connections == 1
    assert guard.sample({1: 10_000}) == [1]  # honest's reads stopped being delivered


def test_a_connections_handshake_within_its_allowance_holds_nothing() -> None:
    guard = PortGuard(SMALL)
    guard.accepted(1, "member", allowance=567)  # a CURVE handshake, never delivered
    assert guard.sample({1: 567}) == [] and guard.held == 0
    # A one-byte message and a 300-byte one, as CURVE boxes on the wire.
    wire = curve_framed_size(1) + curve_framed_size(300)
    assert wire == 36 + 342
    guard.delivered("member", wire)
    assert guard.sample({1: 567 + wire}) == [] and guard.held == 0
    assert guard.sample({1: 567 + wire + 1200}) == [1]  # read beyond it, never delivered


def test_deliveries_build_no_credit_and_a_new_address_starts_at_zero() -> None:
    guard = PortGuard(SMALL)
    guard.accepted(1, "a")
    guard.delivered("a", 10_000)  # read before the first sample: clamped
    assert guard.sample({1: 0}) == []
    assert guard.sample({1: 900}) == [] and guard.held == 900
    guard.delivered("nobody", 10**9)  # no connection from there: ignored
    assert guard.sample({1: 1001}) == [1]
    guard.accepted(2, "a")  # a new connection of the address: its debt is still there
    assert guard.held == 1001
    guard.delivered("a", 1001)
    assert guard.sample({2: 0}) == [] and guard.held == 0


def test_a_closed_address_keeps_its_debt_until_delivered_or_idle() -> None:
    """Closing frees an unfinished message but not the whole ones libzmq
    queued: until the receiver has taken them, the address's debt counts,
    and while it keeps the total over the bound, a connection is closed
    only for holding more than its share; a debt nothing is delivered from
    is forgotten."""
    guard = PortGuard(SMALL)
    guard.accepted(1, "flood")
    assert guard.sample({1: 1500}) == [1]
    assert guard.held == 1500 and guard.debts == 1500 and guard.watching
    guard.accepted(2, "b")
    guard.accepted(3, "c")
    assert guard.sample({2: 10, 3: 0}) == []  # b holds little, c nothing
    assert guard.held == 1510 and guard.debts == 1500
    assert guard.sample({2: 1010, 3: 0}) == [2]  # b holds more than the bound
    assert guard.held == 2510 and guard.debts == 2510 and guard.live() == {"c"}
    guard.delivered("flood", 600)
    assert guard.sample({3: 0}) == [] and guard.held == 1910
    for _ in range(DEBT_SAMPLES - 1):
        guard.delivered("flood", 1)
        guard.sample({3: 0})
    assert guard.held == 900 - (DEBT_SAMPLES - 1)  # b's 1010 idle: forgotten
    for _ in range(DEBT_SAMPLES):
        guard.sample({3: 0})
    assert guard.held == 0 and guard.live() == {"c"}
    guard.closed(3)
    guard.sample({})
    assert not guard.watching


def test_tiny_frames_are_charged_at_what_libzmq_holds_for_them() -> None:
    """libzmq keeps each frame in a 64-byte slot: a flood of 1-byte frames
    (3 bytes on the wire) costs 21 times its wire bytes, a chunk about its
    size. Counted by wire bytes, the tiny flood below would fit."""
    guard = PortGuard(GuardLimits(held=64_000))
    guard.accepted(1, "chunks")
    guard.accepted(2, "tiny")
    chunk = 2**20
    guard.delivered("chunks", framed_size(chunk), held_memory(chunk))
    for _ in range(1000):
        guard.delivered("tiny", framed_size(1), held_memory(1))
    assert guard.sample({1: framed_size(chunk) + 30_000, 2: 3000 + 3000}) == [2]
    assert 30_000 <= guard.cost("chunks") < 30_100
    assert 63_900 < guard.cost("tiny") <= 3000 * 64 // 3


# RSS per queued message measured by scripts/bench_queue_memory.py (a ROUTER
# that never receives, 300,000 messages or 256 MiB of them per size;
# docs/benchmarks.md): frame length -> (plain ZMTP, CURVE) bytes.
MEASURED = {
    1: (64, 145),
    32: (64, 206),
    33: (142, 207),
    100: (259, 309),
    1024: (1784, 1844),
    4096: (8303, 8306),
    8150: (8294, 12381),
    65536: (65651, 65697),
}


def test_the_charge_covers_what_libzmq_was_measured_to_hold() -> None:
    """Charged at least what a queued frame was measured to cost (so the
    configured bound is what the node holds), at most twice it."""
    for length, (plain, curve) in MEASURED.items():
        assert plain <= held_memory(length) <= 2 * plain, length
        charged = held_memory(length, curve_framed_size(length))
        assert curve <= charged <= 2 * curve, length


def test_the_default_bound_covers_the_credit_and_two_messages() -> None:
    assert held_limit(32 << 20, 16 << 20) == 96 << 20
    assert framed_size(255) == 257 and framed_size(256) == 265


Step = tuple[str, int, str, int]


def any_steps(conns: int, most: int, size: int) -> st.SearchStrategy[list[Step]]:
    """What peers do: connections ``0..conns`` from three addresses, reads
    and deliveries of up to ``most`` bytes, samples."""
    return st.lists(
        st.tuples(
            st.sampled_from(["accept", "close", "read", "deliver", "sample"]),
            st.integers(0, conns),
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, most),
        ),
        max_size=size,
    )


def play(
    guard: PortGuard, steps: list[Step], reads: dict[int, int]
) -> Iterator[tuple[str, list[int]]]:
    """Plays ``steps`` on ``guard``, yielding each accept or sample and
    what the guard closes at it."""
    for action, conn, address, n in steps:
        if action == "accept":
            closed = guard.accepted(conn, address)
        elif action == "close":
            guard.closed(conn)
            continue
        elif action == "read":
            reads[conn] = reads.get(conn, 0) + n
            continue
        elif action == "deliver":
            guard.delivered(address, n)
            continue
        else:
            closed = guard.sample(reads)
        for gone in closed:
            reads.pop(gone, None)
        yield action, closed


@given(any_steps(15, 700, 80))
def test_after_every_sample_the_bounds_hold(steps: list[Step]) -> None:
    guard = PortGuard(SMALL)
    for action, _ in play(guard, steps, {}):
        if action == "sample":  # within the bound beside the debts of those without connections
            assert guard.held - guard.debts <= SMALL.held
        assert guard.connections <= SMALL.connections


def test_a_debtor_reconnecting_gets_only_itself_closed() -> None:
    """An address whose debt can never be delivered (an unfinished frame
    the close freed) and that opens a new idle connection every 20 samples:
    its debt still ages, and while it keeps the total over the bound only
    its own connections are closed, never an honest one holding a little."""
    guard = PortGuard(SMALL)
    guard.accepted(1, "attacker")
    assert guard.sample({1: 5000}) == [1]  # its debt: 5000, never delivered
    guard.accepted(2, "honest")
    reads = {2: 100}  # its heartbeats: read, never delivered
    attacker, honest_closed, attacker_closed = 0, 0, 0
    for step in range(2000):
        if step % 20 == 0:
            attacker = 3 + step
            guard.accepted(attacker, "attacker", allowance=128)
            reads[attacker] = 128
        for gone in guard.sample(reads):
            reads.pop(gone)
            if gone == attacker:
                attacker_closed += 1
            else:  # it reconnects
                honest_closed += 1
                guard.accepted(-step, "honest")
                reads[-step] = 0  # its 100 stay on its address's account
        if step == DEBT_SAMPLES:
            assert guard.held == 100  # the debt aged out despite the reconnects
    assert honest_closed == 0
    assert attacker_closed == 3  # its connections while its debt was there


@given(any_steps(4, 3000, 120), st.integers(1, SMALL.held // 4))
def test_an_address_within_its_share_without_debt_is_never_closed(
    steps: list[Step], holds: int
) -> None:
    """Whatever three other addresses do (debts over the bound included),
    one holding at most a quarter of the bound (its share among four) and
    owing nothing keeps its connection."""
    guard = PortGuard(GuardLimits(held=SMALL.held, connections=100, per_address=100))
    honest = 99
    assert guard.accepted(honest, "honest") == []
    reads = {honest: holds}  # e.g. its heartbeats, never delivered
    for _, closed in play(guard, steps, reads):
        assert honest not in closed
    assert honest not in guard.sample(reads)
