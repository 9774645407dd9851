"""Actors attached across hosts: `peercrypt actor KIND --attach HOST:PORT`.

On loopback (real processes):
- A receiver attached to a node stores what is sent to the node, in its own
  inbox (the node's stays empty), with the sent file's BLAKE3.
- Admission: an identity not on the node's --attach-allow is refused (exit 4,
  one line); so is an actor the node runs itself. Discovery cannot be
  attached at all (it signs with the node's identity key): the node and
  `actor discovery` refuse it, exit 2, one line.
- Supervision: a lost attached sender (killed) fails the send in flight
  cleanly, and while none is attached a send fails at once; an offer to a
  node whose receiver is not attached is answered with an error at once.

In network namespaces (created here):
- A receiver actor on a storage host writes into its own disk for a node
  whose gateway runs on another host; the bulk data goes from the sender to
  the storage host directly (the gateway host sees a small fraction).
- Two nodes on two hosts share one scheduler actor on a third: one
  --max-rate for both, and the QoS priorities 1:2:3 across hosts (each
  flow's share within 10% of its due while all three run, measured from
  byte counts).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from peercrypt import errors
from peercrypt.crypto.identity import (
    load_or_create_identity,
    network_server_keys,
    new_network_key,
)
from peercrypt.history.db import db_path, list_transfers, open_reader
from peercrypt.testing import netns
from peercrypt.testing.nodes import (
    ActorProcess,
    CliResult,
    NodeProcess,
    WaitTimeout,
    assert_stored,
    blake3_file,
    cli_env,
    free_port,
    multicast_targets,
    random_file,
    start_cli,
    wait_until,
)
from peercrypt.wire import codec
from peercrypt.wire.actor_messages import ActorMail, AttachBeat, AttachHello, AttachReply
from peercrypt.wire.messages import SettingRequest

MiB = 1 << 20
PORT = 7400


def stop_all(started: list[Any]) -> None:
    """Stop nodes and actors (SIGTERM, last started first); every exit must
    be 0 unless the test killed it. Idempotent."""
    problems = []
    for proc in reversed(started):
        if isinstance(proc, NodeProcess):
            if proc.proc is not None and not proc.killed:
                code = proc.stop()
                if code != 0:
                    problems.append(f"{proc.data_dir}: exit {code}\n{proc.log_tail()}")
        elif proc.running:
            code = proc.stop()
            if code != 0:
                problems.append(f"{proc.data_dir}: exit {code}\n{proc.log_text()}")
    started.clear()
    assert not problems, "\n".join(problems)


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    """Nodes and actors the test started, stopped at teardown (stop_all)."""
    started: list[Any] = []
    yield started
    stop_all(started)


@contextlib.contextmanager
def stopped_before_exit(started: list[Any]) -> Iterator[None]:
    """Stop the processes before the enclosing block (a network) ends."""
    try:
        yield
    finally:
        stop_all(started)


def remote_node(
    data_dir: Path,
    network_key: str,
    kind: str,
    allowed: str,
    *extra: str,
    host: str = "127.0.0.1",
    netns_name: str | None = None,
) -> NodeProcess:
    return NodeProcess(
        data_dir=data_dir,
        network_key=network_key,
        extra_args=("--remote-actor", kind, "--attach-allow", allowed, "--no-gossip", *extra),
        ready_facts=("port",) if kind == "receiver" else ("port", "data_port"),
        host=host,
        netns=netns_name,
    )


def attached(node: NodeProcess, kind: str, fingerprint: str, timeout: float = 20.0) -> None:
    """Wait until ``node``'s status shows its ``kind`` attached from ``fingerprint``."""
    wait_until(
        lambda: node.status().get(f"remote_{kind}") == f"attached {fingerprint}",
        timeout,
        f"the {kind} actor to attach",
        interval=0.2,
    )


# -- loopback ----------------------------------------------------------------------------


def test_an_attached_receiver_stores_in_its_own_inbox(
    tmp_path: Path,
    network_key: str,
    node_factory: Callable[..., NodeProcess],
    processes: list[Any],
) -> None:
    storage = ActorProcess(tmp_path / "storage", "receiver", [], network_key)
    gateway = remote_node(tmp_path / "gateway", network_key, "receiver", storage.fingerprint())
    processes.append(gateway.start())
    storage.attach = [f"127.0.0.1:{gateway.port}"]
    storage.extra_args = ("--host", "127.0.0.1", "--inbox", str(tmp_path / "disk"))
    processes.append(storage.start())
    attached(gateway, "receiver", storage.fingerprint())
    # The node restarts the receiver's stand-in on purpose: news, not a crash.
    news = f"actor receiver now runs attached from 127.0.0.1 ({storage.fingerprint()}); restarting"
    wait_until(lambda: news in gateway.log_text(), 10, "the attach in the node's log")
    assert "stopped unexpectedly" not in gateway.log_text(), gateway.log_tail()
    sender = node_factory("--no-gossip")
    path = random_file(tmp_path / "f.bin", 5 * MiB + 3)
    code, result = sender.send(path, "127.0.0.1", gateway.port)
    assert code == 0, result
    assert blake3_file(tmp_path / "disk" / result["stored_as"]) == blake3_file(path)
    assert result["blake3"] == blake3_file(path)
    own_inbox = gateway.data_dir / "inbox"  # where the node's own receiver would write
    assert not own_inbox.exists() or not any(own_inbox.iterdir())
    # the node's status shows the attached receiver's facts
    assert gateway.status()["inbox"] == str(tmp_path / "disk")
    # ... and the node's statistics history has what the attached receiver recorded
    history = db_path(gateway.data_dir)

    def recorded() -> list[dict[str, Any]] | None:
        if not history.exists():
            return None
        with open_reader(history) as conn:
            rows = [r for r in list_transfers(conn) if r["result"] == "ok"]
        return rows or None

    (row,) = wait_until(recorded, 10.0, "the receiving record in the node's history")
    assert (row["side"], row["file"], row["size"]) == ("receive", result["stored_as"], 5 * MiB + 3)


