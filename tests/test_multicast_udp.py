"""Multicast over a UDP/IP multicast group, with real node processes on
loopback (docs/multicast.md, "Transports"). Every group here is sent with
TTL 0 through the loopback interface: nothing leaves this host."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from actors import udp_multicast
from peercrypt.core import fragments
from peercrypt.crypto.chunk_signature import SIG_BYTES
from peercrypt.testing import netns
from peercrypt.testing.nodes import (
    NodeProcess,
    assert_stored,
    free_port,
    multicast_targets,
    start_cli,
    wait_until,
)

MiB = 1024 * 1024
TAG = 16
SID_UDP = bytes(range(16))


def _group() -> str:
    return f"239.255.{random.randrange(1, 255)}.{random.randrange(1, 255)}:{free_port()}"


def _udp_sender(node_factory: Callable[..., NodeProcess], group: str, *extra: str) -> NodeProcess:
    return node_factory("--multicast-group", group, "--multicast-ttl", "0", *extra)


class GroupListener:
    """A plain socket in the group, as any process on the segment could open:
    it collects every datagram (and can inject its own)."""

    def __init__(self, group: str, *, reuse: bool = True) -> None:
        address, port = fragments.parse_group(group)
        self.dest = (address, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if reuse:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
        self.sock.bind(self.dest)
        mreq = struct.pack("4s4s", socket.inet_aton(address), socket.inet_aton("127.0.0.1"))
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        self.sock.settimeout(0.05)
        self.datagrams: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._collect)
        self.thread.start()

    def _collect(self) -> None:
        while not self.stop.is_set():
            try:
                self.datagrams.append(self.sock.recv(70000))
            except TimeoutError:
                continue

    def inject(self, datagram: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
            s.sendto(datagram, self.dest)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def listener_factory() -> Iterator[Callable[..., GroupListener]]:
    made: list[GroupListener] = []

    def make(group: str, **kwargs: Any) -> GroupListener:
        made.append(GroupListener(group, **kwargs))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


def test_one_to_three_over_the_group_sends_each_byte_once(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    blake3_file: Any,
    listener_factory: Callable[..., GroupListener],
) -> None:
    group = _group()
    sender = _udp_sender(node_factory, group)
    receivers = [node_factory() for _ in range(3)]
    spy = listener_factory(group)
    size = 12 * MiB + 123
    path = make_file(size)
    first, *rest = receivers
    code, result = sender.send(
        path, first.host, first.port, "-m", *multicast_targets(*rest), "--chunk-size", str(MiB)
    )
    assert code == 0, result
    digest = blake3_file(path)
    assert result["blake3"] == digest
    for r in receivers:
        assert_stored(r, result, digest)
    stats = result["stats"]
    assert stats["udp"] == 1 and stats["chunks"] == 13
    assert stats["seals_first"] == 13  # read and sealed once for all three
    # 12 full chunks of 17 fragments each, and the 139-byte last one: sent
    # once to the group whatever the number of receivers (+ any repairs).
    frag = fragments.DEFAULT_FRAGMENT
    first_sends = 12 * fragments.fragment_count(MiB + TAG, frag) + 1
    repairs_published = stats["repairs_published"]
    assert first_sends <= stats["datagrams"] <= first_sends + 17 * repairs_published
    assert stats["published_bytes"] >= size + 13 * TAG
    for r in receivers:  # nothing came by PUB/SUB: no SUB socket, no sessions there
        assert r.counters_when("mreceiver.received", 1).get("mreceiver.datagram-error", 0) == 0
    # The listener saw the stream; the datagrams are ours (header) and carry
    # no plaintext.
    # (A plain socket may miss some under load: it needs to see most.)
    wait_until(lambda: len(spy.datagrams) >= first_sends // 2 or None, 5, "the spy to see them")
    heads = [fragments.parse(d)[0] for d in spy.datagrams]
    assert {h.index for h in heads} <= set(range(13)) and len(heads) >= first_sends // 2
    blob = b"".join(spy.datagrams)
    data = path.read_bytes()
    for offset in range(0, len(data), 64 * 1024):
        assert data[offset : offset + 32] not in blob


def test_forged_and_malformed_datagrams_do_not_corrupt_the_file(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    blake3_file: Any,
    listener_factory: Callable[..., GroupListener],
) -> None:
    """Anyone on the segment can send to the group. Without the content key
    it cannot make a header the receiver accepts: forged fragments with the
    session's real header fields (and a tag under a guessed key) are dropped
    before they cost any reassembly; malformed ones are dropped; the file is
    exact. (A co-receiver, who can make headers: tests/test_multicast_trust.py.)"""
    group = _group()
    sender = _udp_sender(node_factory, group, "--max-rate", str(12 * MiB))  # a ~2 s session
    receiver = node_factory()
    spy = listener_factory(group)
    path = make_file(24 * MiB + 7)  # 97 chunks of 256 KiB
    proc = start_cli(
        "send", path, receiver.host, str(receiver.port), "-m", "--chunk-size", str(256 * 1024),
        "--timeout", "30", "--json",
        data_dir=sender.data_dir,
    )  # fmt: skip
    guessed = fragments.header_key(b"a guess" * 5)
    forged = 0
    try:
        wait_until(lambda: spy.datagrams or None, 15, "the first datagram")
        real, _ = fragments.parse(spy.datagrams[0])
        spy.inject(b"x" * 100)  # not ours
        seen = spy.datagrams[0]  # a real header, its tag changed
        tampered = bytes([seen[fragments.HEADER_BYTES - 1] ^ 1])
        spy.inject(seen[: fragments.HEADER_BYTES - 1] + tampered + seen[fragments.HEADER_BYTES :])
        # Forged first fragments for chunks far ahead of the window (not
        # published yet), with the header the real ones will have - nonces
        # count chunks sealed, so the first publication of chunk i has
        # counter i + 1 - and the wrong bytes.
        blob = 256 * 1024 + TAG + SIG_BYTES  # the datagrams carry sealed || signature
        for index in range(80, 96):
            nonce = struct.pack("!IQ", 0, index + 1)
            head = fragments.header(real.sid, index, False, nonce, blob, 0, key=guessed)
            spy.inject(head + b"z" * fragments.DEFAULT_FRAGMENT)
            forged += 1
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (out, err, sender.log_tail())
    result = json.loads(out)
    assert_stored(receiver, result, blake3_file(path))
    # (the report that counts the file has what came before it: the forged
    # datagrams were for chunks not published yet)
    counters = receiver.counters_when("mreceiver.received", 1)
    assert counters.get("mreceiver.datagram-dropped-magic", 0) >= 1
    assert counters.get("mreceiver.datagram-dropped-tag", 0) >= forged, counters
    # None of them got into a chunk: no chunk failed the sender's signature.
    assert counters.get("mreceiver.data-dropped-forged", 0) == 0, counters


def test_a_receiver_that_cannot_join_the_group_is_finished_by_unicast(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    blake3_file: Any,
    listener_factory: Callable[..., GroupListener],
) -> None:
    """The group port is taken (no SO_REUSEADDR) on the receivers' host: they
    cannot join the group, log it once, and the session still completes
    through unicast repairs."""
    group = _group()
    listener_factory(group, reuse=False)  # holds group:port exclusively
    sender = _udp_sender(node_factory, group)
    receivers = [node_factory() for _ in range(2)]
    path = make_file(6 * MiB + 1)
    first, second = receivers
    code, result = sender.send(
        path, first.host, first.port, "-m", *multicast_targets(second),
        "--chunk-size", str(256 * 1024), "--timeout", "30",
    )  # fmt: skip
    assert code == 0, result
    digest = blake3_file(path)
    for r in receivers:
        assert_stored(r, result, digest)
        assert r.wait_for_counter("mreceiver.group-join-failed", 1) == 1
        assert "cannot join multicast group" in r.log_text()
    stats = result["stats"]
    assert stats["seals_first"] == stats["chunks"] == 25
    assert stats["repairs_unicast"] + stats["repairs_published"] >= 25  # all by repairs


@pytest.mark.skipif(
    not netns.available(), reason=f"network namespaces: {netns.unavailable_reason()}"
)
def test_across_namespaces_the_network_copies_the_stream(
    tmp_path: Path, network_key: str, make_file: Callable[..., Path], blake3_file: Any
) -> None:
    """Sender and three receivers on their own hosts (namespaces on one bridge,
    created here): the datagrams leave the sender once, the bridge copies
    them to every member, and each receiver verifies the exact file. The
    sender's interface counts about one file's worth of bytes, not three.
    On this 1500-byte link the datagrams fit the MTU and leave by GSO."""
    size = 16 * MiB + 77
    path = make_file(size)
    with _cluster(tmp_path, network_key, 4) as cluster:
        sender, *receivers = cluster.nodes
        before = _tx_bytes(cluster.hosts[0])
        first, *rest = receivers
        code, result = sender.send(
            path, first.host, first.port, "-m", *multicast_targets(*rest), "--timeout", "30"
        )
        sent = _tx_bytes(cluster.hosts[0]) - before
    assert code == 0, result
    digest = blake3_file(path)
    for r in receivers:
        assert_stored(r, result, digest)
    stats = result["stats"]
    assert stats["udp"] == 1 and stats["seals_first"] == stats["chunks"] == 17
    # Datagrams sized to the 1500-byte MTU (no IP fragments), 44 per send
    # (one UDP GSO batch of up to 64 KiB), each reassembled on every receiver.
    assert (stats["datagram_bytes"], stats["gso_batch"]) == (1472, 44), stats
    # One copy of the stream (+ headers, control traffic and any repairs),
    # where three unicasts or PUB/SUB over TCP would send three.
    assert size <= sent < 1.5 * size, (sent, stats)
    assert cluster.codes == [0, 0, 0, 0]


SIZE_THROUGH_BOTTLENECK = 16 * MiB


def _through_bottleneck(
    tmp_path: Path,
    network_key: str,
    make_file: Callable[..., Path],
    blake3_file: Any,
    sender_args: tuple[str, ...] = (),
) -> tuple[dict[str, Any], float, float]:
    """16 MiB from a sender to two receivers, the first behind a 100 Mbit/s
    tbf (created here); both must verify the exact file. Returns the result
    and the slow and the fast receiver's seconds."""
    path = make_file(SIZE_THROUGH_BOTTLENECK)
    with _cluster(tmp_path, network_key, 3, shaped=1, sender_args=sender_args) as cluster:
        sender, slow, fast = cluster.nodes
        code, result = sender.send(
            path, slow.host, slow.port, "-m", *multicast_targets(fast), "--timeout", "60"
        )
    assert code == 0, result
    digest = blake3_file(path)
    assert_stored(slow, result, digest)
    assert_stored(fast, result, digest)
    assert result["stats"]["seals_first"] == result["stats"]["chunks"] == 16
    assert cluster.codes == [0, 0, 0]
    seconds = {r["target"]: float(r["seconds"]) for r in result["receivers"]}
    return result, seconds[f"{slow.host}:{slow.port}"], seconds[f"{fast.host}:{fast.port}"]


