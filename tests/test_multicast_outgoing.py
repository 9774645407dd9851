"""MulticastOutgoing with a fake clock: a target that keeps rejoining."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.multicast_outgoing import (
    MAX_REJOINS,
    MulticastOutgoing,
    Output,
    Publish,
    SessionEnded,
    TargetEnded,
)

CHUNK = 1024
TOTAL = 2000


def _session(timeout: float) -> tuple[MulticastOutgoing, list[Output]]:
    sess = MulticastOutgoing(
        size=TOTAL * CHUNK, chunk_size=CHUNK, targets=["b"], timeout=timeout, now=0.0
    )
    sess.on_connection("b", connected=True, handshaken=True)
    assert sess.on_join("b", 0.0)
    sess.on_subscribed("b", 0.0)
    return sess, sess.poll(0.0)


def _run(
    sess: MulticastOutgoing,
    out: list[Output],
    until: float,
    every: float,
    ack: int | None = None,
    gain: int = 0,
) -> tuple[float, list[Output]]:
    """Every ``every`` seconds ``b`` forgets the session and rejoins, then
    acks ``ack + gain * cycle`` (None: never acks). Returns when the session
    ended (or ``until``) and everything it output."""
    now, due, cycle = 0.0, every, 0
    while now < until and not sess.ended:
        now = round(now + 0.05, 2)
        if now >= due:
            due += every
            cycle += 1
            sess.on_unknown("b")
            sess.on_join("b", now)
            if ack is not None:
                sess.on_ack("b", ack + gain * cycle, [], now)
        sess.on_timer(now)
        out += sess.poll(now)
    return now, out


def _ends(out: list[Output]) -> tuple[TargetEnded, SessionEnded]:
    targets = [o for o in out if isinstance(o, TargetEnded)]
    sessions = [o for o in out if isinstance(o, SessionEnded)]
    assert len(targets) == 1 and len(sessions) == 1, out[-5:]
    return targets[0], sessions[0]


def test_a_target_rejoining_without_acks_times_out_instead_of_forever() -> None:
    sess, out = _session(timeout=30.0)
    ended_at, out = _run(sess, out, until=400.0, every=10.0)
    target, session = _ends(out)
    assert target.code == session.code == "timeout"
    assert 30.0 <= ended_at <= 30.2, ended_at
    assert "no progress for 30 s" in target.reason or "did not answer" in target.reason
    assert target.tell  # it rejoined and holds the key: it is told
    assert sess.member("b").rejoins == 3  # type: ignore[union-attr]  # at 10, 20, 30 s


@settings(max_examples=40, deadline=None)
@given(
    every=st.floats(min_value=0.2, max_value=9.0),
    high=st.integers(min_value=1, max_value=TOTAL - 1),
    back=st.integers(min_value=0, max_value=TOTAL),
)
def test_acks_below_the_high_water_mark_are_no_progress(every: float, high: int, back: int) -> None:
    """Once it acked ``high`` chunks, rejoins that ack at most ``high`` again
    (a restart, a kept part) never hold the stall timeout off."""
    sess, out = _session(timeout=5.0)
    sess.on_ack("b", high, [], 0.0)
    _, out = _run(sess, out, until=60.0, every=every, ack=min(high, back))
    target, _ = _ends(out)
    assert target.code in ("timeout", "failed"), target
    assert target.seconds <= 5.2, target
    published = [o.index for o in out if isinstance(o, Publish)]
    assert published == list(range(len(published)))  # each chunk first-published once


def test_a_target_that_rejoins_too_often_is_dropped_with_a_clear_result() -> None:
    """Progress past the high-water mark each time keeps it from timing out,
    but each rejoin may cost a unicast repair of what it lacks: after
    MAX_REJOINS it is dropped."""
    sess, out = _session(timeout=30.0)
    ended_at, out = _run(sess, out, until=400.0, every=10.0, ack=0, gain=20)
    target, session = _ends(out)
    assert target.code == session.code == "failed"
    assert f"b rejoined {MAX_REJOINS} times without finishing" in target.reason
    assert target.tell
    assert ended_at == (MAX_REJOINS + 1) * 10.0
    assert "0 of 1 receivers verified" in session.reason
    assert not sess.on_join("b", ended_at + 1)  # ended: a later join changes nothing
