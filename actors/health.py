"""Health monitor actor: probes every member, scores reliability, checks peers.

Periodic probes. Every ``--health-check-interval`` (I) the actor sends a
``Ping`` to every member discovery told it about (``MemberUpdate``), over one
persistent CURVE DEALER per address (the members whose records name one
address, however they spell it, share it: ``endpoint_key``; a member with
the network key can sign records of as many fresh identities at another
node's address as it likes, and one connection each would be cut by that
node's cap of connections per address, the node's sends to it with them),
and waits for the ``Pong`` for the failure detector's probe timeout (the
peer's RTO clamped to [50 ms, I/2]).

Who answers at an address is proven, not taken from the records: on each
connection (a reconnect is a new one) the first probe round also sends a
``Hello`` with a fresh challenge, and the ``HelloReply`` that proves it names
the identity answering there (``health.proofs``). A ``Pong`` counts for a
member only if the connection's proof names that member (before the proof,
for none: ``pongs-unproven``); once a proof holds, only the member it names
is pinged, and the others whose records name the address fail their probes
unpinged (``probes-elsewhere``: one ping a round per address, whatever the
records), so they become suspect, then dead. A member proven once
at its address stays proven there (until its record names another address):
only such a member's record is a claim on the address that a send's
first contact checks (``MembersAtRequest``, crypto/known_peers.py), so
records of fresh identities at an honest node's address (never proven: it
answers with its own key) refuse no send to it (``proofs-of-another``
counts the members a proof showed elsewhere).
Outcomes feed :class:`~peercrypt.core.suspicion.FailureDetector` (SWIM +
Lifeguard suspicion, ``suspicion_mult`` 1.0) and the peer's
:class:`~peercrypt.core.reliability.ReliabilityScore`. Verdict changes go to
discovery (``HealthVerdict``), which signs and gossips them. Dead members
are still retried, with full-jitter exponential backoff from I up to 8 I, so
a healed partition or a restarted node is found again.

Dead-detection bound (a member killed at t): declared dead by every node
that probes it no later than ``t + I + I/2 + max(1, log10 n) * I``, i.e.
2.5 I for n <= 10 members and 3 I for 32 (see docs/membership.md).

One-shot checks (``CheckRequest``: ``peercrypt health-check``, ``reconnect``
and the control actor's pre-send check): ``Hello`` (with a fresh challenge
key) -> ``HelloReply`` gives the RTT and the peer's fingerprint, shown only
once the reply's proof verifies (the peer holds that identity's secret:
crypto/handshake.py).

- A member at that address that answered a probe in the last two intervals
  is asked over its probe connection (already connected, CURVE-handshaken
  and admitted: no TCP connect, no handshake, no ZAP round trip). Only an
  answer that proves this check's own challenge counts; any other answer
  there (``check-replies-unproven``) sends the checks waiting on that
  connection to a fresh one at once. Without a proven answer within the
  member's probe timeout (at least :data:`REUSE_WAIT_MIN`) the check falls
  back to a fresh connection as below, and still takes a late proven answer
  from either (``check-reuse-fallbacks``). ``reconnect`` always uses a
  fresh one.
- Another address: the connection of its last successful check is kept
  for :data:`KEEP_FOR` s after its last use (at most :data:`MAX_KEPT`
  addresses, the least recently used one closed first) and asked the same
  way, with the same fallback; one that does not answer is closed.
- A fresh connection is a socket with a monitor; a reply that does not
  prove its key fails the check ("impostor"). An attempt fails on
  connection refused, on no answer within ``--timeout``; a failed CURVE
  handshake (wrong network key) or a ZAP denial is final. Failed attempts
  are retried up to ``--max-retries`` times after full-jitter exponential
  pauses (:class:`~peercrypt.core.reach.Reach`, 0.1 s doubling, capped at
  ``--timeout``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from dataclasses import dataclass, field

from actors.peer_link import Link, address_of
from peercrypt.core.address import endpoint_key, join_host_port, same_host_port, split_host_port
from peercrypt.core.backoff import Backoff
from peercrypt.core.member_state import MemberState, worst
from peercrypt.core.membership import x25519_public_key
from peercrypt.core.reach import Reach
from peercrypt.core.reliability import ReliabilityScore
from peercrypt.core.suspicion import FailureDetector, Transition
from peercrypt.crypto.handshake import HelloChallenge, ProofError
from peercrypt.crypto.identity import fingerprint
from peercrypt.errors import ResultCode
from peercrypt.runtime.actor import Actor, ActorEnv, Timer
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec
from peercrypt.wire.messages import Hello, HelloReply, Ping, Pong
from peercrypt.wire.network_messages import (
    MAX_MEMBERS_AT,
    CheckRequest,
    CheckResult,
    HealthVerdict,
    JoinRequest,
    MemberGone,
    MembersAtReply,
    MembersAtRequest,
    MemberUpdate,
    PeersReply,
    PeersRequest,
    Proven,
    ProvenOutcome,
    Scores,
    TransferOutcome,
)

log = logging.getLogger("peercrypt.health")

SUSPICION_MULT = 1.0
DEAD_RETRY_MAX = 8  # dead members are retried at most every 8 health intervals
MAX_PENDING_PROBES = 8
MAX_CHECKS = 64
# Seconds a check waits at least for its answer over a member's probe
# connection before it opens a fresh one (the probe timeout may be 50 ms).
REUSE_WAIT_MIN = 0.25
MAX_KEPT = 8  # addresses whose last check's connection is kept for the next
KEEP_FOR = 30.0  # seconds a kept connection stays after its last use


@dataclass
class Probe:
    """Health's one connection to an address, shared by the members whose
    records name it, and who proved to answer there (see the module docs)."""

    link: Link | None  # None: closed, a duplicate (see _duplicates)
    members: set[bytes] = field(default_factory=set)
    current: bytes | None = None  # the (X25519) key the connection's proof names
    generation: int = -1  # the connection (its disconnects so far) that proof holds for
    challenge: HelloChallenge | None = None  # asked, not yet answered
    asked: float = 0.0
    asked_generation: int = 0
    unproven_since: float = 0.0  # asked first on the current connection
    closed_at: float = 0.0  # when it was closed as a duplicate (reopened later)


@dataclass
class Member:
    node_id: bytes
    url: str
    state: str
    incarnation: int
    score: ReliabilityScore = field(default_factory=ReliabilityScore)
    link: Link | None = None
    pending: dict[int, tuple[float, bool]] = field(default_factory=dict)  # seq -> (sent, failed)
    retry: Backoff | None = None
    next_retry: float = 0.0
    transfers_ok: int = 0
    transfers_failed: int = 0
    told_alive: float = 0.0
    answered: float | None = None  # when it last answered a probe (a Pong)
    proven: bool = False  # its identity answered a hello at ``url`` (see the module docs)

    @functools.cached_property
    def key(self) -> bytes:
        """Its X25519 key: what a hello's answer names."""
        try:
            return x25519_public_key(self.node_id)
        except ValueError:
            return b""

    @property
    def fingerprint(self) -> str:
        try:
            return fingerprint(x25519_public_key(self.node_id))
        except ValueError:
            return self.node_id.hex()[:16]


