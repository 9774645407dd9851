"""A co-receiver of a multicast session attacks the honest receiver (real
processes; docs/security.md, "Co-receiver"). It holds the network key, a
fresh identity and - being invited to the session - the session id and the
content key. Whatever it does, the honest receiver, running the same session
at the same time, stores exactly the sender's bytes."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peercrypt.crypto.identity import load_or_create_identity
from peercrypt.testing.faults import GateProxy
from peercrypt.testing.hostile import CoReceiver, Joined, Squatter
from peercrypt.testing.nodes import (
    NodeProcess,
    blake3_file,
    free_port,
    start_cli,
    wait_until,
)
from peercrypt.wire.messages import Hello
from peercrypt.wire.multicast_messages import McDone, McJoin, McRefuse

MiB = 1024 * 1024
CHUNK = 256 * 1024


@pytest.fixture
def co_receiver(network_key: str) -> Iterator[CoReceiver]:
    hostile = CoReceiver(network_key)
    yield hostile
    hostile.close()


def _group_args(transport: str) -> tuple[str, ...]:
    if transport == "pub":
        return ()
    group = f"239.255.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
    return ("--multicast-group", f"{group}:{free_port()}", "--multicast-ttl", "0")


def _send(sender: NodeProcess, path: Path, honest: NodeProcess, hostile: CoReceiver) -> Any:
    return start_cli(
        "send", path, honest.host, str(honest.port), "-m",
        "--to", f"127.0.0.1:{hostile.port}", "--chunk-size", str(CHUNK),
        "--timeout", "30", "--json",
        data_dir=sender.data_dir,
    )  # fmt: skip


def _finish(proc: Any, sender: NodeProcess) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert out, (err, sender.log_tail())
    return dict(json.loads(out))


def _honest_result(result: dict[str, Any], honest: NodeProcess) -> dict[str, Any]:
    target = f"{honest.host}:{honest.port}"
    return next(r for r in result["receivers"] if r["target"] == target)


def _final_files(node: NodeProcess) -> dict[str, str]:
    return {
        p.name: blake3_file(p)
        for p in node.inbox.iterdir()
        if p.is_file() and not p.name.startswith(".")
    }


def _inject_group(hostile: CoReceiver, joined: Joined, index: int) -> None:
    a = joined.announce
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        for datagram in hostile.forged_datagrams(joined, index):
            s.sendto(datagram, (a.group, a.group_port))


@pytest.mark.parametrize("transport", ["pub", "udp"])
def test_forged_chunks_from_a_co_receiver_are_dropped_and_repaired(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    co_receiver: CoReceiver,
    transport: str,
) -> None:
    """The co-receiver seals chunks of its own with the real content key and
    pushes them to the honest receiver's repair port (and, over UDP, to the
    group, with header tags it can make) before and while the real ones
    come: each is dropped (no repair tag, or not the sender's signature),
    NAKed and repaired; the file stored is the sender's."""
    sender = node_factory("--max-rate", str(3 * MiB), *_group_args(transport))
    honest = node_factory()
    path = make_file(6 * MiB + 1000)  # 25 chunks, ~2 s at the rate
    total = -(-path.stat().st_size // CHUNK)
    proc = _send(sender, path, honest, co_receiver)
    joined = co_receiver.session()
    repair_port = int(
        wait_until(lambda: honest.status().get("multicast_repair_port"), 5, "the repair port")
    )
    junk = [[b"x"], [b"x", b"y", b"z"], [b"\x00" * 3, b"", b""]]
    rounds = 0
    while proc.poll() is None and rounds < 200:
        forged = [co_receiver.forged_frames(joined, i) for i in range(total)]
        co_receiver.push_repairs(honest.host, repair_port, forged + junk)
        if transport == "udp":
            for i in range(total):
                _inject_group(co_receiver, joined, i)
        rounds += 1
        time.sleep(0.05)
    result = _finish(proc, sender)
    mine = _honest_result(result, honest)
    assert mine["code"] == "ok", (result, honest.log_tail())
    assert _final_files(honest) == {mine["stored_as"]: blake3_file(path)}
    counters = honest.counters_when("mreceiver.received", 1)  # counted after the drops
    # Its repairs lack the tag only the sender can make for this receiver:
    # dropped before any hashing; over the group, where it can make headers,
    # its chunks fail the sender's signature.
    assert counters.get("mreceiver.repair-dropped-tag", 0) >= total, counters
    if transport == "udp":
        assert counters.get("mreceiver.data-dropped-forged", 0) >= 1, counters
    assert honest.running  # the hostile peer crashed nothing


def test_the_repair_port_admits_no_one_but_the_senders(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    co_receiver: CoReceiver,
) -> None:
    """A co-receiver on another host pushing to the honest receiver's repair
    port is refused in the handshake: not one of its frames is read ahead or
    looked at, however many connections it opens; the session verifies."""
    sender = node_factory("--max-rate", str(3 * MiB))
    honest = node_factory()
    path = make_file(4 * MiB + 1000)
    total = -(-path.stat().st_size // CHUNK)
    proc = _send(sender, path, honest, co_receiver)
    joined = co_receiver.session()
    repair_port = int(
        wait_until(lambda: honest.status().get("multicast_repair_port"), 5, "the repair port")
    )
    forged = [co_receiver.forged_frames(joined, i) for i in range(total)]
    rounds = 0
    while proc.poll() is None and rounds < 20:
        co_receiver.push_repairs(honest.host, repair_port, forged, source="127.0.0.2")
        rounds += 1
    result = _finish(proc, sender)
    mine = _honest_result(result, honest)
    assert mine["code"] == "ok", (result, honest.log_tail())
    assert _final_files(honest) == {mine["stored_as"]: blake3_file(path)}
    counters = honest.counters_when("admission.repair-denied", 1)
    assert counters.get("admission.repair-admitted", 0) >= 1, counters  # the sender's
    # none got in (the report that counts the file has what came before it)
    counters = honest.counters_when("mreceiver.received", 1)
    assert counters.get("mreceiver.repair-dropped-tag", 0) == 0, counters


def test_a_co_receiver_racing_the_part_name_cannot_replace_the_file(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    co_receiver: CoReceiver,
) -> None:
    """Knowing the session id and the file name, the co-receiver announces
    sessions of its own to the honest receiver - the same id, ids that share
    its first bytes, the same name and size - while the real one runs: the
    honest receiver stores the sender's bytes, nothing else appears under a
    final name, and no part of the real session was removed. (Before the
    sender reaches it: the next test.)"""
    sender = node_factory("--max-rate", str(3 * MiB))
    honest = node_factory()
    path = make_file(6 * MiB + 1000)
    proc = _send(sender, path, honest, co_receiver)
    real = co_receiver.session().announce
    to = load_or_create_identity(honest.data_dir).public  # what a hello to it tells
    # The race this test is about is with the running session: wait until the
    # honest receiver has joined it.
    honest.wait_for_counter("mreceiver.joined", 1, timeout=30)
    refusals, joins = [], []
    rounds = 0
    while proc.poll() is None and rounds < 12:
        sids = [real.sid, real.sid[:6] + os.urandom(10), real.sid[:15] + os.urandom(1)]
        announces = [co_receiver.own_announce(real, sid, to) for sid in sids]
        answers = co_receiver.announce(honest.host, honest.port, announces)
        refusals += [a for a in answers if isinstance(a, McRefuse)]
        joins += [a for a in answers if isinstance(a, McJoin)]
        rounds += 1
        time.sleep(0.1)
    result = _finish(proc, sender)
    mine = _honest_result(result, honest)
    assert mine["code"] == "ok", (result, honest.log_tail())
    assert _final_files(honest) == {mine["stored_as"]: blake3_file(path)}
    # The real id from another sender is a session of that sender's own.
    assert any(j.sid == real.sid for j in joins), (joins, refusals)
    assert not any(r.code == "duplicate" for r in refusals), refusals


@pytest.mark.parametrize("transport", ["pub", "udp"])
def test_a_co_receiver_announcing_the_real_id_first_takes_nothing(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    co_receiver: CoReceiver,
    transport: str,
) -> None:
    """The sender's connection to the honest receiver is held (a proxy)
    until the co-receiver, announced to first, has announced the real
    session id to the honest receiver as a session of its own - sealed to
    the honest receiver's key, with the real PUB port or UDP group - and was
    joined there. Then the sender reaches it: the honest receiver joins the
    sender's session beside the co-receiver's (same id, another proven
    sender), takes its chunks only, and stores the sender's bytes."""
    sender = node_factory("--max-rate", str(3 * MiB), *_group_args(transport))
    honest = node_factory()
    path = make_file(2 * MiB + 1000)
    with GateProxy((honest.host, honest.port)) as gate:
        proc = start_cli(
            "send", path, "127.0.0.1", str(gate.port), "-m",
            "--to", f"127.0.0.1:{co_receiver.port}", "--chunk-size", str(CHUNK),
            "--timeout", "30", "--json",
            data_dir=sender.data_dir,
        )  # fmt: skip
        real = co_receiver.session().announce
        to = load_or_create_identity(honest.data_dir).public  # what a hello to it tells
        first = co_receiver.own_announce(real, real.sid, to)
        answers = co_receiver.announce(honest.host, honest.port, [first])
        assert [type(a) for a in answers] == [McJoin] and answers[0].sid == real.sid, answers
        gate.open()
        result = _finish(proc, sender)
    (mine,) = [r for r in result["receivers"] if r["target"] == f"127.0.0.1:{gate.port}"]
    assert mine["code"] == "ok", (result, honest.log_tail())
    assert _final_files(honest) == {mine["stored_as"]: blake3_file(path)}
    honest.wait_for_counter("mreceiver.joined", 2)  # both sessions of that id
    assert honest.running


def test_an_announce_naming_another_nodes_signing_key_is_refused(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    co_receiver: CoReceiver,
) -> None:
    """The co-receiver, as a sender, claims the real sender's signing key (so
    that chunks it replays would verify): the key is not the identity CURVE
    proved for its connection, and the session is refused."""
    sender, honest = node_factory(), node_factory()
    path = make_file(300 * 1024)
    proc = _send(sender, path, honest, co_receiver)
    real = co_receiver.session().announce
    to = load_or_create_identity(honest.data_dir).public  # what a hello to it tells
    own = [co_receiver.own_announce(real, os.urandom(16), to) for _ in range(2)]
    claim = dataclasses.replace(own[0], signer=real.signer)
    unsigned = dataclasses.replace(own[1], signer=b"")
    answers = co_receiver.announce(honest.host, honest.port, [claim, unsigned])
    assert [(type(a), a.code) for a in answers] == [(McRefuse, "protocol")] * 2, answers
    result = _finish(proc, sender)
    assert _honest_result(result, honest)["code"] == "ok", result


def test_a_member_that_acks_everything_and_never_answers_cannot_hold_the_send(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """A target that acks every chunk for ever (as a receiver verifying
    does) and never sends its verdict: after --timeout plus its file's
    verify allowance it fails for no progress, the send ends (not exit 0)
    and the honest receiver's copy is verified and stored."""
    sender, honest = node_factory(), node_factory()
    path = make_file(256 * 1024 + 7)
    hostile = CoReceiver(network_key, verify_forever=True)
    try:
        proc = start_cli(
            "send", path, honest.host, str(honest.port), "-m",
            "--to", f"127.0.0.1:{hostile.port}", "--chunk-size", str(CHUNK),
            # 6 s: long enough that the honest receiver is never failed for
            # no progress on a loaded machine (2 s was not, once).
            "--timeout", "6", "--json",
            data_dir=sender.data_dir,
        )  # fmt: skip
        result = _finish(proc, sender)
        assert proc.returncode != 0, result
    finally:
        hostile.close()
    mine = _honest_result(result, honest)
    assert mine["code"] == "ok", (result, honest.log_tail())
    assert _final_files(honest) == {mine["stored_as"]: blake3_file(path)}
    (theirs,) = [r for r in result["receivers"] if r["target"] == f"127.0.0.1:{hostile.port}"]
    assert theirs["code"] != "ok" and "no progress" in theirs["error"], theirs


def test_a_member_squatting_a_targets_address_cannot_make_it_verified(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """One member with the network key and fresh identities: a co-receiver
    of the session (it joins, learns the whole-file hash from the sender's
    statuses, then acks for ever) and a squatter at a third target's
    address (that node is down) that skips the hello and the join and says
    "verified" with that hash - and, before the hash is known, "failed".
    Neither verdict counts: the third target fails for not answering, the
    honest receiver's copy verifies."""
    sender, honest = node_factory(), node_factory()
    path = make_file(256 * 1024 + 7)
    co, squatter = CoReceiver(network_key, verify_forever=True), Squatter(network_key)
    try:
        proc = start_cli(
            "send", path, honest.host, str(honest.port), "-m",
            "--to", f"127.0.0.1:{co.port}", "--to", f"127.0.0.1:{squatter.port}",
            "--chunk-size", str(CHUNK), "--timeout", "10", "--json",
            data_dir=sender.data_dir,
        )  # fmt: skip
        sid = co.session(timeout=30).announce.sid
        squatter.say(McDone(sid=sid, ok=False, digest=b"", stored_as="", reason="gone"))
        assert sender.wait_for_counter("msender.done-unproven", 1, timeout=15) == 1
        learnt_sid, digest = co.digest(timeout=30)
        assert learnt_sid == sid
        squatter.say(McDone(sid=sid, ok=True, digest=digest, stored_as="mc.bin", reason=""))
        assert sender.wait_for_counter("msender.done-unproven", 2, timeout=15) == 2
        result = _finish(proc, sender)
    finally:
        co.close()
        squatter.close()
    assert any(isinstance(m, Hello) for m in squatter.heard)  # it was asked to prove itself
    (theirs,) = [r for r in result["receivers"] if r["target"] == f"127.0.0.1:{squatter.port}"]
    assert theirs["code"] == "timeout" and "did not answer" in theirs["error"], theirs
    assert not theirs.get("stored_as"), theirs
    mine = _honest_result(result, honest)
    assert mine["code"] == "ok", (result, honest.log_tail())
    assert _final_files(honest) == {mine["stored_as"]: blake3_file(path)}


def test_a_key_holder_answering_an_earlier_hello_late_is_not_an_impostor(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """A target that proves its key, but answers a hello only once it was
    asked again (slow, or a reconnect): its answer to the earlier challenge
    is stale - counted and dropped, not a failed proof - and the answer to
    the current one proves it; it gets the key (and then leaves)."""
    sender, honest = node_factory(), node_factory()
    path = make_file(256 * 1024 + 7)
    late = CoReceiver(network_key, late_hello=True)
    try:
        proc = _send(sender, path, honest, late)
        result = _finish(proc, sender)
        (theirs,) = [r for r in result["receivers"] if r["target"] == f"127.0.0.1:{late.port}"]
        assert theirs["code"] == "failed" and "leaving" in theirs["error"], theirs
        assert late.session(timeout=1).key  # it proved its key and was given the content key
    finally:
        late.close()
    assert sender.wait_for_counter("msender.hello-stale", 1) == 1
    mine = _honest_result(result, honest)
    assert mine["code"] == "ok", (result, honest.log_tail())
    assert _final_files(honest) == {mine["stored_as"]: blake3_file(path)}