@pytest.mark.skipif(
    not netns.available(), reason=f"network namespaces: {netns.unavailable_reason()}"
)
def test_a_receiver_behind_a_bottleneck_does_not_hold_back_the_other(
    tmp_path: Path, network_key: str, make_file: Callable[..., Path], blake3_file: Any
) -> None:
    """Real loss: the tbf drops most of each burst of datagrams; the other
    receiver gets the stream at full speed, the slow one is finished by
    unicast repairs through its link."""
    result, slow_s, fast_s = _through_bottleneck(tmp_path, network_key, make_file, blake3_file)
    # it really went through the 100 Mbit/s link
    assert slow_s >= 0.8 * SIZE_THROUGH_BOTTLENECK / (100e6 / 8)
    assert fast_s < slow_s, (slow_s, fast_s)
    stats = result["stats"]
    assert stats["repairs_unicast"] >= 1 and stats["unicast_bytes"] > 0


@pytest.mark.skipif(
    not netns.available(), reason=f"network namespaces: {netns.unavailable_reason()}"
)
def test_with_a_rate_the_datagrams_are_paced_through_the_bottleneck(
    tmp_path: Path, network_key: str, make_file: Callable[..., Path], blake3_file: Any
) -> None:
    """The same bottleneck, but the sender's --max-rate (88 Mbit/s) is below
    it: datagrams are spread over time instead of leaving a chunk at a time,
    the tbf's queue absorbs them, and the slow receiver stays on the group
    (few or no unicast repairs)."""
    rate = 11_000_000
    result, _, _ = _through_bottleneck(
        tmp_path, network_key, make_file, blake3_file, ("--max-rate", str(rate))
    )
    stats = result["stats"]
    # Without the rate most of the 16 chunks go by unicast repair; a receiver starved
    # of CPU on a loaded machine may still miss a few datagrams of a paced one.
    assert stats["repairs_unicast"] <= 8, stats
    per_chunk = fragments.fragment_count(MiB + TAG, fragments.DEFAULT_FRAGMENT)
    assert stats["datagrams"] >= 16 * per_chunk
    assert result["seconds"] >= 0.8 * SIZE_THROUGH_BOTTLENECK / rate  # paced


