"""`peercrypt node --isolate-data-plane`: the sender and the receiver as
processes of their own (peercrypt/data_plane.py), real nodes on loopback.

- Both ways a send verifies with the file's BLAKE3 and lands in the node's
  own inbox; the node's status shows both actors attached under the node's
  own identity, and they are the node's two child processes; a health check
  and the statistics history go on as in one process.
- A child killed is started again and attaches; the next send verifies.
- The children end with the node: at its SIGTERM (exit 0) and at its SIGKILL
  (the kernel's parent-death signal).
- A member with the network key and an identity of its own cannot attach as
  the node's sender: refused (exit 4), the node's own stays attached.
- Errors: nothing left to isolate, a child that cannot start (its data port
  taken): one line each, a non-zero exit, no traceback, no child left.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors.inbox import scan
from peercrypt import errors
from peercrypt.crypto.identity import KeyPair, network_server_keys
from peercrypt.data_plane import private_endpoint
from peercrypt.history.db import db_path, list_transfers, open_reader
from peercrypt.settings import NodeSettings
from peercrypt.testing.nodes import (
    ActorProcess,
    NodeProcess,
    assert_stored,
    blake3_file,
    child_pids,
    cli_env,
    cli_running,
    json_success,
    random_file,
    wait_until,
)
from peercrypt.wire import codec
from peercrypt.wire.actor_messages import AttachHello, AttachReply

MiB = 1 << 20
ISOLATE = "--isolate-data-plane"


def data_plane(pid: int) -> dict[str, int]:
    """The data-plane child processes of node ``pid``: actor -> process id."""
    found: dict[str, int] = {}
    for child in child_pids(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"peercrypt.data_plane" in argv:
            found[argv[argv.index(b"peercrypt.data_plane") + 1].decode()] = child
    return found


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not: it ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def attached_as(node: NodeProcess, fingerprint: str) -> dict[str, Any] | None:
    status = node.status()
    wanted = f"attached {fingerprint}"
    if status.get("remote_sender") == wanted and status.get("remote_receiver") == wanted:
        return status
    return None


def isolated_node(
    node_factory: Callable[..., NodeProcess], *args: str, **kwargs: Any
) -> NodeProcess:
    """An isolated node once both its actors attached (its status has the
    data port as soon as the receiver's first report crosses the link,
    before the node has restarted its stand-in: ``attaching``)."""
    node = node_factory(ISOLATE, "--no-gossip", *args, **kwargs)
    wait_for_attached(node)
    return node


def wait_for_attached(node: NodeProcess) -> None:
    wait_until(lambda: attached_as(node, node.fingerprint), 20.0, "both actors attached")


def sent_and_stored(sender: NodeProcess, receiver: NodeProcess, path: Path) -> str:
    code, result = sender.send_to(path, receiver)
    assert code == 0, result
    assert result["blake3"] == blake3_file(path)
    assert blake3_file(receiver.inbox / result["stored_as"]) == blake3_file(path)
    return str(result["stored_as"])


def test_an_isolated_node_sends_and_receives(
    tmp_path: Path, node_factory: Callable[..., NodeProcess]
) -> None:
    isolated = isolated_node(node_factory)
    other = node_factory("--no-gossip")
    children = data_plane(isolated.pid)
    assert sorted(children) == ["receiver", "sender"], children
    assert isolated.inbox == isolated.data_dir / "inbox"
    out = random_file(tmp_path / "out.bin", 6 * MiB + 5)
    back = random_file(tmp_path / "back.bin", 3 * MiB + 1)
    sent_and_stored(isolated, other, out)
    stored = sent_and_stored(other, isolated, back)
    # The node's control plane, in its own process, checks a member.
    check = isolated.cli("health-check", other.host, str(other.port))
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"alive {other.host}:{other.port}: node {other.fingerprint}")
    # What the children did is in the node's statistics history.
    history = db_path(isolated.data_dir)

    def recorded() -> list[tuple[str, str]] | None:
        if not history.exists():
            return None
        with open_reader(history) as conn:
            rows = [(r["side"], r["file"]) for r in list_transfers(conn) if r["result"] == "ok"]
        return rows if len(rows) == 2 else None

    rows = wait_until(recorded, 10.0, "both records in the node's history")
    assert sorted(rows) == [("receive", stored), ("send", str(out))]
    assert data_plane(isolated.pid) == children  # nothing was restarted


def test_a_killed_data_plane_process_is_started_again(
    tmp_path: Path, node_factory: Callable[..., NodeProcess]
) -> None:
    isolated = isolated_node(node_factory)
    other = node_factory("--no-gossip")
    first = data_plane(isolated.pid)
    os.kill(first["receiver"], signal.SIGKILL)

    def again() -> dict[str, int] | None:
        # (Until the node hears the new one, its status still says the old
        # one is attached: the new attachment is the second in its log.)
        now = data_plane(isolated.pid)
        fresh = now.get("receiver") not in (None, first["receiver"])
        attachments = isolated.log_text().count("attached as the node's receiver actor")
        if fresh and attachments >= 2 and attached_as(isolated, isolated.fingerprint):
            return now
        return None

    now = wait_until(again, 20.0, "a new receiver process attached")
    assert now["sender"] == first["sender"]
    assert not alive(first["receiver"])
    log = isolated.log_text()
    assert "the node's receiver process ended (signal SIGKILL)" in log
    # Lost at once, as its watcher saw it end, not after 3 s of silence (an
    # offer meanwhile would have gone to a process that is not there).
    assert "lost the receiver actor attached from" in log
    assert "(its process ended)" in log and "(silent for 3 s)" not in log
    sent_and_stored(other, isolated, random_file(tmp_path / "f.bin", 2 * MiB + 7))


def test_the_data_plane_ends_with_the_node(
    tmp_path: Path, node_factory: Callable[..., NodeProcess]
) -> None:
    node = isolated_node(node_factory, name="n")
    children = data_plane(node.pid)
    assert len(children) == 2
    node.kill()  # SIGKILL: the node cannot stop them itself
    wait_until(
        lambda: not any(alive(p) for p in children.values()) or None,
        20.0,
        "the children to end with their node",
    )
    assert (node.data_dir / "ipc" / "attach.sock").exists()  # left: the next start replaces it
    node.start()  # the same data dir, again
    wait_for_attached(node)
    children = data_plane(node.pid)
    assert len(children) == 2
    assert node.stop() == 0
    assert not any(alive(p) for p in children.values())


def refused_as_data_plane(data_dir: Path, where: list[str], network_key: str) -> None:
    """An actor process of ``data_dir``'s identity is refused as the
    isolated node's sender and as its receiver (exit 4, the reason logged)."""
    for kind in ("sender", "receiver"):
        attempt = ActorProcess(data_dir, kind, where, network_key).start()
        try:
            assert attempt.proc is not None
            assert attempt.proc.wait(20) == errors.NOT_ADMITTED
        finally:
            attempt.stop()
        assert (
            f"refused to attach {kind}: this node runs its own {kind!r} actor "
            "(in a process of its own)"
        ) in attempt.log_text()


