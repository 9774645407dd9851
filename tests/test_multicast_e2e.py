"""Multicast with real node processes (docs/multicast.md)."""

from __future__ import annotations

import json
import random
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from peercrypt.runtime.actor import BULK_NICE, DATA_NICE
from peercrypt.testing.nodes import (
    NodeProcess,
    assert_stored,
    cli_running,
    free_port,
    json_success,
    multicast_targets,
    nice_by_thread,
    start_cli,
    wait_until,
)

MiB = 1024 * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_multicast_writer_runs_at_the_nodes_priority(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """A node has two writers: the unicast receiver's runs DATA_NICE +
    BULK_NICE nicer than the node (the control plane's latency), the multicast receiver's at
    the node's priority, as the rest of the multicast path (its written
    point paces the whole session: docs/multicast.md, "The datagram path")."""
    node = node_factory()
    assert node.pid is not None
    fields = Path(f"/proc/{node.pid}/stat").read_text().rsplit(")", 1)[1].split()
    base = int(fields[16])
    unicast = base + DATA_NICE + BULK_NICE
    if unicast > 19:
        pytest.skip("the node already runs at the lowest priority")
    wait_until(
        lambda: nice_by_thread(node.pid).get("pc-writer") == [base, unicast],
        10,
        f"one writer at nice {base} and one at {unicast}",
    )


def test_one_to_three_identical_files_sealed_once(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], blake3_file: Any
) -> None:
    sender = node_factory()
    receivers = [node_factory() for _ in range(3)]
    path = make_file(12 * MiB + 123)
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
    assert stats["chunks"] == 13
    assert stats["seals_first"] == 13  # each chunk sealed once, whatever the receivers
    assert sender.wait_for_counter("msender.seals-first", 13) == 13
    assert stats["seals_repair"] == 0 and stats["published_bytes"] == 13 * 16 + path.stat().st_size
    # Each new part was read back as it was written (multicast or unicast
    # alike), none all over again after its fsync.
    for r in receivers:
        early = lambda r=r: _checks(r, "early") or None  # noqa: E731
        assert wait_until(early, 10, "the receiver's verdict counted") == 1
        assert _checks(r, "full") == 0
        # hashed as written on the multicast writer's hashing thread, at the node's
        # priority as the rest of the multicast path (nicer, it slowed the session)
        if sys.platform.startswith("linux"):
            assert r.pid is not None
            fields = Path(f"/proc/{r.pid}/stat").read_text().rsplit(")", 1)[1].split()
            assert nice_by_thread(r.pid).get("pc-hash") == [int(fields[16])]


def _checks(node: NodeProcess, kind: str) -> int:
    """The node's final checks of ``kind`` (early, full), by either receiver."""
    counters = node.counters()
    return sum(counters.get(f"{actor}.checks-{kind}", 0) for actor in ("receiver", "mreceiver"))


def _transport_args(transport: str) -> tuple[str, ...]:
    """Sender node arguments: PUB/SUB, or a UDP group (TTL 0: this host only)."""
    if transport == "pub":
        return ()
    group = f"239.255.{random.randrange(1, 255)}.{random.randrange(1, 255)}:{free_port()}"
    return ("--multicast-group", group, "--multicast-ttl", "0")