@dataclass
class Kept:
    """The connection of the last successful check of an address that is no
    member's, kept for the next check (see the module docs)."""

    link: Link
    expiry: Timer


@dataclass
class Check:
    request: CheckRequest
    requester: str
    reach: Reach
    link: Link | None = None
    sent_at: float = 0.0
    timer: Timer | None = None
    last: tuple[str, str] = (ResultCode.UNREACHABLE, "")
    challenge: HelloChallenge | None = None
    # The ask over a member's probe connection (see the module docs).
    reused: Link | None = None
    reused_challenge: HelloChallenge | None = None
    reused_at: float = 0.0
    fallback: Timer | None = None


class HealthActor(Actor):
    name = "health"

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        self.interval = settings.health_interval
        # A probe waits 50 ms at least, at most half the interval: below an
        # interval of 0.1 s (the settings allow 0.01) the floor is that half.
        self.detector: FailureDetector[bytes] = FailureDetector(
            self.interval,
            suspicion_mult=SUSPICION_MULT,
            min_probe_timeout=min(0.05, self.interval / 2),
        )
        self.members: dict[bytes, Member] = {}
        self.checks: dict[int, Check] = {}
        self.kept: dict[str, Kept] = {}  # by URL, the least recently used first
        # The members' probe connections, by endpoint (endpoint_key: one per
        # address however a record spells it, ``127.1`` or a port's zeros).
        self.probes: dict[str, Probe] = {}
        self.seq = itertools.count(1)
        self.rng = random.Random()

    def setup(self) -> None:
        self.call_every(self.interval, self._round)
        # The detector's clock: only while a member is suspect (its deadline
        # is all the clock decides); it ticked 10 times a second whenever
        # there was a member, the most of an idle node's wake-ups.
        self.call_every_while(
            min(0.1, self.interval / 10),
            self._tick,
            lambda: self.detector.next_deadline() is not None,
        )
        self.facts["health_interval"] = f"{self.interval:g}"
        self.facts["detection_bound"] = f"{self.detector.detection_bound():.3g}"

    def teardown(self) -> None:
        for check in list(self.checks.values()):
            self._finish(check, ResultCode.CANCELLED, "the node is stopping")
        for url in list(self.kept):
            self._drop_kept(url)

    # -- mail -------------------------------------------------------------------

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, MemberUpdate):
            self._on_member(msg)
        elif isinstance(msg, MemberGone):
            self._forget(msg.node_id)
        elif isinstance(msg, PeersRequest):
            self.tell("control", PeersReply(request=msg.request, peers=self._peer_list()))
        elif isinstance(msg, CheckRequest):
            self._start_check(msg, "control")
        elif isinstance(msg, MembersAtRequest):
            self.tell("control", MembersAtReply(request=msg.request, members=self._members_at(msg)))
        elif isinstance(msg, TransferOutcome):
            self._on_transfer(msg)
        elif isinstance(msg, ProvenOutcome):
            # (the member's X25519 key: what a hello's answer names)
            m = next((m for m in self.members.values() if m.key == msg.key), None)
            if m is not None:
                self._score_transfer(m, ok=True)
            else:  # a receiver that is no member: no score to keep
                self.count("transfers-not-members")
        else:
            super().on_mail(msg)

    def _members_at(self, msg: MembersAtRequest) -> dict[str, list[str]]:
        """Whom members' own signed records place at each address, counting
        only those proven to answer there (a record alone is a claim)."""
        found: dict[str, list[str]] = {}
        for address in msg.addresses:
            try:
                host, port = split_host_port(address)
            except ValueError:
                continue
            here = [
                m.fingerprint
                for m in self.members.values()
                if m.proven and same_host_port(m.url, host, port)
            ]
            if here:
                found[address] = here[:MAX_MEMBERS_AT]
        return found

    def on_actor_restarted(self, name: str) -> None:
        if name == "control":
            for check in list(self.checks.values()):
                self._finish(
                    check, ResultCode.CANCELLED, "the control actor restarted", reply=False
                )

    def _on_member(self, msg: MemberUpdate) -> None:
        m = self.members.get(msg.node_id)
        if m is None:
            if msg.state == MemberState.LEFT or not msg.url:
                return
            m = self.members[msg.node_id] = Member(msg.node_id, msg.url, msg.state, msg.incarnation)
            self.detector.add_peer(msg.node_id, self.now())
            self.count("members-added")
            # Connect now, so the first probe finds the link established.
            self._attach(m)
        revived = msg.incarnation > m.incarnation and msg.state == MemberState.ALIVE
        m.state, m.incarnation = msg.state, msg.incarnation
        if msg.url and msg.url != m.url:
            self._drop_link(m)
            m.url, m.proven = msg.url, False
            revived = True
            probe = self.probes.get(endpoint_key(m.url))
            if probe is not None and probe.link is None:  # (its own, not a duplicate's)
                probe.closed_at = float("-inf")
        if revived:
            # A new incarnation (refuted or restarted): probe it now, not at backoff.
            m.retry, m.next_retry = None, 0.0
        if msg.state == MemberState.LEFT:
            self._forget(msg.node_id)
        self.facts["health_peers"] = str(len(self.members))

    def _forget(self, node_id: bytes) -> None:
        m = self.members.pop(node_id, None)
        if m is not None:
            self._drop_link(m)
            self.detector.remove_peer(node_id)
        self.facts["health_peers"] = str(len(self.members))

    def _attach(self, m: Member) -> Probe:
        """Share (or open) the probe connection to ``m``'s address."""
        key = endpoint_key(m.url)
        probe = self.probes.get(key)
        if probe is None:
            # Dialled as the key, whatever spelling the first record used
            # (every spelling the key folds dials alike).
            url = f"tcp://{key}"
            link = Link(self, self.settings, url, functools.partial(self._on_reply, key))
            probe = self.probes[key] = Probe(link)
            self._count_probes()
        probe.members.add(m.node_id)
        m.link = probe.link
        return probe

    def _drop_link(self, m: Member) -> None:
        """``m`` no longer uses its address's probe connection (closed once
        no member uses it)."""
        probe = self.probes.get(endpoint_key(m.url))
        if probe is not None and m.node_id in probe.members:
            probe.members.discard(m.node_id)
            if not probe.members:
                self._drop_probe(m.url)
        m.link = None
        m.pending.clear()
        m.answered = None

    def _drop_probe(self, url: str) -> None:
        """Close the probe connection to ``url``, for every member using it."""
        probe = self.probes.pop(endpoint_key(url), None)
        if probe is None:
            return
        self._close(probe)
        self._count_probes()

    def _reopen(self, probe: Probe, key: str) -> None:
        """A duplicate's connection opened again (after DEAD_RETRY_MAX
        intervals, or for a member that came to its address): proven anew,
        it stays if it names another identity than the open ones."""
        probe.link = Link(
            self, self.settings, f"tcp://{key}", functools.partial(self._on_reply, key)
        )
        probe.current, probe.generation, probe.challenge = None, -1, None
        for node_id in probe.members:
            if (m := self.members.get(node_id)) is not None:
                m.link = probe.link
        self.count("probes-reopened")
        self._count_probes()

    def _count_probes(self) -> None:
        self.facts["probe_connections"] = str(
            sum(1 for p in self.probes.values() if p.link is not None)
        )

    def _close(self, probe: Probe) -> None:
        """Close ``probe``'s connection (its members have none meanwhile)."""
        for node_id in probe.members:
            m = self.members.get(node_id)
            if m is not None:
                m.link = None
                m.pending.clear()
                m.answered = None
        if probe.link is not None:
            self._abandon(probe.link)
            probe.link.close()
            probe.link = None
        probe.closed_at = self.now()

    def _on_transfer(self, msg: TransferOutcome) -> None:
        """A send that failed (or that a sender of an older build verified,
        naming no key): the members recorded at the address it went to."""
        for m in self.members.values():
            if same_host_port(m.url, msg.host, msg.port):
                self._score_transfer(m, msg.ok)

    def _score_transfer(self, m: Member, ok: bool) -> None:
        m.score.record_transfer(ok)
        if ok:
            m.transfers_ok += 1
        else:
            m.transfers_failed += 1
        self.count("transfers-scored")

    # -- periodic probes ----------------------------------------------------------

    def _round(self) -> None:
        now = self.now()
        for m in list(self.members.values()):
            inactive = (
                m.state == MemberState.DEAD or self.detector.health(m.node_id) is MemberState.DEAD
            )
            if inactive:
                if now < m.next_retry:
                    continue
                if m.retry is None:
                    m.retry = Backoff(
                        self.interval,
                        max_delay=self.interval * DEAD_RETRY_MAX,
                        max_retries=2**31,
                        rng=self.rng,
                    )
                m.next_retry = now + (m.retry.next_delay() or self.interval)
            self._probe(m, now)
        ids = sorted(self.members)
        if ids:
            self.tell(
                "discovery",
                Scores(node_ids=ids, values=[self.members[i].score.value for i in ids]),
            )
            proven = [i for i in ids if self.members[i].proven]
            urls = [self.members[i].url for i in proven]
            self.tell("discovery", Proven(node_ids=proven, urls=urls))

    def _probe(self, m: Member, now: float) -> None:
        probe = self._attach(m)
        if probe.link is None and now - probe.closed_at >= self.interval * DEAD_RETRY_MAX:
            self._reopen(probe, endpoint_key(m.url))  # who answers there may have changed
        if probe.link is None:
            # Another address's connection proved the identity this one
            # does (two spellings of one node: a host name and an address,
            # a loopback alias): closed, its members fail unpinged.
            self._fail_unpinged(m, now, "probes-duplicate")
            return
        assert m.link is not None
        self._prove(probe, now)
        if probe.generation == probe.link.generation() and probe.current != m.key:
            # Someone else answers there: no ping (only the member the proof
            # names gets one, so members at one address cost the target one
            # ping a round, however many records name it); a failed probe.
            self._fail_unpinged(m, now, "probes-elsewhere")
            return
        seq = next(self.seq)
        while len(m.pending) >= MAX_PENDING_PROBES:
            del m.pending[min(m.pending)]
        if not m.link.send(Ping(seq=seq)) and now - m.link.created < 2 * self.interval + 1.0:
            self.count("pings-skipped-connecting")  # a new link: no verdict yet
            return
        m.pending[seq] = (now, False)
        self.count("pings")
        timeout = self.detector.probe_timeout(m.node_id)
        self.call_later(timeout, functools.partial(self._probe_timeout, m.node_id, seq))

    def _fail_unpinged(self, m: Member, now: float, why: str) -> None:
        """A probe of ``m`` failed without a ping (its address answers as
        someone else, or is another's connection)."""
        self.count(why)
        m.score.record_ping(False)
        self._transition(self.detector.on_probe_failed(m.node_id, now))

    def _prove(self, probe: Probe, now: float) -> None:
        """Ask who answers on ``probe``'s connection, if no proof holds for
        it (a new connection, or a reconnect) and none was asked on it lately."""
        assert probe.link is not None
        generation = probe.link.generation()
        if probe.generation == generation:
            return
        recent = now - probe.asked < self.interval
        if probe.challenge is not None and recent and probe.asked_generation == generation:
            return
        challenge = HelloChallenge()
        if probe.link.send(Hello(challenge=challenge.public)):
            # (the connection it went on: a handshake completing meanwhile
            # makes the proof hold for the one after, asked again then)
            generation = probe.link.generation()
            if generation != probe.asked_generation or probe.challenge is None:
                probe.unproven_since = now
            probe.challenge, probe.asked, probe.asked_generation = challenge, now, generation
            self.count("proofs-asked")

    def _on_reply(self, key: str, msg: codec.Message) -> None:
        probe = self.probes.get(key)
        if probe is None or probe.link is None:
            self.count("replies-unexpected")
            return
        if isinstance(msg, HelloReply):
            if self._proof(probe, msg):
                self._duplicates(probe)
            else:
                self._on_reused_reply(probe.link, msg)  # a check's (or junk)
            return
        if not isinstance(msg, Pong):
            self.count("replies-unexpected")
            return
        for node_id in probe.members:
            m = self.members.get(node_id)
            if m is not None and msg.seq in m.pending:
                self._on_pong(m, probe, msg)
                return

    def _proof(self, probe: Probe, msg: HelloReply) -> bool:
        """Whether ``msg`` answers the probe's own challenge (then it names
        who answers on the connection)."""
        if probe.challenge is None:
            return False
        try:
            probe.challenge.verify(msg.node_id, msg.version, msg.proof, msg.offer_key)
        except ProofError:
            return False
        probe.challenge = None
        probe.current, probe.generation = msg.node_id, probe.asked_generation
        self.count("proofs")
        for node_id in probe.members:
            m = self.members.get(node_id)
            if m is None:
                continue
            if m.key == msg.node_id:
                m.proven = True
            elif not m.proven:
                self.count("proofs-of-another")
        return True

    def _duplicates(self, probe: Probe) -> None:
        """Close a second connection that proved the identity another
        one did (a member signing records of fresh identities at one node's
        host name, its address and loopback aliases would have this node
        dial it once per spelling: the node's cap per address then cuts the
        sends): the one with a member of that identity stays."""
        for other in self.probes.values():
            if other is probe or other.link is None or other.current != probe.current:
                continue
            if other.generation != other.link.generation():
                continue  # its proof is of a connection that is gone

            def holds(p: Probe) -> bool:
                return any(
                    (m := self.members.get(i)) is not None and m.key == probe.current
                    for i in p.members
                )

            self._close(other if holds(probe) and not holds(other) else probe)
            self.count("probe-duplicates-closed")
            self._count_probes()
            return

    def _on_pong(self, m: Member, probe: Probe, msg: Pong) -> None:
        assert probe.link is not None
        if probe.generation != probe.link.generation():
            # No proof yet on this connection (a new one): no verdict, as for
            # a ping that could not be sent yet, for two intervals; then the
            # probe goes unanswered (a target that answers pings, never the
            # hello, is not taken for alive).
            if self.now() - probe.unproven_since < 2 * self.interval + 1.0:
                m.pending.pop(msg.seq, None)
                self.count("pongs-before-proof")
            else:
                self.count("pongs-unproven")
            return
        if probe.current != m.key:
            # Another identity answers at its address: the probe goes
            # unanswered for this member.
            self.count("pongs-unproven")
            return
        entry = m.pending.pop(msg.seq, None)
        if entry is None:
            return
        node_id = m.node_id
        now = self.now()
        sent, failed = entry
        m.answered, m.proven = now, True  # (the connection's proof names it)
        self.count("pongs" if not failed else "pongs-late")
        m.score.record_ping(True)
        m.retry, m.next_retry = None, 0.0
        self._transition(self.detector.on_probe_ok(node_id, now - sent, now))
        if (
            m.state in (MemberState.SUSPECT, MemberState.DEAD)
            and now - m.told_alive >= self.interval
        ):
            # It answers although membership says otherwise: let discovery talk
            # to it so that it refutes the claim with a higher incarnation.
            m.told_alive = now
            self.tell("discovery", HealthVerdict(node_id=node_id, state=MemberState.ALIVE))

    def _probe_timeout(self, node_id: bytes, seq: int) -> None:
        m = self.members.get(node_id)
        if m is None or seq not in m.pending:
            return
        sent, failed = m.pending[seq]
        if failed:
            return
        m.pending[seq] = (sent, True)
        self.count("ping-timeouts")
        m.score.record_ping(False)
        self._transition(self.detector.on_probe_failed(node_id, self.now()))

    def _tick(self) -> None:
        for t in self.detector.tick(self.now()):
            self._transition(t)

    def _transition(self, t: Transition[bytes] | None) -> None:
        if t is None:
            return
        m = self.members.get(t.peer)
        who = m.fingerprint if m is not None else t.peer.hex()[:16]
        self.count(f"became-{t.new}")
        if t.new is MemberState.DEAD:
            log.warning("health: peer %s is dead (no answer)", who)
        else:
            log.info("health: peer %s is %s (%s)", who, t.new, t.reason)
        self.tell("discovery", HealthVerdict(node_id=t.peer, state=str(t.new)))

    # -- listing -------------------------------------------------------------------

    def _peer_list(self) -> list[dict[str, str]]:
        now = self.now()
        rows: list[tuple[float, str, dict[str, str]]] = []
        for m in self.members.values():
            st = self.detector.status(m.node_id)
            state = worst(m.state, st.health)
            seen = "" if st.last_seen is None else f"{max(0.0, now - st.last_seen):.1f}"
            # A dead member's last RTT is no measure of it now: not known
            # ("-", null) until it answers again (its last answer: last_seen).
            measured = state not in (MemberState.DEAD, MemberState.LEFT)
            row = {
                "id": m.fingerprint,
                "address": address_of(m.url),
                "state": state,
                "membership": m.state,
                "health": str(st.health),
                "rtt_ms": f"{st.srtt * 1000:.2f}" if measured and st.srtt is not None else "",
                "rttvar_ms": (
                    f"{st.rttvar * 1000:.2f}" if measured and st.rttvar is not None else ""
                ),
                "failures": str(st.failures),
                "total_failures": str(st.total_failures),
                "reliability": f"{m.score.value:.3f}",
                "last_seen": seen,
                "incarnation": str(m.incarnation),
                "transfers_ok": str(m.transfers_ok),
                "transfers_failed": str(m.transfers_failed),
                "proven": "yes" if m.proven else "no",
            }
            rows.append((-m.score.value, m.fingerprint, row))
        rows.sort(key=lambda r: (r[0], r[1]))
        return codec.rows_within([r[2] for r in rows[:512]])

    # -- one-shot checks -----------------------------------------------------------

    def _start_check(self, req: CheckRequest, requester: str) -> None:
        if len(self.checks) >= MAX_CHECKS:
            self.tell(
                requester,
                CheckResult(request=req.request, code="busy", reason="too many checks running"),
            )
            return
        s = self.settings
        check = Check(
            request=req,
            requester=requester,
            reach=Reach(
                connect_timeout=s.connect_timeout,
                max_retries=s.max_retries,
                budget=req.budget,
                now=self.now(),
                rng=self.rng,
            ),
        )
        self.checks[req.request] = check
        url = f"tcp://{join_host_port(req.host, req.port)}"
        if req.reconnect:
            for m in self.members.values():
                if same_host_port(m.url, req.host, req.port):
                    self._drop_probe(m.url)
                    m.retry, m.next_retry = None, 0.0
            self._drop_kept(url)
        else:
            member = self._answering_member(req.host, req.port)
            if member is not None:
                assert member.link is not None
                wait = self.detector.probe_timeout(member.node_id)
                if self._ask_reused(check, member.link, wait):
                    return
            elif url in self.kept:
                kept = self.kept[url] = self.kept.pop(url)  # now the most recently used
                kept.expiry.cancel()
                kept.expiry = self._expiry(url, kept.link)
                if self._ask_reused(check, kept.link, 0.0):
                    return
                self._drop_kept(url)
        self._attempt(check)

    def _answering_member(self, host: str, port: int) -> Member | None:
        """A member at ``host:port`` whose probe connection carried an
        answer in the last two intervals (so it is connected and admitted)."""
        now = self.now()
        for m in self.members.values():
            if (
                m.link is not None
                and m.answered is not None
                and now - m.answered <= 2 * self.interval
                and same_host_port(m.url, host, port)
            ):
                return m
        return None

    def _ask_reused(self, check: Check, link: Link, wait: float) -> bool:
        """Send the check's hello over ``link`` (a member's probe connection
        or a kept one) and fall back after ``wait`` s (at least
        :data:`REUSE_WAIT_MIN`); False if it cannot be queued there."""
        challenge = HelloChallenge()
        if not link.send(Hello(challenge=challenge.public)):
            self.count("check-reuse-unsent")
            return False
        now = self.now()
        check.reused, check.reused_challenge, check.reused_at = link, challenge, now
        wait = min(max(REUSE_WAIT_MIN, wait), check.reach.attempt_timeout(now))
        check.fallback = self.call_later(wait, lambda: self._fall_back(check))
        self.count("checks")
        self.count("checks-reused")
        return True

    def _fall_back(self, check: Check) -> None:
        """No proven answer over the member's connection in time: a fresh
        connection decides (a late proven answer over either still counts)."""
        if check.fallback is None:
            return  # it fell back already
        check.fallback.cancel()
        check.fallback = None
        if check.request.request not in self.checks:
            return
        self.count("check-reuse-fallbacks")
        for url, kept in list(self.kept.items()):
            if kept.link is check.reused:
                self._drop_kept(url)  # a kept connection that does not answer goes
        self._attempt(check)

    def _abandon(self, link: Link) -> None:
        """``link`` closes: the checks waiting on it fall back now."""
        for check in list(self.checks.values()):
            if check.reused is link:
                check.reused = None
                self._fall_back(check)

    def _keep(self, url: str, link: Link) -> None:
        """Keep ``link`` (a successful check's) for the next check of ``url``."""
        self._drop_kept(url)
        while len(self.kept) >= MAX_KEPT:
            self._drop_kept(next(iter(self.kept)))
        link.on_message = functools.partial(self._on_kept_message, link)
        link.on_failure = functools.partial(self._drop_kept, url)
        self.kept[url] = Kept(link, self._expiry(url, link))

    def _expiry(self, url: str, link: Link) -> Timer:
        return self.call_later(KEEP_FOR, functools.partial(self._expire_kept, url, link))

    def _expire_kept(self, url: str, link: Link) -> None:
        kept = self.kept.get(url)
        if kept is None or kept.link is not link:
            return
        if any(c.reused is link for c in self.checks.values()):
            kept.expiry = self._expiry(url, link)  # a check still waits on it
            return
        self._drop_kept(url)

    def _drop_kept(self, url: str) -> None:
        kept = self.kept.pop(url, None)
        if kept is not None:
            kept.expiry.cancel()
            kept.link.close()
            self._abandon(kept.link)

    def _on_kept_message(self, link: Link, msg: codec.Message) -> None:
        if isinstance(msg, HelloReply):
            self._on_reused_reply(link, msg)

    def _on_reused_reply(self, link: Link, msg: HelloReply) -> None:
        """A hello answer on a reused connection finishes the waiting
        check whose own challenge it proves (answers come in order: the
        oldest first). Any other answer (a member answering what it was not
        asked, or a late one to a check that finished) makes every check
        waiting on that connection stop listening to it and fall back now,
        so junk costs at most one verification per waiting check."""
        waiting = [c for c in self.checks.values() if c.reused is link]
        for check in waiting:
            assert check.reused_challenge is not None
            try:
                check.reused_challenge.verify(msg.node_id, msg.version, msg.proof, msg.offer_key)
            except ProofError:
                continue
            peer = join_host_port(check.request.host, check.request.port)
            rtt = self.now() - check.reused_at
            self._finish(
                check,
                ResultCode.OK,
                f"{peer} answered",
                rtt,
                fingerprint(msg.node_id),
                version=msg.version,
            )
            return
        self.count("check-replies-unproven")
        for check in waiting:
            check.reused = None
            self._fall_back(check)

    def _attempt(self, check: Check) -> None:
        req = check.request
        url = f"tcp://{join_host_port(req.host, req.port)}"
        if check.link is not None:
            check.link.close()  # a retry's
        check.link = Link(
            self,
            self.settings,
            url,
            functools.partial(self._on_check_reply, check),
            monitored=True,
            on_failure=lambda: self._attempt_failed(check),
        )
        if check.link.failure:
            self._finish(check, check.link.failure, check.link.detail)
            return
        check.sent_at = self.now()
        check.challenge = HelloChallenge()
        check.link.send(Hello(challenge=check.challenge.public))
        wait = check.reach.attempt(check.sent_at)
        check.timer = self.call_later(wait, lambda: self._on_timeout(check))
        self.count("checks")

    def _on_check_reply(self, check: Check, msg: codec.Message) -> None:
        if check.request.request not in self.checks or not isinstance(msg, HelloReply):
            return
        rtt = self.now() - check.sent_at
        fp = fingerprint(msg.node_id)
        peer = join_host_port(check.request.host, check.request.port)
        assert check.challenge is not None
        try:
            check.challenge.verify(msg.node_id, msg.version, msg.proof, msg.offer_key)
        except ProofError:
            self.count("checks-forged")
            reason = f"{peer} named key {fp} but could not prove it holds it"
            self._finish(check, ResultCode.IMPOSTOR, reason)
            return
        self._finish(check, ResultCode.OK, f"{peer} answered", rtt, fp, version=msg.version)

    def _on_timeout(self, check: Check) -> None:
        if check.request.request not in self.checks or check.link is None:
            return
        check.last = check.link.timeout_reason(check.reach.attempt_timeout(check.sent_at))
        if check.last[0] == ResultCode.TIMEOUT:
            # The host is up (TCP connected) but silent: retrying this check
            # adds nothing; the periodic probes judge slow peers.
            self._finish(check, *check.last)
            return
        self._retry(check)

    def _attempt_failed(self, check: Check) -> None:
        if check.request.request not in self.checks or check.link is None:
            return
        code, detail = check.link.failure, check.link.detail
        if code in (ResultCode.HANDSHAKE, ResultCode.NOT_ADMITTED, ResultCode.PROTOCOL):
            self._finish(check, code, detail)  # definitive: retrying cannot help
            return
        check.last = (code, detail)
        self._retry(check)

    def _retry(self, check: Check) -> None:
        if check.timer is not None:
            check.timer.cancel()
        if check.link is not None:
            check.link.close()
            check.link = None
        delay = check.reach.retry_in(self.now())
        if delay is None:
            code, reason = check.last
            self._finish(check, code, reason)
            return
        self.count("check-retries")
        check.timer = self.call_later(delay, lambda: self._attempt(check))

    def _finish(
        self,
        check: Check,
        code: str,
        reason: str,
        rtt: float = 0.0,
        fp: str = "",
        reply: bool = True,
        version: str = "",
    ) -> None:
        req = check.request
        if self.checks.pop(req.request, None) is None:
            return
        if check.timer is not None:
            check.timer.cancel()
        if check.fallback is not None:
            check.fallback.cancel()
        check.reused = None  # a member's or kept connection: it stays open
        ok = code == ResultCode.OK
        if check.link is not None:
            if ok and not req.reconnect and self._answering_member(req.host, req.port) is None:
                self._keep(f"tcp://{join_host_port(req.host, req.port)}", check.link)
            else:
                check.link.close()
            check.link = None
        self.count("checks-ok" if ok else "checks-failed")
        for m in self.members.values():
            if same_host_port(m.url, req.host, req.port):
                m.score.record_ping(ok)
                if ok:
                    m.retry, m.next_retry = None, 0.0
        if ok and req.reconnect:
            self.tell("discovery", JoinRequest(request=0, host=req.host, port=req.port))
        if reply:
            self.tell(
                check.requester,
                CheckResult(
                    request=req.request,
                    code=code,
                    reason=reason[:512],
                    rtt=rtt,
                    fingerprint=fp,
                    attempts=check.reach.attempts + int(check.reused_challenge is not None),
                    version=version[:32],
                ),
            )
