"""Fault injection against real node processes on 127.0.0.1.

A receiver node advertises the port of a :class:`~peercrypt.testing.faults.FaultProxy`
(``--advertise-data-port``) that forwards to its real data port, so every chunk,
ack and sealed message of a transfer crosses the proxy and can be dropped,
duplicated, delayed (reordered) or bit-flipped. The invariant under any fault:
a send either succeeds with the exact BLAKE3 of the source (and the inbox holds
exactly that content) or fails with a clear error, and the inbox *never* holds
a file whose content differs from what was sent.

Then malformed frames go straight to the receiver's data port and to its public
(CURVE) port; the node must count and drop them, and still serve a good transfer.

One sender/receiver pair and one proxy serve the whole module (node start-ups
are the slow part); each test switches the proxy's plan and uses its own files.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
import zmq

from actors.data_pipes import new_route_id
from peercrypt.crypto.identity import KeyPair, network_server_keys, new_network_key
from peercrypt.crypto.transfer import TAG_BYTES
from peercrypt.testing.faults import DirectionFaults, FaultPlan, FaultProxy
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer
from peercrypt.testing.nodes import NodeProcess, blake3_file, cli_env, free_port, wait_until
from peercrypt.wire import codec
from peercrypt.wire.messages import (
    Attach,
    ChunkHeader,
    ErrorReply,
    Hello,
    HelloReply,
    Ping,
    Pong,
    SealedHeader,
    Verified,
)

KiB = 1024
MiB = 1024 * KiB
CHUNK = 64 * KiB
LOCALHOST = "127.0.0.1"
ATTACH_SEALED = len(codec.encode(Attach(route=new_route_id(0)))) + TAG_BYTES


class Setup:
    """The module's sender, receiver, proxy and network key."""

    def __init__(
        self,
        sender: NodeProcess,
        receiver: NodeProcess,
        proxy: FaultProxy,
        key: str,
        data_port: int,
    ) -> None:
        self.sender = sender
        self.receiver = receiver
        self.proxy = proxy
        self.key = key
        self.data_port = data_port
        self.sources: dict[str, str] = {}  # blake3 -> source name, of everything sent


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("faults")
    key = new_network_key()
    data_port = free_port()
    proxy = FaultProxy(f"tcp://{LOCALHOST}:{data_port}", FaultPlan.clean()).start()
    receiver = NodeProcess(
        base / "receiver",
        network_key=key,
        extra_args=("--data-port", str(data_port), "--advertise-data-port", str(proxy.port)),
    )
    sender = NodeProcess(base / "sender", network_key=key)
    try:
        receiver.start()
        sender.start()
        assert receiver.data_port == data_port
        yield Setup(sender, receiver, proxy, key, data_port)
    finally:
        codes = {n.data_dir.name: n.stop() for n in (sender, receiver) if n.proc is not None}
        stopped = proxy.stop()
    assert stopped, "the fault proxy thread did not stop"
    assert proxy.error is None, proxy.error
    assert codes == {"sender": 0, "receiver": 0}, (
        f"{codes}\n{sender.log_tail()}\n{receiver.log_tail()}"
    )


