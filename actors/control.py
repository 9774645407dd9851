"""Control actor: the node's local API for the CLI (and later the shell).

A ROUTER on loopback. Every request carries the token from
``DATA_DIR/control.json`` (mode 0600 in a 0700 directory), so only the node's
own user can drive it; a wrong token gets an error and nothing else. The
actor also collects every other actor's facts and counters for ``status``.

Frames from a client: ``[token, request]``; to a client: ``[reply]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hmac
import json
import logging
import math
import os
import secrets
from pathlib import Path
from typing import Any, cast

import zmq

import peercrypt
from peercrypt.control_file import CONTROL_FILE
from peercrypt.core.address import join_host_port
from peercrypt.core.cancels import CANCEL_WAIT, CANCELLED_BY_USER, CancelVerdict, SendEnds
from peercrypt.crypto.identity import fingerprint
from peercrypt.errors import NOT_THE_PEERS, ResultCode
from peercrypt.runtime.actor import Actor, ActorEnv, Timer, bound_endpoint
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec, columns
from peercrypt.wire import multicast_messages as _mc
from peercrypt.wire.messages import (
    MAX_STATUS_COUNTERS,
    Announce,
    CancelAnswer,
    CancelIncoming,
    CancelRequest,
    CancelTransfer,
    ErrorReply,
    McTargetProgress,
    Progress,
    Progresses,
    SendRequest,
    SendResult,
    SettingReply,
    SettingRequest,
    StatusReply,
    StatusRequest,
    StatusWait,
    TransfersReply,
    TransfersRequest,
)
from peercrypt.wire.network_messages import (  # discovery and health monitoring
    CheckRequest,
    CheckResult,
    GossipControl,
    GossipState,
    JoinRequest,
    JoinResult,
    MembersAtReply,
    MembersAtRequest,
    PeersReply,
    PeersRequest,
    ProvenOutcome,
    SendProven,
    TransferOutcome,
)

log = logging.getLogger("peercrypt.control")

MAX_PENDING = 1024
# Beyond MAX_PENDING requests held (sends waiting in line hold theirs until
# they end), room kept for the short ones, which are answered at once or
# within a few seconds: `transfers`, `peers`, a setting, a check. A user's
# `top` and `transfers` still answer with a thousand sends queued.
MAX_SHORT = 64
QUIET_BEAT = 5.0  # seconds between the Progress a quiet send's client still gets
OTHER_IDS = 1 << 40  # ids of requests that are not sends start here (sends: from 1)
MAX_TRANSFER_ROWS = 1024  # TransfersReply.transfers' bound
# `transfers` answers with what the sender and the msender listed, or after
# this long with the part that came (an attached sender may be away), under
# the CLI's own wait for an answer (5 s): long enough that a sender slowed by
# a loaded host is still listed.
LISTING_WAIT = 4.0
LISTERS = frozenset({"sender", "msender"})
MAX_STATUS_WAIT = 60.0  # seconds a StatusWait is held at most


class ControlMemory:
    """What the control actor numbers and remembers for the node's whole
    life, across its own restarts (the node makes one and hands it to each
    control it starts; only the one running uses it).

    A control restarted after a crash numbered sends from 1 again while the
    sender still ran the earlier ones: a new send could take the id of one
    running (two rows of one id in `transfers`, `cancel N` aimed at either),
    and a late result or progress of the earlier one was relayed to the new
    one's client. Its other requests' ids the same. The sends' ends are kept
    too, so that `cancel N` of a send that ended before the restart says how
    it ended. The cancels that waited for an end are not: their clients'
    connections went with the crashed actor's socket."""

    def __init__(self) -> None:
        self.next_send = 1
        self.next_other = OTHER_IDS
        self.ends: SendEnds[tuple[bytes, int]] = SendEnds()
        self.first_send = 1  # the running control's first send id
        # The node's news so far (StatusReply.changes): a client's count
        # from before a restart is never taken for "nothing new" after it.
        self.changes = 0

    def started(self) -> None:
        """A control starts with this memory (the node's first, or one
        restarted)."""
        self.ends.waiting.clear()
        self.first_send = self.next_send

    def send_id(self) -> int:
        ours, self.next_send = self.next_send, self.next_send + 1
        return ours

    def other_id(self) -> int:
        ours, self.next_other = self.next_other, self.next_other + 1
        return ours

    def before_restart(self, ours: int) -> bool:
        """Whether ``ours`` is a send an earlier control numbered: the
        sender may still run it, though this control holds none of it."""
        return 1 <= ours < self.first_send