def test_a_member_cannot_attach_as_the_isolated_nodes_sender(
    tmp_path: Path, network_key: str, node_factory: Callable[..., NodeProcess]
) -> None:
    """No identity attaches the isolated actors through the public port: a
    member with the network key and an identity of its own is refused as
    sender and as receiver even where --attach-allow lets it attach another
    actor (here health), which it still may."""
    intruder_dir = tmp_path / "intruder"
    intruder = ActorProcess(intruder_dir, "sender", [], network_key).fingerprint()
    isolated = isolated_node(node_factory, "--remote-actor", "health", "--attach-allow", intruder)
    other = node_factory("--no-gossip")
    where = [f"127.0.0.1:{isolated.port}"]
    refused_as_data_plane(intruder_dir, where, network_key)
    assert attached_as(isolated, isolated.fingerprint) is not None
    health = ActorProcess(intruder_dir, "health", where, network_key).start()
    try:
        wait_until(
            lambda: isolated.status().get("remote_health") == f"attached {intruder}" or None,
            20.0,
            "the allowed health actor attached",
        )
    finally:
        health.stop()
    sent_and_stored(other, isolated, random_file(tmp_path / "f.bin", MiB + 3))


def test_not_even_the_nodes_own_identity_attaches_them_through_the_public_port(
    tmp_path: Path, network_key: str, node_factory: Callable[..., NodeProcess]
) -> None:
    """The isolated actors attach on the node's private endpoint alone: a
    process that proves the node's own identity (its key copied) through the
    public port is refused as sender and as receiver, and the node's own
    stay attached."""
    isolated = isolated_node(node_factory)
    twin_dir = tmp_path / "twin"
    twin_dir.mkdir(mode=0o700)
    (twin_dir / "identity.key").write_bytes((isolated.data_dir / "identity.key").read_bytes())
    (twin_dir / "identity.key").chmod(0o600)
    twin = ActorProcess(twin_dir, "sender", [], network_key)
    assert twin.fingerprint() == isolated.fingerprint
    refused_as_data_plane(twin_dir, [f"127.0.0.1:{isolated.port}"], network_key)
    assert attached_as(isolated, isolated.fingerprint) is not None


