"""Discovery actor: gossip membership around :class:`MembershipTable`.

- The table holds signed, versioned records (see
  :mod:`peercrypt.core.membership`); this node's own record advertises
  ``control = tcp://ADVERTISE_HOST:PORT`` with the *bound* public port (the
  gateway reports it, ``LocalPort``), never a connection's source port.
- Every ``--gossip-interval`` the actor runs one push-pull exchange with up to
  ``gossip_fanout`` alive or suspect members chosen by reliability
  (:func:`~peercrypt.core.reliability.weighted_choice`, scores from the
  health actor); while it knows no live member it gossips with its bootstrap
  seeds instead. A round also expires dead/left members (``--member-expiry``)
  and refutes claims about this node.
- Received gossip (``Gossip`` through the gateway) is accepted only if the
  sender's admitted CURVE key is the one derived from the ``origin`` it
  claims; every record is then checked by the table (size, structure,
  staleness, capacity, then the signature of one that would change it) and
  each rejection is counted (``discovery.rejected-REASON``). The gateway
  hands on a member's gossip within a budget of bytes and no more than a
  bound not yet taken (``core/answer_budget.py``, ``core/mail_credit.py``).
- ``join HOST PORT`` and the bootstrap seeds use a fresh, monitored
  connection with retries (exponential backoff with full jitter, at most
  ``--max-retries``, each attempt waiting ``--timeout``).
- The failure detector lives in the health actor; its verdicts come back as
  ``HealthVerdict`` and become signed suspect/dead claims here. On shutdown
  the node signs ``left`` and pushes it to its live members (bounded wait).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import zmq
from nacl.signing import SigningKey

from actors.peer_link import Link, address_towards
from peercrypt import members_file
from peercrypt.core.address import endpoint_key, is_ipv6, join_host_port, split_host_port
from peercrypt.core.answer_budget import GOSSIP_LIMITS, AnswerBudget, Verdict
from peercrypt.core.backoff import Backoff
from peercrypt.core.member_state import MemberState
from peercrypt.core.membership import (
    DigestEntry,
    MemberRecord,
    MembershipTable,
    x25519_public_key,
)
from peercrypt.core.names import shortened
from peercrypt.core.reliability import DEFAULT_PRIOR, weighted_choice
from peercrypt.crypto.identity import fingerprint
from peercrypt.errors import ResultCode
from peercrypt.runtime.actor import Actor, ActorEnv, Timer
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec
from peercrypt.wire.messages import Inbound, Outbound
from peercrypt.wire.network_messages import (
    DIGEST_ENTRY,
    Gossip,
    GossipControl,
    GossipReply,
    GossipState,
    HealthVerdict,
    JoinRequest,
    JoinResult,
    LocalPort,
    MemberGone,
    MemberUpdate,
    Proven,
    Scores,
    pack_digest_entry,
    unpack_digest_entry,
)

log = logging.getLogger("peercrypt.discovery")

PUSH_RECENT = 4  # records pushed unasked in each exchange (ours first)
RECORD_BUDGET = 32 * 1024  # bytes of records in one message
MAX_JOINS = 16
REJOIN_AT_ONCE = 4  # members last seen alive joined through at a time (members_file)
REMEMBER_MAX = 32  # members kept for that at most (the best scored)
MAX_JOIN_FAILING = 64  # addresses whose failed join was told (then quiet till it works)
# Exchanges not yet answered on one member's link that count: a reply beyond
# them is dropped unread (a peer that never answers leaves no more owed).
MAX_ASKED = 4
# Seconds a member held dead here keeps its link after health last saw it
# answer (the exchanges that tell it the claim go on it: _expire).
REVIVE_KEEP = 30.0
LEAVE_WAIT = 0.5  # seconds the shutdown waits for members to take our "left"
LEAVE_RESEND = 0.01  # seconds between sends of the "left" to a link still connecting
MIN_INTERVAL = 0.01
MAX_INTERVAL = 3600.0


def advertise_host(settings: NodeSettings) -> str:
    """The address members should use for this node.

    ``--advertise-host`` if given; else ``--host`` unless it is a wildcard;
    else the local address of the interface that routes to the first
    bootstrap seed (or to a public address; an IPv6 seed only for a node on
    ``::``), found with an unconnected UDP socket (no packet is sent);
    127.0.0.1 if there is no route.
    """
    if settings.advertise_host:
        return settings.advertise_host
    if not _wildcard(settings.host):
        return settings.host
    target = settings.bootstrap[0][0] if settings.bootstrap else "192.0.2.1"
    if is_ipv6(target) and not is_ipv6(settings.host):  # (`::`, `::0`: both families)
        # A node on the IPv4 wildcard does not listen on its IPv6 address on
        # the way to an IPv6 seed: its IPv4 address on the default route.
        found = address_towards("192.0.2.1")
        if found is None:
            log.warning(
                "this node listens on IPv4 only and its seed %s is IPv6, with no IPv4 route: "
                "members cannot reach it (use --host :: or --advertise-host)",
                target,
            )
        return found or "127.0.0.1"
    return address_towards(target) or "127.0.0.1"


def _wildcard(host: str) -> bool:
    """Whether binding ``host`` listens on every address (``0.0.0.0``, ``*``,
    ``::`` and its other spellings, ``[::]``)."""
    if host in ("*", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False  # a name


@dataclass
class Join:
    request: int
    host: str
    port: int
    requester: str | None  # None: a bootstrap seed (no one waits for an answer)
    backoff: Backoff
    link: Link | None = None
    timer: Timer | None = None
    last: tuple[str, str] = (ResultCode.UNREACHABLE, "")
    attempts: int = 0

    @property
    def url(self) -> str:
        return f"tcp://{join_host_port(self.host, self.port)}"


@dataclass
class _Peer:
    link: Link
    last_reply: float = field(default=0.0)


class DiscoveryActor(Actor):
    name = "discovery"

    def __init__(self, env: ActorEnv, settings: NodeSettings) -> None:
        super().__init__(env)
        self.settings = settings
        self.enabled = settings.gossip_enabled
        self.interval = settings.gossip_interval
        self.table: MembershipTable | None = None
        self.links: dict[str, Link] = {}  # member endpoint (endpoint_key) -> persistent link
        self.asked: dict[str, int] = {}  # member endpoint -> exchanges not yet answered
        # Bytes of replies to members' exchanges (_reply): a reply is charged
        # the most it can be, before it is made.
        self.replies = AnswerBudget(self.now(), GOSSIP_LIMITS)
        self.reply_bound = (0, 0)  # (members, the most a reply can be then): _reply_bound
        self.packed: dict[bytes, tuple[DigestEntry, bytes]] = {}  # node id -> digest entry
        # Members held suspect or dead here that health saw answer (a node come
        # back), and when: their links stay open for the exchanges that tell
        # them the claim to refute (at most one entry per member).
        self.reviving: dict[bytes, float] = {}
        self.joins: dict[int, Join] = {}
        # Where the node's own joins (its bootstrap, the members it rejoins
        # through) last failed, and why: told once, not at every round while
        # alone (found by use: two warnings every 5 s at the shell's prompt).
        self.join_failing: dict[tuple[str, int], str] = {}
        self.waiting: list[JoinRequest] = []  # joins asked before the port is known
        self.scores: dict[bytes, float] = {}
        # Members that answered at an address (health's Proven), and where.
        self.proven: dict[bytes, str] = {}
        self.rng = random.Random()
        self.round_timer: Timer | None = None
        self.next_join = -1  # ids of internal joins (seeds, reconnects) are negative
        self.seed_retry: Timer | None = None
        # The members last seen alive, as kept in the data dir (members_file):
        # joined through at the start and while alone, as the bootstrap seeds.
        kept = members_file.read(settings.data_dir)
        self.keeper = members_file.Keeper([join_host_port(h, p) for h, p in kept])

    # -- life cycle ----------------------------------------------------------------

    def setup(self) -> None:
        self.facts["gossip"] = "on" if self.enabled else "off"
        self.facts["gossip_interval"] = f"{self.interval:g}"
        self.call_every(max(MIN_INTERVAL, self.settings.gossip_interval), self._expire)

    def _start_table(self, port: int) -> None:
        s = self.settings
        url = f"tcp://{join_host_port(advertise_host(s), port)}"
        self.table = MembershipTable(
            SigningKey(s.identity.seed),
            {"control": url},
            max_members=s.max_members,
            forget_after=s.member_expiry,
        )
        self.facts["advertise"] = url
        self._facts()
        self._schedule_round()
        for host, seed_port in s.bootstrap:
            self._join(JoinRequest(request=self._internal_id(), host=host, port=seed_port), None)
        if self.enabled:  # (--no-gossip: no discovery at the start; `gossip on` rejoins alone)
            self._rejoin()
        for req in self.waiting:
            self._join(req, "control")
        self.waiting.clear()

    def teardown(self) -> None:
        for join in list(self.joins.values()):
            self._end_join(join, ResultCode.CANCELLED, "the node is stopping")
        if self.table is None:
            return
        left = self.table.mark_left(self.now())
        targets = [self._link_for(n) for n in self.table.peers()]
        links = [link for link in targets if link is not None]
        msg = Gossip(origin=self.table.self_id, records=[left.to_wire()], digest=[], reply=True)
        # A member link takes a message only once it is connected (ZMQ_IMMEDIATE):
        # one not connected yet (made just now, for a member no round has
        # gossiped with, or still connecting) dropped the "left", and a node
        # stopped soon after it joined told no one: the others held it dead,
        # and listed it, until it expired. Such a link is sent to again until
        # it takes it. The wait (bounded) is for the answers too, so the
        # "left" is on the wire before the sockets close with LINGER 0.
        poller = zmq.Poller()
        for link in links:
            poller.register(link.sock, zmq.POLLIN)
        unsent = list(links)
        waiting: set[zmq.Socket[Any]] = set()
        deadline = self.now() + LEAVE_WAIT
        while True:
            for link in [link for link in unsent if link.send(msg)]:
                unsent.remove(link)
                waiting.add(link.sock)
            remaining = deadline - self.now()
            if not (unsent or waiting) or remaining <= 0:
                break
            wait = min(remaining, LEAVE_RESEND) if unsent else remaining
            for sock, _ in poller.poll(max(1, int(wait * 1000))):
                waiting.discard(sock)
                _drain(sock)
        if unsent:
            log.debug("discovery: %d member(s) not told that this node leaves", len(unsent))

    def _internal_id(self) -> int:
        self.next_join -= 1
        return self.next_join

    def _facts(self) -> None:
        t = self.table
        if t is None:
            return
        states = [m.state for m in t.members()]
        self.facts["members"] = str(len(states))
        self.facts["members_alive"] = str(sum(1 for s in states if s is MemberState.ALIVE))
        self.facts["incarnation"] = str(t.local_record().incarnation)
        for reason, n in t.rejection_counts.items():
            if n:
                self.counters[f"rejected-{reason}"] = n

    # -- mail ----------------------------------------------------------------------

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, LocalPort):
            if self.table is None:
                self._start_table(msg.port)
        elif isinstance(msg, Inbound):
            self._on_inbound(msg)
        elif isinstance(msg, HealthVerdict):
            self._on_verdict(msg)
        elif isinstance(msg, Scores):
            self.scores = dict(zip(msg.node_ids, msg.values, strict=False))
        elif isinstance(msg, Proven):
            urls = [endpoint_key(url) for url in msg.urls]
            self.proven = dict(zip(msg.node_ids, urls, strict=False))
        elif isinstance(msg, JoinRequest):
            requester = "control" if msg.request > 0 else None
            if self.table is None:
                self.waiting.append(msg)
            else:
                self._join(msg, requester)
        elif isinstance(msg, GossipControl):
            self._on_control(msg)
        else:
            super().on_mail(msg)

    def on_actor_restarted(self, name: str) -> None:
        if name == "health" and self.table is not None:
            for member in self.table.members():
                if member.node_id != self.table.self_id:
                    self._tell_health(member.node_id)

    def _on_control(self, msg: GossipControl) -> None:
        if msg.mode == "on":
            self.enabled = True
        elif msg.mode == "off":
            self.enabled = False
        elif msg.mode == "interval" and MIN_INTERVAL <= msg.interval <= MAX_INTERVAL:
            self.interval = msg.interval
        self.facts["gossip"] = "on" if self.enabled else "off"
        self.facts["gossip_interval"] = f"{self.interval:g}"
        self._schedule_round()
        members, live, gone = self._counts()
        self.tell(
            "control",
            GossipState(
                request=msg.request,
                enabled=self.enabled,
                interval=self.interval,
                members=members,
                live=live,
                gone=gone,
            ),
        )

    def _counts(self) -> tuple[int, int, int]:
        """The records held (this node's included), the other members alive
        or suspect, and those dead or left: a member that left is held (and
        gossiped) until it expires, but is no peer (`peers` lists none)."""
        if self.table is None:
            return 1, 0, 0
        others = [m.state for m in self.table.members() if m.node_id != self.table.self_id]
        live = sum(1 for s in others if s in (MemberState.ALIVE, MemberState.SUSPECT))
        return len(self.table), live, len(others) - live

    # -- gossip rounds -------------------------------------------------------------

    def _schedule_round(self) -> None:
        if self.round_timer is not None:
            self.round_timer.cancel()
            self.round_timer = None
        if self.enabled and self.table is not None:
            self.round_timer = self.call_every(self.interval, self._round)

    def _expire(self) -> None:
        if self.table is None:
            return
        self.reply_bound = (0, 0)  # (its records may have grown meanwhile)
        for node_id in self.table.expire(self.now()):
            self.tell("health", MemberGone(node_id=node_id))
            self.count("expired")
        # A dead member that health sees answer (a node restarted on its
        # address) keeps its link for REVIVE_KEEP: the exchanges that tell it
        # the claim to refute go on it. (Closed at every tick, each went out on
        # a fresh link not yet connected and was dropped: a restarted seed that
        # knew no one stayed dead everywhere.) Members that never answer (a
        # squatter's fake records at a member's address) keep none.
        now = self.now()
        live = self.table.peers()
        for node_id, seen in list(self.reviving.items()):
            if now - seen > REVIVE_KEEP or node_id in live or node_id not in self.table:
                del self.reviving[node_id]
        known = {endpoint_key(self._url_of(n)) for n in [*live, *self.reviving]}
        for key in [k for k in self.links if k not in known]:
            self.links.pop(key).close()
            self.asked.pop(key, None)
        self._remember()
        self._facts()

    def _remember(self) -> None:
        """Keep the members alive now that health proved at their address
        (a record alone is a claim: a member may sign records of any
        address), the REMEMBER_MAX of them it scores best, in the data dir
        (members_file.Keeper: when they changed, never none, at most every
        second)."""
        assert self.table is not None
        alive = [(n, self._url_of(n)) for n in self.table.peers((MemberState.ALIVE,))]
        chosen = members_file.choose(alive, self.proven, self.scores, REMEMBER_MAX, DEFAULT_PRIOR)
        kept = self.keeper.update(chosen, self.now())
        if kept is None:
            return
        try:
            members_file.write(self.settings.data_dir, kept)
        except OSError as exc:  # (only the rejoin after a restart is lost)
            self.log_limited("discovery: cannot keep the members alive: %s", exc.strerror)
        else:
            self.count("members-kept")

    def _round(self) -> None:
        t = self.table
        if t is None or not self.enabled:
            return
        now = self.now()
        if t.needs_refute:
            t.refute(now)
            self.count("refutes")
        live = t.peers()
        if not live:
            self._retry_seeds()
            return
        weighted = [(n, min(1.0, max(0.0, self.scores.get(n, DEFAULT_PRIOR)))) for n in live]
        for node_id in weighted_choice(weighted, self.settings.gossip_fanout, self.rng):
            self._exchange(node_id)
        self.count("rounds")

    def _retry_seeds(self) -> None:
        """Alone: (re)join through the bootstrap seeds not being tried
        already, and through some of the members last seen alive."""
        busy = {(j.host, j.port) for j in self.joins.values()}
        for host, port in self.settings.bootstrap:
            if (host, port) not in busy and len(self.joins) < MAX_JOINS:
                self._join(JoinRequest(request=self._internal_id(), host=host, port=port), None)
        self._rejoin()

    def _rejoin(self) -> None:
        """Join through up to REJOIN_AT_ONCE of the members last seen alive
        (members_file) not tried already: a node restarted without a
        bootstrap (the seed the others joined through) stayed alone."""
        assert self.table is not None
        busy = {(j.host, j.port) for j in self.joins.values()} | set(self.settings.bootstrap)
        own = endpoint_key(self._url_of(self.table.self_id))
        choices = [
            (host, port)
            for host, port in map(split_host_port, self.keeper.kept)
            if (host, port) not in busy and endpoint_key(join_host_port(host, port)) != own
        ]
        for host, port in self.rng.sample(choices, min(REJOIN_AT_ONCE, len(choices))):
            if len(self.joins) < MAX_JOINS:
                self._join(JoinRequest(request=self._internal_id(), host=host, port=port), None)
                self.count("rejoins")

    def _url_of(self, node_id: bytes) -> str:
        assert self.table is not None
        member = self.table.member(node_id)
        return member.endpoints.get("control", "") if member is not None else ""

    def _link_for(self, node_id: bytes) -> Link | None:
        url = self._url_of(node_id)
        if not url:
            return None
        key = endpoint_key(url)  # one link per endpoint, however records spell it
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = Link(  # dialled as the key: every spelling dials alike
                self, self.settings, f"tcp://{key}", functools.partial(self._on_member_reply, key)
            )
        return link

    def _push(self, records: list[MemberRecord], reply: bool) -> Gossip:
        assert self.table is not None
        digest = self._digest() if reply else []
        return Gossip(
            origin=self.table.self_id,
            records=[r.to_wire() for r in records],
            digest=digest,
            reply=reply,
        )

    def _digest(self) -> list[bytes]:
        """The table's digest, each member's entry packed again only once
        its records changed (the table keeps each entry until then)."""
        assert self.table is not None
        packed: dict[bytes, tuple[DigestEntry, bytes]] = {}
        for node_id, e in sorted(self.table.digest().items()):
            known = self.packed.get(node_id)
            if known is None or known[0] is not e:
                known = (e, pack_digest_entry(node_id, e.incarnation, e.state.value, e.tag))
            packed[node_id] = known
        self.packed = packed
        return [entry for _, entry in packed.values()]

    def _reply_bound(self) -> int:
        """The most a reply can be, in bytes: every record held (up to
        RECORD_BUDGET) and a digest entry per member. Worked out again when
        the number of members changed, and at each round."""
        assert self.table is not None
        members = len(self.table)
        if self.reply_bound[0] != members:
            records = min(RECORD_BUDGET, self.table.wire_bytes())
            self.reply_bound = (members, records + DIGEST_ENTRY.size * members)
        return self.reply_bound[1]

    def _exchange(self, node_id: bytes) -> None:
        assert self.table is not None
        link = self._link_for(node_id)
        if link is None:
            return
        recent = self.table.records(max_count=PUSH_RECENT, max_bytes=RECORD_BUDGET)
        if self._send(link, self._push(recent, reply=True)):
            key = endpoint_key(self._url_of(node_id))
            self.asked[key] = min(MAX_ASKED, self.asked.get(key, 0) + 1)

    def _send(self, link: Link, msg: codec.Message) -> bool:
        sent = link.send(msg)
        if sent:
            self.count("gossip-sent")
            self.count("gossip-bytes-out", sent)
        else:
            self.count("gossip-not-connected")
        return bool(sent)

    # -- incoming gossip -------------------------------------------------------------

    def _on_inbound(self, msg: Inbound) -> None:
        if self.table is None:
            return
        try:
            gossip = codec.decode_as(msg.payload, Gossip)
        except codec.DecodeError as exc:
            self.count(f"gossip-{exc.kind}")
            return
        self.count("gossip-received")
        self.count("gossip-bytes-in", len(msg.payload))
        try:
            claimed = x25519_public_key(gossip.origin)
        except ValueError:
            claimed = b""
        if claimed != msg.peer:
            self.count("gossip-spoofed")
            self.log_limited(
                "discovery: dropped gossip with a forged origin from %s",
                msg.peer_host or "unknown",
            )
            return
        self._merge(gossip.records)
        if gossip.reply:
            self._reply(gossip, msg)

    def _reply(self, gossip: Gossip, msg: Inbound) -> None:
        """Answer an exchange a member asked for: the records it lacks and
        our digest. Within a budget of reply bytes per identity, address and
        node, the same as the gossip the gateway takes (GOSSIP_LIMITS), each
        reply charged the most it can be before it is made: a request of 75
        bytes with an empty digest asks for up to 32 KiB of records and the
        whole digest (46 KB with 255 members), so the gateway's budget of
        requests bought 600 times its bytes in replies, each made afresh."""
        assert self.table is not None
        verdict = self.replies.ask(msg.peer, msg.peer_host, self.now(), self._reply_bound())
        if verdict is not Verdict.ANSWER:
            self.count(f"replies-{verdict.value}")
            return
        digest = _parse_digest(gossip.digest)
        if digest is None:
            self.count("gossip-bad-digest")
            return
        records = self.table.records_for(digest, max_bytes=RECORD_BUDGET)
        reply = GossipReply(
            origin=self.table.self_id,
            records=[r.to_wire() for r in records],
            digest=self._digest(),
        )
        data = codec.encode(reply)
        self.tell("gateway", Outbound(route=msg.route, payload=data))
        self.count("gossip-replies-sent")
        self.count("gossip-bytes-out", len(data))

    def _on_member_reply(self, key: str, msg: codec.Message) -> None:
        """A reply on a member's link: taken only as the answer to an
        exchange this node asked there (the gateway's budget does not see
        these links: a member answering without being asked, as fast as it
        writes, would have its records parsed and checked without end)."""
        if self.asked.get(key, 0) <= 0:
            self.count("gossip-replies-unasked")
            return
        self.asked[key] -= 1
        self._on_reply(msg)

    def _on_reply(self, msg: codec.Message) -> None:
        if self.table is None or not isinstance(msg, GossipReply):
            self.count("gossip-unexpected")
            return
        self.count("gossip-replies")
        self.count("gossip-bytes-in", len(codec.encode(msg)))
        self._merge(msg.records)
        digest = _parse_digest(msg.digest)
        if digest is None:
            self.count("gossip-bad-digest")
            return
        missing = self.table.records_for(digest, max_bytes=RECORD_BUDGET)
        member = self.table.member(msg.origin)
        url = member.endpoints.get("control", "") if member is not None else ""
        link = self.links.get(endpoint_key(url)) if url else None
        if missing and link is not None:
            self._send(link, self._push(missing, reply=False))

    def _merge(self, records: list[bytes]) -> None:
        assert self.table is not None
        now = self.now()
        result = self.table.merge(records, now)
        for rec in result.changed:
            self._tell_health(rec.node_id)
            self.count("records-merged")
        if result.refute_needed and self.table.needs_refute:
            self.table.refute(now)
            self.count("refutes")
            live = self.table.peers()
            for node_id in weighted_choice([(n, 0.5) for n in live], 3, self.rng):
                self._exchange(node_id)
        for rej in result.rejected:
            if rej.reason.value not in ("stale", "about_self"):
                self.log_limited(
                    "discovery: dropped a membership record (%s)",
                    rej.reason.value,
                )
        self._facts()

    def _tell_health(self, node_id: bytes) -> None:
        assert self.table is not None
        member = self.table.member(node_id)
        if member is None:
            return
        self.tell(
            "health",
            MemberUpdate(
                node_id=node_id,
                state=member.state.value,
                incarnation=member.incarnation,
                url=member.endpoints.get("control", ""),
            ),
        )

    def _on_verdict(self, msg: HealthVerdict) -> None:
        t = self.table
        if t is None or msg.node_id not in t or msg.node_id == t.self_id:
            return
        now = self.now()
        claim = None
        if msg.state == MemberState.SUSPECT:
            claim = t.mark_suspect(msg.node_id, now)
        elif msg.state == MemberState.DEAD:
            claim = t.mark_dead(msg.node_id, now)
            if claim is not None:
                log.warning("discovery: member %s declared dead", _named(msg.node_id))
        elif msg.state == MemberState.ALIVE:
            # It answers our probes although it is suspect/dead here: talk to it
            # directly so it learns the claim and refutes it (its link kept
            # meanwhile: _expire).
            self.reviving[msg.node_id] = now
            self._exchange(msg.node_id)
            self.count("revive-exchanges")
        if claim is not None:
            self.count(f"claims-{msg.state}")
            self._tell_health(msg.node_id)
            self._facts()

    # -- joining -------------------------------------------------------------------

    def _join(self, req: JoinRequest, requester: str | None) -> None:
        if len(self.joins) >= MAX_JOINS:
            if requester is not None:
                self.tell(
                    requester,
                    JoinResult(request=req.request, code="busy", reason="too many joins running"),
                )
            return
        s = self.settings
        join = Join(
            request=req.request,
            host=req.host,
            port=req.port,
            requester=requester,
            backoff=Backoff(
                min(0.1, s.connect_timeout),
                max_delay=s.connect_timeout,
                max_retries=s.max_retries,
                rng=self.rng,
            ),
        )
        self.joins[req.request] = join
        self._join_attempt(join)

    def _join_attempt(self, join: Join) -> None:
        assert self.table is not None
        join.attempts += 1
        link = join.link = Link(
            self,
            self.settings,
            join.url,
            functools.partial(self._on_join_reply, join),
            monitored=True,
            on_failure=lambda: self._join_failed(join),
        )
        if link.failure:
            self._end_join(join, link.failure, link.detail)
            return
        self._send(link, self._push([self.table.local_record()], reply=True))
        join.timer = self.call_later(
            self.settings.connect_timeout, lambda: self._join_timeout(join)
        )
        self.count("join-attempts")

    def _on_join_reply(self, join: Join, msg: codec.Message) -> None:
        if join.request not in self.joins:
            return
        link = join.link
        if (
            isinstance(msg, GossipReply)
            and self.table is not None
            and msg.origin == self.table.self_id
            and join.requester is not None
        ):  # (`join` said "joined" of this very node; a seed list naming
            # the node itself, as one list for a whole cluster does, still
            # joins as before)
            where = join_host_port(join.host, join.port)
            reason = (
                f"{where} answered with this node's own identity (this node, "
                "or a node using a copy of its data dir)"
            )
            self._end_join(join, ResultCode.LOCAL, reason)
            return
        self._on_reply(msg)
        if isinstance(msg, GossipReply) and self.table is not None:
            # Push what the member lacks over this (already connected) link.
            digest = _parse_digest(msg.digest)
            if digest is not None and link is not None:
                missing = self.table.records_for(digest, max_bytes=RECORD_BUDGET)
                if missing:
                    self._send(link, self._push(missing, reply=False))
            where = join_host_port(join.host, join.port)
            self._end_join(join, ResultCode.OK, f"joined through {where}", linger=True)

    def _join_timeout(self, join: Join) -> None:
        if join.request in self.joins and join.link is not None:
            join.last = join.link.timeout_reason(self.settings.connect_timeout)
            self._join_retry(join)

    def _join_failed(self, join: Join) -> None:
        if join.request not in self.joins or join.link is None:
            return
        code, detail = join.link.failure, join.link.detail
        if code in (ResultCode.HANDSHAKE, ResultCode.NOT_ADMITTED, ResultCode.PROTOCOL):
            self._end_join(join, code, detail)
            return
        join.last = (code, detail)
        self._join_retry(join)

    def _join_retry(self, join: Join) -> None:
        if join.timer is not None:
            join.timer.cancel()
        if join.link is not None:
            join.link.close()
            join.link = None
        delay = join.backoff.next_delay()
        if delay is None:
            self._end_join(join, *join.last)
            return
        join.timer = self.call_later(delay, lambda: self._join_attempt(join))

    def _end_join(self, join: Join, code: str, reason: str, linger: bool = False) -> None:
        if self.joins.pop(join.request, None) is None:
            return
        if join.timer is not None:
            join.timer.cancel()
        if join.link is not None:
            link = join.link
            join.link = None
            if linger:
                # Let the final push leave before the socket closes.
                self.call_later(1.0, link.close)
            else:
                link.close()
        self.count("joins-ok" if code == ResultCode.OK else "joins-failed")
        if join.requester is None:
            self._tell_join(join, code, reason)
        if join.requester is not None:
            members, live, gone = self._counts()
            self.tell(
                join.requester,
                JoinResult(
                    request=join.request,
                    code=code,
                    reason=shortened(reason, 512),
                    members=members,
                    live=live,
                    gone=gone,
                ),
            )

    def _tell_join(self, join: Join, code: str, reason: str) -> None:
        """Log how one of the node's own joins ended: a failure once per
        address and reason, then again only after a join there worked."""
        where = (join.host, join.port)
        if code == ResultCode.OK:
            if self.join_failing.pop(where, None) is not None:
                log.info("discovery: joined through %s:%s again", join.host, join.port)
            return
        if code == ResultCode.CANCELLED or self.join_failing.get(where) == reason:
            log.debug("discovery: cannot join through %s:%s: %s", join.host, join.port, reason)
            return
        if len(self.join_failing) >= MAX_JOIN_FAILING:  # (addresses: the bootstrap, the kept)
            self.join_failing.clear()
        self.join_failing[where] = reason
        self.log_limited("discovery: cannot join through %s:%s: %s", join.host, join.port, reason)


def _drain(sock: zmq.Socket[Any]) -> None:
    """Drop what ``sock`` holds (read: it is polled again only for what comes next)."""
    with contextlib.suppress(zmq.ZMQError):
        while True:
            sock.recv(zmq.NOBLOCK)


def _parse_digest(entries: list[bytes]) -> dict[bytes, DigestEntry] | None:
    out: dict[bytes, DigestEntry] = {}
    try:
        for raw in entries:
            node_id, incarnation, state, tag = unpack_digest_entry(raw)
            out[node_id] = DigestEntry(incarnation, MemberState(state), tag)
    except ValueError:
        return None
    return out


def _named(node_id: bytes) -> str:
    """A member as `peers` and the health actor's log name it: its fingerprint
    (the log said 92133ac38c8546f5 where health's line before said inj6-fhwa-...)."""
    try:
        return fingerprint(x25519_public_key(node_id))
    except ValueError:
        return node_id.hex()[:16]
