"""MulticastOutgoing with targets that already hold the file (McHeld), with a
fake clock: nothing is published for them, they get the whole-file hash and
their verdict is checked against it like any receiver's."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.multicast import HELD
from peercrypt.core.multicast_outgoing import (
    ANNOUNCE_INTERVAL,
    JOIN_WAIT,
    HashAll,
    MulticastOutgoing,
    Output,
    Publish,
    SendStatus,
    SessionEnded,
    StartPublishing,
    TargetEnded,
)
from peercrypt.core.outgoing import HashFile

CHUNK = 1024
TOTAL = 40
DIGEST = b"d" * 32


def _session(targets: list[str], timeout: float = 10.0) -> MulticastOutgoing:
    sess = MulticastOutgoing(
        size=TOTAL * CHUNK, chunk_size=CHUNK, targets=targets, timeout=timeout, now=0.0
    )
    for t in targets:
        sess.on_connection(t, connected=True, handshaken=True)
    return sess


def _of(out: list[Output], kind: type) -> list:  # type: ignore[type-arg]
    return [o for o in out if isinstance(o, kind)]


def test_every_target_holding_the_file_publishes_nothing_and_checks_each_verdict() -> None:
    sess = _session(["b", "c"])
    sess.on_held("b", 0.1)
    out = sess.poll(0.1)
    assert not _of(out, HashAll)  # c has not answered yet
    sess.on_held("c", 0.2)
    out = sess.poll(0.2)
    assert _of(out, HashAll) == [HashAll()] and not _of(out, StartPublishing)
    assert sess.member("b").state == HELD  # type: ignore[union-attr]
    sess.on_digest(DIGEST, 0.3)
    out = sess.poll(0.3)
    assert sorted(s.target for s in _of(out, SendStatus)) == ["b", "c"]
    assert all(s.digest == DIGEST for s in _of(out, SendStatus))
    sess.on_done("b", True, DIGEST, "mc.bin", "", 0.4)
    sess.on_done("c", True, DIGEST, "mc.bin", "", 0.5)
    out = sess.poll(0.5)
    ends = _of(out, TargetEnded)
    assert [(e.target, e.code, e.stored_as, e.held) for e in ends] == [
        ("b", "ok", "mc.bin", True),
        ("c", "ok", "mc.bin", True),
    ]
    assert _of(out, SessionEnded) == [SessionEnded("ok", "")]
    assert not sess.publishing and sess.plan.published == 0


def test_a_holder_does_not_wait_for_nor_pace_the_one_that_receives() -> None:
    sess = _session(["b", "c"])
    sess.on_held("b", 0.0)
    assert sess.on_join("c", 0.0)
    sess.on_subscribed("c", 0.0)
    out = sess.poll(0.0)
    assert _of(out, StartPublishing) and not _of(out, HashAll)
    now = 0.0
    while sess.plan.published < TOTAL:  # c acks all it is sent: b never acks
        now += 0.05
        sess.on_ack("c", sess.plan.published, [], now)
        sess.on_timer(now)
        out += sess.poll(now)
    assert [p.index for p in _of(out, Publish)] == list(range(TOTAL))
    assert _of(out, HashFile)
    assert not _of(out, TargetEnded)  # b is not lost nor failed for its silence
    sess.on_digest(DIGEST, now)
    out = sess.poll(now)
    assert [s.target for s in _of(out, SendStatus)] == ["b"]
    sess.on_done("b", True, DIGEST, "mc.bin", "", now)
    sess.on_done("c", True, DIGEST, "mc.1.bin", "", now)
    ends = {e.target: e for e in _of(sess.poll(now), TargetEnded)}
    assert ends["b"].held and ends["b"].code == "ok"
    assert not ends["c"].held and ends["c"].stored_as == "mc.1.bin"


def test_a_holder_naming_another_hash_is_not_a_success() -> None:
    sess = _session(["b"])
    sess.on_held("b", 0.0)
    sess.poll(0.0)
    sess.on_digest(DIGEST, 0.1)
    sess.on_done("b", True, b"x" * 32, "mc.bin", "", 0.2)
    (end,) = _of(sess.poll(0.2), TargetEnded)
    assert end.code == "verify" and end.reason == "b stored a different hash"


def test_a_silent_holder_is_told_the_hash_again_then_fails_at_the_timeout() -> None:
    sess = _session(["b"], timeout=3.0)
    sess.on_held("b", 0.0)
    sess.poll(0.0)
    sess.on_digest(DIGEST, 1.0)
    out = sess.poll(1.0)
    now = 1.0
    while not sess.ended and now < 10.0:
        now = round(now + 0.05, 2)
        sess.on_timer(now)
        out += sess.poll(now)
    statuses = _of(out, SendStatus)
    assert len(statuses) >= int(3.0 / ANNOUNCE_INTERVAL) - 1
    (end,) = _of(out, TargetEnded)
    assert end.code == "timeout" and 4.0 <= now <= 4.1 and end.tell
    assert "gave no verdict" in end.reason


def test_a_holder_that_restarted_is_announced_again_and_may_join() -> None:
    sess = _session(["b"])
    sess.on_held("b", 0.0)
    sess.poll(0.0)
    sess.on_unknown("b")  # it forgot (a restart): announce again
    assert sess.member("b").state != HELD  # type: ignore[union-attr]
    assert sess.on_join("b", 0.5)
    sess.on_subscribed("b", 0.5)
    out = sess.poll(0.5)
    assert _of(out, StartPublishing)
    sess.on_held("b", 0.6)  # a joined target holds nothing more
    assert not sess.receivers["b"].held


def test_a_holders_verdict_after_it_was_announced_again_is_still_had_it() -> None:
    """A holder restarts (unknown session: announced again) and its verdict
    on the hash it was told before the restart comes in before any answer to
    the new announce: it stored nothing new, so its result says it had the
    file (it said received). Once it joins instead, a verdict is a receipt."""
    sess = _session(["b", "c"])
    for t in ("b", "c"):
        sess.on_held(t, 0.0)
    sess.poll(0.0)
    sess.on_digest(DIGEST, 0.1)
    sess.poll(0.1)
    sess.on_unknown("b")
    sess.on_unknown("c")
    sess.on_done("b", True, DIGEST, "mc.bin", "", 0.2)
    assert sess.on_join("c", 0.3)
    sess.on_done("c", True, DIGEST, "mc.1.bin", "", 0.4)
    ends = _of(sess.poll(0.4), TargetEnded)
    assert [(e.target, e.held) for e in ends] == [("b", True), ("c", False)]


@settings(max_examples=200, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.sampled_from(["held", "join"]), st.booleans()), min_size=1, max_size=4
    )
)
def test_a_held_success_only_for_the_senders_own_hash(plan: list[tuple[str, bool]]) -> None:
    """Any mix of holders and receivers, each answering the right hash or
    another: a target ends ``ok`` exactly when it named the sender's hash,
    ``held`` exactly when it held the file, and nothing is published when
    no target joined."""
    names = [f"t{i}" for i in range(len(plan))]
    sess = _session(names)
    out: list[Output] = []
    for name, (how, _) in zip(names, plan, strict=True):
        if how == "held":
            sess.on_held(name, 0.0)
        else:
            sess.on_join(name, 0.0)
            sess.on_subscribed(name, 0.0)
    out += sess.poll(0.0)
    now = 0.0
    while not sess.digest and now < 5.0:
        now = round(now + 0.05, 2)
        for name, (how, _) in zip(names, plan, strict=True):
            if how == "join":
                sess.on_ack(name, sess.plan.published, [], now)
        sess.on_timer(now)
        out += sess.poll(now)
        if _of(out, HashFile) or _of(out, HashAll):
            sess.on_digest(DIGEST, now)
    assert sess.digest == DIGEST
    for name, (_, right) in zip(names, plan, strict=True):
        sess.on_done(name, True, DIGEST if right else b"x" * 32, "f", "", now)
    out += sess.poll(now)
    ends = {e.target: e for e in _of(out, TargetEnded)}
    for name, (how, right) in zip(names, plan, strict=True):
        assert (ends[name].code == "ok") == right
        assert ends[name].held == (how == "held" and right)
    if all(how == "held" for how, _ in plan):
        assert not _of(out, Publish) and len(_of(out, HashAll)) == 1


def test_a_holder_gets_the_hash_when_the_one_receiving_fails_midway() -> None:
    """The only target that joined fails after some chunks: nothing more is
    published, so the rest of the file is hashed for the one holding it."""
    sess = _session(["b", "c"])
    sess.on_held("b", 0.0)
    sess.on_join("c", 0.0)
    sess.on_subscribed("c", 0.0)
    out = sess.poll(0.0)
    published = len(_of(out, Publish))
    assert 0 < published < TOTAL
    sess.fail_target("c", "failed", "c failed: leaving", 0.1)
    out = sess.poll(0.1)
    assert _of(out, HashAll) == [HashAll(published)]
    sess.on_digest(DIGEST, 0.2)
    assert [s.target for s in _of(sess.poll(0.2), SendStatus)] == ["b"]
    sess.on_done("b", True, DIGEST, "mc.bin", "", 0.3)
    ends = _of(sess.poll(0.3), TargetEnded)
    assert [(e.target, e.held) for e in ends] == [("b", True)]
    assert sess.ended


def test_the_hash_is_not_held_back_by_a_target_that_failed_or_never_answers() -> None:
    """The other target fails after the holder answered: the file is hashed
    at once (not at the timeout); one that never answers holds it back only
    for the join wait."""
    sess = _session(["b", "c"], timeout=30.0)
    sess.on_held("b", 0.0)
    assert not _of(sess.poll(0.0), HashAll)
    sess.fail_target("c", "untrusted", "c: another key", 0.1)
    assert _of(sess.poll(0.1), HashAll) == [HashAll()]
    late = _session(["b", "c"], timeout=30.0)
    late.on_held("b", 0.0)
    out: list[Output] = []
    now = 0.0
    while not _of(out, HashAll) and now < 30.0:
        now = round(now + 0.05, 2)
        late.on_timer(now)
        out += late.poll(now)
    assert _of(out, HashAll) and now <= JOIN_WAIT + 0.1, now


def test_publishing_starts_once_when_the_last_silent_target_fails_at_the_timeout() -> None:
    """A ``--timeout`` shorter than the join wait: the silent target fails at
    the timeout, which starts publishing for the one that joined; the
    timeout's own start does not start it a second time."""
    sess = _session(["a", "b"], timeout=JOIN_WAIT / 2)
    sess.on_join("a", 0.0)
    sess.on_subscribed("a", 0.0)
    out = sess.poll(0.0)
    now = 0.0
    while now < JOIN_WAIT + 1.0:
        now = round(now + 0.05, 2)
        sess.on_timer(now)
        out += sess.poll(now)
    assert len(_of(out, StartPublishing)) == 1, out
    ended = _of(out, TargetEnded)[0]
    assert (ended.target, ended.code) == ("b", "timeout"), ended