def test_an_actor_dials_on_past_a_proxy_of_a_node_that_is_down(
    tmp_path: Path, network_key: str, processes: list[Any]
) -> None:
    """What a proxy in front of a node that is down does (ssh -L, a port
    forward): it accepts each connection and closes it before any
    handshake. The actor says so once and dials on; once the node is up
    behind that port, it attaches (it ended at the first drop, as if its
    network key were wrong)."""
    port = free_port()
    dropped = threading.Event()
    with socket.create_server(("127.0.0.1", port)) as proxy:
        proxy.settimeout(0.1)
        actor = ActorProcess(tmp_path / "actor", "sender", [f"127.0.0.1:{port}"], network_key)
        node = remote_node(
            tmp_path / "node", network_key, "sender", actor.fingerprint(), "--port", str(port)
        )
        processes.append(actor.start())
        deadline = time.monotonic() + 20
        while not dropped.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn, _ = proxy.accept()
                conn.close()
                if "(still trying)" in actor.log_text():
                    dropped.set()
        assert dropped.is_set(), actor.log_text()
    assert actor.proc is not None and actor.proc.poll() is None, actor.log_text()
    processes.append(node.start())  # the node comes up on that very port
    attached(node, "sender", actor.fingerprint(), timeout=30)


def test_an_identity_not_allowed_is_refused(
    tmp_path: Path, network_key: str, processes: list[Any]
) -> None:
    allowed = ActorProcess(tmp_path / "allowed", "sender", [], network_key)
    node = remote_node(tmp_path / "node", network_key, "sender", allowed.fingerprint())
    processes.append(node.start())
    stranger = ActorProcess(
        tmp_path / "stranger", "sender", [f"127.0.0.1:{node.port}"], network_key
    ).start()
    processes.append(stranger)
    assert stranger.proc is not None
    assert stranger.proc.wait(20) == errors.NOT_ADMITTED
    lines = [ln for ln in stranger.log_text().splitlines() if ln.startswith("peercrypt: error")]
    assert lines == [
        f"peercrypt: error: 127.0.0.1:{node.port} refused to attach sender: "
        f"{stranger.fingerprint()} is not on this node's --attach-allow list"
    ]
    # One line for the refusal: not also the link's timestamped log line.
    assert "peercrypt.link" not in stranger.log_text(), stranger.log_text()
    assert node.wait_for_counter("attach.attach-refused-not-allowed", 1) >= 1
    # A wrong network key: the node drops the handshake, and the hellos went
    # unanswered for ever in silence. It is said once, and the actor dials
    # on: ZeroMQ sees a proxy in front of a node that is down drop it the
    # same way (below), and such a node may come up.
    wrong = ActorProcess(
        tmp_path / "allowed", "sender", [f"127.0.0.1:{node.port}"], new_network_key()
    ).start()
    processes.append(wrong)
    said = (
        f"handshake with 127.0.0.1:{node.port} failed: wrong network key, "
        "or not a PeerCrypt node (still trying)"
    )
    wait_until(lambda: said in wrong.log_text() or None, 20, "the failed handshake told")
    assert wrong.proc is not None and wrong.proc.poll() is None, wrong.log_text()
    assert wrong.log_text().count(said) == 1, wrong.log_text()
    # an actor the node runs itself cannot be attached either
    own = ActorProcess(
        tmp_path / "allowed", "scheduler", [f"127.0.0.1:{node.port}"], network_key
    ).start()
    processes.append(own)
    assert own.proc is not None and own.proc.wait(20) == errors.NOT_ADMITTED
    assert "this node runs its own 'scheduler' actor" in own.log_text()
    assert "Traceback" not in own.log_text() + stranger.log_text()


DISCOVERY_IN_NODE = (
    "discovery must run in the node: it signs the node's membership record "
    "with the node's identity key, which never leaves the node"
)


