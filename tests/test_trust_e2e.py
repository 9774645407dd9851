"""Receivers are authenticated end to end: real processes, real attacks.

The attacker holds the network key and fresh identities (an admitted
member); each attack runs while a good transfer to a real receiver verifies.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

import peercrypt
from peercrypt import errors
from peercrypt.cli.app import main as cli
from peercrypt.cli.shell import Shell
from peercrypt.crypto.handshake import (
    ProofError,
    open_details,
    prove_hello,
    respond,
)
from peercrypt.crypto.identity import KeyPair, fingerprint, network_server_keys
from peercrypt.testing.member_port import MemberPort, member_message, proven_hello
from peercrypt.testing.nodes import (
    LOCALHOST,
    BackgroundSend,
    NodeProcess,
    assert_sent,
    blake3_file,
    cli_env,
    run_cli,
    wait_until,
)
from peercrypt.wire import codec
from peercrypt.wire.messages import Accept, Hello, HelloReply, Offer
from peercrypt.wire.multicast_messages import McAnnounce, McJoin, McKey

KiB, MiB = 1024, 1024 * 1024


def proven_key(victim: NodeProcess, network_key: str) -> bytes:
    """The victim's identity key, learnt the way any member can (hello)."""
    return proven_hello(victim.host, victim.port, network_key).node_id