@dataclass
class _Cluster:
    hosts: list[netns.Host]
    nodes: list[NodeProcess] = field(default_factory=list)
    codes: list[int | None] = field(default_factory=list)  # exit codes, after the block


@contextlib.contextmanager
def _cluster(
    tmp_path: Path,
    network_key: str,
    count: int,
    shaped: int | None = None,
    sender_args: tuple[str, ...] = (),
    mtu: int | None = None,
) -> Iterator[_Cluster]:
    """``count`` nodes, each on its own host of one bridge (namespaces made
    here); the first sends to a fresh group (with ``sender_args``).
    ``shaped``: that host receives through a 100 Mbit/s tbf. ``mtu``: of
    every link (both ends). Every node is stopped after the block."""
    with netns.TestNetwork(groups=1) as net:
        cluster = _Cluster([net.add_host(f"h{i}", 0) for i in range(count)])
        for host in cluster.hosts if mtu else ():
            for ns, dev in ((net.switch_ns, host.switch_port), (host.ns, host.iface)):
                _set_mtu(ns, dev, mtu or 0)
        if shaped is not None:
            net.shape(cluster.hosts[shaped], "100mbit", direction="ingress")
        group = _group()
        try:
            for i, host in enumerate(cluster.hosts):
                extra = ("--multicast-group", group, *sender_args) if i == 0 else ()
                node = NodeProcess(
                    data_dir=tmp_path / f"h{i}",
                    network_key=network_key,
                    extra_args=("--no-gossip", *extra),
                    host=host.ip,
                    netns=host.ns,
                )
                cluster.nodes.append(node)
                node.start()
            yield cluster
        finally:
            for node in cluster.nodes:
                if node.running:
                    node.send_signal(signal.SIGTERM)
            cluster.codes = [node.stop() for node in cluster.nodes if node.proc is not None]


def _set_mtu(ns: str, dev: str, mtu: int) -> None:
    subprocess.run(["ip", "-n", ns, "link", "set", dev, "mtu", str(mtu)], check=True, timeout=10)


@pytest.mark.skipif(
    not netns.available(), reason=f"network namespaces: {netns.unavailable_reason()}"
)
def test_when_the_kernel_refuses_gso_mid_session_the_datagrams_go_one_by_one(
    tmp_path: Path, network_key: str, make_file: Callable[..., Path], blake3_file: Any
) -> None:
    """Jumbo frames at the start (8972-byte datagrams, 7 per GSO send); then,
    mid-session, the sender's interface drops to a 1500-byte MTU: the kernel
    refuses every GSO batch from then on (EMSGSIZE: a segment larger than the
    path's MTU). The sender sends the same datagrams one by one (the IP layer
    fragments them), none is lost to it, and both receivers verify the file."""
    path = make_file(6 * MiB + 5)
    paced = ("--max-rate", str(1 * MiB))  # a session that lasts until we lift the cap
    with _cluster(tmp_path, network_key, 3, sender_args=paced, mtu=9000) as cluster:
        sender, first, second = cluster.nodes
        got: list[tuple[int, dict[str, Any]]] = []
        args = ("-m", *multicast_targets(second), "--chunk-size", str(256 * 1024))
        sending = threading.Thread(
            target=lambda: got.append(
                sender.send(path, first.host, first.port, *args, "--timeout", "60", timeout=90)
            )
        )
        sending.start()
        try:
            sender.wait_for_counter("msender.seals-first", 2, timeout=30)
            host = cluster.hosts[0]
            _set_mtu(host.ns, host.iface, 1500)
            lifted = sender.cli("max-rate", "0")
            assert lifted.returncode == 0, lifted.describe()
        finally:
            sending.join(90)
    assert got and not sending.is_alive(), sender.log_tail()
    code, result = got[0]
    assert code == 0, (result, sender.log_tail())
    digest = blake3_file(path)
    assert_stored(first, result, digest)
    assert_stored(second, result, digest)
    stats = result["stats"]
    # sized for the jumbo path at the start; one by one after the refusal,
    # and the refused batch was sent again, not dropped
    assert (stats["datagram_bytes"], stats["gso_batch"]) == (8972, 1), stats
    assert stats["datagrams_unsent"] == 0, stats
    assert "refuses UDP GSO on this path now (EMSGSIZE)" in sender.log_text()


def _tx_bytes(host: netns.Host) -> int:
    out = host.run(["ip", "-j", "-s", "link", "show", host.iface], timeout=10, check=True)
    return int(json.loads(out.stdout)[0]["stats64"]["tx"]["bytes"])