def test_discovery_cannot_be_attached(
    tmp_path: Path, network_key: str, processes: list[Any]
) -> None:
    """An attached discovery would gossip the node's address under its own
    process's identity (and signature): members would hold a record whose
    key is not the node's. So a node refuses `--remote-actor discovery`, and
    `actor discovery` refuses to run: one line each, exit 2, before anything
    is bound or attached."""
    actor = ActorProcess(tmp_path / "actor", "discovery", [], network_key)
    node_cli = start_cli(
        "node", "--port", "0", "--host", "127.0.0.1", "--remote-actor", "discovery",
        "--attach-allow", actor.fingerprint(),
        data_dir=tmp_path / "refused", env={"PEERCRYPT_NETWORK_KEY": network_key},
    )  # fmt: skip
    try:
        out, err = node_cli.communicate(timeout=30)  # loose: a loaded machine's start
    finally:
        if node_cli.poll() is None:
            node_cli.kill()
            node_cli.communicate(timeout=10)
    assert (node_cli.returncode, out, err.splitlines()) == (
        errors.USAGE,
        "",
        [f"peercrypt: error: --remote-actor discovery: {DISCOVERY_IN_NODE}"],
    )
    # A node that runs its own discovery (and lets health be attached): the
    # discovery actor is refused before it tries to attach, not by the node.
    node = remote_node(tmp_path / "node", network_key, "health", actor.fingerprint())
    processes.append(node.start())
    actor = ActorProcess(tmp_path / "actor", "discovery", [f"127.0.0.1:{node.port}"], network_key)
    processes.append(actor.start())
    assert actor.proc is not None and actor.proc.wait(30) == errors.USAGE
    assert [ln for ln in actor.log_text().splitlines() if not ln.startswith("peercrypt actor")] == [
        f"peercrypt: error: actor discovery: {DISCOVERY_IN_NODE}"
    ]
    assert not [name for name in node.counters() if name.startswith("attach.")]


def test_a_lost_attached_sender_fails_its_transfer_cleanly(
    tmp_path: Path,
    network_key: str,
    node_factory: Callable[..., NodeProcess],
    processes: list[Any],
) -> None:
    receiver = node_factory("--no-gossip")
    actor = ActorProcess(tmp_path / "sender-actor", "sender", [], network_key)
    node = remote_node(tmp_path / "node", network_key, "sender", actor.fingerprint())
    processes.append(node.start())
    path = random_file(tmp_path / "slow.bin", 16 * MiB)
    # Nothing attached: the send fails at once, naming why.
    code, result = node.send(path, "127.0.0.1", receiver.port, "--timeout", "5")
    assert code != 0 and "no sender actor is attached" in str(result.get("error")), result
    actor.attach = [f"127.0.0.1:{node.port}"]
    processes.append(actor.start())
    attached(node, "sender", actor.fingerprint())
    send = start_cli(
        "send", path, "127.0.0.1", str(receiver.port), "--json", "-r", str(2 * MiB),
        data_dir=node.data_dir, env={"PEERCRYPT_NETWORK_KEY": network_key},
    )  # fmt: skip
    try:
        _wait_sending(node, send, actor)
        killed_at = time.monotonic()
        assert actor.proc is not None
        actor.proc.kill()  # the attached process dies without a word
        actor.proc.wait(10)
        out, err = send.communicate(timeout=30)
    finally:
        if send.poll() is None:
            send.kill()
            send.wait(10)
    assert send.returncode == errors.FAILED, (out, err)
    assert time.monotonic() - killed_at < 15
    result = json.loads(out)
    assert result["ok"] is False and "the sender crashed; try again" in result["error"]
    assert node.wait_for_counter("attach.link-lost", 1) == 1  # reported within 0.5 s
    assert node.status()["remote_sender"] == "lost"
    # The loss is the warning; the stand-in's restart that follows is news.
    news = "actor sender lost its attachment from 127.0.0.1 (silent for 3 s); restarting"
    wait_until(lambda: news in node.log_text(), 10, "the stand-in's restart in the node's log")
    log = node.log_text()
    assert f"attach: lost the sender actor attached from {actor.fingerprint()}" in log, log
    assert "stopped unexpectedly" not in log, log
    assert not any(p.name == "slow.bin" for p in receiver.inbox.glob("*"))


def test_transfers_answers_while_the_attached_sender_is_away(
    tmp_path: Path,
    network_key: str,
    node_factory: Callable[..., NodeProcess],
    processes: list[Any],
) -> None:
    """`transfers` on a node whose sender is attached from elsewhere and not
    there answers with what the node knows and one warning line naming the
    sender (it waited for the command's timeout and said the node did not
    answer); once the sender is attached, its sends are listed, no warning."""
    receiver = node_factory("--no-gossip")
    actor = ActorProcess(tmp_path / "sender-actor", "sender", [], network_key)
    node = remote_node(tmp_path / "node", network_key, "sender", actor.fingerprint())
    processes.append(node.start())
    away = node.cli("transfers", "--json")
    assert away.returncode == 0 and json.loads(away.stdout) == [], away.describe()
    assert away.stderr_lines == [
        "peercrypt: warning: the node's sender actor did not answer (attached from "
        "elsewhere and away?): its sends are not listed"
    ], away.describe()
    assert node.wait_for_counter("control.transfers-unanswered", 1) == 1
    actor.attach = [f"127.0.0.1:{node.port}"]
    processes.append(actor.start())
    attached(node, "sender", actor.fingerprint())
    path = random_file(tmp_path / "slow.bin", 16 * MiB)
    send = start_cli(
        "send", path, "127.0.0.1", str(receiver.port), "--json", "-r", str(2 * MiB),
        data_dir=node.data_dir, env={"PEERCRYPT_NETWORK_KEY": network_key},
    )  # fmt: skip
    try:

        def listed() -> CliResult | None:
            result = node.cli("transfers", "--json")
            rows = json.loads(result.stdout or "[]")
            return result if [r["file"] for r in rows] == [str(path)] else None

        there = wait_until(listed, 20, "the attached sender's send listed", interval=0.2)
        assert there.returncode == 0 and there.stderr_lines == [], there.describe()
    finally:
        send.kill()
        send.wait(10)