def make_file(directory: Path, name: str, size: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


def inbox_files(setup: Setup) -> list[Path]:
    """Final (non-hidden) files in the receiver's inbox."""
    return sorted(p for p in setup.receiver.inbox.iterdir() if not p.name.startswith("."))


def assert_inbox_holds_only_sent_content(setup: Setup) -> None:
    for path in inbox_files(setup):
        digest = blake3_file(path)
        assert digest in setup.sources, f"{path.name} in the inbox matches nothing sent"


def send(
    setup: Setup, path: Path, *extra: str, timeout: float = 60.0
) -> tuple[int, dict[str, Any]]:
    setup.sources[blake3_file(path)] = path.name
    code, result = setup.sender.send(
        path, LOCALHOST, setup.receiver.port, "--chunk-size", str(CHUNK), *extra, timeout=timeout
    )
    return code, result


def check_outcome(
    setup: Setup, path: Path, code: int, result: dict[str, Any], must_succeed: bool
) -> None:
    """Success with the exact hash and content, or a clear failure; never a wrong file."""
    assert_inbox_holds_only_sent_content(setup)
    expected = blake3_file(path)
    if code == 0:
        assert result["ok"] is True
        assert result["blake3"] == expected
        stored = setup.receiver.inbox / result["stored_as"]
        assert stored.stat().st_size == path.stat().st_size
        assert blake3_file(stored) == expected
        return
    assert not must_succeed, f"send failed: exit {code}, {result}\n{setup.receiver.log_tail()}"
    assert result.get("ok") is False, result
    assert result.get("error"), f"a failure without a reason: {result}"
    stored_names = [p.name for p in inbox_files(setup)]
    assert path.name not in stored_names or any(
        blake3_file(setup.receiver.inbox / n) == expected for n in stored_names
    )


def run_with_plan(
    setup: Setup,
    tmp_path: Path,
    plan: FaultPlan,
    name: str,
    must_succeed: bool,
    size: int = 3 * MiB,
    *extra: str,
) -> tuple[int, dict[str, Any]]:
    setup.proxy.set_plan(plan)
    before = setup.proxy.snapshot()
    path = make_file(tmp_path, name, size)
    code, result = send(setup, path, *extra)
    check_outcome(setup, path, code, result, must_succeed)
    after = setup.proxy.snapshot()
    assert after.upstream.received > before.upstream.received, "traffic bypassed the proxy"
    setup.proxy.set_plan(FaultPlan.clean())
    return code, result


# ---- transfers through faults ----------------------------------------------------------


def test_clean_proxy_transfer(setup: Setup, tmp_path: Path) -> None:
    before = setup.proxy.snapshot()
    code, result = run_with_plan(setup, tmp_path, FaultPlan.clean(), "clean.bin", True)
    after = setup.proxy.snapshot()
    assert code == 0
    assert result["retransmits"] == 0
    assert after.total("dropped") == before.total("dropped")
    # ~48 chunks + Done upstream, acks + Verified downstream.
    assert after.upstream.received - before.upstream.received >= 49
    assert after.downstream.received > before.downstream.received


@pytest.mark.parametrize(
    ("fault", "counter"),
    [("drop", "dropped"), ("duplicate", "duplicated"), ("delay", "delayed")],
)
def test_moderate_faults_must_succeed(
    setup: Setup, tmp_path: Path, fault: str, counter: str
) -> None:
    plan = FaultPlan.both(**{fault: 0.05}, max_delay=0.03, seed=11)  # type: ignore[arg-type]
    before = setup.proxy.snapshot()
    code, result = run_with_plan(setup, tmp_path, plan, f"{fault}.bin", True)
    assert code == 0
    assert setup.proxy.snapshot().total(counter) > before.total(counter), "no fault was injected"
    if fault == "drop":
        assert result["retransmits"] > 0


def test_flipped_bits_are_detected(setup: Setup, tmp_path: Path) -> None:
    counters_before = setup.receiver.counters()
    before = setup.proxy.snapshot()
    plan = FaultPlan(
        upstream=DirectionFaults(flip=0.1), downstream=DirectionFaults(flip=0.05), seed=5
    )
    code, result = run_with_plan(setup, tmp_path, plan, "flip.bin", False)
    flips = setup.proxy.snapshot().upstream.flipped - before.upstream.flipped
    assert flips > 0
    assert code == 0, f"flips are detected and retransmitted, yet the send failed: {result}"
    # Every mangled chunk was caught before it reached the file (the report
    # that counts the file received has its final check's verdict too; a
    # baseline read while the previous test's file was still unreported
    # makes this weaker, never wrong: the status cannot tell whose report).
    keys = ["receiver.data-dropped-auth", "receiver.received"]
    counters = wait_for_drops(setup, counters_before, keys)
    assert counters.get("receiver.hash-mismatch", 0) == counters_before.get(
        "receiver.hash-mismatch", 0
    )


def test_mixed_faults_must_succeed(setup: Setup, tmp_path: Path) -> None:
    plan = FaultPlan.both(drop=0.05, duplicate=0.05, delay=0.05, max_delay=0.03, seed=23)
    code, _ = run_with_plan(setup, tmp_path, plan, "mixed.bin", True)
    assert code == 0


def test_heavy_faults_never_leave_a_wrong_file(setup: Setup, tmp_path: Path) -> None:
    heavy = DirectionFaults(drop=0.2, duplicate=0.1, delay=0.2, flip=0.1, max_delay=0.05)
    plan = FaultPlan(upstream=heavy, downstream=heavy, seed=99)
    run_with_plan(setup, tmp_path, plan, "heavy.bin", False, 1 * MiB, "--timeout", "4")


def test_downstream_blackout_fails_cleanly(setup: Setup, tmp_path: Path) -> None:
    plan = FaultPlan(downstream=DirectionFaults(drop=1.0), seed=1)
    started = time.monotonic()
    code, result = run_with_plan(
        setup, tmp_path, plan, "blackout.bin", False, 256 * KiB, "--timeout", "1"
    )
    assert code == 1, result
    assert "acknowledg" in result["error"] or "confirm" in result["error"], result
    assert time.monotonic() - started < 20
    # The Done goes with the last chunk: the receiver may have stored the
    # file, whole and verified, without the sender hearing of it (as when
    # only its Verified is lost); never anything else under the name.
    stored = setup.receiver.inbox / "blackout.bin"
    assert not stored.exists() or setup.sources.get(blake3_file(stored)) == "blackout.bin"


# ---- malformed frames straight at the node ---------------------------------------------


def wait_for_drops(setup: Setup, before: dict[str, int], keys: list[str]) -> dict[str, int]:
    """Wait until every counter in ``keys`` grew past ``before``. Counters
    reach ``status`` every 0.5 s, so drops a previous test caused may still
    arrive: only the counters this test's frames must move are waited on."""

    def enough() -> dict[str, int] | None:
        now = setup.receiver.counters()
        return now if all(now.get(k, 0) > before.get(k, 0) for k in keys) else None

    result: dict[str, int] = wait_until(enough, 10.0, f"counters {keys} to grow")
    return result


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def dealer(
    ctx: zmq.Context[Any],
    endpoint: str,
    curve: KeyPair | None = None,
    server_public: bytes | None = None,
) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndtimeo = 2000
    if curve is not None and server_public is not None:
        sock.curve_serverkey = server_public
        sock.curve_publickey = curve.z85_public
        sock.curve_secretkey = curve.z85_secret
    sock.connect(endpoint)
    return sock


def good_transfer(setup: Setup, tmp_path: Path, name: str) -> None:
    setup.proxy.set_plan(FaultPlan.clean())
    path = make_file(tmp_path, name, 512 * KiB)
    code, result = send(setup, path)
    check_outcome(setup, path, code, result, True)


def test_garbage_on_the_data_port_is_counted_and_dropped(
    setup: Setup, tmp_path: Path, zctx: zmq.Context[Any]
) -> None:
    before = setup.receiver.counters()
    rng = random.Random(3)
    sock = dealer(zctx, f"tcp://{LOCALHOST}:{setup.data_port}")
    tid = os.urandom(16)
    chunk = codec.encode(ChunkHeader(tid=tid, index=0, last=True, nonce=b"\0" * 12))
    sealed = codec.encode(SealedHeader(tid=tid, nonce=b"\0" * 12))
    frames_sent: list[list[bytes]] = [
        [rng.randbytes(40)],  # one frame
        [b"a", b"b", b"c"],  # three frames
        [chunk, b"x", b"y"],  # a chunk header with two frames after it
        [b""],
        [rng.randbytes(100), rng.randbytes(100)],  # garbage header
        [bytes([0x93, codec.VERSION + 1]) + b"\xa4ping\x80", b"x"],  # another version
        [codec.encode(Ping(seq=1)), b"x"],  # a valid message, but not a data header
        [chunk, rng.randbytes(64)],  # unknown transfer
        [sealed, rng.randbytes(64)],
        [b"\xc1" * 600, b"x"],  # header over the 512-byte limit
    ]
    for frames in frames_sent:
        sock.send_multipart(frames)
    kinds = ("frames", "malformed", "version", "unexpected", "unknown-transfer", "oversize")
    wait_for_drops(setup, before, [f"receiver.data-dropped-{kind}" for kind in kinds])
    assert not sock.poll(200), "the receiver answered an unauthenticated peer"
    # An oversize frame (> 16 MiB, the data socket's maxmsgsize) only costs its connection.
    big = dealer(zctx, f"tcp://{LOCALHOST}:{setup.data_port}")
    big.send_multipart([chunk, b"\0" * (16 * MiB + 4096)])
    good_transfer(setup, tmp_path, "after-data-garbage.bin")
    assert setup.receiver.running


def test_garbage_on_the_public_port(setup: Setup, tmp_path: Path, zctx: zmq.Context[Any]) -> None:
    public = f"tcp://{LOCALHOST}:{setup.receiver.port}"
    before = setup.receiver.counters()
    # Without CURVE nothing gets through the handshake: no answer at all.
    plain = dealer(zctx, public)
    plain.send_multipart([os.urandom(50)])
    plain.send_multipart([b"a", b"b"])
    assert not plain.poll(300)
    # With CURVE and the right network key (any identity: no allow-list), garbage is
    # answered with an ErrorReply naming its kind, and counted.
    server = network_server_keys(setup.key)
    member = dealer(zctx, public, KeyPair.generate(), server.z85_public)
    member.send(codec.encode(Hello(challenge=KeyPair.generate().public)))
    assert member.poll(5000), "no HelloReply over CURVE"
    assert isinstance(codec.decode(member.recv()), HelloReply)
    expected_kinds = []
    ours, other = codec.VERSION, codec.VERSION + 5  # (one byte each: positive fixints)
    for frames, kind in (
        ([os.urandom(64)], "malformed"),
        ([bytes([0x93, ours]) + b"\xa4nope\x80"], "unknown-type"),
        ([bytes([0x93, other]) + b"\xa4ping\x81\xa3seq\x01"], "version"),
        ([codec.encode(Pong(seq=3))], "unexpected"),
        ([bytes([0x93, ours]) + b"\xa4ping\x80"], "fields"),
        ([b"x", b"y"], "frames"),
    ):
        member.send_multipart(frames)
        assert member.poll(5000), f"no answer to a {kind} message"
        if kind == "version":  # answered in its own envelope (docs/security.md)
            reply = codec.decode(member.recv(), version=other)
            assert isinstance(reply, ErrorReply) and reply.code == f"protocol-{ours}", reply
        else:
            reply = codec.decode(member.recv())
            assert isinstance(reply, ErrorReply), reply
            assert reply.code == kind
        expected_kinds.append(kind)
    member.send(codec.encode(Ping(seq=9)))
    assert member.poll(5000)
    assert codec.decode(member.recv()) == Pong(seq=9)
    # Over the gateway's message size limit: the connection is dropped, nothing else.
    member.send(b"\0" * (64 * KiB + 2048))
    wait_for_drops(setup, before, [f"gateway.rejected-{kind}" for kind in expected_kinds])
    # A wrong network key fails the handshake: no answer.
    outsider = dealer(
        zctx, public, KeyPair.generate(), network_server_keys(new_network_key()).z85_public
    )
    outsider.send(codec.encode(Hello(challenge=KeyPair.generate().public)))
    assert not outsider.poll(300)
    good_transfer(setup, tmp_path, "after-public-garbage.bin")


# ---- an unauthenticated frame must not redirect a transfer's replies ------------------


def test_forged_header_cannot_hijack_the_reply_route(
    setup: Setup, tmp_path: Path, zctx: zmq.Context[Any]
) -> None:
    seen: list[bytes] = []

    def observe(direction: str, frames: list[bytes]) -> None:
        if direction == "upstream" and not seen and len(frames) == 2:
            try:
                header = codec.decode(frames[0], 512)
            except codec.DecodeError:
                return
            if isinstance(header, ChunkHeader):
                seen.append(header.tid)

    path = make_file(tmp_path, "hijack.bin", 3 * MiB)
    setup.sources[blake3_file(path)] = path.name
    setup.proxy.observer = observe
    setup.proxy.set_plan(FaultPlan(downstream=DirectionFaults(delay=1.0, max_delay=0.02)))
    argv = [
        sys.executable,
        "-m",
        "peercrypt",
        "--data-dir",
        str(setup.sender.data_dir),
        "send",
        str(path),
        LOCALHOST,
        str(setup.receiver.port),
        "--json",
        "--chunk-size",
        "4096",
        "--timeout",
        "3",
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
    )
    answered = forged_while_running = 0
    before = setup.receiver.counters()
    try:
        tid = wait_until(lambda: seen[0] if seen else None, 10.0, "the transfer's first chunk")
        attacker = dealer(zctx, f"tcp://{LOCALHOST}:{setup.data_port}")
        # A frame of the right length for chunk 0, from a connection that is
        # not the transfer's: dropped before authentication is even tried.
        forged = codec.encode(ChunkHeader(tid=tid, index=0, last=False, nonce=b"\0" * 12))
        body = os.urandom(4096 + 16)
        deadline = time.monotonic() + 5.0
        while proc.poll() is None and time.monotonic() < deadline:
            attacker.send_multipart([forged, body])
            forged_while_running += 1
            if attacker.poll(5):
                attacker.recv_multipart()
                answered += 1
        out, err = proc.communicate(timeout=30)
    finally:
        setup.proxy.observer = None
        setup.proxy.set_plan(FaultPlan.clean())
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert forged_while_running > 0, "the transfer ended before any forged frame was sent"
    wait_for_drops(setup, before, ["receiver.data-dropped-route"])
    assert answered == 0, f"the receiver sent {answered} transfer replies to a forger"
    # The real transfer was not diverted: it verified, with the source's hash.
    assert proc.returncode == 0, f"the real send failed: {out!r} {err!r}"
    result = json.loads(out)
    assert result["blake3"] == blake3_file(path)
    assert blake3_file(setup.receiver.inbox / result["stored_as"]) == blake3_file(path)
    assert_inbox_holds_only_sent_content(setup)


def test_proxy_counts_and_stops_cleanly() -> None:
    # A proxy in front of nothing: start/stop must not hang, counts stay zero.
    proxy = FaultProxy(f"tcp://{LOCALHOST}:{free_port()}", FaultPlan.both(drop=0.5))
    started = time.monotonic()
    with proxy:
        assert proxy.port > 0
        ctx: zmq.Context[Any] = zmq.Context()
        try:
            client = dealer(ctx, proxy.endpoint)
            for i in range(20):
                client.send_multipart([b"hello", str(i).encode()])
            wait_until(lambda: proxy.snapshot().upstream.received == 20, 5.0, "20 messages")
        finally:
            ctx.destroy(linger=0)
    counts = proxy.snapshot()
    assert counts.clients == 1
    assert 0 < counts.upstream.dropped < 20
    assert counts.upstream.sent == 20 - counts.upstream.dropped
    assert counts.downstream.received == 0
    assert time.monotonic() - started < 10
    assert proxy.error is None


def test_fault_plan_validation() -> None:
    with pytest.raises(ValueError):
        DirectionFaults(drop=1.5)
    with pytest.raises(ValueError):
        DirectionFaults(max_delay=-1)
    plan = FaultPlan.both(drop=0.1, seed=4)
    assert plan.upstream == plan.downstream == DirectionFaults(drop=0.1)
    assert plan.for_direction("downstream").drop == 0.1


# ---- a shared data connection: a member cannot attach to another's transfer -------


def test_a_member_cannot_join_another_transfer_on_its_connection(
    setup: Setup, tmp_path: Path
) -> None:
    """A sender's transfers to one receiver share its data connection, each
    attached to it by its own sealed Attach naming the connection. A member
    with a transfer of its own, on its own connection, sends for a real
    transfer it does not hold the keys of: a chunk of it, an Attach of it
    sealed with the member's keys, and the real Attach (captured on the path)
    replayed. All are dropped as from a connection not the transfer's; no
    reply of it reaches the member; the real file verifies, and the member's
    own transfer is stored with its own hash."""
    captured: list[list[bytes]] = []

    def observe(direction: str, frames: list[bytes]) -> None:
        if direction != "upstream" or captured or len(frames) != 2:
            return
        try:
            header = codec.decode(frames[0], 512)
        except codec.DecodeError:
            return
        if isinstance(header, SealedHeader) and len(frames[1]) == ATTACH_SEALED:
            captured.append(list(frames))

    path = make_file(tmp_path, "shared.bin", 6 * MiB)  # 6 s at -r 1 MiB: running throughout
    setup.proxy.observer = observe
    result: list[tuple[int, dict[str, Any]]] = []
    real = threading.Thread(
        target=lambda: result.append(send(setup, path, "-r", str(MiB))), daemon=True
    )
    real.start()
    content = os.urandom(2 * CHUNK)
    try:
        header, sealed = wait_until(lambda: captured[0] if captured else None, 20.0, "an Attach")
        victim = codec.decode_as(header, SealedHeader, 512).tid
        with HostileSender(setup.key, LOCALHOST, setup.receiver.port) as member:
            mine = member.offer("member.bin", len(content), CHUNK)
            assert isinstance(mine, HostileTransfer), mine
            before = setup.receiver.counters()
            chunk = ChunkHeader(tid=victim, index=0, last=False, nonce=os.urandom(12))
            mine.send_frames([codec.encode(chunk), os.urandom(CHUNK + TAG_BYTES)])
            for _ in range(10_000):  # a nonce beyond any the real transfer used
                mine.keys.seal_message(b"")
            nonce, forged = mine.keys.seal_message(
                codec.encode(Attach(route=mine.keys.route_id(0)))
            )
            mine.send_frames([codec.encode(SealedHeader(tid=victim, nonce=nonce)), forged])
            mine.send_frames([header, sealed])  # the real one, from the member's connection
            # The chunk and the forged Attach: not the transfer's connection;
            # the real Attach: already taken (on the real connection), a replay.
            dropped = {"receiver.data-dropped-route": 2, "receiver.data-dropped-replay": 1}

            def all_dropped() -> bool:
                now = setup.receiver.counters()
                return all(now.get(k, 0) - before.get(k, 0) >= n for k, n in dropped.items())

            wait_until(all_dropped, 10.0, f"{dropped} more dropped")
            while mine.data.poll(300):  # nothing of the real transfer came to the member
                frames = mine.data.recv_multipart()
                assert codec.decode_as(frames[0], SealedHeader, 512).tid == mine.tid
            answer = mine.send_stream(content)
            digest = blake3.blake3(content).digest()
            assert isinstance(answer, Verified) and answer.digest == digest, answer
            assert blake3_file(setup.receiver.inbox / answer.stored_as) == digest.hex()
            setup.sources[digest.hex()] = "member.bin"
        real.join(60)
    finally:
        setup.proxy.observer = None
    assert result, "the real send did not finish"
    code, out = result[0]
    assert code == 0 and out["blake3"] == blake3_file(path), out
    assert blake3_file(setup.receiver.inbox / out["stored_as"]) == blake3_file(path)
    assert_inbox_holds_only_sent_content(setup)