class Impostor:
    """A member with the network key and a fresh identity that answers every
    offer, hello and multicast announce *as the victim* (naming the victim's
    key) and records whatever reaches it. With ``relay`` (the victim's
    ``tcp://`` URL) it passes hellos on to the victim and returns its real,
    proven answer: a man in the middle of the pre-send check."""

    def __init__(self, network_key: str, victim_key: bytes, relay: str = "", port: int = 0) -> None:
        """``victim_key`` b"": a member answering honestly with its own fresh
        identity (which it can prove); ``port``: where to listen (0: any)."""
        self.identity = KeyPair.from_seed(os.urandom(32))
        self.victim_key = victim_key or self.identity.public
        self.network_key, self.relay = network_key, relay
        self.raw: list[bytes] = []  # every control message, as it arrived
        self.routes: list[bytes] = []  # the connection each came on (ZeroMQ routing id)
        # Her own ZAP handler admits everyone and names their CURVE key.
        self.port_ = MemberPort(network_key, port, b"impostor")
        self.ctx, self.router, self.port = self.port_.ctx, self.port_.router, self.port_.port
        self.data = self.ctx.socket(zmq.ROUTER)
        self.data.linger = 0
        self.data_port = self.data.bind_to_random_port(f"tcp://{LOCALHOST}")
        self.seen: list[str] = []
        self.data_bytes = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _answer(self, msg: codec.Message, peer: bytes) -> codec.Message | None:
        me = self.identity
        if isinstance(msg, Hello) and self.relay:
            return self._relayed(msg)
        if isinstance(msg, Hello):
            proof = prove_hello(me, msg.challenge, "0")  # her own proof, the key she names
            return HelloReply(node_id=self.victim_key, version="0", proof=proof)
        if isinstance(msg, Offer):
            answer = respond(msg.tid, me, peer, msg.eph_pub)
            return Accept(
                tid=msg.tid, eph_pub=answer.eph_pub, static_pub=self.victim_key,
                proof=answer.proof, data_host="", data_port=self.data_port, window=16, have=[],
            )  # fmt: skip
        if isinstance(msg, McAnnounce):
            answer = respond(msg.sid, me, peer, msg.eph_pub)
            return McJoin(
                sid=msg.sid, eph_pub=answer.eph_pub, static_pub=self.victim_key,
                proof=answer.proof, repair_port=self.data_port, attempt=msg.attempt,
                repair_key=os.urandom(32),
            )  # fmt: skip
        return None

    def _relayed(self, msg: codec.Message) -> codec.Message | None:
        sock = self.ctx.socket(zmq.DEALER)
        me = KeyPair.generate()
        sock.curve_serverkey = network_server_keys(self.network_key).z85_public
        sock.curve_publickey, sock.curve_secretkey = me.z85_public, me.z85_secret
        sock.linger = 0
        try:
            sock.connect(self.relay)
            sock.send(codec.encode(msg))
            return codec.decode(sock.recv()) if sock.poll(5000) else None
        finally:
            sock.close()

    def _run(self) -> None:
        self.port_.poller.register(self.data, zmq.POLLIN)
        while not self.stop.is_set():
            for sock in self.port_.poll(50):
                frames = sock.recv_multipart(copy=False)
                if sock is self.data:
                    self.data_bytes += sum(len(f.bytes) for f in frames[1:])
                    continue
                got = member_message(frames)
                if got is None:
                    continue
                route, peer, msg = got
                self.seen.append(msg.TYPE)
                self.raw.append(frames[-1].bytes)
                self.routes.append(route)
                reply = self._answer(msg, peer)
                if reply is not None:
                    self.router.send_multipart([route, codec.encode(reply)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.data.close()
        self.port_.close()


@pytest.fixture
def impostor_of(network_key: str) -> Iterator[Callable[..., Impostor]]:
    made: list[Impostor] = []

    def make(victim: NodeProcess, relay: bool = False) -> Impostor:
        url = f"tcp://{victim.host}:{victim.port}" if relay else ""
        made.append(Impostor(network_key, proven_key(victim, network_key), url))
        return made[-1]

    yield make
    for imp in made:
        imp.close()


def test_impostor_receiver_gets_nothing_and_a_good_transfer_still_verifies(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    impostor_of: Callable[[NodeProcess], Impostor],
) -> None:
    sender, victim = node_factory(), node_factory()
    imp = impostor_of(victim)
    good_file = make_file(8 * MiB, name="good.bin")
    good = BackgroundSend(sender, good_file, victim)
    secret = make_file(300 * KiB, name="secret.bin")
    # The impostor answers as the victim: it names the victim's key but cannot prove it.
    code, result = sender.send(secret, LOCALHOST, imp.port, "--force")
    assert_sent(victim, good.join(), good_file)
    assert code == errors.NOT_ADMITTED, result
    assert result["code"] == "impostor"
    assert victim.fingerprint in result["error"] and "nothing was sent" in result["error"]
    # Its hello did not prove the key it named: it was never even offered the file.
    assert "hello" in imp.seen and "offer" not in imp.seen
    assert imp.data_bytes == 0  # not one frame reached its data port
    # Pinning the victim does not help the impostor either.
    code, result = sender.send(
        secret, LOCALHOST, imp.port, "--force", "--expect", victim.fingerprint
    )
    assert code == errors.NOT_ADMITTED and result["code"] == "impostor", result
    assert imp.data_bytes == 0


class SilentAfterHello(Impostor):
    """An impostor that answers hellos (relayed, with ``relay``) and then
    nothing: the offer waits until the send's ``--timeout``."""

    def _answer(self, msg: codec.Message, peer: bytes) -> codec.Message | None:
        return None if isinstance(msg, Offer) else super()._answer(msg, peer)


def test_sends_other_members_make_fail_cost_a_member_nothing_of_its_score(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    impostor_of: Callable[..., Impostor],
    network_key: str,
) -> None:
    """Member B's score (`peers`: transfers ok and failed) hears only of
    sends B made succeed or fail. Not of a member at an address of its own
    that relays B's hello and B's real proof, then cannot finish the
    handshake ("impostor") or stays silent (a timeout: the address's, not
    the key's that the hello proved); nor, once B is dead, of one at B's
    port naming B's key, which it cannot prove ("impostor": the address is
    B's, the doing is not)."""
    quick = ("--gossip-interval", "0.2", "--health-check-interval", "0.3")
    a = node_factory(*quick)
    b = node_factory(*quick, "--bootstrap-host", LOCALHOST, "--bootstrap-port", str(a.port))

    def scores() -> tuple[int, int] | None:
        rows = json.loads(a.cli("peers", "--json").stdout)
        row = next((r for r in rows if r["id"] == b.fingerprint), None)
        return None if row is None else (row["transfers_ok"], row["transfers_failed"])

    wait_until(scores, 15, "A to know B")
    relay = impostor_of(b, relay=True)
    relayed = a.send_result(make_file(100_000), LOCALHOST, relay.port, "--force")
    assert relayed.json["code"] == "impostor", relayed.describe()
    silent = SilentAfterHello(network_key, b"", f"tcp://{b.host}:{b.port}")
    try:
        stalled = a.send_result(make_file(100_000), LOCALHOST, silent.port, "--force",
                                "--timeout", "1")  # fmt: skip
    finally:
        silent.close()
    assert stalled.json["code"] == "timeout", stalled.describe()
    assert silent.seen == ["hello", "offer"], silent.seen
    # (control tells health a send's outcome before the command its result,
    # and `peers` asks health after it: each score below has them counted)
    assert scores() == (0, 0)
    code, result = a.send_to(make_file(100_000), b)  # one of B's own counts
    assert code == 0, result
    wait_until(lambda: scores() == (1, 0), 10, "B's score")
    port, key = b.port, proven_key(b, network_key)
    b.kill()  # (gone without its "left": A keeps its record, and its address)
    squatter = Impostor(network_key, key, port=port)
    try:
        named = a.send_result(make_file(100_000), LOCALHOST, port, "--force")
    finally:
        squatter.close()
    assert named.json["code"] == "impostor", named.describe()
    assert scores() == (1, 0)


def test_an_impostor_relaying_the_hello_sees_neither_name_nor_size(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    impostor_of: Callable[..., Impostor],
    network_key: str,
) -> None:
    """A man in the middle passes the pre-send check's hello to the real node,
    so the sender trusts the key; the offer that then reaches it is sealed to
    that key: it learns neither the file's name nor its size. The check rides
    on the offer: one connection carries the hello and then the offer."""
    sender, victim = node_factory(), node_factory()
    imp = impostor_of(victim, relay=True)
    good_file = make_file(8 * MiB, name="good.bin")
    good = BackgroundSend(sender, good_file, victim)
    secret = make_file(300 * KiB + 7, name="quarterly-secret.bin")
    code, result = sender.send(secret, LOCALHOST, imp.port, "--expect", victim.fingerprint)
    assert_sent(victim, good.join(), good_file)
    assert code == errors.NOT_ADMITTED and result["code"] == "impostor", result
    assert victim.fingerprint in result["error"] and "nothing was sent" in result["error"]
    offers = [codec.decode_as(raw, Offer) for raw in imp.raw if codec.decode(raw).TYPE == "offer"]
    assert len(offers) == 1 and imp.seen == ["hello", "offer"]
    assert imp.routes[0] == imp.routes[1]  # no connection of its own for the check
    offer = offers[0]
    assert set(vars(offer)) == {"tid", "eph_pub", "details"}  # no name, no size in the clear
    size = (300 * KiB + 7).to_bytes(4, "big")
    for raw in imp.raw:
        assert b"quarterly" not in raw and size not in raw
    with pytest.raises(ProofError):  # nor can it open them with its own key
        open_details(
            offer.tid, imp.identity, proven_key(sender, network_key), offer.eph_pub, offer.details
        )
    assert imp.data_bytes == 0


def test_a_member_naming_another_receivers_data_port_gets_a_connection_of_its_own(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    network_key: str,
) -> None:
    """A member proving its own key accepts an offer naming the data port of
    another receiver R: the sender's chunks to it go on a connection of its
    own (which R drops), never on the one R's real transfers share, where
    they would queue ahead of them (over TCP: the shared key is the URL)."""
    sender, receiver = node_factory("--no-local-ipc"), node_factory()
    imp = Impostor(network_key, b"")  # honest: its own, proven identity
    imp.data_port = receiver.data_port
    bait = make_file(2 * MiB, name="bait.bin")
    hostile: list[tuple[int, dict[str, object]]] = []
    thread = threading.Thread(
        target=lambda: hostile.append(sender.send(bait, LOCALHOST, imp.port, "--timeout", "60")),
        daemon=True,
    )
    thread.start()
    try:
        wait_until(lambda: "offer" in imp.seen or None, 15.0, "the member's accept")
        sender.wait_for_counter("sender.data-connections", 1)
        good = make_file(MiB + 5, name="good.bin")
        assert_sent(receiver, sender.send_to(good, receiver), good)
        # R's transfer did not join the member's connection: one of its own.
        assert sender.wait_for_counter("sender.data-connections", 2) == 2
    finally:
        for row in json.loads(sender.cli("transfers", "--json").stdout):
            sender.cli("cancel", str(row["id"]))
        thread.join(30.0)
        imp.close()
    assert hostile and hostile[0][1].get("code") == "cancelled", hostile
    assert not (receiver.inbox / "bait.bin").exists()


def test_a_changed_key_at_a_known_address_is_refused_until_trusted(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sender, other = node_factory(), node_factory()
    first = node_factory()
    port = first.port
    path = make_file(200 * KiB, name="a.bin")
    code, result = sender.send(path, first.host, port)
    assert code == 0, result
    known = (sender.data_dir / "known_peers").read_text()
    assert f"127.0.0.1:{port} {first.fingerprint}" in known
    old_fp = first.fingerprint
    first.stop()
    # A member with a fresh identity takes over the address.
    squatter = node_factory("--port", str(port))
    assert squatter.port == port and squatter.fingerprint != old_fp
    good_file = make_file(4 * MiB, name="good.bin")
    good = BackgroundSend(sender, good_file, other)
    result_cli = sender.send_result(path, squatter.host, port)
    assert_sent(other, good.join(), good_file)
    assert result_cli.returncode == errors.NOT_ADMITTED, result_cli.describe()
    error = result_cli.json["error"]
    assert old_fp in error and squatter.fingerprint in error
    command = f"peercrypt trust {squatter.host} {port} {squatter.fingerprint}"
    assert command in error
    assert not [p for p in squatter.inbox.iterdir() if not p.name.startswith(".")]
    assert f"{port} {old_fp}" in (sender.data_dir / "known_peers").read_text()
    # A health check says the node is there, and that a send would be
    # refused (it said only "alive"); the shell's pre-send check says it
    # before the send (it announced a job that then failed so).
    # (A check sends nothing: its line says what a send there would meet.)
    would = error.replace("; nothing was sent.", "; a send there is refused.")
    assert would != error
    checked = sender.cli("health-check", squatter.host, str(port))
    assert checked.returncode == errors.NOT_ADMITTED, checked.describe()
    assert checked.stdout.startswith(f"alive {squatter.host}:{port}: node {squatter.fingerprint}")
    assert checked.stderr_lines == [f"peercrypt: error: {would}"], checked.describe()
    as_json = sender.cli("health-check", squatter.host, str(port), "--json")
    assert as_json.returncode == errors.NOT_ADMITTED, as_json.describe()
    assert json.loads(as_json.stdout)["key_changed"] == would
    shell = Shell(cli, {"data_dir": sender.data_dir}, owns_node=False)
    shell.interactive = True  # (a terminal's: the pre-send check runs)
    capsys.readouterr()
    assert shell.run_line(f"send {path} {squatter.host} {port}") == errors.NOT_ADMITTED
    out, err = capsys.readouterr()
    assert (out.splitlines(), err) == (
        [f"checking {squatter.host}:{port} ..."],
        f"peercrypt: error: {error}\n",
    )
    assert shell.jobs == []
    # Pinned with --expect, the send goes (the pin has the last word, as the
    # sender's own decision has it; the check refused it: found in review).
    pinned = f"send {path} {squatter.host} {port} --expect {squatter.fingerprint}"
    assert shell.run_line(pinned) == errors.OK
    job = shell.jobs[0]
    assert job.thread is not None
    job.thread.join(60)
    assert job.code == errors.OK, capsys.readouterr()
    assert blake3_file(squatter.inbox / path.name) == blake3_file(path)
    # The user accepts the change with the command the warning named.
    accepted = sender.cli(*command.split()[1:])
    assert accepted.returncode == 0, accepted.describe()
    assert old_fp in accepted.stdout
    assert sender.cli("health-check", squatter.host, str(port)).stderr == ""
    assert_sent(squatter, sender.send(path, squatter.host, port), path)


def test_expect_pins_the_receivers_fingerprint(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender, receiver = node_factory(), node_factory()
    path = make_file(100 * KiB, name="pinned.bin")
    wrong = fingerprint(KeyPair.generate().public)
    code, result = sender.send(path, receiver.host, receiver.port, "--expect", wrong)
    assert code == errors.NOT_ADMITTED and result["code"] == "untrusted", result
    assert wrong in result["error"] and receiver.fingerprint in result["error"]
    assert (
        not (sender.data_dir / "known_peers").exists()
        or str(receiver.port) not in (sender.data_dir / "known_peers").read_text()
    )
    pinned = receiver.fingerprint.replace("-", "").upper()  # any spelling
    code, result = sender.send(path, receiver.host, receiver.port, "--expect", pinned)
    assert code == 0, result
    bad = sender.send_result(path, receiver.host, receiver.port, "--expect", "nope")
    assert bad.returncode == errors.USAGE and "--expect" in bad.stderr_lines[-1]


def test_a_kept_control_link_taken_again_proves_and_checks_the_receiver_afresh(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """The second send takes the first one's control link, kept after its
    accept (actors/sender.py, ``IDLE_KEEP``): it still asks a hello of its
    own (a new challenge, proven again) and decides trust again, so a
    ``--expect`` of another key refuses it and nothing is sent."""
    sender, receiver = node_factory(), node_factory()
    first = make_file(100 * KiB, name="first.bin")
    assert_sent(receiver, sender.send(first, receiver.host, receiver.port), first)
    second = make_file(100 * KiB + 1, name="second.bin")
    wrong = fingerprint(KeyPair.generate().public)
    code, result = sender.send(second, receiver.host, receiver.port, "--expect", wrong)
    assert code == errors.NOT_ADMITTED and result["code"] == "untrusted", result
    assert wrong in result["error"] and receiver.fingerprint in result["error"]
    counters = sender.counters_when("sender.hellos", 2)
    assert counters["sender.links-reused"] == 1  # the kept link, not a new one
    assert counters["sender.offers"] == 1  # the refused send offered nothing
    assert not (receiver.inbox / second.name).exists()


def test_health_check_shows_the_proven_fingerprint_and_refuses_a_forged_hello(
    node_factory: Callable[..., NodeProcess],
    impostor_of: Callable[[NodeProcess], Impostor],
) -> None:
    checker, victim = node_factory(), node_factory()
    ok = checker.cli("health-check", victim.host, str(victim.port))
    assert ok.returncode == 0, ok.describe()
    assert f"node {victim.fingerprint} (peercrypt {peercrypt.__version__}), rtt" in ok.stdout
    imp = impostor_of(victim)
    forged = checker.cli("health-check", LOCALHOST, str(imp.port))
    assert forged.returncode == errors.NOT_ADMITTED, forged.describe()
    assert forged.stdout == ""
    assert forged.stderr_lines == [
        f"peercrypt: error: {LOCALHOST}:{imp.port} named key {victim.fingerprint} "
        "but could not prove it holds it"
    ]
    assert "hello" in imp.seen


def test_multicast_impostor_receiver_gets_no_content_key(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    impostor_of: Callable[[NodeProcess], Impostor],
) -> None:
    sender, good, victim = node_factory(), node_factory(), node_factory()
    imp = impostor_of(victim)
    path = make_file(2 * MiB, name="mc.bin")
    code, result = sender.send(
        path, good.host, good.port, "-m", "--to", f"{LOCALHOST}:{imp.port}", "--timeout", "5"
    )
    assert code != 0, result
    rows = {r["target"]: r for r in result["receivers"]}
    assert rows[f"{good.host}:{good.port}"]["code"] == "ok"
    stored = rows[f"{good.host}:{good.port}"]["stored_as"]
    assert blake3_file(good.inbox / stored) == blake3_file(path)
    bad = rows[f"{LOCALHOST}:{imp.port}"]
    assert bad["code"] == "impostor" and victim.fingerprint in bad["error"], bad
    # Its hello did not prove the key it named: it was never even announced the session.
    assert "hello" in imp.seen and McAnnounce.TYPE not in imp.seen
    assert McKey.TYPE not in imp.seen and imp.data_bytes == 0


def test_a_multicast_impostor_relaying_the_hello_sees_neither_name_nor_size(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    impostor_of: Callable[..., Impostor],
    network_key: str,
) -> None:
    """A man in the middle at a multicast target passes the hello to the
    real node, so the sender trusts the key it proved; the announce that then
    reaches it has the name and size sealed to that key: it learns neither,
    gets no content key, and the good receiver of the same session verifies."""
    sender, good, victim = node_factory(), node_factory(), node_factory()
    imp = impostor_of(victim, relay=True)
    secret = make_file(300 * KiB + 7, name="quarterly-secret.bin")
    theirs = f"{LOCALHOST}:{imp.port}"
    code, result = sender.send(
        secret, good.host, good.port, "-m", "--to", theirs, "--expect", victim.fingerprint,
        "--expect", good.fingerprint, "--timeout", "10",
    )  # fmt: skip
    assert code == errors.NOT_ADMITTED, result
    rows = {r["target"]: r for r in result["receivers"]}
    mine = rows[f"{good.host}:{good.port}"]
    assert mine["code"] == "ok", mine
    assert blake3_file(good.inbox / mine["stored_as"]) == blake3_file(secret)
    bad = rows[theirs]
    assert bad["code"] == "impostor" and victim.fingerprint in bad["error"], bad
    announces = [
        codec.decode_as(r, McAnnounce) for r in imp.raw if codec.decode(r).TYPE == "mc-announce"
    ]
    assert announces and imp.seen.count("hello") >= 1
    size = (300 * KiB + 7).to_bytes(4, "big")
    for raw in imp.raw:
        assert b"quarterly" not in raw and size not in raw
    for announce in announces:
        assert announce.name == "" and announce.size == 0 and announce.details
        with pytest.raises(ProofError):  # nor can it open them with its own key
            open_details(
                announce.sid, imp.identity, proven_key(sender, network_key),
                announce.eph_pub, announce.details,
            )  # fmt: skip
    assert McKey.TYPE not in imp.seen and imp.data_bytes == 0


def test_multicast_receiver_with_a_changed_key_gets_no_content_key(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender, good, first = node_factory(), node_factory(), node_factory()
    port, old_fp = first.port, first.fingerprint
    path = make_file(256 * KiB, name="mc2.bin")
    code, result = sender.send(path, first.host, port)  # first contact over unicast
    assert code == 0, result
    first.stop()
    squatter = node_factory("--port", str(port))
    code, result = sender.send(path, good.host, good.port, "-m", "--to", f"{LOCALHOST}:{port}")
    assert code != 0, result
    rows = {r["target"]: r for r in result["receivers"]}
    assert rows[f"{good.host}:{good.port}"]["code"] == "ok"
    bad = rows[f"{LOCALHOST}:{port}"]
    assert bad["code"] == "untrusted" and old_fp in bad["error"], bad
    assert squatter.fingerprint in bad["error"]
    assert not [p for p in squatter.inbox.iterdir() if not p.name.startswith(".")]


def test_multicast_expect_drops_a_receiver_proving_another_key(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    network_key: str,
) -> None:
    """``send -m --expect``: a receiver that proves a key (a member with the
    network key and its own fresh identity) but not an expected one is dropped
    with both fingerprints named; the expected receiver still verifies."""
    sender, good = node_factory(), node_factory()
    stranger = Impostor(network_key, b"")  # honest about its own key
    try:
        path = make_file(1 * MiB + 3, name="pinned-mc.bin")
        theirs = f"{LOCALHOST}:{stranger.port}"
        code, result = sender.send(
            path, good.host, good.port, "-m", "--to", theirs, "--expect", good.fingerprint
        )
        assert code == errors.NOT_ADMITTED, result
        rows = {r["target"]: r for r in result["receivers"]}
        assert rows[f"{good.host}:{good.port}"]["code"] == "ok"
        stored = good.inbox / rows[f"{good.host}:{good.port}"]["stored_as"]
        assert blake3_file(stored) == blake3_file(path)
        bad = rows[theirs]
        mine = fingerprint(stranger.identity.public)
        assert bad["code"] == "untrusted", bad
        assert mine in bad["error"] and good.fingerprint in bad["error"], bad
        assert McKey.TYPE not in stranger.seen and stranger.data_bytes == 0
        # Alone, it fails the whole send (exit 4).
        code, result = sender.send(
            path, LOCALHOST, stranger.port, "-m", "--expect", good.fingerprint, "--timeout", "5"
        )
        assert code == errors.NOT_ADMITTED and result["code"] == "untrusted", result
        # Two pins: each of two receivers may prove either; both store the file.
        other = node_factory()
        code, result = sender.send(
            path, good.host, good.port, "-m", "--to", f"{other.host}:{other.port}",
            "--expect", other.fingerprint, "--expect", good.fingerprint,
        )  # fmt: skip
        assert code == 0, result
        rows = {r["target"]: r for r in result["receivers"]}
        for node in (good, other):
            row = rows[f"{node.host}:{node.port}"]
            assert row["code"] == "ok", row
            assert blake3_file(node.inbox / row["stored_as"]) == blake3_file(path)
        assert McKey.TYPE not in stranger.seen
    finally:
        stranger.close()
    two = sender.send_result(path, good.host, good.port, "--expect", good.fingerprint,
                             "--expect", mine)  # fmt: skip
    assert two.returncode == errors.USAGE and "--expect" in two.stderr_lines[-1]


def test_members_signed_records_refuse_another_key_at_their_address(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    network_key: str,
) -> None:
    """First contact with an address a member's signed record gives (learnt by
    gossip, the member proven there, no known-peers entry): a fresh identity
    answering there is refused, for a send and for each multicast receiver,
    naming both keys."""
    gossip = ("--gossip-interval", "0.2", "--health-check-interval", "0.3")
    sender = node_factory(*gossip)
    member = node_factory(*gossip, "--bootstrap-host", LOCALHOST, "--bootstrap-port",
                          str(sender.port))  # fmt: skip
    good = node_factory()

    def listed() -> bool:
        peers = sender.cli("peers", "--json", timeout=30)
        return peers.returncode == 0 and any(
            row["id"] == member.fingerprint
            and row["address"] == f"{LOCALHOST}:{member.port}"
            and row["proven"] is True
            for row in json.loads(peers.stdout)
        )

    # Its signed record, and its identity proven at that address by the
    # sender's health (a record alone is a claim: actors/health.py).
    wait_until(listed, 30, "the sender to hold the member's record, proven at its address")
    port, member_fp = member.port, member.fingerprint
    member.kill()  # gone without a word: its record stays
    squatter = Impostor(network_key, b"", port=port)
    try:
        mine = fingerprint(squatter.identity.public)
        good_file = make_file(4 * MiB, name="good.bin")
        background = BackgroundSend(sender, good_file, good)
        path = make_file(200 * KiB, name="claimed.bin")
        code, result = sender.send(path, LOCALHOST, port)
        assert_sent(good, background.join(), good_file)
        assert code == errors.NOT_ADMITTED and result["code"] == "untrusted", result
        assert member_fp in result["error"] and mine in result["error"], result
        assert "signed records" in result["error"]
        assert "hello" in squatter.seen and "offer" not in squatter.seen
        code, result = sender.send(path, good.host, good.port, "-m", "--to", f"{LOCALHOST}:{port}")
        assert code == errors.NOT_ADMITTED, result
        rows = {r["target"]: r for r in result["receivers"]}
        stored = good.inbox / rows[f"{good.host}:{good.port}"]["stored_as"]
        assert blake3_file(stored) == blake3_file(path)
        bad = rows[f"{LOCALHOST}:{port}"]
        assert bad["code"] == "untrusted" and member_fp in bad["error"] and mine in bad["error"]
        assert McKey.TYPE not in squatter.seen and squatter.data_bytes == 0
        known = sender.data_dir / "known_peers"
        assert not known.exists() or f":{port} " not in known.read_text()
    finally:
        squatter.close()


def test_a_known_peers_file_that_is_no_file_fails_each_request_that_reads_it(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A directory (or FIFO...) where the known-peers file goes: every send,
    check and `trust` that must read it ends with one line naming it (the
    send answered, not left hanging), and the node goes on; removed, sends
    go again."""
    sender, receiver = node_factory(), node_factory()
    known = sender.data_dir / "known_peers"
    known.mkdir()
    path = make_file(100 * KiB, name="pins.bin")
    why = f"cannot read the known-peers file {known}: it is a directory, not a readable file"
    sent = sender.cli("send", path, receiver.host, str(receiver.port), "--timeout", "5", timeout=30)
    assert sent.returncode == errors.USAGE, sent.describe()
    assert sent.stderr_lines == [f"peercrypt: error: {why}; nothing was sent"], sent.describe()
    code, result = sender.send(
        path, receiver.host, receiver.port, "-m", "--timeout", "5", timeout=30
    )
    assert code == errors.USAGE, result
    (row,) = result["receivers"]
    assert row["code"] == "local" and row["error"] == f"{why}; nothing sent", row
    checked = sender.cli("health-check", receiver.host, str(receiver.port))
    assert checked.returncode == errors.USAGE, checked.describe()
    assert checked.stderr_lines == [f"peercrypt: error: {why}"], checked.describe()
    alive = f"alive {receiver.host}:{receiver.port}: node "
    assert checked.stdout.startswith(alive), checked.stdout
    # A reconnect did its work: the file's state is a warning there.
    again = sender.cli("reconnect", receiver.host, str(receiver.port), "--json")
    assert again.returncode == 0, again.describe()
    told = json.loads(again.stdout)
    assert told["ok"] and told["known_peers_error"] == why, told
    trusted = sender.cli("trust", receiver.host, str(receiver.port), receiver.fingerprint)
    assert trusted.returncode == errors.USAGE, trusted.describe()
    assert trusted.stderr_lines == [f"peercrypt: error: {why}"], trusted.describe()
    shell = Shell(cli, {"data_dir": sender.data_dir}, owns_node=False)
    shell.interactive = True  # (a terminal's: the pre-send check runs)
    capsys.readouterr()
    assert shell.run_line(f"send {path} {receiver.host} {receiver.port}") == errors.USAGE
    assert capsys.readouterr().err == f"peercrypt: error: {why}\n"
    assert shell.jobs == []
    assert not [p for p in receiver.inbox.iterdir() if not p.name.startswith(".")]
    known.rmdir()
    assert_sent(receiver, sender.send(path, receiver.host, receiver.port), path)


# -- the network key ------------------------------------------------------------------------


def test_network_key_in_argv_warns_and_other_sources_do_not(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    tmp_path: Path,
    network_key: str,
) -> None:
    receiver = node_factory()
    path = make_file(64 * KiB, name="k.bin")
    args = ("send", path, receiver.host, str(receiver.port), "--json")
    in_argv = run_cli(*args, "--network-key", network_key, data_dir=tmp_path / "t1")
    assert in_argv.returncode == 0, in_argv.describe()
    warnings = [line for line in in_argv.stderr_lines if "warning" in line]
    assert len(warnings) == 1 and "visible" in warnings[0] and network_key not in warnings[0]
    from_env = run_cli(*args, data_dir=tmp_path / "t2", env={"PEERCRYPT_NETWORK_KEY": network_key})
    assert from_env.returncode == 0 and "warning" not in from_env.stderr, from_env.describe()
    key_file = tmp_path / "key"
    key_file.write_text(network_key + "\n")
    key_file.chmod(0o600)
    from_file = run_cli(*args, "--network-key-file", key_file, data_dir=tmp_path / "t3")
    assert from_file.returncode == 0 and "warning" not in from_file.stderr, from_file.describe()
    key_file.chmod(0o644)
    loose = run_cli(*args, "--network-key-file", key_file, data_dir=tmp_path / "t4")
    assert loose.returncode == errors.USAGE
    assert loose.stderr_lines == [
        f"peercrypt: error: {key_file} is accessible by other users (mode 644); "
        f"run: chmod 600 {key_file}"
    ]
    assert network_key not in loose.stderr


def test_short_passphrase_is_refused_with_one_line(tmp_path: Path) -> None:
    result = run_cli(
        "node", "--port", "0", data_dir=tmp_path, env={"PEERCRYPT_NETWORK_KEY": "hunter2"}
    )
    assert result.returncode == errors.USAGE
    assert result.stderr_lines == [
        "peercrypt: error: the network key is a passphrase of 7 characters; use at least 20, "
        "or better a key from `peercrypt keygen`"
    ]


def test_network_key_from_a_prompt_on_a_terminal(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    tmp_path: Path,
    network_key: str,
) -> None:
    receiver = node_factory()
    path = make_file(32 * KiB, name="prompted.bin")
    argv = [sys.executable, "-m", "peercrypt", "--data-dir", str(tmp_path / "t"), "send"]
    argv += [str(path), receiver.host, str(receiver.port), "--json"]
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=follower, stdout=subprocess.PIPE, stderr=follower, env=cli_env()
    )
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"network key" not in seen:
            assert time.monotonic() < deadline, f"no prompt: {seen!r}"
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                seen += os.read(leader, 1024)
        os.write(leader, network_key.encode() + b"\n")
        out, _ = proc.communicate(timeout=60)
        seen += _drain(leader)  # whatever the terminal showed after the answer
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        os.close(leader)
    assert proc.returncode == 0, (out, seen)
    stored = receiver.inbox / json.loads(out)["stored_as"]
    assert blake3_file(stored) == blake3_file(path)
    assert network_key.encode() not in seen  # hidden input: never echoed


def _drain(fd: int) -> bytes:
    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        data += chunk
    return data