def test_an_attached_sender_takes_the_nodes_sending_settings(
    tmp_path: Path,
    network_key: str,
    node_factory: Callable[..., NodeProcess],
    processes: list[Any],
) -> None:
    """`peercrypt actor sender --attach ... --max-outgoing 1` (the node's
    option): of two sends asked of it at once, one runs and the other waits
    in line (`transfers` lists it "waiting"), as a node's sender with
    --max-outgoing 1 does (with the default, 16, both run); both then land,
    by hash."""
    receiver = node_factory("--no-gossip")
    actor = ActorProcess(tmp_path / "sender-actor", "sender", [], network_key)
    node = remote_node(tmp_path / "node", network_key, "sender", actor.fingerprint())
    processes.append(node.start())
    actor.attach = [f"127.0.0.1:{node.port}"]
    actor.extra_args = ("--max-outgoing", "1")
    processes.append(actor.start())
    attached(node, "sender", actor.fingerprint())
    # 8 s each paced: the second CLI start (slow on a loaded machine) comes
    # while the first still runs, so both are listed at one moment.
    paths = [random_file(tmp_path / f"paced{n}.bin", 8 * MiB) for n in range(2)]
    env = {"PEERCRYPT_NETWORK_KEY": network_key}
    argv = ("127.0.0.1", str(receiver.port), "--json", "-r", str(MiB))
    sends = [start_cli("send", path, *argv, data_dir=node.data_dir, env=env) for path in paths]
    try:

        def both_listed() -> list[str] | None:
            """Both sends' states once both reached the sender (the node's
            control lists a send it still places, its check, as 'checking')."""
            rows = json.loads(node.cli("transfers", "--json").stdout or "[]")
            states = sorted(r["state"] for r in rows)
            return states if len(rows) == 2 and "checking" not in states else None

        states = wait_until(both_listed, 30, "both sends listed", interval=0.1)
        assert states.count("waiting") == 1, states
        stored = []
        for send in sends:
            out, _ = send.communicate(timeout=120)  # loose: 8 s each paced, a loaded machine
            result = json.loads(out)
            assert send.returncode == 0, result
            stored.append(blake3_file(receiver.inbox / result["stored_as"]))
        assert stored == [blake3_file(p) for p in paths]
    finally:
        for send in sends:
            send.kill()
            send.wait(10)


def _across_a_new_scheduler(
    tmp_path: Path,
    network_key: str,
    processes: list[Any],
    receiver: NodeProcess,
    node_args: tuple[str, ...],
    send_args: tuple[str, ...],
    running: Callable[[NodeProcess], object],
) -> tuple[NodeProcess, dict[str, Any], Path, tuple[Counter[str], int]]:
    """A node (``node_args``) whose scheduler is attached (--max-rate
    2 MiB/s) sends 8 MiB to ``receiver`` (``send_args``; not started yet: it
    starts meanwhile, the three process starts are most of the test's time);
    once ``running(node)`` holds, that scheduler is killed and, once the node
    saw it lost, a new one attaches. The node, the send's result (it must
    have succeeded), the file, and the node's threads and sockets before the send."""
    starter = concurrent.futures.ThreadPoolExecutor(1)
    receiving = starter.submit(receiver.start)
    starter.shutdown(wait=False)  # (the start runs on; its thread then ends)
    first = ActorProcess(tmp_path / "sched", "scheduler", [], network_key)
    node = remote_node(tmp_path / "node", network_key, "scheduler", first.fingerprint(), *node_args)
    processes.append(node.start())
    first.attach = [f"127.0.0.1:{node.port}"]
    first.extra_args = ("--max-rate", str(2 * MiB))
    processes.append(first.start())
    attached(node, "scheduler", first.fingerprint())
    before = _threads_and_sockets(node)
    path = random_file(tmp_path / "paced.bin", 8 * MiB)
    receiving.result(timeout=120)  # (raises what its start raised)
    send = start_cli(
        "send", path, "127.0.0.1", str(receiver.port), *send_args, "--json", "--timeout", "60",
        data_dir=node.data_dir, env={"PEERCRYPT_NETWORK_KEY": network_key},
    )  # fmt: skip
    try:
        running(node)
        assert first.proc is not None
        first.proc.kill()
        first.proc.wait(10)
        wait_until(lambda: node.status().get("remote_scheduler") == "lost", 20, "the loss")
        second = ActorProcess(
            tmp_path / "sched", "scheduler", first.attach, network_key,
            extra_args=first.extra_args,
        ).start()  # fmt: skip
        processes.append(second)
        out, err = send.communicate(timeout=90)
    finally:
        if send.poll() is None:
            send.kill()
            send.wait(10)
    result = json.loads(out)
    assert send.returncode == 0 and result["ok"], (result, err)
    return node, result, path, before