def test_lifting_the_rate_cap_mid_session_sends_what_was_queued(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], blake3_file: Any
) -> None:
    """Paced datagrams wait in a backlog; when `max-rate 0` lifts the cap
    mid-session, the rest leaves at once and the file is exact."""
    sender = _udp_sender(node_factory, _group(), "--max-rate", str(1 * MiB))
    receivers = [node_factory() for _ in range(2)]
    path = make_file(12 * MiB + 3)
    first, second = receivers
    proc = start_cli(
        "send", path, first.host, str(first.port), "-m", *multicast_targets(second),
        "--chunk-size", str(256 * 1024), "--timeout", "30", "--json",
        data_dir=sender.data_dir,
    )  # fmt: skip
    try:
        sender.wait_for_counter("msender.seals-first", 2, timeout=15)
        lifted = sender.cli("max-rate", "0")
        assert lifted.returncode == 0, lifted.describe()
        out, err = proc.communicate(timeout=30)  # 12 MiB at the cap would take 12 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, (out, err, sender.log_tail())
    result = json.loads(out)
    digest = blake3_file(path)
    for r in receivers:
        assert_stored(r, result, digest)
    assert result["stats"]["udp"] == 1
    assert float(result["seconds"]) < 10, result  # not paced to the end


# Run inside a test namespace whose interface has a 9000-byte MTU: a real
# GroupSender (GSO on, 7 datagrams per send) whose socket has UDP checksums
# off, so the kernel refuses every GSO send (EINVAL), sends one chunk of
# many batches; a socket joined to the group on the same host (multicast
# loopback) reads what went out. Prints what the sender and the kernel did.
_GSO_REFUSED_SCRIPT = """
import json, os, socket, struct, sys
from actors.udp_multicast import GroupSender, Send
from peercrypt.core import fragments
iface, group, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
rx.bind((group, port))
rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
              socket.inet_aton(group) + socket.inet_aton(iface))
tx = GroupSender(iface, (group, port), 1, 8 << 20, fragments.MAX_DATAGRAM)
gso, batch = tx.gso, tx.batch
tx.sock.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK: GSO sends get EINVAL
blob = os.urandom(40 * tx.fragment + 123)
unsent = tx.send_range(Send(os.urandom(16), 0, True, os.urandom(12), (blob,), os.urandom(32)))[2]
rx.settimeout(2.0)
lengths, placed = [], bytearray(len(blob))
try:
    while True:
        data = rx.recv(1 << 17)
        lengths.append(len(data))
        frag, payload = fragments.parse(data)
        placed[frag.offset:frag.offset + len(payload)] = payload
except (socket.timeout, fragments.FragmentError):
    pass
print(json.dumps({"gso": gso, "batch": batch, "datagram": tx.datagram, "unsent": unsent,
                  "count": fragments.fragment_count(len(blob), tx.fragment),
                  "lengths": lengths, "whole": bytes(placed) == blob, "after": tx.batch}))
"""


@pytest.mark.skipif(
    not netns.available(), reason=f"network namespaces: {netns.unavailable_reason()}"
)
def test_after_the_kernel_refuses_gso_the_rest_of_the_chunk_goes_one_datagram_a_send() -> None:
    """The refusal comes at the chunk's first batch: that batch is sent one
    by one, and so is every later batch of the same chunk - not handed to
    the kernel as one datagram of several fragments glued together (which
    no receiver can parse: the rest of the chunk would be lost and
    repaired, while the sender counted it sent)."""
    with netns.TestNetwork(groups=1) as net:
        host = net.add_host("h0", 0)
        for ns, dev in ((net.switch_ns, host.switch_port), (host.ns, host.iface)):
            _set_mtu(ns, dev, 9000)
        group, port = fragments.parse_group(_group())
        root = str(Path(__file__).resolve().parents[1])
        ran = host.run(
            [sys.executable, "-c", _GSO_REFUSED_SCRIPT, host.ip, group, str(port)],
            timeout=60,
            env={**os.environ, "PYTHONPATH": root},
        )
    assert ran.returncode == 0, ran.stderr
    got = json.loads(ran.stdout)
    assert (got["gso"], got["batch"], got["datagram"]) == (True, 7, 8972), got
    assert got["after"] == 1 and got["unsent"] == 0, got
    assert got["lengths"] and max(got["lengths"]) <= got["datagram"], got["lengths"]
    assert len(got["lengths"]) == got["count"] and got["whole"], got


def test_a_sending_thread_still_in_a_send_at_the_close_closes_the_socket_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """close() waits CLOSE_WAIT for the sending thread; one still inside a
    send then (a full send buffer: each datagram may wait SEND_TIMEOUT) is
    not left holding a closed socket (its next datagram would go to
    whatever descriptor took the number): it closes it as it ends."""
    monkeypatch.setattr(udp_multicast, "CLOSE_WAIT", 0.1)
    sender = udp_multicast.GroupSender("127.0.0.1", fragments.parse_group(_group()), 0, MiB, 65000)
    inside, gate = threading.Event(), threading.Event()
    real = sender._send_batch

    def stuck(iov: list[bytes | memoryview]) -> bool:
        inside.set()
        assert gate.wait(10), "never let go"
        return real(iov)

    monkeypatch.setattr(sender, "_send_batch", stuck)
    try:
        blob = (os.urandom(500),)
        sender.submit(udp_multicast.Send(SID_UDP, 0, True, b"n" * 12, blob, bytes(32)))
        assert inside.wait(10), "the send never started"
        sender.close()  # gives up waiting after CLOSE_WAIT
        assert sender.thread is not None and sender.thread.is_alive()
        assert sender.sock.fileno() != -1  # not closed under the send
    finally:
        gate.set()
    sender.thread.join(10)
    assert not sender.thread.is_alive()
    assert sender.sock.fileno() == -1  # closed by the thread as it ended
    assert sender.sent == 1  # its send went out on its own socket


def test_an_error_in_the_sending_thread_does_not_stop_it(
    listener_factory: Callable[..., GroupListener],
) -> None:
    """A send the thread cannot make (here a blob of text, not bytes) is
    counted unsent for its chunk and logged; the next chunk still leaves (an
    actor blocked on a dead thread would never send again)."""
    group = _group()
    listener = listener_factory(group)
    sender = udp_multicast.GroupSender("127.0.0.1", fragments.parse_group(group), 0, MiB, 65000)
    key, sealed = os.urandom(32), os.urandom(3 * 1000 + 7)
    try:
        sender.submit(udp_multicast.Send(SID_UDP, 0, False, b"n" * 12, ("x" * 100,), key))  # type: ignore[arg-type]
        sender.submit(udp_multicast.Send(SID_UDP, 1, True, b"n" * 12, (sealed,), key))
        want = fragments.fragment_count(len(sealed), sender.fragment)
        wait_until(lambda: len(listener.datagrams) >= want or None, 10, "the second chunk")
    finally:
        sender.close()
    assert (sender.sent, sender.unsent) == (want, 1)
    got = {fragments.parse(d)[0].offset: bytes(fragments.parse(d)[1]) for d in listener.datagrams}
    assert b"".join(got[o] for o in sorted(got)) == sealed