@pytest.mark.parametrize("transport", ["pub", "udp"])
def test_late_and_restarted_receivers_all_verified(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    blake3_file: Any,
    transport: str,
) -> None:
    # The node's cap keeps the session running ~4 s: long enough to kill one
    # receiver and start the late one while chunks flow.
    sender = node_factory("--max-rate", str(8 * MiB), *_transport_args(transport))
    steady = node_factory()
    killed_port = free_port()
    killed = node_factory("--port", str(killed_port), name="killed")
    late_port = free_port()
    path = make_file(32 * MiB + 5)
    digest = blake3_file(path)
    targets = [f"127.0.0.1:{p}" for p in (killed_port, late_port)]
    with cli_running(
        "send", path, steady.host, str(steady.port), "-m", "--to", targets[0], "--to", targets[1],
        "--chunk-size", str(256 * 1024), "--timeout", "30", "--json",
        data_dir=sender.data_dir,
    ) as proc:  # fmt: skip
        # Publishing starts after the join wait (the late receiver is not up):
        # kill one receiver as soon as chunks flow, then start the late one.
        sender.wait_for_counter("msender.seals-first", 1, timeout=15)
        killed.kill()
        late = node_factory("--port", str(late_port), name="late")
        killed = node_factory("--port", str(killed_port), name="killed")
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err, sender.log_tail())
    result = json.loads(out)
    assert result["blake3"] == digest
    for r in (steady, late, killed):
        assert_stored(r, result, digest)
    stats = result["stats"]
    assert stats["seals_first"] == stats["chunks"] == 129  # read and sealed once
    assert stats["seals_repair"] > 0  # the late and the restarted one were repaired
    assert stats["udp"] == (transport == "udp")
    assert "not joined" in err or "cannot connect" in err  # the late one was reported


def test_a_subscriber_without_a_receivers_token_gets_nothing(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], blake3_file: Any
) -> None:
    sender, receiver = node_factory(), node_factory()
    code, result = sender.send(make_file(5000), receiver.host, receiver.port, "-m")
    assert code == 0, result  # the PUB port is bound at the first session
    pub_port = int(
        wait_until(lambda: sender.status().get("multicast_pub_port"), 5, "the PUB port fact")
    )
    ctx = zmq.Context()
    spy = ctx.socket(zmq.SUB)
    spy.setsockopt(zmq.SUBSCRIBE, b"")
    spy.rcvhwm = 0
    monitor = spy.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    spy.connect(f"tcp://127.0.0.1:{pub_port}")
    assert monitor.poll(5000), "the spy did not connect"
    spy.disable_monitor()
    monitor.close(0)
    frames: list[bytes] = []
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            if spy.poll(50):
                frames.extend(spy.recv_multipart())

    thread = threading.Thread(target=collect)
    thread.start()
    try:
        chunk = 64 * 1024
        path = make_file(16 * chunk)
        code, result = sender.send(
            path, receiver.host, receiver.port, "-m", "--chunk-size", str(chunk)
        )
        assert code == 0, result
        assert_stored(receiver, result, blake3_file(path))
        sender.wait_for_counter("msender.subscription-refused", 1)
    finally:
        stop.set()
        thread.join(5)
        spy.close(0)
        ctx.term()
    # Its subscription carried no joined receiver's token: the sender applied
    # none, so nothing was queued for it at all (not even ciphertext).
    assert frames == []


def test_receiver_killed_for_good_fails_alone(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], blake3_file: Any
) -> None:
    sender = node_factory("--max-rate", str(8 * MiB))  # a ~2 s session
    alive = node_factory()
    doomed = node_factory()
    path = make_file(16 * MiB)
    with cli_running(
        "send", path, alive.host, str(alive.port), "-m", "--to", f"{doomed.host}:{doomed.port}",
        "--chunk-size", str(128 * 1024), "--timeout", "3", "--json",
        data_dir=sender.data_dir,
    ) as proc:  # fmt: skip
        sender.wait_for_counter("msender.seals-first", 1, timeout=15)
        doomed.kill()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, (out, err)
    result = json.loads(out)
    assert result["error"].startswith("1 of 2 receivers verified")
    assert_stored(alive, result, blake3_file(path))
    row = next(r for r in result["receivers"] if r["target"].endswith(f":{doomed.port}"))
    assert row["code"] == "unreachable" and "cannot connect" in row["error"], row


