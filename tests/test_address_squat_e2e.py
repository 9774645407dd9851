"""A member signing records of fresh identities at another member's address
(gossip pushed once: the network key and identities cost it nothing): the
node's health proves who answers at each address (a hello on the probe
connection), so the fake members never count as alive there nor as a
claim on the address, the node dials that address once, not once per fake,
and its sends to the real member go."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from nacl.signing import SigningKey

from peercrypt.core.member_state import MemberState
from peercrypt.core.membership import MemberRecord
from peercrypt.crypto.identity import KeyPair, network_server_keys
from peercrypt.testing.nodes import NodeProcess, assert_sent, random_file, wait_until
from peercrypt.wire import codec
from peercrypt.wire.network_messages import Gossip

FAKES = 40
LOCALHOST = "127.0.0.1"


def _connections(pid: int, port: int) -> int:
    """TCP connections of process ``pid`` to ``port`` (any state but listening)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[9] in inodes and fields[3] != "0A":
                count += 1
    return count


# Spellings of 127.0.0.1 the resolver dials alike, and ports with zeros.
SPELLINGS = ("127.0.0.1", "127.1", "0x7f.0.0.1", "2130706433", "LOCALHOST", "localhost.")


def _push_fakes(node: NodeProcess, network_key: str, port: int, count: int) -> list[bytes]:
    """As a member (the key, a fresh identity): push ``count`` alive records
    of fresh identities whose control address is ``port`` on this host,
    spelt every way it can be; their ids."""
    me = KeyPair.from_seed(os.urandom(32))
    keys = [SigningKey(os.urandom(32)) for _ in range(count)]
    urls = [f"tcp://{SPELLINGS[i % len(SPELLINGS)]}:{'0' * (i % 4)}{port}" for i in range(count)]
    records = [
        MemberRecord.create(k, bytes(k.verify_key), 1, MemberState.ALIVE, {"control": url})
        for k, url in zip(keys, urls, strict=True)
    ]
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.linger = 0
        sock.curve_serverkey = network_server_keys(network_key).z85_public
        sock.curve_publickey, sock.curve_secretkey = me.z85_public, me.z85_secret
        sock.connect(f"tcp://{node.host}:{node.port}")
        for i in range(0, count, 16):
            batch = [r.to_wire() for r in records[i : i + 16]]
            sock.send(codec.encode(Gossip(origin=me.node_id, records=batch, digest=[])))
        node.wait_for_counter("discovery.records-merged", count, timeout=30)
    finally:
        sock.close()
        ctx.term()
    return [bytes(k.verify_key) for k in keys]


def _peers(node: NodeProcess) -> list[dict[str, str]]:
    result = node.cli("peers", "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_fake_members_at_a_members_address_cost_one_connection_and_no_send(
    node_factory: Callable[..., NodeProcess], network_key: str, tmp_path: Path
) -> None:
    fast = ("--gossip-interval", "0.2", "--health-check-interval", "0.3")
    node = node_factory(*fast)
    victim = node_factory(*fast, "--bootstrap-host", LOCALHOST, "--bootstrap-port", str(node.port))
    wait_until(
        lambda: (
            any(r["id"] == victim.fingerprint and r.get("proven") is True for r in _peers(node))
            or None
        ),
        30,
        "the node to prove the member at its address",
    )
    _push_fakes(node, network_key, victim.port, FAKES)
    # The fakes share the victim's probe connection where their spelling is
    # one of its address's (`127.1`, a port's zeros), whose proof names the
    # victim: they get no ping (the victim is pinged once a round, not once
    # per fake) and fail their probes. A host name's connection proves the
    # victim too and is closed as a duplicate; a spelling that dials
    # nowhere costs no connection.
    node.wait_for_counter("health.probes-elsewhere", FAKES // 2, timeout=30)
    node.wait_for_counter("health.probe-duplicates-closed", 1, timeout=30)
    # Closed for a while, not for good (who answers there may change: a
    # node restarted, a forward mended): opened again, proven, closed again.
    node.wait_for_counter("health.probes-reopened", 1, timeout=30)
    node.wait_for_counter("health.probe-duplicates-closed", 2, timeout=30)
    assert _connections(node.pid, victim.port) <= 3
    rows = _peers(node)  # the victim and the fakes, each spelling its address its way
    assert len(rows) == FAKES + 1
    assert {r["id"] for r in rows if r.get("proven") is True} == {victim.fingerprint}
    wait_until(
        lambda: (
            all(r["health"] != "alive" for r in _peers(node) if r["id"] != victim.fingerprint)
            or None
        ),
        30,
        "the fake members to stop counting as alive",
    )
    path = random_file(tmp_path / "to-victim.bin", 512 * 1024)
    assert_sent(victim, node.send_to(path, victim), path)
    assert _connections(node.pid, victim.port) <= 3


def test_fake_records_at_a_strangers_address_do_not_refuse_a_send_to_it(
    node_factory: Callable[..., NodeProcess], network_key: str, tmp_path: Path
) -> None:
    """Records claiming the address of a node that is no member (a send's
    first contact): never proven there (it answers with its own key), they
    are claims only, and the send to it goes."""
    fast = ("--gossip-interval", "0.2", "--health-check-interval", "0.3")
    node = node_factory(*fast)
    stranger = node_factory()
    _push_fakes(node, network_key, stranger.port, 3)
    path = random_file(tmp_path / "to-stranger.bin", 256 * 1024)
    assert_sent(stranger, node.send_to(path, stranger), path)
    # Its health dialled the address once for the three and proved the
    # stranger there, none of them.
    node.wait_for_counter("health.proofs-of-another", 3, timeout=30)
    assert node.counters().get("health.proofs", 0) >= 1
    # (the stranger may have become a member since, by the send: proven then)
    proven = {r["id"] for r in _peers(node) if r["proven"] is True}
    assert proven <= {stranger.fingerprint}, proven