def test_the_private_endpoint(tmp_path: Path, node_factory: Callable[..., NodeProcess]) -> None:
    """The endpoint is DATA_DIR/ipc/attach.sock, in a folder only the node's
    user may enter; it attaches the isolated actors' names alone, counts
    frames that are no message and goes on, and goes with the node."""
    node = isolated_node(node_factory, "--remote-actor", "health", "--attach-allow", "")
    path = node.data_dir / "ipc" / "attach.sock"
    assert node.status()["private_endpoint"] == str(path)
    folder, sock_info = path.parent.stat(), path.lstat()
    assert (folder.st_mode & 0o777, folder.st_uid) == (0o700, os.getuid())
    assert (sock_info.st_mode & 0o777, sock_info.st_uid) == (0o600, os.getuid())
    context = zmq.Context()
    try:
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(f"ipc://{path}")
        sock.send_multipart([b"no", b"message"])
        sock.send(b"\xc1 not msgpack")
        sock.send(codec.encode(AttachHello(actor="health")))
        assert sock.poll(10_000), "no answer on the private endpoint"
        reply = codec.decode(sock.recv())
        assert isinstance(reply, AttachReply)
        assert (reply.actor, reply.code) == ("health", "not-remote")
        assert "does not attach on the private endpoint" in reply.reason
    finally:
        context.destroy(linger=0)
    counters = node.counters_when("attach.attach-refused-not-remote", 1)
    assert counters.get("attach.endpoint-frames") == 1
    assert sum(v for k, v in counters.items() if k.startswith("attach.link-decode-")) == 1
    assert not any("handler" in k and v for k, v in counters.items() if k.startswith("attach."))
    assert node.status().get("remote_health") == "waiting"
    assert attached_as(node, node.fingerprint) is not None
    other = node_factory("--no-gossip")
    sent_and_stored(other, node, random_file(tmp_path / "f.bin", MiB + 7))
    assert node.stop() == 0
    assert not path.exists() and path.parent.is_dir()


def test_an_allow_list_does_not_concern_the_nodes_own_processes(
    tmp_path: Path, node_factory: Callable[..., NodeProcess]
) -> None:
    """With --allow set (only that member is admitted), the node's own
    processes still attach: they do not come through the public port."""
    other = node_factory("--no-gossip")
    isolated = isolated_node(node_factory, "--allow", other.fingerprint)
    sent_and_stored(other, isolated, random_file(tmp_path / "f.bin", MiB + 5))