def test_a_send_goes_on_when_its_lost_scheduler_comes_back(
    tmp_path: Path,
    network_key: str,
    node_factory: Callable[..., NodeProcess],
    processes: list[Any],
) -> None:
    """A paced send (the attached scheduler's --max-rate) stalls while its
    scheduler is gone; a new scheduler process attaches, the sender announces
    the flow again, and the send completes with the right hash."""
    receiver = node_factory("--no-gossip", start=False)
    _, result, path, _ = _across_a_new_scheduler(
        tmp_path, network_key, processes, receiver, (), (),
        lambda node: wait_until(lambda: _sending(node), 20, "the send to run", interval=0.2),
    )  # fmt: skip
    assert blake3_file(receiver.inbox / result["stored_as"]) == blake3_file(path)


def _threads_and_sockets(node: NodeProcess) -> tuple[Counter[str], int]:
    """The node process's threads (by name: the main thread's for Python
    threads not named natively), and how many of its descriptors are sockets."""
    assert node.proc is not None
    proc = Path(f"/proc/{node.proc.pid}")
    threads: Counter[str] = Counter()
    sockets = 0
    for task in (proc / "task").iterdir():
        with contextlib.suppress(OSError):  # ended meanwhile
            threads[(task / "comm").read_text().strip()] += 1
    for fd in (proc / "fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            sockets += os.readlink(fd).startswith("socket:")
    return threads, sockets


def test_a_multicast_session_goes_on_when_its_lost_scheduler_comes_back(
    tmp_path: Path,
    network_key: str,
    node_factory: Callable[..., NodeProcess],
    processes: list[Any],
) -> None:
    """The same for a multicast session over a UDP group (its own sending
    thread and socket): paced by the attached scheduler's --max-rate from
    its first byte, it stalls while the scheduler is gone; the new one is
    told the session's flow again, the session completes, and its sending
    thread and sockets are closed (the node has no more sockets than before
    it). Before, the msender never told the new scheduler: the session
    waited for grants until its --timeout (here 60 s), holding them; and it
    started unpaced, as if the attached scheduler had no cap."""
    receiver = node_factory("--no-gossip", start=False)
    group = f"239.255.{random.randrange(1, 255)}.{random.randrange(1, 255)}:{free_port()}"

    def publishing(node: NodeProcess) -> None:
        node.wait_for_counter("msender.joins", 1)
        wait_until(
            lambda: _threads_and_sockets(node)[0]["pc-datagrams"] or None,
            20,
            "the session's sending thread",
        )

    node, result, path, before = _across_a_new_scheduler(
        tmp_path, network_key, processes, receiver,
        ("--multicast-group", group, "--multicast-ttl", "0"), ("-m",), publishing,
    )  # fmt: skip
    (row,) = result["receivers"]
    assert blake3_file(receiver.inbox / row["stored_as"]) == blake3_file(path)

    def released() -> bool:  # (pyzmq's own garbage collector thread may have started)
        threads, sockets = _threads_and_sockets(node)
        return not threads["pc-datagrams"] and sockets <= before[1]

    wait_until(released, 20, f"the session's sending thread and sockets closed ({before[1]})")


def test_an_offer_to_a_node_without_its_receiver_is_answered(
    tmp_path: Path,
    network_key: str,
    node_factory: Callable[..., NodeProcess],
    processes: list[Any],
) -> None:
    node = remote_node(tmp_path / "node", network_key, "receiver", "a" * 32)
    processes.append(node.start())
    sender = node_factory("--no-gossip")
    started = time.monotonic()
    code, result = sender.send(random_file(tmp_path / "f.bin", MiB), "127.0.0.1", node.port)
    assert code == errors.REFUSED, result
    assert "this node's receiver is not attached" in result["error"]
    assert time.monotonic() - started < 8  # an answer, not the 10 s timeout


def test_one_scheduler_for_two_nodes_keeps_their_requests_apart(
    tmp_path: Path,
    network_key: str,
    node_factory: Callable[..., NodeProcess],
    processes: list[Any],
) -> None:
    """Two fresh nodes both number their first send 1; the shared scheduler
    (--max-rate 4 MiB/s) must still see two flows: 16 MiB in all take >= 4 s
    (were they one flow, each would get the whole cap, done in 2 s)."""
    cap, size = 4 * MiB, 8 * MiB
    receiver = node_factory("--no-gossip")
    sched = ActorProcess(tmp_path / "sched", "scheduler", [], network_key)
    nodes = [
        remote_node(tmp_path / name, network_key, "scheduler", sched.fingerprint())
        for name in ("a", "b")
    ]
    for node in nodes:
        processes.append(node.start())
    sched.attach = [f"127.0.0.1:{node.port}" for node in nodes]
    sched.extra_args = ("--max-rate", str(cap))
    processes.append(sched.start())
    for node in nodes:
        attached(node, "scheduler", sched.fingerprint())
    paths = [random_file(tmp_path / f"{i}.bin", size) for i in range(2)]
    started = time.monotonic()
    sends = [
        start_cli(
            "send",
            path,
            "127.0.0.1",
            str(receiver.port),
            "--json",
            "--mode",
            "qos",
            data_dir=node.data_dir,
            env={"PEERCRYPT_NETWORK_KEY": network_key},
        )
        for node, path in zip(nodes, paths, strict=True)
    ]
    try:
        outputs = [send.communicate(timeout=60)[0] for send in sends]
    finally:
        for send in sends:
            if send.poll() is None:
                send.kill()
                send.wait(10)
    elapsed = time.monotonic() - started
    for out, path in zip(outputs, paths, strict=True):
        result = json.loads(out)
        assert result["ok"] and result["blake3"] == blake3_file(path), result
    assert elapsed >= 0.85 * 2 * size / cap, elapsed


def test_a_member_cannot_pose_as_an_attached_actor(
    tmp_path: Path,
    network_key: str,
    node_factory: Callable[..., NodeProcess],
    processes: list[Any],
) -> None:
    """A member with the network key and a fresh identity talks to the node's
    port directly: its actor mail, beats and hellos for a name the node runs
    itself are dropped and counted; the real attached receiver is untouched
    and a transfer through it still verifies."""
    storage = ActorProcess(tmp_path / "storage", "receiver", [], network_key)
    node = remote_node(tmp_path / "node", network_key, "receiver", storage.fingerprint())
    processes.append(node.start())
    storage.attach = [f"127.0.0.1:{node.port}"]
    storage.extra_args = ("--host", "127.0.0.1", "--inbox", str(tmp_path / "disk"))
    processes.append(storage.start())
    attached(node, "receiver", storage.fingerprint())

    me = load_or_create_identity(tmp_path / "hostile")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.curve_serverkey = network_server_keys(network_key).z85_public
    sock.curve_publickey, sock.curve_secretkey = me.z85_public, me.z85_secret
    sock.connect(f"tcp://127.0.0.1:{node.port}")
    try:
        stop = codec.encode(SettingRequest(request=1, name="max-rate", value="1000"))
        for msg in (
            ActorMail(dest="scheduler", payload=stop),  # not attached: dropped
            AttachBeat(actor="receiver", seq=1),  # not its link: dropped
            AttachHello(actor="control"),  # not a remote actor: refused
            AttachHello(actor="receiver"),  # not on --attach-allow: refused
        ):
            sock.send(codec.encode(msg))
        replies = []
        for _ in range(2):
            assert sock.poll(10_000), "the node did not answer the hellos"
            replies.append(codec.decode(sock.recv()))
    finally:
        sock.close(linger=0)
        ctx.term()
    assert sorted(r.code for r in replies if isinstance(r, AttachReply)) == [
        "not-allowed",
        "not-remote",
    ]
    counters = node.wait_for_counter("attach.link-unknown", 2)
    assert counters == 2
    assert node.status()["remote_receiver"] == f"attached {storage.fingerprint()}"
    assert node.status()["max_rate"] == "0"  # the forged setting never arrived
    sender = node_factory("--no-gossip")
    path = random_file(tmp_path / "after.bin", 2 * MiB)
    code, result = sender.send(path, "127.0.0.1", node.port)
    assert code == 0, result
    assert blake3_file(tmp_path / "disk" / result["stored_as"]) == blake3_file(path)


def test_a_send_cancelled_while_it_is_placed_never_runs(
    tmp_path: Path,
    network_key: str,
    node_factory: Callable[..., NodeProcess],
    processes: list[Any],
) -> None:
    """Control holds a send while health says whom members' records place
    at its addresses; with the node's health attached from elsewhere and
    not there yet, it holds it until one attaches (then places it again).
    A multicast and a unicast send, listed as `checking` by `transfers`, are
    cancelled there by their ids (`peercrypt cancel ID`): each ends
    cancelled (exit 1), neither runs when health comes, while a send made
    after it does (nothing but its file under a final name at the
    receivers)."""
    health = ActorProcess(tmp_path / "health", "health", [], network_key)
    node = remote_node(tmp_path / "node", network_key, "health", health.fingerprint())
    processes.append(node.start())
    first, other = node_factory("--no-gossip"), node_factory("--no-gossip")
    env = {"PEERCRYPT_NETWORK_KEY": network_key}
    to_both = (first.host, str(first.port), "-m", *multicast_targets(other))
    multi, uni = random_file(tmp_path / "multi.bin", MiB), random_file(tmp_path / "uni.bin", MiB)
    sends = {
        str(multi): start_cli(
            "send", multi, *to_both, "--json", "--timeout", "30",
            data_dir=node.data_dir, env=env,
        ),
        str(uni): start_cli(
            "send", uni, first.host, str(first.port), "--json", "--timeout", "30",
            data_dir=node.data_dir, env=env,
        ),
    }  # fmt: skip
    try:

        def placing() -> dict[str, str] | None:
            rows = json.loads(node.cli("transfers", "--json").stdout or "[]")
            held = {r["file"]: str(r["id"]) for r in rows if r["state"] == "checking"}
            return held if set(held) == set(sends) else None

        ids = wait_until(placing, 30, "both sends listed as checking", interval=0.2)
        for ident in ids.values():
            cancel = node.cli("cancel", ident)
            assert cancel.returncode == 0, cancel.describe()
        # Health comes: control places what it still holds (a send the
        # cancel missed would now run, and end "ok").
        health.attach = [f"127.0.0.1:{node.port}"]
        processes.append(health.start())
        attached(node, "health", health.fingerprint())
        results = {}
        for path, send in sends.items():
            out, err = send.communicate(timeout=60)
            results[path] = (send.returncode, json.loads(out), err)
    finally:
        for send in sends.values():
            if send.poll() is None:
                send.kill()
                send.wait(10)
    ended = {Path(f).name: (code, r["code"], r["error"]) for f, (code, r, _) in results.items()}
    cancelled = (errors.FAILED, "cancelled", "cancelled by the user")
    assert ended == {"multi.bin": cancelled, "uni.bin": cancelled}, results
    assert json.loads(node.cli("transfers", "--json").stdout or "[]") == []
    after = random_file(tmp_path / "after.bin", MiB)
    code, result = node.send(after, *to_both)  # placed now that health is there
    assert code == 0, result
    for receiver in (first, other):
        assert_stored(receiver, result, blake3_file(after))
        stored = sorted(p.name for p in receiver.inbox.iterdir() if not p.name.startswith("."))
        assert stored == ["after.bin"], stored
    counters = node.counters_when("msender.sessions", 1)
    assert counters.get("msender.sessions") == 1, counters  # the one above only
    # The unicast one never ran either: a unicast send now, the sender's
    # report that counts it has every send it ever ended.
    last = random_file(tmp_path / "last.bin", 64 * 1024)
    code, result = node.send(last, first.host, str(first.port))
    assert code == 0, result
    counters = node.counters_when("sender.sent", 1)
    ran = [k for k in counters if k == "sender.sent" or k.startswith("sender.failed-")]
    assert ran == ["sender.sent"] and counters["sender.sent"] == 1, counters


def _sending(node: NodeProcess) -> bool:
    rows = json.loads(node.cli("transfers", "--json").stdout or "[]")
    return any(row["state"] == "sending" and int(row["bytes"]) > 0 for row in rows)


def _wait_sending(node: NodeProcess, send: subprocess.Popen[str], *actors: ActorProcess) -> None:
    """Wait until ``node`` lists the send of the CLI process ``send`` as
    sending with bytes sent; if the send ends first, or the wait times out,
    fail with what it printed and the logs of the node and ``actors``."""

    def ended_or_sending() -> str | None:
        if send.poll() is not None:
            return "ended"
        return "sending" if _sending(node) else None

    try:
        state = wait_until(ended_or_sending, 20, "the send to run", interval=0.2)
    except WaitTimeout:
        state = "not sending after 20 s"
    if state == "sending":
        return
    if send.poll() is None:
        send.kill()
    out, err = send.communicate(timeout=10)
    logs = "\n".join(f"--- {a.kind}:\n{a.log_text()[-4000:]}" for a in actors)
    pytest.fail(
        f"the send {state} (exit {send.returncode}): {out!r} {err!r}\n"
        f"--- node:\n{node.log_text()[-4000:]}\n{logs}"
    )


# -- namespaces ----------------------------------------------------------------------------

needs_netns = pytest.mark.skipif(
    not netns.available(), reason=f"network namespaces unavailable: {netns.unavailable_reason()}"
)


def _rx_bytes(host: netns.Host) -> int:
    out = host.run(["ip", "-j", "-s", "link", "show", host.iface], timeout=10, check=True)
    return int(json.loads(out.stdout)[0]["stats64"]["rx"]["bytes"])


@needs_netns
@pytest.mark.timeout(180)
def test_a_storage_host_receives_for_a_gateway_elsewhere(
    tmp_path: Path, network_key: str, processes: list[Any]
) -> None:
    size = 24 * MiB
    with netns.TestNetwork(groups=1, prefix="pcatt") as net, stopped_before_exit(processes):
        g, s, x = net.add_host("gateway"), net.add_host("storage"), net.add_host("sender")
        storage = ActorProcess(tmp_path / "storage", "receiver", [f"{g.ip}:{PORT}"], network_key)
        storage.netns = s.ns
        storage.extra_args = ("--host", s.ip, "--inbox", str(tmp_path / "disk"))
        gateway = remote_node(
            tmp_path / "gateway", network_key, "receiver", storage.fingerprint(),
            "--port", str(PORT), host=g.ip, netns_name=g.ns,
        )  # fmt: skip
        sender = NodeProcess(
            tmp_path / "sender", network_key, extra_args=("--no-gossip",), host=x.ip, netns=x.ns
        )
        processes.extend([gateway.start(), storage.start(), sender.start()])
        attached(gateway, "receiver", storage.fingerprint(), timeout=30)
        path = random_file(tmp_path / "big.bin", size)
        before = _rx_bytes(g)
        code, result = sender.send(path, g.ip, PORT, "--timeout", "30")
        through_gateway = _rx_bytes(g) - before
        assert code == 0, result
        assert blake3_file(tmp_path / "disk" / result["stored_as"]) == blake3_file(path)
        assert gateway.status()["inbox"] == str(tmp_path / "disk")
        # the chunks went from the sender to the storage host, not through the gateway
        assert through_gateway < size / 10, through_gateway


@needs_netns
@pytest.mark.timeout(240)
def test_two_nodes_share_one_scheduler_on_a_third_host(
    tmp_path: Path, network_key: str, processes: list[Any]
) -> None:
    """Nodes on hosts a and b send through one scheduler actor on host c
    (--max-rate 24 MiB/s for all): a runs a normal (1) and a highest (3)
    priority qos flow, b a high (2) one, all to a receiver on host r."""
    rate = 8 * MiB
    size = 96 * MiB  # the highest priority's 4 MiB/s lasts 24 s; the window is 6 s
    with netns.TestNetwork(groups=1, prefix="pcqos") as net, stopped_before_exit(processes):
        a, b, c, r = (net.add_host(n) for n in ("a", "b", "c", "r"))
        sched = ActorProcess(
            tmp_path / "sched", "scheduler", [f"{a.ip}:{PORT}", f"{b.ip}:{PORT}"], network_key,
            extra_args=("--max-rate", str(rate)), netns=c.ns,
        )  # fmt: skip
        fp = sched.fingerprint()
        node_a = remote_node(
            tmp_path / "a", network_key, "scheduler", fp, "--port", str(PORT),
            host=a.ip, netns_name=a.ns,
        )  # fmt: skip
        node_b = remote_node(
            tmp_path / "b", network_key, "scheduler", fp, "--port", str(PORT),
            host=b.ip, netns_name=b.ns,
        )  # fmt: skip
        receiver = NodeProcess(
            tmp_path / "r", network_key, extra_args=("--no-gossip",), host=r.ip, netns=r.ns
        )
        processes.extend([node_a.start(), node_b.start(), receiver.start(), sched.start()])
        attached(node_a, "scheduler", fp, timeout=30)
        attached(node_b, "scheduler", fp, timeout=30)
        for node in (node_a, node_b):  # the scheduler's facts come after the attach's
            wait_until(
                lambda node=node: node.status().get("max_rate") == str(rate),
                30,
                "the attached scheduler's cap in the node's status",
            )
        files = {p: random_file(tmp_path / f"{p}.bin", size) for p in ("normal", "high", "highest")}
        origin = {"normal": node_a, "highest": node_a, "high": node_b}
        sends = {
            prio: subprocess.Popen(
                [*origin[prio].argv[:4], *_cli(origin[prio]), "send", str(files[prio]),
                 r.ip, str(receiver.port), "--json", "--mode", "qos", "-p", prio,
                 "--chunk-size", str(256 * 1024), "--timeout", "60"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=cli_env({"PEERCRYPT_NETWORK_KEY": network_key}),
            )
            for prio in ("normal", "high", "highest")
        }  # fmt: skip
        try:
            wait_until(
                lambda: all(_bytes_by_file(n, files) for n in (node_a, node_b)),
                30,
                "all three flows to be sending",
                interval=0.2,
            )
            first = _sample(node_a, node_b, files)
            time.sleep(6.0)  # the measuring window (timing is what is measured here)
            second = _sample(node_a, node_b, files)
            rates = {
                prio: (second[prio][1] - first[prio][1]) / (second[prio][0] - first[prio][0])
                for prio in files
            }
        finally:
            for proc in sends.values():
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=30)
        total = sum(rates.values())
        print("rates MiB/s:", {k: round(v / MiB, 2) for k, v in rates.items()})
        assert 0.8 * rate <= total <= 1.1 * rate, rates  # one cap for both hosts
        for prio, weight in (("normal", 1), ("high", 2), ("highest", 3)):
            share = rates[prio] / total
            assert abs(share - weight / 6) <= 0.1 * weight / 6, (prio, share, rates)


def _cli(node: NodeProcess) -> list[str]:
    return [sys.executable, "-m", "peercrypt", "--data-dir", str(node.data_dir)]


def _bytes_by_file(node: NodeProcess, files: dict[str, Path]) -> dict[str, tuple[float, int]]:
    """(seconds running, bytes acked) of each of ``files`` that ``node`` is
    sending, as its own `transfers` listing says ({} unless all have bytes)."""
    rows = json.loads(node.cli("transfers", "--json").stdout or "[]")
    by_path = {str(p): prio for prio, p in files.items()}
    found = {
        by_path[row["file"]]: (float(row["seconds"]), int(row["bytes"]))
        for row in rows
        if row["file"] in by_path and row["state"] == "sending"
    }
    return found if found and all(v[1] > 0 for v in found.values()) else {}


def _sample(
    node_a: NodeProcess, node_b: NodeProcess, files: dict[str, Path]
) -> dict[str, tuple[float, int]]:
    """(seconds, bytes acked) per flow, from its node's listing (the node's
    own clock, so the CLI's start-up time does not blur the rates)."""
    out: dict[str, tuple[float, int]] = {}
    for node in (node_a, node_b):
        out.update(_bytes_by_file(node, files))
    assert set(out) == set(files), out
    return out
