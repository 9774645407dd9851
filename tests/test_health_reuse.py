"""A health check over the member's probe connection, with a real node
against a member that the test plays (it holds the network key and its own
identity, gossips its signed record, answers probes, and answers hellos as
each test says): the check reuses the connection, falls back to a fresh one
when the member stops answering there, and never takes an answer to a
challenge it did not send."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest
import zmq
from nacl.signing import SigningKey

from peercrypt import errors
from peercrypt.core.member_state import MemberState
from peercrypt.core.membership import MemberRecord
from peercrypt.crypto.handshake import prove_hello
from peercrypt.crypto.identity import (
    KeyPair,
    fingerprint,
    network_server_keys,
    new_network_key,
)
from peercrypt.testing.member_port import MemberPort, proven_hello
from peercrypt.testing.nodes import LOCALHOST, NodeProcess
from peercrypt.wire import codec
from peercrypt.wire.messages import Hello, HelloReply, Ping, Pong
from peercrypt.wire.network_messages import Gossip

# Probes every 2 s: a member that answered one is "answering" for 4 s, long
# enough for a check to start inside that window without a race.
CHECKER = ("--gossip-interval", "0.2", "--health-check-interval", "2", "--timeout", "2")
ONLY_ON_PROBES, SILENT_ON_PROBES, REPLAY = "only-on-probes", "silent-on-probes", "replay"
ONLY_FIRST, ONCE_PER_CONNECTION = "only-first", "once-per-connection"

MEMBER_VERSION = "0"  # what the crafted members answer a hello with


class Member:
    """A member node's public port, played by the test. It answers every
    ping; ``mode``: ONLY_ON_PROBES proves the hellos that come on its probe
    connection (the one that carries pings) and no other; SILENT_ON_PROBES
    the other way round; REPLAY answers every hello with ``replayed``, a
    genuine answer someone else gave to another challenge; ONLY_FIRST
    proves the hellos of the first connection that asks one, and no other;
    ONCE_PER_CONNECTION the first hello of each connection only."""

    def __init__(self, network_key: str, mode: str, replayed: HelloReply | None = None) -> None:
        seed = os.urandom(32)
        self.identity, self.signer = KeyPair.from_seed(seed), SigningKey(seed)
        self.network_key, self.mode, self.replayed = network_key, mode, replayed
        self.hellos: list[bytes] = []  # the connection (routing id) of each hello
        self.probe_routes: set[bytes] = set()  # connections that carried a ping
        self.port_ = MemberPort(network_key)
        self.ctx, self.router, self.port = self.port_.ctx, self.port_.router, self.port_.port
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity.public)

    def join(self, node: NodeProcess) -> None:
        """Gossip this member's signed record to ``node``."""
        record = MemberRecord.create(
            self.signer, self.identity.node_id, 0, MemberState.ALIVE,
            {"control": f"tcp://{LOCALHOST}:{self.port}"},
        )  # fmt: skip
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.curve_serverkey = network_server_keys(self.network_key).z85_public
        sock.curve_publickey = self.identity.z85_public
        sock.curve_secretkey = self.identity.z85_secret
        sock.sndtimeo = 5000
        try:
            sock.connect(f"tcp://{node.host}:{node.port}")
            push = Gossip(origin=self.identity.node_id, records=[record.to_wire()], digest=[])
            sock.send(codec.encode(push))
            sock.send(codec.encode(Ping(seq=1)))  # answered once the push was taken
            assert sock.poll(10_000), "the node does not answer"
        finally:
            sock.close()

    def _answer(self, msg: codec.Message, route: bytes) -> codec.Message | None:
        if isinstance(msg, Ping):
            self.probe_routes.add(route)
            return Pong(seq=msg.seq)
        if not isinstance(msg, Hello):
            return None
        self.hellos.append(route)
        if self.mode == REPLAY:
            return self.replayed
        if self.mode == ONLY_FIRST and route != self.hellos[0]:
            return None
        if self.mode == ONCE_PER_CONNECTION and self.hellos.count(route) > 1:
            return None
        if self.mode in (ONLY_ON_PROBES, SILENT_ON_PROBES) and (
            (self.mode == SILENT_ON_PROBES) == (route in self.probe_routes)
        ):
            return None
        proof = prove_hello(self.identity, msg.challenge, MEMBER_VERSION)
        return HelloReply(node_id=self.identity.public, version=MEMBER_VERSION, proof=proof)

    def _run(self) -> None:
        while not self.stop.is_set():
            for _sock in self.port_.poll(50):
                frames = self.router.recv_multipart()
                try:
                    msg = codec.decode(frames[-1])
                except codec.DecodeError:
                    continue
                reply = self._answer(msg, frames[0])
                if reply is not None:
                    self.router.send_multipart([frames[0], codec.encode(reply)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.port_.close()


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """The node that checks, shared by this module's tests (each plays a
    member of its own)."""
    node = NodeProcess(
        tmp_path_factory.mktemp("reuse") / "checker", new_network_key(), extra_args=CHECKER
    )
    try:
        yield node.start()
    finally:
        if node.proc is not None:
            assert node.stop() == 0, node.log_tail()


@pytest.fixture
def member_of(checker: NodeProcess) -> Iterator[Callable[..., Member]]:
    """``member_of(mode, replayed=None, join=True)``: a member that the
    checker knows and has heard answer a probe (``join=False``: a node the
    checker does not know)."""
    made: list[Member] = []
    key = checker.network_key
    assert key is not None

    def make(mode: str, replayed: HelloReply | None = None, join: bool = True) -> Member:
        member = Member(key, mode, replayed)
        made.append(member)
        if not join:
            return member
        # Its pongs count once its probe connection proved its identity; a
        # member that cannot prove it (REPLAY) answers pings for no verdict.
        answered = "health.pongs-before-proof" if mode == REPLAY else "health.pongs"
        pongs = checker.counters().get(answered, 0)
        member.join(checker)
        checker.wait_for_counter(answered, pongs + 1, timeout=15)
        return member

    yield make
    for member in made:
        member.close()


def test_a_check_of_a_member_rides_on_its_probe_connection(
    checker: NodeProcess, member_of: Callable[..., Member]
) -> None:
    member = member_of(ONLY_ON_PROBES)
    reused = checker.counters().get("health.checks-reused", 0)
    ok = checker.cli("health-check", LOCALHOST, str(member.port))
    assert ok.returncode == 0, ok.describe()
    version = f"(peercrypt {MEMBER_VERSION})"  # the version its proof signs
    assert f"alive {LOCALHOST}:{member.port}: node {member.fingerprint} {version}, rtt" in ok.stdout
    # Asked on the connection that carries the probes, the only one on
    # which this member answers (a fresh one, opened if that answer were
    # slow, would go unanswered).
    assert member.hellos[0] in member.probe_routes
    checker.wait_for_counter("health.checks-reused", reused + 1)


def test_a_member_silent_on_the_probe_connection_is_checked_afresh(
    checker: NodeProcess, member_of: Callable[..., Member]
) -> None:
    member = member_of(SILENT_ON_PROBES)
    fallbacks = checker.counters().get("health.check-reuse-fallbacks", 0)
    ok = checker.cli("health-check", LOCALHOST, str(member.port), "--json")
    assert ok.returncode == 0, ok.describe()
    assert ok.json["fingerprint"] == member.fingerprint and ok.json["attempts"] >= 2
    assert member.hellos[0] in member.probe_routes  # asked there first, unanswered
    assert member.hellos[-1] not in member.probe_routes  # then on a fresh connection
    checker.wait_for_counter("health.check-reuse-fallbacks", fallbacks + 1)


def test_an_answer_to_a_challenge_not_the_checks_own_proves_nothing(
    checker: NodeProcess, member_of: Callable[..., Member]
) -> None:
    # The genuine answer it replays is the checker's own, to its challenge.
    assert checker.network_key is not None
    replayed = proven_hello(checker.host, checker.port, checker.network_key)
    member = member_of(REPLAY, replayed)
    before = checker.counters()
    forged = checker.cli("health-check", LOCALHOST, str(member.port))
    assert forged.returncode == errors.NOT_ADMITTED, forged.describe()
    assert forged.stdout == ""
    assert forged.stderr_lines == [
        f"peercrypt: error: {LOCALHOST}:{member.port} named key {checker.fingerprint} "
        "but could not prove it holds it"
    ]
    # Refused on the probe connection (health's own question of who answers
    # there: the member never counted as answering), then on a fresh one.
    assert member.hellos[0] in member.probe_routes
    assert member.hellos[-1] not in member.probe_routes
    for name in ("health.check-replies-unproven", "health.checks-forged"):
        checker.wait_for_counter(name, before.get(name, 0) + 1)


def test_the_next_check_of_a_stranger_rides_on_the_last_checks_connection(
    checker: NodeProcess, member_of: Callable[..., Member]
) -> None:
    stranger = member_of(ONLY_FIRST, join=False)
    reused = checker.counters().get("health.checks-reused", 0)
    for _ in range(2):
        ok = checker.cli("health-check", LOCALHOST, str(stranger.port))
        assert ok.returncode == 0, ok.describe()
        assert f"node {stranger.fingerprint} (peercrypt {MEMBER_VERSION}), rtt" in ok.stdout
    # The second hello came on the first check's connection (the only one
    # this node answers on).
    assert stranger.hellos[1] == stranger.hellos[0], stranger.hellos
    checker.wait_for_counter("health.checks-reused", reused + 1)


def test_a_kept_connection_that_stops_answering_is_replaced(
    checker: NodeProcess, member_of: Callable[..., Member]
) -> None:
    stranger = member_of(ONCE_PER_CONNECTION, join=False)
    assert checker.cli("health-check", LOCALHOST, str(stranger.port)).returncode == 0
    fallbacks = checker.counters().get("health.check-reuse-fallbacks", 0)
    again = checker.cli("health-check", LOCALHOST, str(stranger.port), "--json")
    assert again.returncode == 0, again.describe()
    assert again.json["fingerprint"] == stranger.fingerprint and again.json["attempts"] >= 2
    first, asked_again, fresh = stranger.hellos[:3]
    assert asked_again == first and fresh != first  # unanswered there, then a new connection
    checker.wait_for_counter("health.check-reuse-fallbacks", fallbacks + 1)
    # The new connection is the one kept now: a third check asks there first.
    assert checker.cli("health-check", LOCALHOST, str(stranger.port)).returncode == 0
    assert stranger.hellos[3] == fresh
