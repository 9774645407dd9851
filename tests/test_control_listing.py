"""`transfers` as the control actor gathers it (actors/control.py): one
answer per request, from the sender's and the msender's parts, whatever
order, count or claims their replies come with; and `cancel ID`, answered
with how the send ended. The actor runs in this thread with its real
client socket; its clock is a fake one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors import control
from actors.control import ControlActor
from peercrypt.core.cancels import CANCEL_WAIT, CANCELLED_BY_USER
from peercrypt.crypto.identity import load_or_create_identity, network_server_keys, new_network_key
from peercrypt.node import Node
from peercrypt.settings import NodeSettings
from peercrypt.testing.clock import FakeClock
from peercrypt.testing.in_thread import actor_env
from peercrypt.testing.nodes import loopback_settings
from peercrypt.wire import codec, columns
from peercrypt.wire.local_messages import (
    CancelRequest,
    ErrorReply,
    McTargetProgress,
    Progress,
    Progresses,
    SendRequest,
    SendResult,
    StatusReply,
    StatusRequest,
    StatusWait,
)
from peercrypt.wire.messages import (
    Announce,
    CancelAnswer,
    CancelTransfer,
    SettingReply,
    SettingRequest,
    TransfersReply,
    TransfersRequest,
)
from peercrypt.wire.multicast_messages import McSendRequest, McTargetResult
from peercrypt.wire.network_messages import MembersAtReply, MembersAtRequest

TOKEN = "t" * 32


@dataclass
class Rig:
    actor: ControlActor
    clock: FakeClock
    client: zmq.Socket[Any]
    mailboxes: dict[str, zmq.Socket[Any]]

    def ask(self, request: int) -> int:
        """A `transfers` from the client: control's own id for it (as the
        sender and the msender are asked)."""
        self.client.send_multipart(
            [TOKEN.encode(), codec.encode(TransfersRequest(request=request), codec.LOCAL_VERSION)]
        )
        assert self.actor.api.poll(5000), "control got no request"
        self.actor._on_client(self.actor.api)
        told = []
        for name in ("sender", "msender"):
            assert self.mailboxes[name].poll(5000), f"{name} was not asked"
            msg = codec.decode(self.mailboxes[name].recv())
            assert isinstance(msg, TransfersRequest)
            told.append(msg.request)
        assert told[0] == told[1]
        return told[0]

    def answers(self, wait: float = 0.3) -> list[TransfersReply]:
        """Every answer the client got (waiting ``wait`` s for more: the
        actor runs in this thread, so whatever it sent is there already)."""
        got = []
        while self.client.poll(int(wait * 1000)):
            msg = codec.decode(self.client.recv(), version=codec.LOCAL_VERSION)
            assert isinstance(msg, TransfersReply), msg
            got.append(msg)
        return got

    def wait_over(self) -> None:
        self.clock.advance(control.LISTING_WAIT + 0.1)
        self.actor._run_timers()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with actor_env(("sender", "msender", "scheduler", "health")) as (env, clock, mailboxes):
        settings = NodeSettings(
            data_dir=tmp_path,
            inbox=tmp_path / "inbox",
            identity=load_or_create_identity(tmp_path),
            server_keys=network_server_keys(new_network_key()),
        )
        actor = ControlActor(env, settings, TOKEN)
        actor.setup()
        client = env.context.socket(zmq.DEALER)
        client.linger = 0
        client.connect(actor.endpoint)
        yield Rig(actor, clock, client, mailboxes)


def _rows(who: str, n: int) -> list[dict[str, str]]:
    return [{"id": f"{who}{k}", "file": f"/{who}/{k}"} for k in range(n)]


def test_a_sender_s_repeated_or_misnamed_replies_are_taken_once_and_bounded(rig: Rig) -> None:
    """A buggy (or hostile) attached sender answering a `transfers` several
    times, or under another actor's name or none, adds its rows once: the
    answer is the sender's first rows and the msender's, within the rows'
    bound, and comes once."""
    ours = rig.ask(7)
    many = control.MAX_TRANSFER_ROWS
    rig.actor.on_mail(TransfersReply(request=ours, transfers=_rows("s", 3), actor="sender"))
    for name in ("sender", "", "bogus", "sender"):
        rig.actor.on_mail(TransfersReply(request=ours, transfers=_rows("x", many), actor=name))
    assert rig.answers(0.1) == []
    assert len(rig.actor.listing[ours].rows) <= many  # what it holds meanwhile is bounded
    rig.actor.on_mail(TransfersReply(request=ours, transfers=_rows("m", 2), actor="msender"))
    rig.actor.on_mail(TransfersReply(request=ours, transfers=_rows("y", 1), actor="msender"))
    rig.wait_over()
    (answer,) = rig.answers()
    assert answer.request == 7 and answer.unanswered == []
    # (in the order of their ids, whichever answered first)
    assert [r["id"] for r in answer.transfers] == ["m0", "m1", "s0", "s1", "s2"]
    assert rig.actor.listing == {} and rig.actor.pending == {}


def test_a_reply_after_the_wait_is_dropped_and_the_answer_given_once(rig: Rig) -> None:
    """Two `transfers` at once, the sender away: each is answered once at
    its deadline with the msender's rows and the sender named; the sender's
    late replies answer nothing more."""
    first, second = rig.ask(1), rig.ask(2)
    rig.actor.on_mail(TransfersReply(request=first, transfers=_rows("m", 1), actor="msender"))
    rig.actor.on_mail(TransfersReply(request=second, transfers=[], actor="msender"))
    rig.wait_over()
    answers = sorted(rig.answers(), key=lambda a: a.request)
    assert [(a.request, a.unanswered, len(a.transfers)) for a in answers] == [
        (1, ["sender"], 1),
        (2, ["sender"], 0),
    ]
    for ours in (first, second):
        rig.actor.on_mail(TransfersReply(request=ours, transfers=_rows("s", 1), actor="sender"))
    rig.wait_over()
    assert rig.answers() == []
    assert rig.actor.listing == {} and rig.actor.pending == {}
    assert rig.actor.counters["transfers-unanswered"] == 2


@pytest.mark.parametrize("restarted", ["sender", "msender"])
def test_a_lister_restarted_during_transfers_still_gives_one_answer(
    rig: Rig, restarted: str
) -> None:
    """The sender or the msender restarted while a `transfers` waits for it:
    it holds no send any more (its part is empty), so the answer is the
    other's rows, once, and a `transfers-reply` (not a send's failure)."""
    other = "msender" if restarted == "sender" else "sender"
    ours = rig.ask(5)
    rig.actor.on_actor_restarted(restarted)
    assert rig.answers(0.1) == []
    rig.actor.on_mail(TransfersReply(request=ours, transfers=_rows("o", 2), actor=other))
    (answer,) = rig.answers()
    assert answer.request == 5 and [r["id"] for r in answer.transfers] == ["o0", "o1"]
    assert answer.unanswered == []
    rig.actor.on_mail(TransfersReply(request=ours, transfers=_rows("late", 1), actor=restarted))
    rig.wait_over()
    assert rig.answers() == [] and rig.actor.listing == {} and rig.actor.pending == {}


def test_a_sender_restart_fails_the_sends_handed_to_it_and_nothing_else(rig: Rig) -> None:
    """The sender restarted: the unicast send it was handed ends (the
    sender crashed), while a setting waiting for the scheduler and a send
    still being placed here get their own answers later, not a send's
    failure (each got one before)."""

    def told(name: str, kind: type[Any]) -> Any:
        assert rig.mailboxes[name].poll(5000), f"{name} was not told"
        msg = codec.decode(rig.mailboxes[name].recv())
        assert isinstance(msg, kind), msg
        return msg

    def ask(msg: Any) -> None:
        rig.client.send_multipart([TOKEN.encode(), codec.encode(msg, codec.LOCAL_VERSION)])
        assert rig.actor.api.poll(5000), "control got no request"
        rig.actor._on_client(rig.actor.api)

    ask(SettingRequest(request=11, name="mode", value="normal"))
    setting = told("scheduler", SettingRequest).request
    for request in (12, 13):
        ask(SendRequest(request=request, path="/x", host="127.0.0.1", port=9, chunk_size=4096))
    handed = told("health", MembersAtRequest).request  # 12's; 13 stays placed
    told("health", MembersAtRequest)
    rig.actor.on_mail(MembersAtReply(request=handed, members={}))
    told("scheduler", SendRequest)
    rig.actor.on_actor_restarted("sender")
    rig.actor.on_mail(SettingReply(request=setting, ok=True, text="mode normal"))
    got = []
    while rig.client.poll(300):
        msg = codec.decode(rig.client.recv(), version=codec.LOCAL_VERSION)
        if not isinstance(msg, Progress):  # each send's `checking`
            got.append((type(msg).__name__, msg.request))
    assert got == [("SendResult", 12), ("SettingReply", 11)], got
    assert sorted(rig.actor.pending) == [rig.actor.memory.next_send - 1]  # 13's, still placed
    assert isinstance(rig.actor.placing[rig.actor.memory.next_send - 1], SendRequest)


def test_a_full_line_of_sends_still_lets_transfers_be_listed(rig: Rig) -> None:
    """With MAX_PENDING sends held (waiting in line, a script's thousand
    `send`s), a send more is refused `busy`, but `transfers` (what `top`
    polls: it stopped on that refusal) is still asked and answered."""
    request = 100
    for _ in range(control.MAX_PENDING):
        request += 1
        msg = SendRequest(request=request, path="/x", host="127.0.0.1", port=9, chunk_size=4096)
        rig.client.send_multipart([TOKEN.encode(), codec.encode(msg, codec.LOCAL_VERSION)])
        assert rig.actor.api.poll(5000), "control got no request"
        rig.actor._on_client(rig.actor.api)
    assert len(rig.actor.pending) == control.MAX_PENDING
    while rig.client.poll(100):  # (each send's first Progress)
        assert isinstance(codec.decode(rig.client.recv(), version=codec.LOCAL_VERSION), Progress)
    more = SendRequest(request=9999, path="/x", host="127.0.0.1", port=9, chunk_size=4096)
    rig.client.send_multipart([TOKEN.encode(), codec.encode(more, codec.LOCAL_VERSION)])
    assert rig.actor.api.poll(5000), "control got no request"
    rig.actor._on_client(rig.actor.api)
    assert rig.client.poll(5000), "no answer to the send over the bound"
    refused = codec.decode(rig.client.recv(), version=codec.LOCAL_VERSION)
    assert isinstance(refused, ErrorReply) and refused.code == "busy", refused
    ours = rig.ask(7)  # asked of the sender and the msender, not refused
    rig.actor.on_mail(TransfersReply(request=ours, transfers=_rows("s", 2), actor="sender"))
    rig.actor.on_mail(TransfersReply(request=ours, transfers=_rows("m", 1), actor="msender"))
    (answer,) = rig.answers()  # the first by id, as many as one message holds
    ids = [r["id"] for r in answer.transfers]
    assert answer.request == 7 and ids == [str(k) for k in range(1, len(ids) + 1)], ids[:5]
    assert 500 < len(ids) < control.MAX_PENDING  # (1,024 rows failed to encode: no answer)


def test_sends_are_numbered_from_one_whatever_else_was_asked(rig: Rig) -> None:
    """A send's id (what `transfers`, `top` and `cancel ID` show) counts
    sends only: the `transfers` a live view polls and the settings asked
    meanwhile take ids of their own, never one a send shows."""
    others = [rig.ask(k) for k in range(5)]  # a view's polls
    for msg in (
        SettingRequest(request=40, name="mode", value="normal"),
        SendRequest(request=41, path="/x", host="127.0.0.1", port=9, chunk_size=4096),
        McSendRequest(request=42, path="/y", targets=["127.0.0.1:9"], chunk_size=4096),
        SendRequest(request=43, path="/z", host="127.0.0.1", port=9, chunk_size=4096),
    ):
        rig.client.send_multipart([TOKEN.encode(), codec.encode(msg, codec.LOCAL_VERSION)])
        assert rig.actor.api.poll(5000), "control got no request"
        rig.actor._on_client(rig.actor.api)
    placed = []
    while rig.mailboxes["health"].poll(1000) and len(placed) < 3:
        placed.append(codec.decode(rig.mailboxes["health"].recv()))
    assert [m.request for m in placed] == [1, 2, 3]
    assert min(others) > 3 and len(set(others)) == len(others)


def test_a_quiet_sends_client_gets_notes_and_a_beat_not_every_tick(rig: Rig) -> None:
    """A send whose client shows no progress (`send --json`) gets a Progress
    only with a new note or every QUIET_BEAT seconds (its sign the node is
    alive); a send whose client draws a bar gets every tick's. Both get the
    sender's first at once, the first that names the transfer: the one
    control sends as it takes the request names none (the node may still
    refuse it; the shell announces a background send by the name)."""
    for request, quiet in ((51, True), (52, False)):
        msg = SendRequest(
            request=request, path="/q", host="127.0.0.1", port=9, chunk_size=4096, quiet=quiet
        )
        rig.client.send_multipart([TOKEN.encode(), codec.encode(msg, codec.LOCAL_VERSION)])
        assert rig.actor.api.poll(5000), "control got no request"
        rig.actor._on_client(rig.actor.api)
    ours = {51: rig.actor.memory.next_send - 2, 52: rig.actor.memory.next_send - 1}
    first = []  # each send's `checking` while it is placed: a quiet one's too,
    while rig.client.poll(50):  # the command's sign that the node took it
        first.append(codec.decode(rig.client.recv(), version=codec.LOCAL_VERSION))
    assert sorted(p.request for p in first if isinstance(p, Progress)) == [51, 52], first
    assert [p.transfer for p in first if isinstance(p, Progress)] == [0, 0], first
    got: dict[int, list[str]] = {51: [], 52: []}
    named: dict[int, set[int]] = {51: set(), 52: set()}

    def tick(note: str = "") -> None:
        rig.clock.advance(0.1)
        reports = [Progress(request=ours[r], done_bytes=1, total_bytes=9, note=note) for r in ours]
        for batch in columns.batches(reports, Progresses):
            rig.actor.on_mail(batch)
        while rig.client.poll(50):
            p = codec.decode(rig.client.recv(), version=codec.LOCAL_VERSION)
            if isinstance(p, Progress) and p.request in got:
                got[p.request].append(p.note)
                named[p.request].add(p.transfer)

    ticks = int(control.QUIET_BEAT / 0.1) + 5  # one beat and a little
    for _ in range(ticks):
        tick()
    tick("the receiver's port closed; retrying")
    tick("the receiver's port closed; retrying")  # the same note: not again
    assert len(got[52]) == ticks + 2  # every tick
    # The sender's first, at once; a beat; the note.
    assert got[51] == ["", "", "the receiver's port closed; retrying"], got[51]
    assert named == {51: {ours[51]}, 52: {ours[52]}}, named
    rig.clock.advance(control.QUIET_BEAT)
    tick("the receiver's port closed; retrying")
    assert len(got[51]) == 4  # the beat, though nothing changed


def test_a_quiet_multicasts_client_gets_no_receiver_progress(rig: Rig) -> None:
    """A multicast whose client draws nothing gets no McTargetProgress (each
    receiver's McTargetResult still comes) and its Progress as a quiet
    send's: the first, then a beat every QUIET_BEAT seconds."""
    msg = McSendRequest(request=61, path="/m", targets=["127.0.0.1:9"], chunk_size=4096, quiet=True)
    rig.client.send_multipart([TOKEN.encode(), codec.encode(msg, codec.LOCAL_VERSION)])
    assert rig.actor.api.poll(5000), "control got no request"
    rig.actor._on_client(rig.actor.api)
    ours = rig.actor.memory.next_send - 1
    got: list[str] = []
    for _ in range(int(control.QUIET_BEAT / 0.1) + 5):
        rig.clock.advance(0.1)
        for m in (
            McTargetProgress(request=ours, target="127.0.0.1:9", state="sending",
                             done_bytes=1, total_bytes=9),
            Progress(request=ours, done_bytes=1, total_bytes=9),
        ):  # fmt: skip
            rig.actor.on_mail(m)
    rig.actor.on_mail(
        McTargetResult(request=ours, target="127.0.0.1:9", code="ok", stored_as="m", reason="")
    )
    while rig.client.poll(100):
        got.append(type(codec.decode(rig.client.recv(), version=codec.LOCAL_VERSION)).__name__)
    assert got == ["Progress", "Progress", "McTargetResult"], got  # the first, a beat


def _result(ours: int, code: str, reason: str = "") -> SendResult:
    return SendResult(request=ours, code=code, reason=reason, size=0, digest=b"", stored_as="")


def test_a_cancel_is_answered_by_how_its_send_ended_even_as_the_cancel_came(rig: Rig) -> None:
    """`cancel ID` is answered once the send's result comes: a send that
    ended verified, or failed, on its own just as control told the sender
    to cancel it (its result crossed the cancel: the sender ignores a cancel
    of a send it no longer holds) is said to have ended so, never
    "cancelled"; one the cancel stopped is "cancelled"; one whose result
    does not come (an attached sender away) is "unended" after CANCEL_WAIT
    s. A send ended before the cancel, and an id never run, are answered at
    once; a send still being placed is cancelled here, at once. Control
    answered "cancelling transfer N" at once whatever N did, and the
    command said "cancelled transfer N" of a verified file."""

    def ask(msg: Any) -> None:
        rig.client.send_multipart([TOKEN.encode(), codec.encode(msg, codec.LOCAL_VERSION)])
        assert rig.actor.api.poll(5000), "control got no request"
        rig.actor._on_client(rig.actor.api)

    def told(name: str) -> list[Any]:
        got = []
        while rig.mailboxes[name].poll(100):
            got.append(codec.decode(rig.mailboxes[name].recv()))
        return got

    def answers() -> list[tuple[str, int, str, str]]:
        got = []
        while rig.client.poll(100):
            msg = codec.decode(rig.client.recv(), version=codec.LOCAL_VERSION)
            if isinstance(msg, CancelAnswer):
                got.append(("answer", msg.request, msg.outcome, msg.code))
            elif isinstance(msg, SendResult):
                got.append(("result", msg.request, msg.code, msg.reason))
        return got

    sends = {}
    for request in (21, 22, 23, 24):
        ask(SendRequest(request=request, path="/x", host="127.0.0.1", port=9, chunk_size=4096))
        sends[request] = rig.actor.memory.next_send - 1
    for placed in told("health")[:3]:  # 24 stays being placed
        rig.actor.on_mail(MembersAtReply(request=placed.request, members={}))
    answers()  # (each send's `checking`)
    told("scheduler")

    ask(CancelTransfer(request=31, transfer=sends[21]))
    assert told("sender") == [CancelRequest(request=sends[21])]  # told, not yet answered
    assert answers() == []
    rig.actor.on_mail(_result(sends[21], "ok"))  # verified: it crossed the cancel
    assert answers() == [("answer", 31, "ended", "ok"), ("result", 21, "ok", "")]

    ask(CancelTransfer(request=32, transfer=sends[22]))
    assert answers() == []
    rig.actor.on_mail(_result(sends[22], "unreachable", "refused"))
    assert answers() == [("answer", 32, "ended", "unreachable"), ("result", 22, "unreachable",
                                                                    "refused")]  # fmt: skip

    ask(CancelTransfer(request=33, transfer=sends[23]))
    rig.actor.on_mail(_result(sends[23], "cancelled", CANCELLED_BY_USER))
    assert answers() == [("answer", 33, "cancelled", ""), ("result", 23, "cancelled",
                                                            CANCELLED_BY_USER)]  # fmt: skip

    ask(CancelTransfer(request=34, transfer=sends[24]))  # being placed: ends here, at once
    assert answers() == [("answer", 34, "cancelled", ""), ("result", 24, "cancelled",
                                                            CANCELLED_BY_USER)]  # fmt: skip

    ask(CancelTransfer(request=35, transfer=sends[21]))  # ended before: at once
    ask(CancelTransfer(request=36, transfer=999))  # never run
    assert answers() == [("answer", 35, "ended", "ok"), ("answer", 36, "unknown", "")]

    ask(SendRequest(request=25, path="/x", host="127.0.0.1", port=9, chunk_size=4096))
    (placing,) = [m for m in told("health") if isinstance(m, MembersAtRequest)]
    rig.actor.on_mail(MembersAtReply(request=placing.request, members={}))
    answers()
    ask(CancelTransfer(request=37, transfer=placing.request))
    rig.clock.advance(CANCEL_WAIT - 0.1)
    rig.actor._run_timers()
    assert answers() == []
    rig.clock.advance(0.2)
    rig.actor._run_timers()
    assert answers() == [("answer", 37, "unended", "")]
    assert rig.actor.ends.waiting == {}


def test_a_restarted_control_numbers_on_and_still_cancels_the_sends_numbered_before(
    rig: Rig,
) -> None:
    """Control crashed and the node started another (the sender runs on):
    the new one numbers sends and other requests after the last ids the
    crashed one gave, never one the sender may still run (it numbered from
    1 again: two sends of one id, and the earlier one's late result went
    to the new one's client). The crashed one's clients are told their
    send goes on, not that it was cancelled. `cancel N` of a send numbered before the
    restart is told to the sender and answered by its result; one that
    ended before the restart is said to have ended so, at once."""

    def ask(actor: ControlActor, client: zmq.Socket[Any], msg: Any) -> None:
        client.send_multipart([TOKEN.encode(), codec.encode(msg, codec.LOCAL_VERSION)])
        assert actor.api.poll(5000), "control got no request"
        actor._on_client(actor.api)

    def told(name: str) -> list[Any]:
        got = []
        while rig.mailboxes[name].poll(100):
            got.append(codec.decode(rig.mailboxes[name].recv()))
        return got

    def answers(client: zmq.Socket[Any]) -> list[tuple[str, int, str]]:
        got = []
        while client.poll(100):
            msg = codec.decode(client.recv(), version=codec.LOCAL_VERSION)
            if isinstance(msg, CancelAnswer):
                got.append(("answer", msg.request, msg.outcome))
            elif isinstance(msg, SendResult):
                got.append(("result", msg.request, msg.code))
        return got

    first = rig.actor
    for request in (41, 42, 45):
        ask(first, rig.client, SendRequest(request=request, path="/x", host="127.0.0.1", port=9,
                                           chunk_size=4096))  # fmt: skip
    placed = [m.request for m in told("health")]
    assert placed == [1, 2, 3]
    for ours in placed[:2]:  # (3 is still being placed when control fails)
        first.on_mail(MembersAtReply(request=ours, members={}))
    first.on_mail(_result(1, "ok"))  # 1 ended; 2 runs on at the sender
    earlier_other = rig.ask(7)
    ask(first, rig.client, CancelTransfer(request=50, transfer=2))  # waits for 2's end
    ask(first, rig.client, StatusWait(request=8, after=first.memory.changes))  # held
    answers(rig.client)
    told("scheduler"), told("health"), told("sender")  # (the first's outcome, 2's cancel)
    first.crashed = True  # as the actor's loop sets it, then tears it down
    first.teardown()
    got, statuses = {}, []
    while rig.client.poll(100):
        msg = codec.decode(rig.client.recv(), version=codec.LOCAL_VERSION, lenient=True)
        if isinstance(msg, SendResult):
            got[msg.request] = (msg.code, msg.reason)
        statuses += [msg.request] if isinstance(msg, StatusReply) else []
    # Not "cancelled": the sender runs on with it; the one only placed here ends.
    assert got[42] == ("internal", "the node's control actor failed; transfer 2 goes on "
                                   "(see `peercrypt transfers`)")  # fmt: skip
    assert got[45] == ("internal", "the node's control actor failed; try again")
    assert statuses == [8]  # its client looks again (at a control to come)
    before = first.memory.changes

    second = ControlActor(first.env, first.settings, TOKEN, first.memory)  # the node's restart
    second.setup()
    assert second.memory.ends.waiting == {}  # (the cancel's client went with the socket)
    client = first.env.context.socket(zmq.DEALER)
    client.linger = 0
    client.connect(second.endpoint)
    ask(second, client, SendRequest(request=43, path="/y", host="127.0.0.1", port=9,
                                    chunk_size=4096))  # fmt: skip
    (placing,) = told("health")
    assert placing.request == 4
    ask(second, client, TransfersRequest(request=44))
    assert {m.request for m in told("sender")} == {earlier_other + 2}  # (after the wait's)
    ask(second, client, StatusRequest(request=46))
    (status,) = [m for m in _all(client) if isinstance(m, StatusReply)]
    assert status.changes > before  # counted on: a count from before is never "no news"

    ask(second, client, CancelTransfer(request=51, transfer=2))  # numbered before the restart
    assert CancelRequest(request=2) in told("sender")
    assert answers(client) == []
    second.on_mail(_result(2, "cancelled", CANCELLED_BY_USER))
    assert answers(client) == [("answer", 51, "cancelled")]  # its result: no client of 2's here
    ask(second, client, CancelTransfer(request=52, transfer=1))  # ended before the restart
    ask(second, client, CancelTransfer(request=53, transfer=3))  # ended with the first control
    ask(second, client, CancelTransfer(request=54, transfer=5))  # never numbered
    assert answers(client) == [("answer", 52, "ended"), ("answer", 53, "ended"),
                               ("answer", 54, "unknown")]  # fmt: skip


def test_the_node_starts_every_control_with_one_memory(tmp_path: Path) -> None:
    """What the node restarts control with: each control its supervisor
    makes numbers on from the one before."""
    node = Node(loopback_settings(tmp_path, new_network_key()))
    try:
        (make,) = [slot.factory for slot in node.supervisor._slots if slot.name == "control"]
        first = make(node.env)
        assert [first.memory.send_id(), first.memory.send_id()] == [1, 2]
        second = make(node.env)
        assert second.memory.send_id() == 3 and second.memory.before_restart(2)
        assert not second.memory.before_restart(3)
    finally:
        node.stop()


def _status_replies(client: zmq.Socket[Any], wait: float = 0.1) -> list[StatusReply]:
    got = []
    while client.poll(int(wait * 1000)):
        msg = codec.decode(client.recv(), version=codec.LOCAL_VERSION, lenient=True)
        assert isinstance(msg, StatusReply), msg
        got.append(msg)
    return got


def test_a_status_wait_is_answered_at_the_node_s_next_news_or_at_its_end(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shell's watcher asks for the node's status once it has news
    (StatusWait): held while nothing changes, counters going up included;
    answered at a fact reported anew, a send taken, or when its wait is
    over; at once when its ``after`` is not the node's news count (news
    came since the client's look) or its wait is no wait, and once the node
    holds its bound of them."""

    def ask(request: int, after: int, wait: float = 30.0) -> None:
        msg = StatusWait(request=request, after=after, wait=wait)
        rig.client.send_multipart([TOKEN.encode(), codec.encode(msg, codec.LOCAL_VERSION)])
        assert rig.actor.api.poll(5000), "control got no request"
        rig.actor._on_client(rig.actor.api)

    facts = {"mode": "normal"}
    rig.actor.on_mail(Announce(actor="scheduler", facts=facts, counters={}))
    now = rig.actor.memory.changes
    ask(1, now)
    rig.actor.on_mail(Announce(actor="scheduler", facts=facts, counters={"grants": 7}))
    assert _status_replies(rig.client) == []  # counters are no news
    rig.actor.on_mail(Announce(actor="scheduler", facts={"mode": "aimd"}, counters={}))
    (reply,) = _status_replies(rig.client)
    assert reply.request == 1 and reply.changes == now + 1 and reply.node["mode"] == "aimd"

    ask(2, now)  # news since: at once
    assert [r.request for r in _status_replies(rig.client)] == [2]
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        ask(3, reply.changes, bad)
        assert [r.request for r in _status_replies(rig.client)] == [3], bad

    ask(4, reply.changes, wait=2.0)
    rig.clock.advance(1.9)
    rig.actor._run_timers()
    assert _status_replies(rig.client) == []
    rig.clock.advance(0.2)
    rig.actor._run_timers()
    assert [(r.request, r.changes) for r in _status_replies(rig.client)] == [(4, reply.changes)]

    ask(5, reply.changes)
    ask(6, reply.changes)
    timers = [timer for _, _, timer in rig.actor.status_waits.values()]
    rig.client.send_multipart([TOKEN.encode(), codec.encode(
        SendRequest(request=60, path="/x", host="127.0.0.1", port=9, chunk_size=4096),
        codec.LOCAL_VERSION)])  # fmt: skip
    assert rig.actor.api.poll(5000)
    rig.actor._on_client(rig.actor.api)  # a send taken: news
    got = [m for m in _all(rig.client) if isinstance(m, StatusReply)]
    assert sorted(r.request for r in got) == [5, 6]
    assert rig.actor.status_waits == {}
    assert [t.cancelled for t in timers] == [True, True]  # (not left in the heap for 30 s)
    rig.clock.advance(control.MAX_STATUS_WAIT + 1)
    rig.actor._run_timers()
    assert [m for m in _all(rig.client) if isinstance(m, StatusReply)] == []

    # A send's progress (unicast or a multicast target's) and its end are news.
    ours = rig.actor.memory.next_send - 1
    progress = Progress(request=ours, done_bytes=1, total_bytes=9, note="", done_files=0,
                        total_files=0, phase="sending")  # fmt: skip
    for news in (
        next(columns.batches([progress], Progresses)),
        McTargetProgress(
            request=ours, target="127.0.0.1:9", state="multicast", done_bytes=1, total_bytes=9
        ),
        _result(ours, "ok"),
    ):
        ask(10, rig.actor.memory.changes)
        assert _status_replies(rig.client) == [], news
        rig.actor.on_mail(news)
        assert [r.request for r in _all(rig.client) if isinstance(r, StatusReply)] == [10], news

    monkeypatch.setattr(control, "MAX_PENDING", 2)
    for request in (7, 8):
        ask(request, rig.actor.memory.changes)
    assert _status_replies(rig.client) == []
    ask(9, rig.actor.memory.changes)  # beyond the bound: answered at once
    assert [r.request for r in _status_replies(rig.client)] == [9]
    assert rig.actor.counters["status-waits-held"] == 9  # 1, 4, 5, 6, 10 thrice, 7, 8


def _all(client: zmq.Socket[Any], wait: float = 0.1) -> list[Any]:
    got = []
    while client.poll(int(wait * 1000)):
        got.append(codec.decode(client.recv(), version=codec.LOCAL_VERSION, lenient=True))
    return got