class _GroupInbox:
    """A session's group socket and receiving thread (as a receiver's
    ``mreceiver`` opens them) on loopback, and a sender of datagrams to it."""

    def __init__(self, frag: int, chunks: int, chunk_len: int, start: bool = True) -> None:
        self.key = fragments.header_key(os.urandom(32))
        self.group = fragments.parse_group(_group())
        self.frag, self.chunk_len = frag, chunk_len
        self.rx = udp_multicast.GroupReceiver(self.group[0], self.group[1], "127.0.0.1", MiB, frag)
        self.asm = fragments.Reassembler(chunks, lambda i: chunk_len, frag, max_pending=chunks)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        self.have: set[int] = set()
        if start:
            self.rx.start(fragments.Intake(SID_UDP, self.key, self.asm), self.have)
        self.chunks: dict[int, bytearray] = {}
        self.dropped: dict[str, int] = {}

    def datagrams(self, index: int, blob: bytes, nonce: bytes = b"n" * 12) -> list[bytes]:
        last = index == self.asm.total - 1
        return [
            fragments.header(SID_UDP, index, last, nonce, len(blob), o, key=self.key) + blob[o:e]
            for o, e in fragments.split(len(blob), self.frag)
        ]

    def send(self, *datagrams: bytes) -> None:
        for d in datagrams:
            self.tx.sendto(d, self.group)

    def take(self, chunks: int, dropped: int = 0, timeout: float = 10) -> None:
        """Take (as the actor does when the eventfd is readable) until so
        many chunks and refused datagrams came in all."""

        def enough() -> bool:
            got, refused = self.rx.take()
            for c in got:
                self.chunks[c.index] = c.blob
            for name, n in refused.items():
                self.dropped[name] = self.dropped.get(name, 0) + n
            return len(self.chunks) >= chunks and sum(self.dropped.values()) >= dropped

        wait_until(enough, timeout, f"{chunks} chunks and {dropped} refused datagrams")

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


@pytest.fixture(params=["recvmmsg", "recvmsg"])
def group_inbox(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., _GroupInbox]]:
    """Inboxes whose receiving thread reads with ``recvmmsg`` (several
    receive buffers a call, as a node on Linux does), or one ``recvmsg`` a
    read (a C library without it)."""
    if request.param == "recvmmsg":
        assert udp_multicast.RECVMMSG is not None  # what nodes on this kernel use
    else:
        monkeypatch.setattr(udp_multicast, "RECVMMSG", None)
    made: list[_GroupInbox] = []

    def make(
        frag: int = 1000, chunks: int = 4, chunk_len: int = 2500, start: bool = True
    ) -> _GroupInbox:
        made.append(_GroupInbox(frag, chunks, chunk_len, start))
        return made[-1]

    yield make
    for inbox in made:
        inbox.close()


def test_the_receiving_thread_reassembles_and_counts_what_it_refuses(
    group_inbox: Callable[..., _GroupInbox],
) -> None:
    """The socket is read on a thread of its own: complete chunks reach the
    actor exact, and every datagram it refuses is counted by kind - not
    ours, a header under another key, shorter than a header - with one wake
    of the actor for many refusals."""
    box = group_inbox()
    blobs = [os.urandom(2500) for _ in range(4)]
    other = fragments.header_key(os.urandom(32))
    forged = fragments.header(SID_UDP, 1, False, b"n" * 12, 2500, 0, key=other) + b"z" * 1000
    box.send(b"x" * 100, forged, b"PCm3" + bytes(20))
    for i, blob in enumerate(blobs):
        box.send(*reversed(box.datagrams(i, blob)))
    box.take(4, 3)
    assert {i: bytes(b) for i, b in box.chunks.items()} == dict(enumerate(blobs))
    assert box.dropped == {
        "datagram-dropped-magic": 1,
        "datagram-dropped-tag": 1,
        "datagram-dropped-short": 1,
    }
    thread = box.rx.thread
    assert thread is not None and thread.name == "pc-mrecv"
    box.rx.close()
    assert not thread.is_alive()


def test_the_receiving_thread_applies_forget_and_recycle_before_its_next_read(
    group_inbox: Callable[..., _GroupInbox],
) -> None:
    """A chunk that came whole by repair is forgotten (its fragments held so
    far do not complete it later) - also when the thread, idle, had planned
    to read the next fragment straight into its buffer - and a buffer given
    back, and the forgotten chunk's, are those the next chunks of their
    length are assembled in (here chunk 0 started over, then chunk 2)."""
    box = group_inbox(chunk_len=3000)  # 3 whole fragments: the last may be read in place
    blobs = [os.urandom(3000) for _ in range(4)]
    first = box.datagrams(0, blobs[0])
    box.send(*box.datagrams(1, blobs[1]), *first[:2])
    box.take(1)
    wait_until(lambda: 0 in box.asm.pending and box.asm.next == (0, 2), 10, "chunk 0 begun")
    forgotten, given = box.asm.pending[0].buf, box.chunks[1]
    box.rx.forget(0)
    box.rx.recycle(given)
    box.send(first[2], *box.datagrams(2, blobs[2]))
    box.take(2)
    assert set(box.chunks) == {1, 2}  # chunk 0 started over: its last fragment alone
    assert box.asm.pending[0].missing == {0, 1}
    assert box.asm.pending[0].buf is forgotten  # (the planned read's bytes moved out of it)
    assert box.chunks[2] is given
    assert bytes(box.chunks[2]) == blobs[2]
    box.send(*first[:2])
    box.take(3)
    assert bytes(box.chunks[0]) == blobs[0]