def test_the_data_plane_runs_in_process_groups_of_its_own(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """A Ctrl-C at the node's terminal (or at `start`'s prompt, meant for a
    command) reaches the node's process group, not its children: each leads
    a group of its own, in the node's session (the kernel shares the cores
    by session: in sessions of their own, the bulk work would no longer
    yield to the node's control plane)."""
    node = isolated_node(node_factory)
    children = data_plane(node.pid)
    assert len(children) == 2
    for pid in children.values():
        assert os.getpgid(pid) == pid != os.getpgid(node.pid)
        assert os.getsid(pid) == os.getsid(node.pid)


def test_the_child_imports_nothing_from_the_working_directory(
    tmp_path: Path, network_key: str
) -> None:
    """`python -m` puts the working directory first on sys.path: a module
    there (say, in an inbox) would run with the node's keys. The child
    starts with -P."""
    trap_dir = tmp_path / "cwd"
    trap_dir.mkdir()
    marker = tmp_path / "trap-ran"
    (trap_dir / "pickle.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n"
    )
    script = Path(sys.executable).with_name("peercrypt")  # as a user runs it
    proc = subprocess.Popen(
        [str(script), "--data-dir", str(tmp_path / "n"), "node", "--host", "127.0.0.1",
         "--port", "0", "--no-gossip", ISOLATE],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=trap_dir,
        env=cli_env({"PEERCRYPT_NETWORK_KEY": network_key}),
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or ()), daemon=True)
    reader.start()  # (a wait on the pipe itself would not be bounded)
    try:
        wait_until(
            lambda: any("listening on" in line for line in lines) or proc.poll() is not None,
            30.0,
            "the node to announce itself (or end)",
        )
        assert proc.poll() is None, lines
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # (its children end with it)
            proc.wait(timeout=10)
    reader.join(10)
    assert proc.returncode == 0, lines
    assert not marker.exists()


def test_a_restarted_receiver_leaves_no_stale_promise_in_the_ledger(
    tmp_path: Path, node_factory: Callable[..., NodeProcess]
) -> None:
    """The bytes the ledger promised a transfer of a receiver process that
    died go with it once the new process attached: its report at its start
    crossed no link (it was not attached yet), so the ledger asks again."""
    sender = node_factory("--max-rate", str(256 * 1024), "--no-gossip")
    target = isolated_node(node_factory, "--pending-quota", str(20 * MiB))
    path = random_file(tmp_path / "big.bin", 16 * MiB)
    with cli_running(
        "send", path, target.host, str(target.port), "--timeout", "60",
        data_dir=sender.data_dir,
    ):  # fmt: skip
        wait_until(lambda: int(target.status().get("promised", "0")) or None, 30, "a promise")
        sender.kill()  # nobody resumes it
    first = data_plane(target.pid)
    os.kill(first["receiver"], signal.SIGKILL)
    wait_until(
        lambda: target.log_text().count("attached as the node's receiver actor") >= 2 or None,
        30.0,
        "the new receiver attached",
    )
    wait_until(
        lambda: target.status().get("promised") == "0" or None, 20.0, "the stale promise gone"
    )


def test_one_space_ledger_judges_the_nodes_and_its_receivers_parts(
    tmp_path: Path, node_factory: Callable[..., NodeProcess]
) -> None:
    """The child receiver asks the node's own ledger, not one of its own: a
    multicast session (received in the node) and a unicast send (received
    in the child) from one sender, each within the pending-bytes quota but
    not both: the unicast one is refused while the session runs, and the
    session still verifies."""
    sender = node_factory("--max-rate", str(128 * 1024), "--no-gossip")
    target = isolated_node(node_factory, "--pending-quota", str(2 * MiB + 1))
    first = random_file(tmp_path / "first.bin", 2 * MiB)
    second = random_file(tmp_path / "second.bin", 2 * MiB)
    with cli_running(
        "send", first, target.host, str(target.port), "-m", "--chunk-size", str(64 * 1024),
        "--timeout", "30", "--json",
        data_dir=sender.data_dir,
    ) as proc:  # fmt: skip
        wait_until(lambda: scan(target.inbox, multicast=True).kept, 20, "the session's part")
        code, refused = sender.send(second, target.host, target.port, "--timeout", "10")
        lifted = sender.cli("max-rate", "0")
        assert lifted.returncode == 0, lifted.describe()
        result = json_success(proc, sender)
    assert code != 0, refused
    assert f"too many bytes still to come from you (max {2 * MiB + 1})" in refused["error"]
    assert_stored(target, result, blake3_file(first))
    assert not (target.inbox / "second.bin").exists()
    sent_and_stored(sender, target, second)  # within the quota once the first is stored


