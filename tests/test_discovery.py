"""Discovery (gossip membership) with real node processes.

Nodes run with 0.2 s gossip and short health intervals so the whole file
stays fast; every wait is a bounded poll of the nodes' own state.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from nacl.signing import SigningKey

from actors.discovery import advertise_host
from peercrypt import errors, members_file
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.core.member_state import MemberState
from peercrypt.core.membership import (
    MAX_INCARNATION,
    MemberRecord,
    x25519_public_key,
)
from peercrypt.crypto.identity import (
    KeyPair,
    fingerprint,
    load_or_create_identity,
    network_server_keys,
    new_network_key,
)
from peercrypt.settings import NodeSettings
from peercrypt.testing import netns
from peercrypt.testing.nodes import NodeProcess, run_cli, wait_until
from peercrypt.wire import codec
from peercrypt.wire.network_messages import (
    Gossip,
    GossipReply,
    PeersReply,
    PeersRequest,
    pack_digest_entry,
    unpack_digest_entry,
)

FAST = ("--gossip-interval", "0.2", "--health-check-interval", "0.3", "--timeout", "0.5")


def peer_table(node: NodeProcess) -> dict[str, dict[str, str]]:
    """The node's peers by fingerprint, straight from its control socket."""
    try:
        with ControlClient.for_data_dir(node.data_dir) as client:
            client.send(PeersRequest(request=7))
            reply = client.receive(5.0)
    except NodeUnavailable:
        return {}
    assert isinstance(reply, PeersReply), reply
    return {row["id"]: row for row in reply.peers}


def knows_all(nodes: list[NodeProcess], state: str = "alive") -> bool:
    for node in nodes:
        table = peer_table(node)
        others = {n.fingerprint for n in nodes if n is not node}
        if not all(table.get(fp, {}).get("state") == state for fp in others):
            return False
    return True


def error_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("peercrypt: error:")]
    assert len(lines) == 1, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    return str(lines[0])


def _with(facts: dict[str, Any], *keys: str) -> dict[str, Any] | None:
    return facts if all(k in facts for k in keys) else None


# Many nodes starting at once on a loaded machine (2 cores shared with other
# test runs) each take far longer than one alone: every wait for a node or
# for the cluster is for an event, with a deadline that load cannot reach.
LOADED_START = 90.0


def start_many(factory: Callable[..., NodeProcess], count: int, *args: str) -> list[NodeProcess]:
    nodes = [factory(*args, start=False) for _ in range(count)]
    for node in nodes:
        node.start_timeout = LOADED_START
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda n: n.start(), nodes))
    return nodes


# -- small pure pieces ----------------------------------------------------------------


def test_digest_entry_round_trip_and_garbage() -> None:
    node_id = bytes(range(32))
    packed = pack_digest_entry(node_id, 7, "suspect", b"12345678")
    assert unpack_digest_entry(packed) == (node_id, 7, "suspect", b"12345678")
    with pytest.raises(ValueError):
        unpack_digest_entry(packed[:-1])
    with pytest.raises(ValueError):
        unpack_digest_entry(packed[:40] + b"\x09" + packed[41:])


def test_advertised_host_rules(tmp_path: Path) -> None:
    base = NodeSettings(
        data_dir=tmp_path,
        inbox=tmp_path,
        identity=KeyPair.from_seed(os.urandom(32)),
        server_keys=network_server_keys(None),
    )
    from dataclasses import replace

    assert advertise_host(replace(base, advertise_host="10.1.2.3")) == "10.1.2.3"
    assert advertise_host(replace(base, host="127.0.0.5")) == "127.0.0.5"
    # A wildcard bind advertises the interface that routes to the seed.
    assert advertise_host(replace(base, bootstrap=(("127.0.0.1", 7400),))) == "127.0.0.1"
    # An IPv6 seed: a node on the IPv4 wildcard listens on no IPv6 address
    # (it advertised ::1, where nothing of it listens); one on `::` does.
    seed = (("::1", 7400),)
    ipv4 = advertise_host(replace(base, bootstrap=seed))
    assert ":" not in ipv4 and ipv4 == advertise_host(base)
    if loopback_ipv6():
        for wildcard in ("::", "::0", "[::]", "0:0:0:0:0:0:0:0"):
            assert advertise_host(replace(base, host=wildcard, bootstrap=seed)) == "::1"
    assert advertise_host(replace(base, host="0.0.0.0")) == advertise_host(base)
    assert advertise_host(replace(base, host="::1")) == "::1"  # not a wildcard: itself