@dataclasses.dataclass
class _Listing:
    """A `transfers` asked of the sender and the msender: their rows so far."""

    rows: list[dict[str, str]] = dataclasses.field(default_factory=list)
    answered: set[str] = dataclasses.field(default_factory=set)


# Requests from local clients that another actor answers: type -> actor. The
# request's ``request`` id is replaced by the control actor's own while it is
# away, and restored on every reply.
ROUTES: dict[type[codec.Message], str] = {
    SendRequest: "scheduler",  # which resolves the policy and hands it to the sender
    SettingRequest: "scheduler",
    TransfersRequest: "sender",
    CancelIncoming: "receiver",  # the receiving side's own cancel (docs/commands.md)
    PeersRequest: "health",  # discovery and health monitoring (docs/membership.md)
    CheckRequest: "health",
    JoinRequest: "discovery",
    GossipControl: "discovery",
    _mc.McSendRequest: "msender",  # multicast (docs/multicast.md)
    _mc.McListen: "mreceiver",
}
# Mail relayed back to the requesting client: type -> whether it ends the request.
REPLIES: dict[type[codec.Message], bool] = {
    Progress: False,
    SendResult: True,
    SettingReply: True,
    TransfersReply: True,
    PeersReply: True,
    CheckResult: True,
    JoinResult: True,
    GossipState: True,
    McTargetProgress: False,
    _mc.McTargetResult: False,
    _mc.McSendResult: True,
    _mc.McListening: False,
    _mc.McReceived: False,
    _mc.McListenEnd: True,
}


def _with_request(msg: codec.Message, request: int) -> codec.Message:
    """The same message with another ``request`` id (messages are frozen)."""
    replaced: codec.Message = dataclasses.replace(cast(Any, msg), request=request)
    return replaced


