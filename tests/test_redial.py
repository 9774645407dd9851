"""When a dialled connection its port guard closed is made again
(peercrypt/core/redial.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from peercrypt.core.redial import REDIAL_CALM, REDIAL_INITIAL, REDIAL_MAX, Redial


def test_a_peer_flooding_each_connection_waits_longer_each_time_up_to_the_limit() -> None:
    redial, now, delays = Redial(), 0.0, []
    for _ in range(10):
        delay = redial.closed(now)  # flooded again as soon as it connects
        delays.append(delay)
        now += delay
        redial.connected(now)
        now += 0.1
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]


def test_a_connection_that_stayed_calm_starts_over() -> None:
    redial = Redial()
    for _ in range(5):
        redial.closed(0.0)
    redial.connected(100.0)
    assert redial.closed(100.0 + REDIAL_CALM) == REDIAL_INITIAL
    assert redial.closed(200.0) == 2 * REDIAL_INITIAL  # not connected since: no calm


@given(st.lists(st.tuples(st.floats(0, 1000), st.booleans()), max_size=60))
def test_every_pause_is_within_its_bounds_and_only_calm_resets(
    steps: list[tuple[float, bool]],
) -> None:
    """Whatever the order of closes and reconnects: every pause is between
    the first and the largest, and it only shrinks after a connection that
    lived ``calm`` seconds."""
    redial, now, last = Redial(), 0.0, 0.0
    since: float | None = None
    for gap, reconnect in steps:
        now += gap
        if reconnect:
            redial.connected(now)
            since = now
            continue
        delay = redial.closed(now)
        assert REDIAL_INITIAL <= delay <= REDIAL_MAX
        calm = since is not None and now - since >= REDIAL_CALM
        assert delay >= last or calm
        expected = REDIAL_INITIAL if calm or last == 0 else min(REDIAL_MAX, 2 * last)
        assert delay == expected
        last, since = delay, None
