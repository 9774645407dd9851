"""Nodes of different protocol versions (docs/security.md, "Protocol
versions"): every message carries the version; a node meeting another one
answers in that version's envelope with an ``error`` that names both, and
the node that asked ends its send, check or join with one line naming both
(code ``protocol``). Real nodes, and crafted peers that speak another
version on the network's key with a fresh identity."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from peercrypt.client import AnotherRelease, ControlClient
from peercrypt.crypto.identity import (
    KeyPair,
    fingerprint,
    load_or_create_identity,
    network_server_keys,
)
from peercrypt.testing.fake_control import FakeControl
from peercrypt.testing.member_port import MemberPort
from peercrypt.testing.nodes import LOCALHOST, NodeProcess, start_cli, wait_until
from peercrypt.wire import codec
from peercrypt.wire.local_messages import Progress, StatusRequest

WAIT = 10.0  # s; every wait below is bounded
OURS = codec.VERSION


def _envelope(version: Any, type_name: str, fields: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb([version, type_name, fields], use_bin_type=True)
    return data


class _Member:
    """A member of the network (its key, a fresh identity) with a DEALER to a node."""

    def __init__(self, node: NodeProcess, network_key: str) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        me = KeyPair.generate()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.curve_serverkey = network_server_keys(network_key).z85_public
        self.sock.curve_publickey, self.sock.curve_secretkey = me.z85_public, me.z85_secret
        self.sock.connect(f"tcp://{node.host}:{node.port}")

    def ask(self, frame: bytes) -> list[Any]:
        """Send ``frame``; the reply's envelope as msgpack reads it (any version)."""
        self.sock.send(frame)
        assert self.sock.poll(int(WAIT * 1000)), "no reply within the timeout"
        reply: list[Any] = msgpack.unpackb(self.sock.recv(), raw=False)
        return reply

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def test_a_node_answers_a_peer_of_another_version_in_that_versions_envelope(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """What an older node sends first (a hello, in protocol 1) and whatever a
    newer one sends (an offer in protocol 3) get an ``error`` in their own
    envelope, which their codec reads, naming both versions; the node logs
    one line per peer and version, and a version no node speaks (not an
    int, out of range) is dropped as malformed, in the node's own envelope.
    Nothing of it stops the node."""
    node = node_factory()
    member = _Member(node, network_key)
    try:
        hello = {"challenge": os.urandom(32)}
        for _ in range(3):  # an old node asks again: one line in the log
            version, type_name, fields = member.ask(_envelope(1, "hello", hello))
            assert (version, type_name, fields["code"]) == (1, "error", f"protocol-{OURS}")
            assert fields["reason"].startswith(f"this node speaks protocol {OURS}, yours 1:")
        offer = {"tid": os.urandom(16), "eph_pub": os.urandom(32), "details": os.urandom(64)}
        version, type_name, fields = member.ask(_envelope(OURS + 1, "offer", offer))
        assert (version, type_name, fields["code"]) == (OURS + 1, "error", f"protocol-{OURS}")
        assert f"yours {OURS + 1}:" in fields["reason"]
        for bad in ("2", -1, 0, 2**40, None, 1.0):
            reply = member.ask(_envelope(bad, "hello", hello))
            assert reply[:2] == [OURS, "error"] and reply[2]["code"] == "version", (bad, reply)
        assert node.wait_for_counter("gateway.rejected-version", 10) == 10  # and the 6 above
        assert node.status()  # the gateway answers on
        wanted = f"speaks protocol 1, this node {OURS}"
        wait_until(lambda: wanted in node.log_text(), WAIT, "the line in the node's log")
        assert node.log_text().count(wanted) == 1, node.log_tail()
        assert f"speaks protocol {OURS + 1}, this node {OURS}" in node.log_text()
    finally:
        member.close()


@pytest.fixture
def other_version(network_key: str) -> Iterator[Callable[[list[Any]], int]]:
    """``other_version(reply) -> port``: a crafted peer on the network's key
    answering every message with the envelope ``reply`` (stopped at the end)."""
    ports: list[MemberPort] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(port: MemberPort, frame: bytes) -> None:
        while not stop.is_set():
            if port.router in port.poll(50):
                route = port.router.recv_multipart()[0]
                port.router.send_multipart([route, frame])

    def start(reply: list[Any]) -> int:
        port = MemberPort(network_key)
        ports.append(port)
        frame = msgpack.packb(reply, use_bin_type=True)
        thread = threading.Thread(target=serve, args=(port, frame), daemon=True)
        thread.start()
        threads.append(thread)
        return port.port

    yield start
    stop.set()
    for thread in threads:
        thread.join(WAIT)
    for port in ports:
        port.close()


def test_a_send_and_a_check_to_a_node_of_another_version_fail_naming_both(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    other_version: Callable[[list[Any]], int],
) -> None:
    """An older node answers a newer one's hello in its own envelope (its
    gateway refuses the version); a newer node, by the rule, in ours with
    its version in the code: either way the send and the health check end
    at once with one line naming both versions (code ``protocol``), and
    nothing is offered."""
    node = node_factory()
    path = make_file(4096)
    older = other_version([1, "error", {"code": "version", "reason": "rejected: version"}])
    newer = other_version(
        [OURS, "error", {"code": f"protocol-{OURS + 1}", "reason": "another release"}]
    )
    for port, theirs in ((older, 1), (newer, OURS + 1)):
        wanted = (
            f"{LOCALHOST}:{port} speaks protocol {theirs}, this node {OURS}: "
            "nodes interoperate only on the same protocol version"
        )
        sent = node.send_result(path, LOCALHOST, port, "--timeout", "30")
        assert sent.returncode != 0, sent.describe()
        assert sent.json["code"] == "protocol", sent.describe()
        assert sent.json["error"].startswith(wanted), sent.describe()
        checked = node.cli("health-check", LOCALHOST, str(port), "--json")
        assert checked.returncode != 0, checked.describe()
        assert checked.json["code"] == "protocol", checked.describe()
        assert checked.json["error"].startswith(wanted), checked.describe()
        assert checked.json["attempts"] == 1, checked.describe()  # definitive: not retried
    # nothing was offered (the report that counts both sends failed would show it)
    assert node.counters_when("sender.failed-protocol", 2).get("sender.offers", 0) == 0
    assert node.status()


def test_a_command_and_a_node_of_different_releases_say_so(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """The control socket keeps an envelope version of its own
    (codec.LOCAL_VERSION, 1), not the protocol's: a command of this release
    still asks a node of the release before (as the benchmarks' --tree
    nodes are asked) and the reverse. A command of a release whose control
    envelope differs gets an ``error`` in its own envelope naming both, and
    a command meeting such a node (answering in its own envelope, or in
    ours by the rule) says to restart the node."""
    node = node_factory()
    client = ControlClient.for_data_dir(node.data_dir)
    local = codec.LOCAL_VERSION
    try:
        status = _envelope(local, "status-request", {"request": 1})
        client.sock.send([client.token, status])  # as a command of the release before does
        reply = client.sock.recv(WAIT)
        assert reply is not None, "no reply from the node"
        assert msgpack.unpackb(reply, raw=False)[:2] == [local, "status-reply"]
        client.sock.send([client.token, _envelope(local + 1, "status-request", {"request": 2})])
        reply = client.sock.recv(WAIT)
        assert reply is not None, "no reply from the node"
        version, type_name, fields = msgpack.unpackb(reply, raw=False)
        assert (version, type_name, fields["code"]) == (local + 1, "error", f"protocol-{local}")
        assert node.status()
    finally:
        client.close()
    ctx: zmq.Context[Any] = zmq.Context()
    fake = ctx.socket(zmq.ROUTER)  # a node of another release, on its control socket
    fake.linger = 0
    port = fake.bind_to_random_port(f"tcp://{LOCALHOST}")
    replies = (
        [local + 1, "status-reply", {}],
        [local, "error", {"code": f"protocol-{local + 1}", "reason": "another release"}],
    )
    try:
        for answer in replies:
            command = ControlClient(f"tcp://{LOCALHOST}:{port}", "token")
            try:
                command.send(StatusRequest(request=1))
                assert fake.poll(int(WAIT * 1000)), "no request from the command"
                route, _, request = fake.recv_multipart()
                assert msgpack.unpackb(request, raw=False)[0] == local
                fake.send_multipart([route, msgpack.packb(answer, use_bin_type=True)])
                with pytest.raises(AnotherRelease) as raised:  # not "down": no retry
                    command.receive(WAIT)
                assert str(raised.value) == (
                    f"the node runs another release (control protocol {local + 1}, "
                    f"this command {local}): restart it with this one"
                )
            finally:
                command.close()
    finally:
        fake.close()
        ctx.term()


def _progress(request: int, **changes: Any) -> dict[str, Any]:
    fields = {
        "request": request, "done_bytes": 0, "total_bytes": 10, "note": "", "done_files": 0,
        "total_files": 0, "phase": "offering", "transfer": 4,
    }  # fmt: skip
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


def test_a_command_reads_a_reply_with_a_field_less_or_more_and_stops_at_one_it_cannot(
    tmp_path: Path,
) -> None:
    """The package updated while its node ran: the node's replies lack a
    field this release added (its default), or carry one it does not know
    (left out), and are read; one that lacks a field without a default is
    one line and exit 1 at once (no traceback, no waiting out the send's
    silence), and the send is cancelled in the node."""
    fake = FakeControl(tmp_path / "data")
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(10))
    try:
        command = ControlClient.for_data_dir(tmp_path / "data")
        try:
            command.send(StatusRequest(request=1))
            route, type_name, _ = fake.next()
            assert type_name == "status-request"
            fake.answer(route, "progress", _progress(1, transfer=None, from_later_on=[1, 2]))
            read = command.receive(WAIT)
            assert read == Progress(request=1, total_bytes=10, done_bytes=0, phase="offering")
            fake.answer(route, "progress", _progress(1, done_bytes=None))
            with pytest.raises(AnotherRelease, match=r"cannot read the node's reply \(fields: "):
                command.receive(WAIT)
        finally:
            command.close()
        cli = start_cli("send", source, LOCALHOST, "7400", data_dir=tmp_path / "data")
        try:
            route, type_name, fields = fake.next()
            assert type_name == "send-request", type_name
            request = fields["request"]
            fake.answer(route, "progress", _progress(request, transfer=None, extra="x"))
            fake.answer(route, "progress", _progress(request, phase=None, done_bytes=None))
            _, type_name, fields = fake.next()
            assert (type_name, fields["request"]) == ("cancel-request", request)
            out, err = cli.communicate(timeout=WAIT)
        finally:
            cli.kill()
            cli.communicate(timeout=WAIT)
    finally:
        fake.close()
    assert cli.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("peercrypt: error: cannot read the node's reply (fields: "), err
    assert lines[0].endswith("restart it with this one (the transfer was cancelled)"), err


def test_cancel_takes_the_answer_of_a_node_of_the_release_before(tmp_path: Path) -> None:
    """The package updated while its node ran: that node answers `cancel N`
    as it did, with a setting reply, which the command says as it comes
    (it said "unexpected reply setting-reply", exit 1, of a cancel made)."""
    fake = FakeControl(tmp_path / "data")
    try:
        for ok, text, code in (
            (True, "cancelling transfer 4 (if it is running)", 0),
            (False, "no running transfer 4 (see `peercrypt transfers`)", 2),
        ):
            cli = start_cli("cancel", "4", data_dir=tmp_path / "data")
            try:
                route, type_name, fields = fake.next()
                assert (type_name, fields["transfer"]) == ("cancel-transfer", 4), fields
                answer = {"request": fields["request"], "ok": ok, "text": text}
                fake.answer(route, "setting-reply", answer)
                out, err = cli.communicate(timeout=WAIT)
            finally:
                cli.kill()
                cli.communicate(timeout=WAIT)
            assert cli.returncode == code, (out, err)
            assert (out, err) == ((f"{text}\n", "") if ok else ("", f"peercrypt: error: {text}\n"))
    finally:
        fake.close()


def test_a_node_whose_replies_cannot_be_read_is_one_line_for_every_command(
    tmp_path: Path,
) -> None:
    """Not a node that is down: no temporary node of the command's own (a
    send the fast path leaves to the click command, `-r`), no retry, no
    traceback, the shell included: one line naming the cause, exit 1."""
    fake = FakeControl(tmp_path / "data")
    stop = threading.Event()

    def answer_all() -> None:  # every request: a reply lacking required fields
        while not stop.is_set():
            if fake.sock.poll(50):
                route, _, frame = fake.sock.recv_multipart()
                request = msgpack.unpackb(frame, raw=False)[2].get("request", 1)
                fake.answer(route, "progress", {"request": request})

    source = tmp_path / "f.bin"
    source.write_bytes(b"x")
    answering = threading.Thread(target=answer_all, daemon=True)
    answering.start()
    try:
        for args in (
            ["status"],
            ["send", str(source), LOCALHOST, "7400", "-r", "100000"],
            ["shell"],  # (it asks the node at its start)
        ):
            cli = start_cli(*args, data_dir=tmp_path / "data")
            try:
                out, err = cli.communicate(timeout=WAIT)
            finally:
                cli.kill()
            assert cli.returncode == 1, (args, out, err)
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (args, err)
            assert err.startswith("peercrypt: error: cannot read the node's reply (fields: "), err
        # A script asking for JSON gets JSON, as when no node runs: it runs,
        # what it says cannot be read (and this data dir's fingerprint).
        cli = start_cli("status", "--json", data_dir=tmp_path / "data")
        try:
            out, err = cli.communicate(timeout=WAIT)
        finally:
            cli.kill()
        assert cli.returncode == 1 and not err, (out, err)
        answer = json.loads(out)
        assert answer["running"] is True, answer
        assert answer["reason"].startswith("cannot read the node's reply (fields: "), answer
        own = load_or_create_identity(tmp_path / "data").public  # (the command made it)
        assert answer["fingerprint"] == fingerprint(own), answer
    finally:
        stop.set()
        answering.join(timeout=WAIT)
        fake.close()


def test_the_shells_watcher_says_once_that_it_cannot_read_the_node_and_keeps_looking(
    tmp_path: Path,
) -> None:
    """The node under a running shell restarted on another release: its
    watcher says so once (not every half second) and keeps asking, so that
    a node restarted on the shell's release is watched again."""
    from peercrypt.cli.app import main
    from peercrypt.cli.shell import WATCH_EVERY, Shell

    fake = FakeControl(tmp_path / "data")
    shell = Shell(main, {"data_dir": tmp_path / "data"}, owns_node=False)
    said: list[str] = []
    watcher = threading.Thread(target=shell.watch, args=(said.append,), daemon=True)
    watcher.start()
    try:
        for _ in range(3):  # three looks, each answered with a reply it cannot read
            route, type_name, fields = fake.next()
            assert type_name == "status-request"
            fake.answer(route, "progress", {"request": fields["request"]})
    finally:
        shell.stop.set()
        watcher.join(timeout=WAIT + WATCH_EVERY)
        fake.close()
    assert not watcher.is_alive()
    assert len(said) == 1 and said[0].startswith("peercrypt: error: cannot read the node's reply")