class ControlActor(Actor):
    name = "control"

    def __init__(
        self,
        env: ActorEnv,
        settings: NodeSettings,
        token: str,
        memory: ControlMemory | None = None,
    ) -> None:
        super().__init__(env)
        self.memory = memory or ControlMemory()
        self.memory.started()
        self.settings = settings
        self.token = token.encode()
        self.announced: dict[str, Announce] = {}
        self.pending: dict[int, tuple[bytes, int]] = {}  # our id -> (client route, their id)
        # Ids of ours (numbered by `memory`, across restarts): a send's is
        # the one `transfers`, `top` and `cancel ID` show, counted on its
        # own from 1 (every `transfers` a view polls is a request too: sends
        # were numbered 724, 734 after a dozen).
        # Sends whose client shows no progress (`send --json`, `--no-progress`,
        # the shell's background sends): our id -> (when one was last relayed,
        # its note). They get a Progress with a new note, or every QUIET_BEAT s
        # (the client's sign that the node is alive), not every tick.
        self.quiet: dict[int, tuple[float, str]] = {}
        # Sends under way: their destination, and the identity that verified
        # it (b"" until the sender's SendProven, just before its result).
        self.sending: dict[int, tuple[str, int, bytes]] = {}
        # sends and multicasts waiting for members' records at their addresses
        self.placing: dict[int, SendRequest | _mc.McSendRequest] = {}
        # `transfers` asked of the sender and the msender
        self.listing: dict[int, _Listing] = {}
        # How the last sends ended, and `cancel ID`s waiting for their send's
        # end: each answered with it (client route, its request id).
        self.ends = self.memory.ends
        # The StatusWaits held until the node's next news (memory.changes):
        # a key of ours -> (client route, its request id, the timer that
        # answers it unchanged).
        self.status_waits: dict[int, tuple[bytes, int, Timer]] = {}

    def setup(self) -> None:
        sock = self.api = self.socket(zmq.ROUTER)
        sock.maxmsgsize = 64 * 1024
        self.bind(sock, "127.0.0.1", self.settings.control_port, "the control port")
        self.endpoint = bound_endpoint(sock)
        self.watch(sock, self._on_client)
        self.control_file = self.settings.control_file or self.settings.data_dir / CONTROL_FILE
        write_control_file(self.control_file, self.endpoint, self.token.decode())

    def teardown(self) -> None:
        if self.crashed:  # a send only placed here ends with this control
            for ours in self.placing:  # (a cancel of one ends it at once: none waits)
                self.ends.ended(ours, "internal", "the node's control actor failed")
        self._changed()  # the held StatusWaits are answered (their clients look again)
        for ours, (route, theirs) in self.pending.items():
            code: str = ResultCode.CANCELLED
            reason = "the node is stopping"
            if self.crashed:  # the node goes on, and the sender with what it was handed
                code, reason = "internal", "the node's control actor failed; try again"
                if ours < OTHER_IDS and ours not in self.placing:
                    reason = (
                        f"the node's control actor failed; transfer {ours} goes on "
                        "(see `peercrypt transfers`)"
                    )
            stopped = SendResult(
                request=theirs,
                code=code,
                reason=reason,
                size=0,
                digest=b"",
                stored_as="",
            )
            with contextlib.suppress(zmq.ZMQError):
                self.api.send_multipart([route, _local(stopped)], zmq.NOBLOCK)
        self.pending.clear()
        try:
            if json.loads(self.control_file.read_text()).get("pid") == os.getpid():
                self.control_file.unlink()
        except (OSError, ValueError, AttributeError):
            pass

    def _on_client(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            route = frames[0]
            if len(frames) != 3 or not hmac.compare_digest(frames[1], self.token):
                self.count("control-unauthorised")
                sock.send_multipart(
                    [
                        route,
                        _local(ErrorReply(code="unauthorised", reason="wrong control token")),
                    ]
                )
                continue
            try:
                msg = codec.decode(frames[2], version=codec.LOCAL_VERSION)
            except codec.VersionMismatch as exc:  # a command of another release
                sock.send_multipart([route, codec.mismatch_reply(exc.theirs, codec.LOCAL_VERSION)])
                continue
            except codec.DecodeError as exc:
                sock.send_multipart(
                    [route, _local(ErrorReply(code="bad-request", reason=str(exc)[:200]))]
                )
                continue
            self._on_request(route, msg)

    def _on_request(self, route: bytes, msg: codec.Message) -> None:
        if isinstance(msg, StatusRequest):
            self.api.send_multipart([route, _local(self._status(msg.request))])
        elif isinstance(msg, StatusWait):
            self._status_wait(route, msg)
        elif isinstance(msg, CancelRequest):
            for ours, (client, theirs) in list(self.pending.items()):
                if client == route and theirs == msg.request:
                    self._cancel(ours)
        elif isinstance(msg, CancelTransfer):
            self._cancel_transfer(route, msg)
        elif type(msg) in ROUTES:
            held = isinstance(msg, SendRequest | _mc.McSendRequest | _mc.McListen)
            if len(self.pending) >= MAX_PENDING + (0 if held else MAX_SHORT):
                reply = ErrorReply(code="busy", reason="too many requests in progress")
                self.api.send_multipart([route, _local(reply)])
                return
            if isinstance(msg, SendRequest | _mc.McSendRequest):
                ours = self.memory.send_id()
                self._changed()
            else:
                ours = self.memory.other_id()
            self.pending[ours] = (route, cast(Any, msg).request)
            if isinstance(msg, SendRequest | _mc.McSendRequest) and msg.quiet:
                # Its first Progress goes at once: the command's sign that the
                # node took the request (`send` gives a node 2 s to answer).
                self.quiet[ours] = (-math.inf, "")
            if isinstance(msg, SendRequest | _mc.McSendRequest):  # whom records place there
                self._place_first(cast(SendRequest | _mc.McSendRequest, _with_request(msg, ours)))
            else:
                self.tell(ROUTES[type(msg)], _with_request(msg, ours))
            if isinstance(msg, TransfersRequest):  # the multicasts' too: one reply of both
                self.listing[ours] = _Listing()
                self.tell("msender", _with_request(msg, ours))
                self.call_later(LISTING_WAIT, functools.partial(self._listed, ours))
        else:
            reply = ErrorReply(code="bad-request", reason=f"unexpected {msg.TYPE}")
            self.api.send_multipart([route, _local(reply)])

    def _status_wait(self, route: bytes, msg: StatusWait) -> None:
        """Held until the node's next news (or its wait is over), unless
        there was news since the client's last look."""
        wait = min(msg.wait, MAX_STATUS_WAIT) if math.isfinite(msg.wait) else 0.0
        if msg.after != self.memory.changes or wait <= 0 or len(self.status_waits) >= MAX_PENDING:
            self.api.send_multipart([route, _local(self._status(msg.request))])
            return
        key = self.memory.other_id()
        timer = self.call_later(wait, functools.partial(self._status_waited, key))
        self.status_waits[key] = (route, msg.request, timer)
        self.count("status-waits-held")

    def _status_waited(self, key: int) -> None:
        held = self.status_waits.pop(key, None)
        if held is not None:
            route, theirs, _ = held
            self.api.send_multipart([route, _local(self._status(theirs))])
            self.count("status-waits-answered")

    def _changed(self) -> None:
        """News: a fact reported, a send taken, its progress or its end.
        The held StatusWaits are answered."""
        self.memory.changes += 1
        waits, self.status_waits = self.status_waits, {}
        for route, theirs, timer in waits.values():
            timer.cancel()
            self.api.send_multipart([route, _local(self._status(theirs))])
            self.count("status-waits-answered")

    def _cancel_transfer(self, route: bytes, msg: CancelTransfer) -> None:
        """``peercrypt cancel ID``: answered once the send's result came
        (cancelled by it, or ended on its own just before), or at once for
        one that had ended or that the node does not run; after CANCEL_WAIT
        s without its result, as not ended. Ids in `transfers` are ours:
        control, the sender and msender know them."""
        ours, waiter = msg.transfer, (route, msg.request)
        if self.ends.waiters() >= MAX_PENDING:
            reply = ErrorReply(code="busy", reason="too many requests in progress")
            self.api.send_multipart([route, _local(reply)])
            return
        # (A send an earlier control numbered, not known to have ended, may
        # still run: told to cancel, as one of ours.)
        running = ours < OTHER_IDS and (ours in self.pending or self.memory.before_restart(ours))
        verdict = self.ends.cancel(ours, waiter, running)
        if verdict is not None:
            self._answer_cancel(waiter, verdict)
            return
        self._cancel(ours)  # (a send being placed ends here: answered at once)
        self.call_later(CANCEL_WAIT, functools.partial(self._cancel_waited, ours, waiter))

    def _cancel_waited(self, ours: int, waiter: tuple[bytes, int]) -> None:
        verdict = self.ends.expire(ours, waiter)
        if verdict is not None:
            self.count("cancels-unended")
            self._answer_cancel(waiter, verdict)

    def _answer_cancel(self, waiter: tuple[bytes, int], verdict: CancelVerdict) -> None:
        route, theirs = waiter
        answer = CancelAnswer(
            request=theirs, outcome=verdict.outcome, code=verdict.code, reason=verdict.reason
        )
        self.api.send_multipart([route, _local(answer)])

    def _ended(self, ours: int, code: str, reason: str) -> None:
        """Send ``ours`` ended (its result is on its way to its client):
        remembered, and the cancels waiting for it answered."""
        for waiter, verdict in self.ends.ended(ours, code, reason[:512]):
            self._answer_cancel(waiter, verdict)
        self._changed()

    def _cancel(self, ours: int) -> None:
        """Cancel send ``ours`` wherever it is, by its client's CancelRequest
        or by its id (CancelTransfer, ``peercrypt cancel ID``).

        While it is being placed (``placing``: health has not answered, or
        an attached health is away) only control holds it: it ends here, and
        health's late answer is dropped. Told to the others, none of which
        has it yet, the cancel would be lost and the send run once placed.

        Past its placing, a send goes to the sender through the scheduler
        (``ROUTES``), so a cancel told the sender directly can arrive before
        its own request, which the sender then would not know, and the send
        would go on as if never cancelled. The same cancel therefore also
        follows the request's path: mailboxes deliver in order and the
        scheduler forwards in order, so it reaches the sender after the
        request. The direct one still stops a running send when the
        scheduler is attached from elsewhere and gone; the sender ignores a
        cancel for a request it does not hold, so the second of the two
        changes nothing."""
        placing = self.placing.pop(ours, None)
        if isinstance(placing, SendRequest):
            self._refuse_send(placing, ResultCode.CANCELLED, CANCELLED_BY_USER)
            return
        if placing is not None:
            self._refuse_multicast(ours, ResultCode.CANCELLED, CANCELLED_BY_USER)
            return
        self.tell("sender", CancelRequest(request=ours))
        self.tell("scheduler", CancelRequest(request=ours))
        self.tell("msender", CancelRequest(request=ours))  # multicasts come straight

    def _status(self, request: int) -> StatusReply:
        s = self.settings
        node = {
            "version": peercrypt.__version__,
            "fingerprint": fingerprint(s.identity.public),
            "pid": str(os.getpid()),
            "control": self.endpoint,
            "admission": "open" if s.open_network else ("allow-list" if s.allow else "network-key"),
            "host": s.host,
            "listening": "yes" if s.port is not None else "no",
            # The settings in effect that no actor reports (the old tool's
            # `status` showed them: `config show` tells what a node would start with).
            "max_retries": str(s.max_retries),
            "connection_timeout": f"{s.connect_timeout:g}",
        }
        counters: dict[str, int] = {}
        for actor, announce in sorted(self.announced.items()):
            node.update(announce.facts)
            for key, value in announce.counters.items():
                counters[f"{actor}.{key}"] = value
        counters.update({f"control.{k}": v for k, v in self.counters.items()})
        if len(counters) > MAX_STATUS_COUNTERS:
            self.log_limited(
                "status: %d counters, showing the first %d",
                len(counters),
                MAX_STATUS_COUNTERS,
            )
        kept = dict(sorted(counters.items())[:MAX_STATUS_COUNTERS])
        return StatusReply(request=request, node=node, counters=kept, changes=self.memory.changes)

    def on_actor_restarted(self, name: str) -> None:
        if name == "health":
            for req in self.placing.values():
                self._place_first(req)
        if name in LISTERS:  # its part of a `transfers` may be lost: it holds no send now
            for ours, listing in list(self.listing.items()):
                listing.answered.add(name)
                if listing.answered >= LISTERS:
                    self._listed(ours)
        if name != "sender":
            return
        # The unicast sends handed on (a send still placed here, a setting,
        # a check, a multicast is answered by its own actor, as before).
        for ours in list(self.sending):
            del self.sending[ours]
            entry = self._forget(ours)
            if entry is None:
                continue
            route, theirs = entry
            failed = SendResult(
                request=theirs,
                code="internal",
                reason="the sender crashed; try again",
                size=0,
                digest=b"",
                stored_as="",
            )
            self.api.send_multipart([route, _local(failed)])
            self._ended(ours, failed.code, failed.reason)

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, Announce):
            before = self.announced.get(msg.actor)
            self.announced[msg.actor] = msg
            if before is None or before.facts != msg.facts:  # (counters: not news)
                self._changed()
        elif isinstance(msg, SendProven):
            sending = self.sending.get(msg.request)
            if sending is not None:  # (else ended, or never placed here: nothing to score)
                self.sending[msg.request] = (sending[0], sending[1], msg.key)
        elif isinstance(msg, MembersAtReply):
            placing = self.placing.pop(msg.request, None)
            if placing is not None:  # (else cancelled while health answered: dropped)
                self._placed(placing, msg.members)
        elif isinstance(msg, Progresses):  # one per tick: each send's Progress
            progress, dropped = columns.unpack(msg, Progress)
            self.count("progress-batches")
            self.count("progress-relayed", len(progress))
            if dropped:
                self.count("progress-malformed", dropped)
            for p in progress:
                self._relay(p, p.request)
            self._changed()
        elif type(msg) in REPLIES:
            request: int = cast(Any, msg).request
            if isinstance(msg, SendResult | _mc.McSendResult) and request < OTHER_IDS:
                self._ended(request, msg.code, msg.reason)
            if isinstance(msg, Progress | McTargetProgress):
                self._changed()  # (a send's: what `transfers` lists)
            if isinstance(msg, SendResult) and request in self.sending:
                host, port, proven = self.sending.pop(request)
                # Scored unless it says nothing about the peer (NOT_THE_PEERS:
                # bad options, a cancel, a refusal of the file, a newer offer
                # of ours taking over (aborted: a restart of ours, or a twin),
                # an impostor at a member's address or a relay of another's
                # hello: not the member's doing).
                if msg.code not in NOT_THE_PEERS:
                    ok = msg.code == ResultCode.OK
                    # A verified send is the identity's that verified it
                    # (SendProven), whatever address the user named it by: a
                    # host name, or 127.0.0.1 for a member whose record names
                    # another. A failure stays the address's: the one named
                    # may relay another member's handshake and then stall.
                    outcome: codec.Message = (
                        ProvenOutcome(key=proven)
                        if ok and proven
                        else TransferOutcome(host=host, port=port, ok=ok)
                    )
                    self.tell("health", outcome)
            if isinstance(msg, TransfersReply):
                listing = self.listing.get(request)
                # Answered without it already, or a part told already or by
                # no lister (a buggy attached sender): taken once each, bounded.
                if listing is None or msg.actor not in LISTERS - listing.answered:
                    self.count("transfers-replies-dropped")
                    return
                listing.rows += msg.transfers  # each part at most MAX_TRANSFER_ROWS
                listing.answered.add(msg.actor)
                if listing.answered >= LISTERS:
                    self._listed(request)
                return
            self._relay(msg, request)
        else:
            super().on_mail(msg)

    def _listed(self, ours: int) -> None:
        """Answer `transfers` ``ours`` (both listed, or its wait is over):
        the rows that came, the sends only control holds yet, and which
        actor did not answer."""
        listing = self.listing.pop(ours, None)
        if listing is None:  # answered already
            return
        # In the order of their ids: the sender's and the msender's answers
        # come in either order, and `top` and the shell list rows as given.
        rows = sorted([*listing.rows, *self._placing_rows()], key=codec.by_id)[:MAX_TRANSFER_ROWS]
        rows = codec.rows_within(rows)  # (the first by id, as many as one message holds)
        missing = sorted(LISTERS - listing.answered)
        if missing:
            self.count("transfers-unanswered")
        self._relay(TransfersReply(request=ours, transfers=rows, unanswered=missing), ours)

    def _forget(self, ours: int) -> tuple[bytes, int] | None:
        """Request ``ours`` is answered: its client's route and id, if it was pending."""
        self.quiet.pop(ours, None)
        return self.pending.pop(ours, None)

    def _held(self, msg: codec.Message, request: int) -> bool:
        """Whether the quiet send ``request``'s client does without ``msg``:
        a McTargetProgress always (it draws nothing), a Progress unless its
        note is new or QUIET_BEAT seconds passed since the last one it got."""
        if isinstance(msg, McTargetProgress):
            return True
        if not isinstance(msg, Progress):
            return False
        now = self.now()
        last, note = self.quiet[request]
        if msg.note == note and now - last < QUIET_BEAT:
            return True
        self.quiet[request] = (now, msg.note)
        return False

    def _relay(self, msg: codec.Message, request: int, named: bool = True) -> None:
        """``msg`` to the client of our request id ``request`` (with theirs);
        a Progress ``named`` with our id (the transfer's in ``transfers``)."""
        entry = self.pending.get(request)
        if entry is None:
            return
        if request in self.quiet and self._held(msg, request):
            self.count("progress-held")
            return
        route, theirs = entry
        if REPLIES[type(msg)]:
            self._forget(request)
        if isinstance(msg, Progress):  # with the id `transfers` and `cancel ID` know it by
            named_as = request if named else 0
            out: codec.Message = dataclasses.replace(msg, request=theirs, transfer=named_as)
        else:
            out = _with_request(msg, theirs)
        self.api.send_multipart([route, _local(out)])

    # -- whom members' records place at a send's addresses (actors/health.py) ------

    def _place_first(self, req: SendRequest | _mc.McSendRequest) -> None:
        """A send's receivers are trusted by the same rules as a multicast's:
        members' signed records at each address count (crypto/known_peers.py);
        ask health (in the node: no round trip to any peer). The pre-send
        check itself is the sender's hello, on the offer's own connection."""
        self.placing[req.request] = req
        if isinstance(req, SendRequest):
            addresses = [join_host_port(req.host, req.port)]
            # The sign that the node took the request (a client waits 2 s for
            # a first reply), not that it sends it: the scheduler's policy and
            # the sender's checks may still refuse it. So it names no
            # transfer (the shell announces a background send once one is
            # named), and a quiet send gets the sender's first Progress at once.
            self._relay(
                Progress(request=req.request, done_bytes=0, total_bytes=0, phase="checking"),
                req.request,
                named=False,
            )
            if req.request in self.quiet:
                self.quiet[req.request] = (-math.inf, "")
        else:
            addresses = req.targets
        self.tell("health", MembersAtRequest(request=req.request, addresses=addresses))

    def _placing_rows(self) -> list[dict[str, str]]:
        """``transfers`` rows (as the sender's) of the sends being placed:
        listed, so that ``cancel ID`` finds them too."""
        rows = []
        for ours, req in list(self.placing.items())[:MAX_TRANSFER_ROWS]:
            if isinstance(req, SendRequest):
                peer, mode = join_host_port(req.host, req.port), req.mode or ""
            else:
                peer, mode = ", ".join(req.targets), "multicast"
            rows.append(
                {
                    "id": str(ours),
                    "file": req.path[-200:],
                    "peer": peer[:200],
                    "mode": mode,
                    "state": "checking",
                    "bytes": "0",
                    "size": "?",
                    "seconds": "0",
                }
            )
        return rows

    def _placed(self, req: SendRequest | _mc.McSendRequest, members: dict[str, list[str]]) -> None:
        if isinstance(req, _mc.McSendRequest):
            self.tell(ROUTES[_mc.McSendRequest], dataclasses.replace(req, members=members))
            return
        self.sending[req.request] = (req.host, req.port, b"")
        here = members.get(join_host_port(req.host, req.port), [])
        self.tell(ROUTES[SendRequest], dataclasses.replace(req, members=here))

    def _refuse_multicast(self, ours: int, code: str, reason: str) -> None:
        self._ended(ours, code, reason)
        entry = self._forget(ours)
        if entry is None:
            return
        route, theirs = entry
        result = _mc.McSendResult(request=theirs, code=code, reason=reason, size=0, digest=b"")
        self.api.send_multipart([route, _local(result)])

    def _refuse_send(self, req: SendRequest, code: str, reason: str) -> None:
        self._ended(req.request, code, reason)
        entry = self._forget(req.request)
        if entry is None:
            return
        route, theirs = entry
        result = SendResult(
            request=theirs, code=code, reason=reason[:512], size=0, digest=b"", stored_as=""
        )
        self.api.send_multipart([route, _local(result)])


def write_control_file(path: Path, endpoint: str, token: str) -> None:
    """Atomically write the endpoint and token for local clients (0600)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"endpoint": endpoint, "token": token, "pid": os.getpid()}, f)
    os.replace(tmp, path)


def new_token() -> str:
    return secrets.token_hex(32)


def _local(msg: codec.Message) -> bytes:
    """``msg`` as the control socket carries it (codec.LOCAL_VERSION)."""
    return codec.encode(msg, codec.LOCAL_VERSION)