@pytest.mark.skipif(
    not netns.available(), reason=f"network namespaces unavailable: {netns.unavailable_reason()}"
)
@pytest.mark.timeout(120)
def test_an_ipv4_only_node_without_an_ipv4_route_towards_an_ipv6_seed_says_so(
    tmp_path: Path, network_key: str
) -> None:
    """A node on the IPv4 wildcard whose seed is IPv6 advertises its IPv4
    address on the default route; in a namespace that has none (its one
    interface is on a /16, no gateway) it advertises 127.0.0.1, which members
    cannot use, and its log says so and what to do."""
    with netns.TestNetwork(groups=1, prefix="pcadv") as net:
        host = net.add_host("alone")
        node = NodeProcess(
            tmp_path / "n", network_key, host="0.0.0.0", netns=host.ns,
            extra_args=("--bootstrap-host", "::1", "--bootstrap-port", "7400"),
        )  # fmt: skip
        with node:
            assert node.status()["advertise"] == f"tcp://127.0.0.1:{node.port}"
            log = node.log_text()
            assert "listens on IPv4 only and its seed ::1 is IPv6, with no IPv4 route" in log
            assert "use --host :: or --advertise-host" in log
        # Its seed on IPv4: the interface that routes to it, no warning.
        other = NodeProcess(
            tmp_path / "m", network_key, host="0.0.0.0", netns=host.ns,
            extra_args=("--bootstrap-host", host.ip, "--bootstrap-port", "7400"),
        )  # fmt: skip
        with other:
            assert other.status()["advertise"] == f"tcp://{host.ip}:{other.port}"
            assert "no IPv4 route" not in other.log_text()


# -- membership with real processes -----------------------------------------------------