def test_ctrl_c_cancels_the_multicast_session(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """SIGINT to `send -m` cancels the session in the node (exit 130, one line)."""
    sender = node_factory("--max-rate", str(4 * MiB))  # a ~4 s session to interrupt
    first = node_factory()
    other = node_factory()
    path = make_file(16 * MiB)
    proc = start_cli(
        "send", path, first.host, str(first.port), "-m", "--to", f"{other.host}:{other.port}",
        "--chunk-size", str(128 * 1024),
        data_dir=sender.data_dir,
    )  # fmt: skip
    try:
        sender.wait_for_counter("msender.seals-first", 1, timeout=15)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1] == "peercrypt: error: interrupted; the transfer was cancelled", stderr
    assert "Traceback" not in stderr
    assert sender.wait_for_counter("msender.failed-cancelled", 1) == 1


def test_a_running_multicast_is_listed_and_cancelled_by_its_id(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """`transfers` lists a running multicast session (as a send, mode
    multicast); `peercrypt cancel ID` ends it as a cancel of a send does:
    code cancelled, exit 1, nothing under a final name at the receivers."""
    sender = node_factory("--max-rate", str(4 * MiB))  # a ~4 s session to cancel
    first = node_factory()
    other = node_factory()
    path = make_file(16 * MiB, name="cut.bin")
    with start_cli(
        "send", path, first.host, str(first.port), "-m", "--to", f"{other.host}:{other.port}",
        "--chunk-size", str(128 * 1024), "--json", "--timeout", "30",
        data_dir=sender.data_dir,
    ) as proc:  # fmt: skip
        try:

            def sending() -> dict[str, Any] | None:
                rows = json.loads(sender.cli("transfers", "--json").stdout or "[]")
                return next((r for r in rows if r["state"] == "sending"), None)

            row = wait_until(sending, 30, "the session listed as sending")
            assert (row["file"], row["mode"]) == (str(path), "multicast"), row
            assert row["size"] == 16 * MiB, row
            assert row["peer"] == f"{first.host}:{first.port}, {other.host}:{other.port}", row

            # A receiving node's `top` shows the session coming in, with its
            # sender (it showed nothing of a multicast).
            def shown() -> str | None:
                out = first.cli("top", "--interval", "0.2").stdout
                return out if "cut.bin" in out else None

            line = next(x for x in wait_until(shown, 30, "top").splitlines() if "cut.bin" in x)
            assert line.split()[0] == "multicast" and sender.fingerprint[:19] in line, line
            done = sender.cli("cancel", str(row["id"]))
            assert done.returncode == 0, done.describe()
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    result = json.loads(out)
    assert (proc.returncode, result["code"]) == (1, "cancelled"), (result, err)
    assert sender.wait_for_counter("msender.failed-cancelled", 1) == 1
    assert json.loads(sender.cli("transfers", "--json").stdout) == []
    for receiver in (first, other):
        stored = [p.name for p in receiver.inbox.glob("*") if not p.name.startswith(".")]
        assert stored == [], stored


@pytest.mark.parametrize("transport", ["pub", "udp"])
@pytest.mark.parametrize("capped", ["at-start", "live"])
def test_node_max_rate_paces_multicast_too(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    blake3_file: Any,
    transport: str,
    capped: str,
) -> None:
    """Over the group the datagrams themselves are paced (docs/multicast.md),
    whether the node started with its cap or was capped live (`max-rate`):
    a session waits for the scheduler's word before publishing (it started
    unpaced on a node capped live: 20 MiB went in 0.09 s under 2 MB/s)."""
    cap = ("--max-rate", str(2 * MiB)) if capped == "at-start" else ()
    sender = node_factory(*cap, *_transport_args(transport))
    if capped == "live":
        set_live = sender.cli("max-rate", str(2 * MiB))
        assert set_live.returncode == 0, set_live.describe()
    receivers = [node_factory() for _ in range(2)]
    path = make_file(5 * MiB)
    first, second = receivers
    code, result = sender.send(
        path, first.host, first.port, "-m", *multicast_targets(second),
        "--chunk-size", str(256 * 1024),
    )  # fmt: skip
    assert code == 0, result
    digest = blake3_file(path)
    for r in receivers:
        assert_stored(r, result, digest)
    # (5 MiB - a 0.2 MiB bucket) at 2 MiB/s is ~2.4 s; unpaced it takes ~0.1 s.
    assert result["seconds"] >= 1.8, result
    lifted = sender.cli("max-rate", "0")
    assert lifted.returncode == 0, lifted.describe()
    # Lifted: 16 MiB would take at least 8 s at the old cap; unpaced it takes a
    # fraction of a second (a margin a loaded machine does not eat).
    bigger = make_file(16 * MiB)
    code, result = sender.send(bigger, first.host, first.port, "-m", *multicast_targets(second))
    assert code == 0, result
    for r in receivers:
        assert_stored(r, result, blake3_file(bigger))
    assert result["seconds"] < 6.0, result


def test_a_stopped_receiver_does_not_hold_back_the_others_and_catches_up(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], blake3_file: Any
) -> None:
    """A receiver frozen with SIGSTOP mid-session (as a receiver too slow to
    ack at all): the other one gets the whole file and verifies while it is
    frozen (the frozen one is lost: it no longer sets the pace); thawed, it
    acks again and is finished by repairs."""
    sender = node_factory("--max-rate", str(16 * MiB))  # a ~4 s session
    fast, frozen = node_factory(), node_factory()
    # Far more chunks than the PUB queue for a subscriber (256, 16 MiB) and
    # the socket buffers hold, however late the freeze lands (the counter it
    # waits for is seen up to a status round trip after the first seal): the
    # frozen one misses some and NAKs them when thawed.
    path = make_file(64 * MiB)
    digest = blake3_file(path)
    with cli_running(
        "send", path, fast.host, str(fast.port), "-m", "--to", f"{frozen.host}:{frozen.port}",
        "--chunk-size", str(64 * 1024), "--timeout", "30", "--json",
        data_dir=sender.data_dir,
    ) as proc:  # fmt: skip
        sender.wait_for_counter("msender.seals-first", 1, timeout=15)
        frozen.send_signal(signal.SIGSTOP)
        try:
            fast.wait_for_counter("mreceiver.received", 1, timeout=30)
            assert sender.wait_for_counter("msender.lost", 1) >= 1
        finally:
            frozen.send_signal(signal.SIGCONT)
        result = json_success(proc, sender)
    assert result["blake3"] == digest
    for r in (fast, frozen):
        assert_stored(r, result, digest)
    assert result["stats"]["seals_first"] == result["stats"]["chunks"] == 1024
    assert result["stats"]["seals_repair"] > 0  # the thawed one was finished by repairs


def test_a_file_rewritten_while_multicast_fails_its_session_within_a_second(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A write into the file a session publishes, its size unchanged: the
    session fails once the node sees it (it looks once a second), not when
    every chunk was read; no receiver stores anything."""
    receiver = node_factory(name="receiver")
    sender = node_factory("--max-rate", str(2 * MiB), name="sender")  # 8 s for the file
    path = make_file(16 * MiB, name="moving.bin")
    proc = start_cli(
        "send", str(path), receiver.host, str(receiver.port), "-m", "--json",
        data_dir=sender.data_dir,
    )  # fmt: skip
    try:
        sender.wait_for_counter("msender.sessions", 1, timeout=30)
        with open(path, "r+b") as fh:
            fh.seek(1000)
            fh.write(b"\0" * 10)
        out, _err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    result = json.loads(out)
    assert not result["ok"] and result["code"] == "local", result
    assert f"{path} changed while sending" in result["error"], result
    counters = sender.counters_when("msender.source-changed", 1)
    assert counters["msender.source-changed"] == 1, counters
    assert not (receiver.inbox / path.name).exists()