def test_gso_batches_read_several_at_a_time_give_the_exact_chunks_and_refuse_a_forgery(
    group_inbox: Callable[..., _GroupInbox],
) -> None:
    """Chunks sent as UDP GSO batches (as a sender does) come to the
    receiving thread as GRO buffers, several per read: every chunk is exact,
    and a datagram made under another key inside a batch is refused
    (``tag``) while the genuine ones around it are placed; the chunk
    completes with the genuine datagram."""
    frag, per = 1000, 4
    box = group_inbox(frag=frag, chunks=3, chunk_len=10 * frag + 7)
    box.tx.setsockopt(udp_multicast.SOL_UDP, udp_multicast.UDP_SEGMENT, frag + 65)
    blobs = [os.urandom(10 * frag + 7) for _ in range(3)]
    datagrams = [box.datagrams(i, blob) for i, blob in enumerate(blobs)]
    other = fragments.header_key(os.urandom(32))
    forged = fragments.header(SID_UDP, 1, False, b"n" * 12, 10 * frag + 7, 5 * frag, key=other)
    genuine = datagrams[1][5]
    datagrams[1][5] = forged + b"z" * frag
    for chunk in datagrams:
        for k in range(0, len(chunk), per):
            box.send(b"".join(chunk[k : k + per]))  # one GSO batch: the last one may be short
    box.take(2, 1)
    assert box.dropped == {"datagram-dropped-tag": 1}
    assert {i: bytes(b) for i, b in box.chunks.items()} == {0: blobs[0], 2: blobs[2]}
    box.send(genuine)
    box.take(3, 1)
    assert bytes(box.chunks[1]) == blobs[1]


def test_a_receiving_thread_whose_chunks_are_not_taken_holds_a_bounded_number_and_stops(
    group_inbox: Callable[..., _GroupInbox],
) -> None:
    """An actor that does not take (busy) holds the thread back after
    READY_CHUNKS complete chunks (the socket's buffer holds the rest: no
    memory grows here), and closing the session stops the waiting thread."""
    chunks = udp_multicast.READY_CHUNKS + 3
    box = group_inbox(chunks=chunks, chunk_len=900)  # one datagram a chunk
    for i in range(chunks):
        box.send(*box.datagrams(i, os.urandom(900)))
    wait_until(box.rx.ready.full, 10, "the ready queue to fill")
    assert box.rx.ready.qsize() == udp_multicast.READY_CHUNKS
    thread = box.rx.thread
    assert thread is not None and thread.is_alive()
    box.rx.close()
    assert not thread.is_alive()  # it was waiting to hand a chunk over


def test_a_group_socket_that_runs_out_of_descriptors_leaves_none_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process out of descriptors (EMFILE) as a session's group socket is
    opened: the error reaches the actor, and neither the socket nor the
    eventfd made before it stays open (a node retrying sessions would leak
    one of each per try)."""
    group = fragments.parse_group(_group())
    real, made = os.eventfd, []

    def second_fails(initval: int, flags: int = 0) -> int:
        if made:
            raise OSError(errno.EMFILE, "Too many open files")
        made.append(real(initval, flags))
        return made[-1]

    monkeypatch.setattr(os, "eventfd", second_fails)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match="Too many open files"):
        udp_multicast.GroupReceiver(group[0], group[1], "127.0.0.1", MiB, 1000)
    assert made and set(os.listdir("/proc/self/fd")) <= before  # (others may close theirs)


def test_a_receiving_thread_that_sees_the_close_on_its_own_keeps_the_stop_descriptor_open_for_it(
    group_inbox: Callable[..., _GroupInbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() marks the session closing, then wakes the idle thread through
    its stop eventfd. A thread whose idle wait ends in between sees the mark
    on its own and closes its descriptors as it ends: that must wait for the
    wake-up's write, which would otherwise go to a closed descriptor (EBADF),
    or to whatever socket took its number meanwhile. Here the write is held
    until the thread has had ample time to end on its own."""
    monkeypatch.setattr(udp_multicast, "IDLE_WAIT_MS", 10)  # the thread wakes often by itself
    box = group_inbox()
    thread = box.rx.thread
    assert thread is not None and thread.is_alive()
    real_write = os.eventfd_write
    held: list[bool] = []

    def late_write(fd: int, value: int) -> None:
        if fd == box.rx.stop and not held:
            thread.join(0.5)  # 50 idle waits: an unguarded thread ends and closes fd
            held.append(thread.is_alive())
        real_write(fd, value)

    monkeypatch.setattr(os, "eventfd_write", late_write)
    box.rx.close()  # raised OSError(EBADF) when the thread closed the eventfd first
    assert held == [True]  # the thread waited for the write before it closed anything
    assert not thread.is_alive()
    assert box.rx.sock.fileno() == -1  # released once the thread ended


def test_the_group_socket_reports_datagrams_waiting_to_be_read(
    group_inbox: Callable[..., _GroupInbox],
) -> None:
    """What the actor asks before NAKing what the sender published: nothing
    waits on an idle socket; a datagram not read yet (the thread waiting
    for a core: here not started), or a complete chunk not taken, is a
    backlog."""
    box = group_inbox(chunks=2, chunk_len=900, start=False)
    assert not box.rx.backlog()
    box.send(*box.datagrams(0, os.urandom(900)))
    assert wait_until(box.rx.backlog, 10, "the datagram queued")
    box.rx.start(fragments.Intake(SID_UDP, box.key, box.asm), box.have)
    wait_until(box.rx.ready.qsize, 10, "a complete chunk")
    assert box.rx.backlog()  # complete, not taken
    box.take(1)
    assert not box.rx.backlog()