def test_transitive_join_and_real_endpoints(node_factory: Callable[..., NodeProcess]) -> None:
    a = node_factory(*FAST)
    b = node_factory(*FAST, "--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(a.port))
    c = node_factory(*FAST, "--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(b.port))
    wait_until(lambda: knows_all([a, b, c]), 15, "A, B and C to know each other")
    # Members are advertised with their public (listening) ports, never the
    # ephemeral source port of a connection.
    table = peer_table(c)
    assert table[a.fingerprint]["address"] == f"127.0.0.1:{a.port}"
    assert table[b.fingerprint]["address"] == f"127.0.0.1:{b.port}"
    assert peer_table(a)[c.fingerprint]["address"] == f"127.0.0.1:{c.port}"
    assert a.status()["advertise"] == f"tcp://127.0.0.1:{a.port}"

    # `peers --json` (and its alias) show the documented columns, the RTT once
    # the first health probes have been answered. A probe answered after
    # FAST's 0.15 s on a loaded machine makes the member suspect, with one
    # failure, until its next answer: the listing taken is one where every
    # member's latest probe was answered.
    def probed() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = json.loads(c.cli("peers", "--json", timeout=30).stdout)
        answered = all(row["rtt_ms"] and row["state"] == "alive" for row in rows)
        return rows if rows and answered else None

    listed = wait_until(probed, 15, "C's first probes of A and B")
    assert {row["id"] for row in listed} == {a.fingerprint, b.fingerprint}
    for row in listed:
        assert row["state"] == "alive"
        assert 0.0 <= float(row["reliability"]) <= 1.0
        assert float(row["rtt_ms"]) > 0
        assert row["failures"] == 0 and row["total_failures"] == 0
        assert float(row["last_seen"]) < 5
        # Numbers as numbers, `proven` a boolean (they were the node's text).
        assert isinstance(row["rtt_ms"], float) and isinstance(row["incarnation"], int), row
        assert row["proven"] in (True, False), row
    text = c.cli("list-peers", timeout=30)
    assert text.returncode == 0, text.describe()
    assert "RELIABILITY" in text.stdout and f"127.0.0.1:{a.port}" in text.stdout
    # Graceful leave: B stops, the others learn it left (not dead) and drop it.
    assert b.stop() == 0
    wait_until(
        lambda: b.fingerprint not in peer_table(a) and b.fingerprint not in peer_table(c),
        10,
        "A and C to drop B after it left",
    )
    # (B's leave is among them, merged just now: wait for the report)
    assert a.wait_for_counter("discovery.records-merged", 2) >= 2


def test_twelve_nodes_converge_kill_detect_and_restart(
    node_factory: Callable[..., NodeProcess],
) -> None:
    args = ("--gossip-interval", "0.2", "--health-check-interval", "0.5", "--timeout", "1")
    seed = node_factory(*args, name="seed", start=False)
    seed.start_timeout = LOADED_START
    seed.start()
    boot = ("--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(seed.port))
    others = start_many(node_factory, 11, *args, *boot)
    nodes = [seed, *others]
    # How fast they converge and detect is measured by scripts/bench_gossip.py.
    wait_until(lambda: knows_all(nodes), 120, "12 nodes to know each other")

    victim = others[5]
    survivors = [n for n in nodes if n is not victim]
    victim.kill()
    seen_dead: set[str] = set()

    def all_marked_dead() -> bool:
        for n in survivors:
            fresh = n.fingerprint not in seen_dead
            if fresh and peer_table(n).get(victim.fingerprint, {}).get("state") == "dead":
                seen_dead.add(n.fingerprint)
        return len(seen_dead) == len(survivors)

    wait_until(all_marked_dead, 60, "every survivor to mark the killed node dead")
    # No live node was declared dead meanwhile.
    for n in survivors:
        states = {fp: row["state"] for fp, row in peer_table(n).items()}
        assert [fp for fp, s in states.items() if s == "dead"] == [victim.fingerprint]

    # The same node (same identity) comes back on a new port: alive everywhere,
    # at its new address, with a higher incarnation.
    victim.start_timeout = LOADED_START
    victim.start()
    wait_until(lambda: knows_all(nodes), 120, "the restarted node to be alive everywhere")
    row = peer_table(seed)[victim.fingerprint]
    assert row["address"] == f"127.0.0.1:{victim.port}"
    assert int(row["incarnation"]) >= 1


def test_wrong_network_key_never_appears(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    a = node_factory(*FAST)
    b = node_factory(*FAST, "--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(a.port))
    boot = ("--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(a.port))
    outsider = node_factory(*FAST, *boot, network_key=new_network_key())
    wait_until(lambda: knows_all([a, b]), 15, "A and B to know each other")
    wait_until(
        lambda: outsider.counters().get("discovery.joins-failed", 0) >= 1,
        15,
        "the outsider's join to fail",
    )
    for node in (a, b):
        assert outsider.fingerprint not in peer_table(node)
    assert peer_table(outsider) == {}
    # `join` says why, with the not-admitted exit code.
    result = outsider.cli("join", "127.0.0.1", str(a.port), timeout=60)
    assert result.returncode == errors.NOT_ADMITTED, result.describe()
    assert "wrong network key" in error_line(result)


def _gossip_client(network_key: str, identity: KeyPair) -> tuple[zmq.Context[Any], Any]:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_serverkey = network_server_keys(network_key).z85_public
    sock.curve_publickey = identity.z85_public
    sock.curve_secretkey = identity.z85_secret
    return ctx, sock


def test_forged_replayed_and_oversize_gossip_is_rejected(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    a = node_factory(*FAST)
    b = node_factory(*FAST, "--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(a.port))
    wait_until(lambda: knows_all([a, b]), 15, "A and B to know each other")
    # An admitted member (it holds the network key) that tries to cheat.
    seed = os.urandom(32)
    me = KeyPair.from_seed(seed)
    signer = SigningKey(seed)
    ctx, sock = _gossip_client(network_key, me)
    try:
        sock.connect(f"tcp://127.0.0.1:{a.port}")
        mine = MemberRecord.create(
            signer, me.node_id, 0, MemberState.ALIVE, {"control": "tcp://127.0.0.1:9"}
        )
        # 1. A record about B re-signed by us (forged endpoints): bad signature.
        victim_id = bytes(32)
        subject = SigningKey(os.urandom(32))
        honest = MemberRecord.create(
            subject, bytes(subject.verify_key), 0, MemberState.ALIVE,
            {"control": "tcp://127.0.0.1:5"},
        )  # fmt: skip
        forged = MemberRecord(
            honest.node_id, 5, MemberState.ALIVE, {"control": "tcp://6.6.6.6:1"},
            honest.origin, honest.signature,
        )  # fmt: skip
        # 2. Oversize: a record with a huge endpoint list.
        big = MemberRecord.create(
            signer, me.node_id, 1, MemberState.ALIVE,
            {f"e{i}": f"tcp://host-{i}.example:1" for i in range(60)},
        )  # fmt: skip
        assert len(big.to_wire()) > 1024
        push = Gossip(
            origin=me.node_id,
            records=[mine.to_wire(), forged.to_wire(), big.to_wire()],
            digest=[],
            reply=True,
        )
        sock.send(codec.encode(push))
        assert sock.poll(5000), "no gossip reply"
        reply = codec.decode(sock.recv())
        assert isinstance(reply, GossipReply)
        # 3. A forged origin: the CURVE key does not belong to the claimed node.
        spoof = Gossip(origin=victim_id, records=[mine.to_wire()], digest=[], reply=True)
        sock.send(codec.encode(spoof))
        # 4. A replay of an old record after a newer one.
        newer = MemberRecord.create(
            signer, me.node_id, 3, MemberState.ALIVE, {"control": "tcp://127.0.0.1:9"}
        )
        sock.send(codec.encode(Gossip(origin=me.node_id, records=[newer.to_wire()], digest=[])))
        sock.send(codec.encode(Gossip(origin=me.node_id, records=[mine.to_wire()], digest=[])))
        wait_until(
            lambda: all(
                a.counters().get(f"discovery.{k}", 0) >= 1
                for k in ("rejected-bad_signature", "rejected-oversize", "gossip-spoofed",
                          "rejected-stale")
            ),
            10,
            "the forged, oversize, spoofed and replayed gossip to be counted",
        )  # fmt: skip
    finally:
        sock.close(0)
        ctx.term()
    # The forged node never appears; the cheater's own signed record does (it
    # is a member that holds the key), at the newest incarnation only.
    table = peer_table(a)
    assert fingerprint(x25519_public_key(honest.node_id)) not in table
    assert "6.6.6.6" not in json.dumps(table)
    row = next(r for r in table.values() if r["address"] == "127.0.0.1:9")
    assert row["incarnation"] == "3"


# -- CLI ---------------------------------------------------------------------------------


def test_join_and_gossip_commands(node_factory: Callable[..., NodeProcess]) -> None:
    a = node_factory(*FAST)
    b = node_factory(*FAST, "--no-gossip")
    assert wait_until(lambda: _with(b.status(), "gossip"), 5, "facts")["gossip"] == "off"
    # With gossip off nothing is exchanged until B joins explicitly.
    assert peer_table(a) == {} and peer_table(b) == {}
    joined = b.cli("join", "127.0.0.1", str(a.port), timeout=60)
    assert joined.returncode == 0, joined.describe()
    assert joined.stdout == f"joined through 127.0.0.1:{a.port}; 1 live peer so far\n", (
        joined.describe()
    )
    wait_until(lambda: knows_all([a, b]), 10, "A and B to know each other after join")
    assert b.counters().get("discovery.rounds", 0) == 0

    shown = b.cli("gossip", timeout=30)
    assert shown.returncode == 0 and "gossip off" in shown.stdout, shown.describe()
    on = b.cli("gossip", "on", timeout=30)
    assert on.returncode == 0 and "gossip on, every 0.2 s" in on.stdout, on.describe()
    b.wait_for_counter("discovery.rounds", 1, timeout=10)
    retimed = b.cli("gossip", "interval", "0.5", timeout=30)
    assert "every 0.5 s" in retimed.stdout, retimed.describe()
    wait_until(lambda: b.status()["gossip_interval"] == "0.5", 5, "the new interval in status")
    short = b.cli("gossip", "0.3", timeout=30)
    assert "every 0.3 s" in short.stdout, short.describe()
    off = b.cli("gossip", "off", timeout=30)
    assert "gossip off" in off.stdout, off.describe()
    wait_until(lambda: b.status()["gossip"] == "off", 5, "gossip off in status")


def test_gossip_and_join_count_live_peers_and_the_gone_apart(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """A member that left is no live peer: `gossip` and `join` count the
    peers `peers` lists as live, and the gone apart (they said "4 members
    known" of three live nodes, this one included, and one that had left)."""
    a = node_factory(*FAST)
    b, c, d = start_many(
        node_factory, 3, *FAST, "--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(a.port)
    )
    wait_until(lambda: knows_all([a, b, c, d]), 30, "all four to know each other")
    assert d.stop() == 0  # a clean stop: it signs "left" and tells the others
    address = f"127.0.0.1:{d.port}"

    def state() -> dict[str, Any] | None:
        shown = b.cli("gossip", "--json", timeout=30)
        assert shown.returncode == 0, shown.describe()
        return shown.json if shown.json["gone_peers"] == 1 else None

    assert wait_until(state, 15, "B to hold D as gone") == {
        "enabled": True, "interval": 0.2, "members": 4, "live_peers": 2, "gone_peers": 1,
    }  # fmt: skip

    def listed() -> list[dict[str, Any]] | None:  # (health learns it after discovery)
        rows: list[dict[str, Any]] = json.loads(b.cli("peers", "--json", timeout=30).stdout)
        live = sorted(row["id"] for row in rows)
        return rows if live == sorted([a.fingerprint, c.fingerprint]) else None

    rows = wait_until(listed, 15, "B's peers to list A and C only")
    assert all(row["state"] == "alive" and row["address"] != address for row in rows)
    shown = b.cli("gossip", timeout=30)
    assert shown.stdout == "gossip on, every 0.2 s, 2 live peers, 1 gone (left or dead)\n"
    joined = b.cli("join", "127.0.0.1", str(c.port), timeout=60)
    assert joined.returncode == 0, joined.describe()
    assert joined.stdout == (
        f"joined through 127.0.0.1:{c.port}; 2 live peers, 1 gone (left or dead) so far\n"
    )


def test_a_node_stopped_before_its_first_round_still_tells_its_members_it_left(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """A node stopped before a gossip round of its own connected its links to
    the members (here its rounds are a minute apart: it has none) still
    tells them it leaves, so they hold it left and list it no more. (The
    "left" was sent only where a link was connected already: a node stopped
    soon after it joined, or on a loaded host, told no one, and the members
    held it dead, listed by `peers`, until it expired.)"""
    a = node_factory(*FAST)
    b = node_factory(*FAST, "--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(a.port))
    d = node_factory(
        "--gossip-interval", "60", "--health-check-interval", "0.3", "--timeout", "0.5",
        "--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(a.port),
    )  # fmt: skip
    wait_until(lambda: knows_all([a, b, d]), 30, "all three to know each other")
    assert d.stop() == 0

    def gone_from(node: NodeProcess) -> bool:
        return d.fingerprint not in peer_table(node)  # (`peers` lists a dead member)

    wait_until(lambda: gone_from(a) and gone_from(b), 15, "A and B to hold D left")
    for node in (a, b):
        shown = node.cli("gossip", "--json", timeout=30)
        assert shown.returncode == 0, shown.describe()
        assert (shown.json["live_peers"], shown.json["gone_peers"]) == (1, 1), shown.json


def test_no_gossip_env_and_option_errors(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, network_key: str
) -> None:
    env = {"DISABLE_GOSSIP": "true", "GOSSIP_INTERVAL": "0.7", "HEALTH_CHECK_INTERVAL": "0.4"}
    node = node_factory(env=env)
    facts = wait_until(lambda: _with(node.status(), "gossip", "health_interval"), 5, "facts")
    assert facts["gossip"] == "off"
    assert facts["gossip_interval"] == "0.7"
    assert facts["health_interval"] == "0.4"
    for args, words in [
        (("gossip", "sometimes"), "gossip action 'sometimes': use on, off, N or interval N"),
        (("gossip", "interval"), "needs seconds"),
        (("gossip", "interval", "0"), "within 0.01..3600"),
        (("gossip", "on", "5"), "takes no value"),
    ]:
        result = node.cli(*args, timeout=30)
        assert result.returncode == errors.USAGE, result.describe()
        assert words in error_line(result)
    lonely = tmp_path / "nobody"
    for args in (
        ("peers",),
        ("join", "127.0.0.1", "1"),
        ("gossip", "on"),
        ("reconnect", "127.0.0.1", "1"),
    ):
        result = run_cli(*args, data_dir=lonely)
        assert result.returncode == errors.FAILED, result.describe()
        assert "no node is running" in error_line(result)
    # A host name that does not resolve is a local check, made before the node is asked.
    unresolvable = run_cli("reconnect", "no-such-host.invalid", "1", data_dir=lonely)
    assert unresolvable.returncode == errors.UNREACHABLE, unresolvable.describe()
    assert "cannot resolve host 'no-such-host.invalid'" in error_line(unresolvable)
    half = run_cli(
        "node", "--port", "0", "--network-key", network_key, "--bootstrap-host", "127.0.0.1",
        data_dir=tmp_path / "half",
    )  # fmt: skip
    assert half.returncode == errors.USAGE, half.describe()
    assert "--bootstrap-port" in error_line(half)


def test_a_join_through_the_node_itself_is_one_error_line(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """`join` naming the node's own address, in any spelling (it said
    "joined through ...; 0 live peers"): one line saying so, exit 1, and
    the node joins nothing."""
    node = node_factory(*FAST)
    for host in ("127.0.0.1", "localhost"):
        result = node.cli("join", host, str(node.port), timeout=60)
        assert result.returncode == errors.FAILED, result.describe()
        assert result.stderr_lines == [
            f"peercrypt: error: cannot join through {host}:{node.port}: {host}:{node.port} "
            "answered with this node's own identity (this node, or a node using a copy of "
            "its data dir)"
        ], result.describe()
    assert node.counters_when("discovery.joins-failed", 2)["discovery.joins-failed"] == 2
    assert node.counters().get("discovery.joins-ok", 0) == 0


def test_join_unreachable(node_factory: Callable[..., NodeProcess], free_port: int) -> None:
    node = node_factory(*FAST, "--max-retries", "2")
    result = node.cli("join", "127.0.0.1", str(free_port), timeout=60)
    assert result.returncode == errors.UNREACHABLE, result.describe()
    line = error_line(result)
    assert f"127.0.0.1:{free_port}" in line and "cannot connect" in line
    assert result.seconds < 20
    node.wait_for_counter("discovery.joins-failed", 1, timeout=5)
    assert node.wait_for_counter("discovery.join-attempts", 3) == 3  # 1 + 2 retries


def test_a_bootstrap_that_keeps_failing_is_told_once_then_again_once_joined(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """Alone, a node joins through its bootstrap again every round: its
    failure is logged once, not at every round (found by use: two warnings
    every 5 s at `start`'s prompt while a peer was down), and a join
    through it that works is told, so the next failure there is told too."""
    seed = node_factory(*FAST)
    port = seed.port
    assert seed.stop() == 0  # (started again on its port below)
    node = node_factory(
        *FAST, "--max-retries", "0", "--bootstrap-host", "127.0.0.1",
        "--bootstrap-port", str(port),
    )  # fmt: skip
    node.wait_for_counter("discovery.joins-failed", 4, timeout=30)
    line = f"cannot join through 127.0.0.1:{port}: cannot connect"
    assert node.log_text().count(line) == 1, node.log_tail()
    seed.extra_args = (*seed.extra_args, "--port", str(port))
    seed.start()
    assert seed.port == port
    wait_until(
        lambda: f"joined through 127.0.0.1:{port} again" in node.log_text(),
        30,
        "the join through the seed told",
    )
    assert seed.stop() == 0
    wait_until(lambda: node.log_text().count(line) == 2, 60, "the failure after it told again")
    failed = node.counters()["discovery.joins-failed"]
    node.wait_for_counter("discovery.joins-failed", failed + 3, timeout=30)
    assert node.log_text().count(line) == 2, node.log_tail()


def test_join_and_health_check_exit_3_at_a_silent_listener(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """A listener that takes the connection and never answers is as
    unreachable a peer for `join` as for `health-check`: exit 3 from both
    (join exited 1, a failed transfer's code), one line each."""
    node = node_factory(*FAST, "--max-retries", "1")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = str(silent.getsockname()[1])
        joined = node.cli("join", "127.0.0.1", port, timeout=60)
        checked = node.cli("health-check", "127.0.0.1", port, timeout=60)
    said = f"127.0.0.1:{port} accepted the connection but did not complete the handshake"
    assert joined.returncode == errors.UNREACHABLE, joined.describe()
    assert error_line(joined) == f"peercrypt: error: cannot join through 127.0.0.1:{port}: {said}"
    assert checked.returncode == errors.UNREACHABLE, checked.describe()
    assert error_line(checked) == f"peercrypt: error: {said}"
    # Both gave up within their bounded attempts (--timeout 0.5, 1 retry).
    assert joined.seconds < 15 and checked.seconds < 15
    assert node.wait_for_counter("discovery.join-attempts", 2) == 2


def test_a_dead_claim_at_the_largest_incarnation_kills_no_one(
    node_factory: Callable[..., NodeProcess], network_key: str, tmp_path: Path
) -> None:
    # Gossip only: no health probe runs within the test (the first comes
    # after an interval), so nothing but the forged claim can change A's
    # state at B. With FAST's 0.3 s interval a probe waits 0.15 s for its
    # answer, and a loaded machine that answers later makes A honestly
    # suspect at B (and A refute it), which these assertions cannot tell
    # from the claim's effect.
    quiet = (*FAST[:2], "--health-check-interval", "3600", *FAST[4:])
    a = node_factory(*quiet)
    b = node_factory(*quiet, "--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(a.port))
    wait_until(lambda: knows_all([a, b]), 15, "A and B to know each other")
    victim = load_or_create_identity(a.data_dir).node_id
    # An admitted member signs "A is dead" at the largest incarnation and
    # gossips it to A itself and to B.
    seed = os.urandom(32)
    me = KeyPair.from_seed(seed)
    signer = SigningKey(seed)
    mine = MemberRecord.create(
        signer, me.node_id, 0, MemberState.ALIVE, {"control": "tcp://127.0.0.1:9"}
    )
    doom = MemberRecord.create(signer, victim, MAX_INCARNATION, MemberState.DEAD)
    push = Gossip(
        origin=me.node_id, records=[mine.to_wire(), doom.to_wire()], digest=[], reply=True
    )
    for node in (a, b):
        ctx, sock = _gossip_client(network_key, me)
        try:
            sock.connect(f"tcp://127.0.0.1:{node.port}")
            sock.send(codec.encode(push))
            # A node merges a push before it answers it: the reply says the
            # claim arrived (the socket closes with linger 0, which would
            # drop a push still waiting for its handshake).
            assert sock.poll(10_000), "no gossip reply"
            assert isinstance(codec.decode(sock.recv()), GossipReply)
        finally:
            sock.close(0)
            ctx.term()
    a.wait_for_counter("discovery.rejected-claim_ahead", 1, 10)
    # Over many gossip rounds B keeps A alive at a small incarnation, and A
    # never had to refute (nor crash-looped trying).
    later = b.counters().get("discovery.rounds", 0) + 10

    def rounds_with_a_alive() -> bool:
        row = peer_table(b)[a.fingerprint]
        assert row["state"] == "alive" and int(row["incarnation"]) < 100, row
        return b.counters().get("discovery.rounds", 0) >= later

    wait_until(rounds_with_a_alive, 30, "ten gossip rounds of B")
    assert a.running and a.counters().get("discovery.refutes", 0) == 0
    src = tmp_path / "after-claim.bin"
    src.write_bytes(os.urandom(200_000))
    code, result = b.send_to(src, a)
    assert code == 0 and (a.inbox / result["stored_as"]).read_bytes() == src.read_bytes()


def _seed_and_two(node_factory: Callable[..., NodeProcess]) -> list[NodeProcess]:
    """A seed started without a bootstrap and two nodes that joined through
    it, all knowing each other (fast intervals)."""
    from peercrypt.testing.nodes import free_port

    args = ("--gossip-interval", "0.2", "--health-check-interval", "0.5", "--timeout", "1")
    port = free_port()
    seed = node_factory(*args, "--port", str(port), name="seed")
    boot = ("--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(port))
    trio = [seed, node_factory(*args, *boot), node_factory(*args, *boot)]
    wait_until(lambda: knows_all(trio), 60, "three nodes to know each other")
    return trio


def test_records_a_member_signs_for_addresses_nothing_answers_at_are_not_kept(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """A member (the network key, a fresh identity) gossips records of fresh
    identities at addresses where none of them answers, signed alive again
    and again: the node holds them (a record is a claim) but keeps only the
    member its health proved at its address for the rejoin after a restart.
    It kept every record alive, and would have dialled the member's
    addresses at its next start instead of the network's."""
    fast = ("--gossip-interval", "0.2", "--health-check-interval", "0.3")
    node = node_factory(*fast)
    boot = ("--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(node.port))
    honest = node_factory(*fast, *boot)
    path = node.data_dir / members_file.FILE_NAME
    kept = [f"127.0.0.1:{honest.port}"]
    wait_until(lambda: path.exists() and path.read_text().split() == kept, 30, "the honest kept")
    me = KeyPair.from_seed(os.urandom(32))
    keys = [SigningKey(os.urandom(32)) for _ in range(24)]
    urls = [f"tcp://127.0.1.{2 + i}:{40000 + i}" for i in range(len(keys))]
    ctx, sock = _gossip_client(network_key, me)
    try:
        sock.connect(f"tcp://{node.host}:{node.port}")
        rounds = node.counters().get("discovery.rounds", 0)
        for incarnation in itertools.count(1):  # alive again at every round, for 15 rounds
            merged = node.counters().get("discovery.records-merged", 0)
            records = [
                MemberRecord.create(k, bytes(k.verify_key), incarnation, MemberState.ALIVE,
                                    {"control": u}).to_wire()
                for k, u in zip(keys, urls, strict=True)
            ]  # fmt: skip
            sock.send(codec.encode(Gossip(origin=me.node_id, records=records, digest=[])))
            node.wait_for_counter("discovery.records-merged", merged + len(keys), timeout=30)
            node.wait_for_counter("discovery.rounds", rounds + incarnation, timeout=30)
            if incarnation == 15:
                break
    finally:
        sock.close()
        ctx.term()
    assert path.read_text().split() == kept


def test_a_seed_restarted_on_its_port_without_a_bootstrap_is_alive_everywhere_again(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """The node the others joined through is killed and restarted on its
    address with no bootstrap of its own: it knows no one, so only the
    others' exchanges can tell it the claim to refute. They closed their
    link to a dead member at every expiry tick, so each exchange went out on
    a fresh link not yet connected and was dropped: it stayed dead
    everywhere (though it answered their health probes) and alone."""
    trio = _seed_and_two(node_factory)
    seed, port = trio[0], trio[0].port
    seed.kill()

    def seed_dead() -> bool:
        return all(peer_table(n).get(seed.fingerprint, {}).get("state") == "dead" for n in trio[1:])

    wait_until(seed_dead, 60, "the others to mark the killed seed dead")
    (seed.data_dir / members_file.FILE_NAME).unlink(missing_ok=True)  # it knows no one
    seed.start()
    assert seed.port == port
    wait_until(lambda: knows_all(trio), 60, "the restarted seed alive everywhere, knowing them")


def test_a_seed_stopped_and_started_again_rejoins_through_the_members_it_last_saw(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """The node the others joined through is stopped (they hold it *left*,
    list it no more and do not probe it) and started again on its address with no
    bootstrap of its own: it joins through the members it last saw alive,
    kept in its data dir (peercrypt/members_file.py). It stayed alone for
    good, and the others without it."""
    trio = _seed_and_two(node_factory)
    seed, port = trio[0], trio[0].port
    kept = sorted(f"127.0.0.1:{n.port}" for n in trio[1:])
    path = seed.data_dir / members_file.FILE_NAME
    wait_until(lambda: path.exists() and sorted(path.read_text().split()) == kept, 30, "kept")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert seed.stop() == 0

    def seed_left() -> bool:  # (`peers` lists no member that left)
        return all(seed.fingerprint not in peer_table(n) for n in trio[1:])

    wait_until(seed_left, 30, "the others to hold the stopped seed left")
    # Started with --no-gossip: no discovery at its start (the old tool's flag).
    seed.extra_args = (*seed.extra_args, "--no-gossip")
    seed.start()
    wait_until(lambda: _with(seed.status(), "advertise"), 30, "the seed's table")
    assert seed.counters().get("discovery.join-attempts", 0) == 0
    assert seed.stop() == 0
    seed.extra_args = seed.extra_args[:-1]
    seed.start()
    assert seed.port == port
    wait_until(lambda: knows_all(trio), 60, "the restarted seed alive everywhere, knowing them")


def loopback_ipv6() -> bool:
    """Whether this machine has the IPv6 loopback."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True
