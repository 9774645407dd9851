"""How a cancel of a send by its id is answered (peercrypt/core/cancels.py):
by how the send ended, whichever came first, the cancel or the send's own
end; and the words and exit code `peercrypt cancel N` says it with."""

from __future__ import annotations

from peercrypt.core.cancels import (
    CANCELLED_BY_USER,
    CancelVerdict,
    Outcome,
    SendEnds,
    said,
)

UNREACHABLE = "127.0.0.1:9 is unreachable (connection refused)"


def test_a_cancel_waits_for_its_sends_result_and_is_answered_by_it() -> None:
    """Told while the send runs, a cancel is answered by the send's result:
    "cancelled" only when the user's cancel ended it; a result of its own
    (verified, failed, the receiver's cancel) that crossed the cancel is
    what it says. Every cancel waiting for that send gets the answer, once."""
    cases = [
        (("cancelled", CANCELLED_BY_USER), CancelVerdict(Outcome.CANCELLED)),
        (("ok", ""), CancelVerdict(Outcome.ENDED, "ok", "")),
        (("unreachable", UNREACHABLE), CancelVerdict(Outcome.ENDED, "unreachable", UNREACHABLE)),
        (
            ("cancelled", "the receiving node's user cancelled the transfer"),
            CancelVerdict(
                Outcome.ENDED, "cancelled", "the receiving node's user cancelled the transfer"
            ),
        ),
    ]
    for (code, reason), verdict in cases:
        ends: SendEnds[str] = SendEnds()
        assert ends.cancel(3, "a", running=True) is None
        assert ends.cancel(3, "b", running=True) is None
        assert ends.ended(4, "ok", "") == []  # another send's end answers none of them
        assert ends.ended(3, code, reason) == [("a", verdict), ("b", verdict)]
        assert ends.waiting == {}
        assert ends.expire(3, "a") is None  # answered: its wait's end says nothing more


def test_a_cancel_of_a_send_that_had_ended_is_answered_at_once() -> None:
    """The send's result came before the cancel: the answer is how it
    ended (verified, failed; cancelled by the user too: by another cancel,
    not this one), with no wait; an id the node does not run and does not
    remember is unknown."""
    ends: SendEnds[str] = SendEnds()
    ends.ended(1, "ok", "")
    ends.ended(2, "unreachable", UNREACHABLE)
    ends.ended(3, "cancelled", CANCELLED_BY_USER)
    # (held or not: a result that came is what the send did)
    assert ends.cancel(1, "a", running=True) == CancelVerdict(Outcome.ENDED, "ok", "")
    assert ends.cancel(2, "a", running=False) == CancelVerdict(
        Outcome.ENDED, "unreachable", UNREACHABLE
    )
    assert ends.cancel(3, "a", running=False) == CancelVerdict(
        Outcome.ENDED, "cancelled", CANCELLED_BY_USER
    )
    assert ends.cancel(9, "a", running=False) == CancelVerdict(Outcome.UNKNOWN)
    assert ends.waiting == {}


def test_a_cancel_whose_send_does_not_end_is_said_unended_and_the_ends_are_bounded() -> None:
    ends: SendEnds[str] = SendEnds(keep=2)
    assert ends.cancel(5, "a", running=True) is None
    assert ends.cancel(5, "b", running=True) is None
    assert ends.expire(5, "a") == CancelVerdict(Outcome.UNENDED)
    assert ends.waiters() == 1
    assert ends.expire(5, "b") == CancelVerdict(Outcome.UNENDED)
    assert ends.waiting == {} and ends.waiters() == 0
    assert ends.ended(5, "ok", "") == []  # its late result: nobody waits any more
    for transfer in (6, 7):
        ends.ended(transfer, "ok", "")
    assert list(ends.ends) == [6, 7]  # the oldest forgotten first
    assert ends.cancel(5, "c", running=False) == CancelVerdict(Outcome.UNKNOWN)


def test_the_command_says_each_verdict_with_its_exit_code() -> None:
    """0 cancelled; 2 a send that had ended already (as for no running send
    of that number); 1 one that did not end within the wait."""
    assert said(3, CancelVerdict(Outcome.CANCELLED)) == ("cancelled transfer 3", 0)
    assert said(3, CancelVerdict(Outcome.ENDED, "ok", "")) == (
        "transfer 3 had already ended (verified)",
        2,
    )
    assert said(3, CancelVerdict(Outcome.ENDED, "unreachable", UNREACHABLE)) == (
        f"transfer 3 had already ended (failed: {UNREACHABLE})",
        2,
    )
    assert said(3, CancelVerdict(Outcome.ENDED, "timeout", "")) == (
        "transfer 3 had already ended (failed (timeout))",
        2,
    )
    assert said(3, CancelVerdict(Outcome.ENDED, "cancelled", CANCELLED_BY_USER)) == (
        "transfer 3 had already ended (cancelled by the user)",
        2,
    )
    assert said(3, CancelVerdict(Outcome.UNENDED)) == (
        "transfer 3 was told to cancel but had not ended after 5 s (see `peercrypt transfers`)",
        1,
    )
    assert said(3, CancelVerdict(Outcome.UNKNOWN)) == (
        "no running transfer 3 (see `peercrypt transfers`)",
        2,
    )
    # A node of a later release naming an outcome this command does not know
    # promises nothing: as not ended.
    assert CancelVerdict.told("postponed", "", "") == CancelVerdict(Outcome.UNENDED)
    assert CancelVerdict.told("ended", "ok", "") == CancelVerdict(Outcome.ENDED, "ok", "")
