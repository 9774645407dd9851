"""MulticastOutgoing with a fake clock: a target that keeps rejoining, a
target storing a big folder (or acking for ever instead)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.multicast_outgoing import (
    MAX_REJOINS,
    VERIFY_FLOOR,
    VERIFY_MAX_FILES,
    VERIFY_PER_FILE,
    MulticastOutgoing,
    Output,
    Publish,
    SessionEnded,
    TargetEnded,
    verify_limit,
)

CHUNK = 1024
TOTAL = 2000


def _session(timeout: float, files: int = 0) -> tuple[MulticastOutgoing, list[Output]]:
    sess = MulticastOutgoing(
        size=TOTAL * CHUNK, chunk_size=CHUNK, targets=["b"], timeout=timeout, now=0.0, files=files
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


def test_a_rejoined_target_catching_up_by_repairs_below_its_mark_is_progress() -> None:
    """A receiver restarted mid-session rejoins holding less than it had
    acked (its kept part's last checkpoint): each chunk it writes after that
    first ack is progress, below its high-water mark too (a capped session
    made it fail at --timeout while it caught up); acking only what it held
    is not (the property above)."""
    sess, out = _session(timeout=5.0)
    sess.on_ack("b", 100, [], 0.0)
    sess.on_unknown("b")  # it restarted
    assert sess.on_join("b", 1.0)
    sess.on_ack("b", 60, [(60, 100)], 1.0)  # what its part held
    now = 1.0
    while now < 40.0:  # acks every 0.5 s, a repaired chunk in them every 2 s: far past 5 s
        now = round(now + 0.05, 2)
        if round(now * 100) % 50 == 0:
            held = 60 + int((now - 1.0) // 2)
            sess.on_ack("b", held, [(held, 100)], now)
        sess.on_timer(now)
        out += sess.poll(now)
    assert not [o for o in out if isinstance(o, TargetEnded)], out[-3:]
    assert sess.member("b").state != "failed"  # type: ignore[union-attr]


def test_a_member_rejoining_to_climb_back_again_and_again_gains_one_climb_only() -> None:
    """A hostile member acks one chunk more every timeout - 0.5 s; near its
    end it forgets the session, rejoins and acks 0, to climb again. Below
    its high-water mark only its first rejoin's climb is progress: the
    session is held about twice a climb (it was 9 times: every rejoin up to
    MAX_REJOINS climbed again)."""
    total, timeout, step = 40, 5.0, 4.5
    sess = MulticastOutgoing(
        size=total * CHUNK, chunk_size=CHUNK, targets=["b"], timeout=timeout, now=0.0
    )
    sess.on_connection("b", connected=True, handshaken=True)
    sess.on_join("b", 0.0)
    sess.on_subscribed("b", 0.0)
    out = sess.poll(0.0)
    now, held, due = 0.0, 0, step
    while now < 5000 and not [o for o in out if isinstance(o, TargetEnded)]:
        now = round(now + 0.25, 2)
        if now >= due:
            due, held = now + step, held + 1
            if held >= total - 2:  # at the top: forget, rejoin, from 0 again
                sess.on_ack("b", held, [], now)
                sess.on_unknown("b")
                sess.on_join("b", now)
                sess.on_subscribed("b", now)
                held = 0
                sess.on_ack("b", 0, [], now)
        sess.on_ack("b", held, [], now)
        sess.on_timer(now)
        out += sess.poll(now)
    (ended,) = [o for o in out if isinstance(o, TargetEnded)]
    climb = (total - 2) * step  # 171 s
    assert ended.code == "timeout" and climb < now < 2 * climb + 2 * timeout, (now, ended)


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


def _verifying(
    sess: MulticastOutgoing, out: list[Output], until: float, done_at: float | None = None
) -> tuple[float, list[Output]]:
    """``b`` holds every chunk and acks all of them every 0.5 s (what a
    receiver does while it checks and stores), until ``done_at`` when it
    sends its verdict (None: never, as a hostile member). Returns when the
    session ended (or ``until``) and everything it output."""
    now, ack_due = 0.0, 0.0
    sess.on_digest(b"d" * 32, 0.0)
    while now < until and not sess.ended:
        now = round(now + 0.05, 2)
        if done_at is not None and now >= done_at:
            sess.on_done("b", True, b"d" * 32, "tree", "", now)
        elif now >= ack_due:
            ack_due += 0.5
            sess.on_ack("b", TOTAL, [], now)
        sess.on_timer(now)
        out += sess.poll(now)
    return now, out


def test_the_verify_allowance_grows_per_file_and_is_bounded() -> None:
    plain = verify_limit(10.0, 64 * 2**20)
    assert plain == 10.0 + 64 * 2**20 / VERIFY_FLOOR
    assert verify_limit(10.0, 64 * 2**20, 10_000) == plain + 10_000 * VERIFY_PER_FILE
    most = plain + VERIFY_MAX_FILES * VERIFY_PER_FILE
    assert verify_limit(10.0, 64 * 2**20, 10**12) == most == plain + 1000.0
    sess, _ = _session(timeout=10.0, files=10_000)
    assert sess.plan.verify_limit == verify_limit(10.0, TOTAL * CHUNK, 10_000)


def test_a_receiver_storing_ten_thousand_files_is_given_the_time() -> None:
    """10,000 small files took up to 34 s to store on a loaded machine: with
    a 5 s timeout and a folder of 2 MB, the byte allowance alone (5.2 s)
    failed such a receiver for no progress; the per-file one lets it finish."""
    sess, out = _session(timeout=5.0, files=10_000)
    _, out = _verifying(sess, out, until=60.0, done_at=40.0)
    target, session = _ends(out)
    assert target.code == session.code == "ok", target
    plain, out = _session(timeout=5.0)  # the same bytes as one plain file
    ended_at, out = _verifying(plain, out, until=60.0, done_at=40.0)
    target, _ = _ends(out)
    assert target.code == "timeout" and ended_at < 15.0, (target, ended_at)


@settings(max_examples=10, deadline=None)
@given(files=st.sampled_from([0, 1, 10_000, 10**9]))
def test_a_member_acking_for_ever_still_fails_within_the_bound(files: int) -> None:
    """A hostile member that holds every chunk and acks for ever, never
    sending its verdict, holds the session for the verify allowance and then
    the stall timeout, never longer, however many files the folder has."""
    sess, out = _session(timeout=5.0, files=files)
    limit = verify_limit(5.0, TOTAL * CHUNK, files)
    ended_at, out = _verifying(sess, out, until=2000.0)
    target, session = _ends(out)
    assert target.code == session.code == "timeout", target
    assert limit <= ended_at <= limit + 5.0 + 0.6, (ended_at, limit)
    assert ended_at <= 5.0 + TOTAL * CHUNK / VERIFY_FLOOR + 1000.0 + 5.6


@settings(max_examples=60, deadline=None)
@given(
    verdicts=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=9.9),
            st.booleans(),  # ok
            st.booleans(),  # with the session's own hash (as a co-receiver learns it)
        ),
        min_size=1,
        max_size=8,
    )
)
def test_a_verdict_from_a_target_that_never_proved_itself_counts_for_nothing(
    verdicts: list[tuple[float, bool, bool]],
) -> None:
    """``t``'s node is down and a member with the network key and a fresh
    identity answers at its address: it skips the hello and the join (so
    proves nothing) and sends verdicts - "verified" with the whole-file
    hash, which a co-receiver reads in its statuses, or "failed". None
    counts: ``t`` stays open and fails at the timeout for not answering, while
    ``a``, which joined, is verified by its own verdict."""
    digest = b"d" * 32
    sess = MulticastOutgoing(
        size=TOTAL * CHUNK, chunk_size=CHUNK, targets=["a", "t"], timeout=10.0, now=0.0
    )
    for name in ("a", "t"):
        sess.on_connection(name, connected=True, handshaken=True)
    assert sess.on_join("a", 0.0)
    sess.on_subscribed("a", 0.0)
    sess.on_digest(digest, 0.0)
    out = sess.poll(0.0)
    due = sorted(verdicts)
    now = 0.0
    while now < 20.0 and not sess.ended:
        now = round(now + 0.05, 2)
        while due and due[0][0] <= now:
            _, ok, right = due.pop(0)
            assert not sess.on_done("t", ok, digest if right else b"x" * 32, "t.bin", "", now)
        if now == 1.0:
            assert sess.on_done("a", True, digest, "a.bin", "", now)
        sess.on_timer(now)
        out += sess.poll(now)
    ends = {o.target: o for o in out if isinstance(o, TargetEnded)}
    assert ends["a"].code == "ok" and ends["a"].stored_as == "a.bin"
    assert ends["t"].code == "timeout" and ends["t"].seconds >= 10.0, ends["t"]
    assert ends["t"].reason == "did not answer for 10 s" and not ends["t"].stored_as


def test_a_verdict_counts_once_the_target_proved_itself_and_stays_so_when_lost() -> None:
    """Proven by its join, a target's verdict counts, also after it went
    silent (lost: a receiver answers a re-announce of a session it finished
    with its remembered verdict, not a new join)."""
    digest = b"d" * 32
    sess = MulticastOutgoing(
        size=TOTAL * CHUNK, chunk_size=CHUNK, targets=["t"], timeout=10.0, now=0.0
    )
    sess.on_connection("t", connected=True, handshaken=True)
    assert not sess.on_done("t", True, digest, "t.bin", "", 0.0)  # before its join: nothing
    assert sess.on_join("t", 0.0)
    sess.on_subscribed("t", 0.0)
    sess.on_digest(digest, 0.0)
    out, now = sess.poll(0.0), 0.0
    while now < 3.0:  # it acks nothing: lost after 2 s
        now = round(now + 0.05, 2)
        sess.on_timer(now)
        out += sess.poll(now)
    assert sess.member("t").state == "lost" and not sess.joined("t")  # type: ignore[union-attr]
    assert sess.on_done("t", True, digest, "t.bin", "", now)
    out += sess.poll(now)
    (end,) = [o for o in out if isinstance(o, TargetEnded)]
    assert (end.code, end.stored_as) == ("ok", "t.bin")