def node_command(
    tmp_path: Path, network_key: str, *args: str, data_dir: Path | None = None
) -> tuple[int, int, str]:
    """``peercrypt node --isolate-data-plane ARGS`` to its end: (its pid, its
    exit code, its stderr)."""
    data_dir = data_dir or tmp_path / "n"
    argv = [sys.executable, "-m", "peercrypt", "--data-dir", str(data_dir), "node"]
    proc = subprocess.Popen(
        [*argv, "--host", "127.0.0.1", "--port", "0", "--no-gossip", ISOLATE, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env({"PEERCRYPT_NETWORK_KEY": network_key}),
    )
    try:
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.pid, proc.returncode, stderr


def test_nothing_to_isolate_is_refused(tmp_path: Path, network_key: str) -> None:
    _, code, stderr = node_command(
        tmp_path, network_key, "--remote-actor", "sender", "--remote-actor", "receiver"
    )
    assert code == errors.USAGE
    assert stderr.splitlines() == [
        "peercrypt: error: --isolate-data-plane: the sender and the receiver both run "
        "attached from elsewhere (--remote-actor): there is nothing to isolate"
    ]


def test_a_data_dir_without_room_for_the_private_endpoint_is_refused(
    tmp_path: Path, network_key: str
) -> None:
    """A socket's path holds about 100 bytes: a data dir too deep for
    ipc/attach.sock in it, or an ipc folder that is not one, is one line
    and exit 2, and no node and no child is left."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    _, code, stderr = node_command(tmp_path, network_key, data_dir=deep)
    assert code == errors.USAGE
    assert stderr.splitlines() == [
        "peercrypt: error: --isolate-data-plane: the data dir's path is too long for the "
        "node's private socket (ipc/attach.sock in it, 100 bytes at most); choose a shorter "
        "--data-dir"
    ]
    blocked = tmp_path / "b"
    blocked.mkdir(mode=0o700)
    (blocked / "ipc").write_text("not a folder")
    pid, code, stderr = node_command(tmp_path, network_key, data_dir=blocked)
    assert code == errors.USAGE
    assert stderr.splitlines() == [
        f"peercrypt: error: --isolate-data-plane: {blocked}/ipc is not a folder of this "
        "user's alone, reached through folders no other user may change (the node's "
        "private socket goes there)"
    ]
    assert_no_child_left(pid)


def test_a_child_refuses_an_endpoint_in_a_folder_others_may_enter(tmp_path: Path) -> None:
    """The node made DATA_DIR/ipc its user's alone before it started its
    children; a child that finds it otherwise (changed since) does not
    connect there, whoever put a socket there could pose as the node: one
    line, exit 1. (With the folder as the node leaves it, every test above
    runs such children.)"""
    folder = tmp_path / "n" / "ipc"
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    settings = NodeSettings(
        data_dir=tmp_path / "n",
        inbox=tmp_path / "n" / "inbox",
        identity=KeyPair.from_seed(bytes(32)),
        server_keys=network_server_keys(None),
        isolated_endpoint=f"ipc://{folder}/attach.sock",
    )
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "peercrypt.data_plane", "sender", str(os.getpid()), "20"],
        input=pickle.dumps(settings),
        capture_output=True,
        env=cli_env({}),
        timeout=60,
    )
    assert proc.returncode == errors.FAILED
    assert proc.stderr.decode().splitlines() == [
        f"peercrypt: error: the node's sender process: the folder of ipc://{folder}/attach.sock "
        "is not this user's alone"
    ]
    assert not (folder / "attach.sock").exists()


def with_port_taken(
    tmp_path: Path, network_key: str, option: str
) -> tuple[int, tuple[int, int, str]]:
    """An isolated ``node`` run to its end with ``option`` naming a port
    another socket listens on: that port, and :func:`node_command`'s result."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        return port, node_command(tmp_path, network_key, option, str(port))


def test_a_child_that_cannot_start_stops_the_node(tmp_path: Path, network_key: str) -> None:
    port, (pid, code, stderr) = with_port_taken(tmp_path, network_key, "--data-port")
    assert code == errors.USAGE
    lines = [ln for ln in stderr.splitlines() if "error" in ln]
    assert lines[0] == (
        f"peercrypt: error: cannot listen on 127.0.0.1:{port} (the data port): "
        "Address already in use"
    ), stderr
    assert lines[-1] == (
        "peercrypt: error: the node's receiver process ended at its start "
        "(--isolate-data-plane; its log lines are above)"
    ), stderr
    assert "Traceback" not in stderr
    assert_no_child_left(pid)


def assert_no_child_left(pid: int) -> None:
    """No data-plane process of the (ended) node ``pid`` runs: its pid is
    in their argv."""
    left = subprocess.run(
        ["pgrep", "-f", f"peercrypt[.]data_plane [a-z]+ {pid} "],
        capture_output=True,
        timeout=10,
    )
    assert left.returncode == 1 and left.stdout == b"", left


def test_a_node_that_cannot_listen_ends_its_children(tmp_path: Path, network_key: str) -> None:
    """The children start before the node's own actors: a node whose public
    port is taken says so in one line, exit 2, and no child is left."""
    port, (pid, code, stderr) = with_port_taken(tmp_path, network_key, "--port")
    assert code == errors.USAGE
    assert stderr.splitlines() == [
        f"peercrypt: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert_no_child_left(pid)


def test_a_second_node_on_a_live_data_dir_leaves_its_endpoint_alone(
    tmp_path: Path, network_key: str, node_factory: Callable[..., NodeProcess]
) -> None:
    """A node that does not answer its status in time (stopped) still holds
    its data dir and its private endpoint: a second node for its data dir is
    refused (by the data dir's lock) before it takes that socket's name, and
    the first goes on as it was."""
    node = isolated_node(node_factory)
    path = node.data_dir / "ipc" / "attach.sock"
    before = path.lstat().st_ino
    os.kill(node.pid, signal.SIGSTOP)
    try:
        pid, code, stderr = node_command(tmp_path, network_key, data_dir=node.data_dir)
    finally:
        os.kill(node.pid, signal.SIGCONT)
    assert code == errors.USAGE
    assert stderr.splitlines() == [
        f"peercrypt: error: a node is already running for {node.data_dir}"
    ]
    assert_no_child_left(pid)
    assert path.lstat().st_ino == before
    wait_for_attached(node)  # (stopped for a while: its links may have been lost, then found)
    # (found again with the restart the loss asked for, not one asked again later)
    assert node.counters().get("attach.attach-restart-again", 0) == 0
    other = node_factory("--no-gossip")
    sent_and_stored(other, node, random_file(tmp_path / "f.bin", MiB + 9))


def test_an_endpoint_that_answers_is_a_live_nodes(tmp_path: Path) -> None:
    """Where the data dir's lock does not hold (a file system without
    locks), the endpoint itself tells a live node: a socket there that
    answers is not replaced; a stale one is."""
    folder = tmp_path / "n" / "ipc"
    folder.mkdir(parents=True, mode=0o700)
    path = folder / "attach.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(ValueError) as refused:
            private_endpoint(tmp_path / "n")
        assert str(refused.value) == (
            f"a node is already running for {tmp_path / 'n'} (its {path} answers)"
        )
        assert path.exists()
    inode = path.lstat().st_ino  # (closed: a stale socket now)
    assert private_endpoint(tmp_path / "n") == f"ipc://{path}"
    assert not path.exists() or path.lstat().st_ino != inode