def test_an_unexpected_error_in_the_receiving_thread_does_not_spin_a_core(
    group_inbox: Callable[..., _GroupInbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error the thread does not expect (say one that every read hits) is
    counted and the thread waits before its next read, as after a socket
    error: it goes on, without spinning a core on the error."""
    calls: list[float] = []

    def failing(self: udp_multicast.GroupReceiver) -> None:
        calls.append(time.monotonic())
        raise RuntimeError("a read that always fails")

    monkeypatch.setattr(udp_multicast.GroupReceiver, "_receive", failing)
    box = group_inbox()
    wait_until(lambda: len(calls) >= 6 or None, 10, "six failed reads")
    box.rx.close()
    gaps = [b - a for a, b in itertools.pairwise(calls[:6])]
    # Nothing was sent to the socket, so each wait lasts its whole timeout.
    assert min(gaps) >= 0.9 * udp_multicast.ERROR_WAIT_MS / 1000, gaps


class _Landing:
    """A session's group socket on loopback read by hand with ``recvmmsg``
    (no receiving thread), each read aimed where the reassembly says the
    next datagrams belong, and a sender of GSO batches of 7 datagrams (the
    batch at MTU 9000; with ``frag`` 64935, datagrams of 65000 bytes one
    per send, as without GSO or on loopback)."""

    FRAG = 8907  # MTU 9000 less the IP, UDP and fragment headers: 7 per 64 KiB

    def __init__(self, chunks: int, chunk_len: int, frag: int = FRAG) -> None:
        self.FRAG = frag
        self.per = 7 if frag == _Landing.FRAG else 1
        self.key = fragments.header_key(os.urandom(32))
        self.group = fragments.parse_group(_group())
        self.rx = udp_multicast.GroupReceiver(
            self.group[0], self.group[1], "127.0.0.1", 8 * MiB, self.FRAG
        )
        assert self.rx.batch is not None and self.rx.batch.buffers.batch == self.per
        self.reader = self.rx.batch
        self.asm = fragments.Reassembler(chunks, lambda i: chunk_len, self.FRAG, max_pending=chunks)
        self.intake = fragments.Intake(SID_UDP, self.key, self.asm)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        self.tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
        if self.per > 1:
            self.tx.setsockopt(
                udp_multicast.SOL_UDP, udp_multicast.UDP_SEGMENT, frag + fragments.HEADER_BYTES
            )
        self.chunks: dict[int, bytes] = {}
        self.refused: list[str] = []

    def batches(self, index: int, blob: bytes) -> list[bytes]:
        """The chunk's datagrams as its sender's GSO batches (7 a send)."""
        last = index == self.asm.total - 1
        size = len(blob)
        grams = [
            fragments.header(SID_UDP, index, last, b"n" * 12, size, o, key=self.key) + blob[o:e]
            for o, e in fragments.split(size, self.FRAG)
        ]
        return [b"".join(grams[k : k + self.per]) for k in range(0, len(grams), self.per)]

    def send(self, *batches: bytes) -> None:
        for b in batches:
            self.tx.sendto(b, self.group)

    def read(self) -> None:
        """One ``recvmmsg`` as the receiving thread makes it, into the reassembly."""
        poller = select.poll()
        poller.register(self.rx.sock.fileno(), select.POLLIN)
        assert poller.poll(10_000), "no datagram came"
        landing = self.asm.landing(self.reader.messages * self.per)
        for got in self.reader.read(landing):
            if isinstance(got, fragments.FragmentError):
                self.refused.append(got.kind)
                continue
            if isinstance(got, fragments.Scattered):
                events = self.intake.feed_scattered(got, set())
            else:
                events = self.intake.feed(memoryview(got[0]), got[1], set())
            for e in events:
                if isinstance(e, fragments.FragmentError):
                    self.refused.append(e.kind)
                else:
                    self.chunks[e.index] = bytes(e.blob)

    def read_until(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not done():
            assert time.monotonic() < deadline, "the reads did not get there"
            self.read()

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


@pytest.fixture
def landing_inbox() -> Iterator[Callable[..., _Landing]]:
    if udp_multicast.RECVMMSG is None or not udp_multicast._LANDING:
        pytest.skip("no recvmmsg in this C library")
    made: list[_Landing] = []

    def make(chunks: int, chunk_len: int, frag: int = _Landing.FRAG) -> _Landing:
        made.append(_Landing(chunks, chunk_len, frag))
        return made[-1]

    yield make
    for box in made:
        box.close()


def test_a_chunks_gso_batches_read_several_at_a_time_land_in_its_buffer(
    landing_inbox: Callable[..., _Landing],
) -> None:
    """Once a chunk's first batch is in, ``recvmmsg`` reads its next whole
    batches straight into its buffer (the kernel's copy is the only one):
    every chunk exact, and all but its first and last batch taken where
    they lay."""
    chunk_len = 28 * _Landing.FRAG + 100  # batches of 7, 7, 7, 7 and the short last one
    box = landing_inbox(2, chunk_len)
    blobs = [os.urandom(chunk_len) for _ in range(2)]
    for i, blob in enumerate(blobs):
        first, *rest = box.batches(i, blob)
        box.send(first)
        box.read_until(lambda i=i: box.asm.next == (i, 7))  # type: ignore[misc]
        box.send(*rest)
        box.read_until(lambda i=i: i in box.chunks)  # type: ignore[misc]
    assert box.chunks == dict(enumerate(blobs))
    assert box.refused == []
    assert box.asm.landed == 2 * 21  # batches 1-3 of each chunk
    assert box.reader.landed == 2 * 3


def test_a_message_read_into_the_chunk_that_is_not_its_own_is_moved_out_first(
    landing_inbox: Callable[..., _Landing],
) -> None:
    """A read aimed at chunk 0 gets one of its batches, then a datagram that
    is not ours, then the first batch of chunk 1 (read into chunk 0's buffer
    too): chunk 1's bytes are moved out before they are checked, so chunk 1
    is exact, and chunk 0 keeps those places missing until its own come."""
    chunk_len = 28 * _Landing.FRAG + 100
    box = landing_inbox(2, chunk_len)
    blobs = [os.urandom(chunk_len) for _ in range(2)]
    zero, one = box.batches(0, blobs[0]), box.batches(1, blobs[1])
    box.send(zero[0])
    box.read_until(lambda: box.asm.next == (0, 7))
    box.send(zero[1], b"x" * 100, one[0])
    box.read_until(lambda: 1 in box.asm.pending)
    assert box.refused == ["magic"]
    assert box.asm.pending[0].missing == set(range(14, 29))
    box.send(*one[1:], *zero[2:])
    box.read_until(lambda: len(box.chunks) == 2)
    assert box.chunks == dict(enumerate(blobs))


def test_no_read_lands_on_fragments_a_chunk_already_holds(
    landing_inbox: Callable[..., _Landing],
) -> None:
    """Reads land a whole GSO batch at a time, so only where the chunk's
    next missing fragment starts a batch: with fragments 0-5 held (a batch
    of 6 came), a copy of them carrying other bytes (a member spoiling the
    group: the headers are right) is not read over them - the first copy
    wins - and the chunk is exact."""
    chunk_len = 28 * _Landing.FRAG + 100
    box = landing_inbox(1, chunk_len)
    blob = os.urandom(chunk_len)
    grams = [
        fragments.header(SID_UDP, 0, True, b"n" * 12, chunk_len, o, key=box.key) + blob[o:e]
        for o, e in fragments.split(chunk_len, _Landing.FRAG)
    ]
    box.send(b"".join(grams[:6]))
    box.read_until(lambda: box.asm.next == (0, 6))
    head = fragments.HEADER_BYTES
    spoiled = b"".join(g[:head] + os.urandom(len(g) - head) for g in grams[:6])
    box.send(spoiled)
    box.read_until(lambda: box.reader.landed == 0 and not box.rx.backlog())
    box.send(*(b"".join(grams[k : k + 7]) for k in range(6, len(grams), 7)))
    box.read_until(lambda: 0 in box.chunks)
    assert box.chunks == {0: blob}


@pytest.mark.parametrize("frag, chunk", [(8907, MiB + 80), (1407, 16 * MiB + 80)])
def test_the_iovecs_kept_for_chunk_buffers_are_bounded(frag: int, chunk: int) -> None:
    """A reader keeps the iovec of a chunk buffer for the next reads into it,
    for at most 8 buffers and about 1 MiB of them (with 16 MiB chunks at MTU
    1500 one is 386 KiB), whatever the number of buffers it read into."""
    if udp_multicast.RECVMMSG is None or not udp_multicast._LANDING:
        pytest.skip("no recvmmsg in this C library")
    group = fragments.parse_group(_group())
    rx = udp_multicast.GroupReceiver(group[0], group[1], "127.0.0.1", MiB, frag)
    try:
        reader = rx.batch
        assert reader is not None
        whole = bytearray(chunk + 20 * 4096)
        for k in range(20):  # 20 buffers of the chunk's length at 20 addresses
            reader._chunk_iov(memoryview(whole)[k * 4096 : k * 4096 + chunk])
        kept = list(reader.chunk_iovs.values())
        assert 1 <= len(kept) <= udp_multicast.CHUNK_IOVECS
        assert sum(ctypes.sizeof(iov) for iov in kept) <= max(
            udp_multicast.CHUNK_IOVEC_BYTES, ctypes.sizeof(kept[0])
        )
    finally:
        rx.close()


def test_datagrams_one_per_send_land_in_the_chunk_too(
    landing_inbox: Callable[..., _Landing],
) -> None:
    """Without GSO (or on loopback) a session's datagrams are 65000 bytes,
    one per read buffer: once a chunk's first one is in, the next land in
    its buffer as well, and the chunk is exact."""
    frag = 65000 - fragments.HEADER_BYTES
    chunk_len = 6 * frag + 100
    box = landing_inbox(1, chunk_len, frag)
    blob = os.urandom(chunk_len)
    first, *rest = box.batches(0, blob)
    box.send(first)
    box.read_until(lambda: box.asm.next == (0, 1))
    box.send(*rest)
    box.read_until(lambda: 0 in box.chunks)
    assert box.chunks == {0: blob}
    assert box.asm.landed == 5  # all but the first and the short last one


@pytest.mark.parametrize("seed", range(30))
def test_a_co_receiver_s_runs_in_any_order_never_land_over_a_fragment_held(
    landing_inbox: Callable[..., _Landing], seed: int
) -> None:
    """A co-receiver (it can make headers) sends a chunk's datagrams as GSO
    batches of 1-7 from any fragment on, each the sender's bytes or other
    bytes under the same header, read several at a time and aimed into the
    chunk as the receiving thread does: the chunk holds the first copy of
    each fragment (a set of the numbers held, in the order sent, is the
    model) and completes exactly when every one came, with those bytes."""
    rng = random.Random(seed)
    chunk_len = 28 * _Landing.FRAG + 100  # 29 fragments, the last short
    count = 29
    box = landing_inbox(1, chunk_len)
    blob = os.urandom(chunk_len)
    first: dict[int, bytes] = {}  # fragment number -> the first copy's payload
    sent = 0
    while len(first) < count:
        lowest = min(set(range(count)) - set(first))
        start, size = rng.choice(
            [
                (lowest // 7 * 7, 7),  # as the sender: the next batch (read into the chunk)
                (rng.randrange(5) * 7, 7),  # a batch again, or ahead
                (rng.randrange(count), rng.randint(1, 7)),  # any run
            ]
        )
        run = []
        for number in range(start, min(count, start + size)):
            o = number * _Landing.FRAG
            payload = blob[o : o + _Landing.FRAG]
            if rng.random() < 0.3:
                payload = bytes(b ^ 0xA5 for b in payload)
            gram = fragments.header(SID_UDP, 0, True, b"n" * 12, chunk_len, o, key=box.key)
            run.append(gram + payload)
            first.setdefault(number, payload)
        box.send(b"".join(run))
        sent += 1
        if rng.random() < 0.4 or len(first) == count:  # read what came, several at a time
            box.read()
            box.read_until(lambda: not box.rx.backlog())
            if len(first) < count:
                assert box.chunks == {}, sent
                p = box.asm.pending[0]
                assert set(range(count)) - p.missing == set(first), sent
                for number, payload in first.items():
                    o = number * _Landing.FRAG
                    assert bytes(p.buf[o : o + len(payload)]) == payload, (sent, number)
    assert box.refused == []
    assert box.chunks == {0: b"".join(first[k] for k in range(count))}
