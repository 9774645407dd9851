"""Chunks over a Unix socket between two nodes of one host (peercrypt/local_ipc.py).

The claim checks without nodes first (what a peer's Accept can and cannot
make a sender connect to), then real nodes on loopback: a transfer over the
receiver's Unix socket, one over TCP with it turned off, and one each where
the path is stale or something else listens there (both fall back to TCP,
the file verified).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peercrypt import local_ipc
from peercrypt.crypto.handshake import Initiator, SessionSecrets, respond
from peercrypt.crypto.identity import KeyPair
from peercrypt.testing.nodes import NodeProcess, assert_sent, one_host_trio

HOST = local_ipc.host_id()


def listening(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(4)
    sock.setblocking(False)
    return sock


def never_connected(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return True
    return False


@pytest.fixture
def good(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A node's socket as it should be: DIR/ipc (0700)/data.sock, listening."""
    folder = tmp_path / "ipc"
    folder.mkdir(mode=0o700)
    path = folder / "data.sock"
    sock = listening(path)
    yield path, sock
    sock.close()


def test_host_identity_is_this_boot_and_namespaces() -> None:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert (
        f"{boot}/{os.stat('/proc/self/ns/mnt').st_ino}/{os.stat('/proc/self/ns/net').st_ino}"
        == HOST
    )


def exchange(tid: bytes, receiver: KeyPair) -> tuple[SessionSecrets, SessionSecrets]:
    """One transfer's key exchange: (the sender's secrets, the receiver's)."""
    sender = KeyPair.generate()
    initiator = Initiator(sender)
    answer = respond(tid, receiver, sender.public, initiator.public)
    ours = initiator.finish(tid, receiver.public, answer.eph_pub, answer.proof)
    return ours, answer.secrets


def test_the_host_tag_is_per_transfer_and_hides_the_boot_id() -> None:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    receiver = KeyPair.generate()
    sent, got = exchange(bytes(16), receiver)
    one = local_ipc.host_tag(HOST, bytes(16), got)
    assert one == local_ipc.host_tag(HOST, bytes(16), sent)  # both ends agree
    assert one != local_ipc.host_tag(HOST, b"\1" * 16, exchange(b"\1" * 16, receiver)[1])
    assert boot not in one and boot.replace("-", "") not in one
    assert one != local_ipc.host_tag(HOST + "x", bytes(16), got)
    assert local_ipc.host_tag("", bytes(16), got) == ""


def test_one_transfer_id_offered_to_two_nodes_does_not_link_them() -> None:
    """A hostile sender picks the transfer id: offering one id to two nodes
    (or one node twice) must not tell it whether they run on one host."""
    tid = b"\7" * 16
    tags = {local_ipc.host_tag(HOST, tid, exchange(tid, KeyPair.generate())[1]) for _ in range(3)}
    assert len(tags) == 3


def test_a_good_path_of_this_host_is_used(good: tuple[Path, socket.socket]) -> None:
    path, _ = good
    assert local_ipc.usable_target(str(path), HOST, HOST) == f"ipc://{path}"


def test_claims_that_do_not_hold_are_not_connected_to(
    good: tuple[Path, socket.socket], tmp_path: Path
) -> None:
    path, sock = good
    # another host's identity, or none on either side
    assert local_ipc.usable_target(str(path), "other-boot/1/2", HOST) is None
    assert local_ipc.usable_target(str(path), "", "") is None
    # a folder others may enter
    os.chmod(path.parent, 0o750)
    assert local_ipc.usable_target(str(path), HOST, HOST) is None
    os.chmod(path.parent, 0o700)
    # through a symlinked folder (the check is on what the path names itself)
    link = tmp_path / "elsewhere"
    link.mkdir()
    (link / "ipc").symlink_to(path.parent)
    assert local_ipc.usable_target(str(link / "ipc" / "data.sock"), HOST, HOST) is None
    # through a symlink further up (another user's folder there could point
    # it elsewhere between the checks and the connect)
    (tmp_path / "up").symlink_to(tmp_path)
    above = str(tmp_path / "up" / "ipc" / "data.sock")
    assert local_ipc.well_formed(above, HOST, HOST)
    assert local_ipc.usable_target(above, HOST, HOST) is None
    # relative, not normalized, a NUL
    assert local_ipc.usable_target("ipc/data.sock", HOST, HOST) is None
    assert local_ipc.usable_target(f"{path.parent}/../ipc/data.sock", HOST, HOST) is None
    assert local_ipc.usable_target(f"{path}\0", HOST, HOST) is None
    assert never_connected(sock)


def test_a_folder_above_that_others_may_write_in_is_not_trusted(tmp_path: Path) -> None:
    """Another user who may write in a folder above the socket's (not
    sticky) could swap it between the checks and the connect."""
    shared = tmp_path / "shared"
    shared.mkdir()
    folder = shared / "ipc"
    folder.mkdir(mode=0o700)
    path = folder / "data.sock"
    with contextlib.closing(listening(path)) as sock:
        assert local_ipc.usable_target(str(path), HOST, HOST) == f"ipc://{path}"
        sock.accept()[0].close()
        os.chmod(shared, 0o777)
        assert local_ipc.usable_target(str(path), HOST, HOST) is None
        assert never_connected(sock)
        os.chmod(shared, 0o777 | stat.S_ISVTX)  # as /tmp: only a name's owner moves it
        assert local_ipc.usable_target(str(path), HOST, HOST) == f"ipc://{path}"


def test_any_other_listening_socket_is_not_connected_to(tmp_path: Path) -> None:
    """A hostile member names a socket it would like this node to talk to
    (a daemon's control socket): nothing connects to it."""
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    daemon = listening(folder / "daemon.sock")
    with contextlib.closing(daemon):
        assert local_ipc.usable_target(str(folder / "daemon.sock"), HOST, HOST) is None
        assert never_connected(daemon)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_a_socket_of_another_user_is_not_connected_to(good: tuple[Path, socket.socket]) -> None:
    path, sock = good
    os.chown(path, 65534, -1)
    assert local_ipc.usable_target(str(path), HOST, HOST) is None
    os.chown(path, 0, -1)
    os.chown(path.parent, 65534, -1)
    assert local_ipc.usable_target(str(path), HOST, HOST) is None
    assert never_connected(sock)


def test_a_stale_socket_is_not_used_and_is_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "ipc"
    folder.mkdir(mode=0o755)
    path = folder / "data.sock"
    listening(path).close()  # the file stays, nothing listens
    assert local_ipc.usable_target(str(path), HOST, HOST) is None
    assert local_ipc.prepare(path)
    assert not path.exists() and stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_stopping_node_removes_only_the_socket_it_bound(tmp_path: Path) -> None:
    """A node stopping late (a new one on the same data dir already bound
    there, which replaces the file) leaves the new node's socket alone."""
    folder = tmp_path / "ipc"
    folder.mkdir(mode=0o700)
    path = folder / "data.sock"
    old = listening(path)
    old_bound = local_ipc.bound_as(path)
    assert local_ipc.prepare(path)  # the new node's start: the old file goes
    new = listening(path)
    with contextlib.closing(old), contextlib.closing(new):
        local_ipc.remove(path, old_bound)  # the old node's stop
        assert local_ipc.usable_target(str(path), HOST, HOST) == f"ipc://{path}"
        new.accept()[0].close()  # it was the new node that answered
        local_ipc.remove(path, local_ipc.bound_as(path))  # the new node's stop
        assert not path.exists()


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "ipc" / "data.sock"
    path.parent.mkdir(mode=0o700)
    path.write_text("keep me")
    assert not local_ipc.prepare(path)
    assert path.read_text() == "keep me"


def test_a_data_dir_too_deep_for_a_socket_has_none(tmp_path: Path) -> None:
    assert local_ipc.socket_path(tmp_path / ("d" * 120)) is None


@given(st.text(max_size=120))
def test_only_an_absolute_ipc_data_sock_path_is_well_formed(path: str) -> None:
    ok = local_ipc.well_formed(path, HOST, HOST)
    if ok:
        assert path.startswith("/") and path.endswith("/ipc/data.sock") and "\0" not in path
        assert "/../" not in path and "//" not in path
    assert not local_ipc.well_formed(path, HOST, "")


# -- real nodes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, ...]]:
    """(sender, receiver, receiver with the Unix socket turned off by its variable)."""
    base = tmp_path_factory.mktemp("ipc")
    with one_host_trio(base) as (sender, receiver, off, _):
        yield sender, receiver, off
    assert not (base / "r" / "ipc" / "data.sock").exists()  # removed at stop


def sends(node: NodeProcess, wait: tuple[str, int] | None = None) -> tuple[int, int, int]:
    """(over the Unix socket, over TCP, moved to TCP): the sender's counters,
    once counter ``wait[0]`` reached ``wait[1]`` (they are reported together)."""
    if wait is not None:
        node.wait_for_counter(*wait)
    c = node.counters()
    return (
        c.get("sender.data-ipc", 0),
        c.get("sender.data-tcp", 0),
        c.get("sender.data-ipc-fallbacks", 0),
    )


def test_two_nodes_of_one_host_send_over_the_unix_socket(
    trio: tuple[NodeProcess, ...], make_file: Callable[..., Path]
) -> None:
    sender, receiver, _ = trio
    sock = receiver.data_dir / "ipc" / "data.sock"
    assert receiver.status()["data_ipc"] == str(sock)
    assert stat.S_ISSOCK(sock.lstat().st_mode) and stat.S_IMODE(sock.lstat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.lstat().st_mode) == 0o700
    before = sends(sender)
    path = make_file(3 * 1024 * 1024 + 17, name="over-ipc.bin")
    assert_sent(receiver, sender.send_to(path, receiver), path)
    assert sends(sender, ("sender.data-ipc", before[0] + 1)) == (
        before[0] + 1,
        before[1],
        before[2],
    )


def test_turned_off_by_the_receiver_goes_over_tcp(
    trio: tuple[NodeProcess, ...], make_file: Callable[..., Path]
) -> None:
    sender, _, off = trio
    assert off.status()["data_ipc"] == ""
    assert not (off.data_dir / "ipc" / "data.sock").exists()
    before = sends(sender)
    path = make_file(1024 * 1024 + 5, name="over-tcp.bin")
    assert_sent(off, sender.send_to(path, off), path)
    assert sends(sender, ("sender.data-tcp", before[1] + 1)) == (
        before[0],
        before[1] + 1,
        before[2],
    )


def test_turned_off_by_the_sender_goes_over_tcp(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender = node_factory("--no-local-ipc")
    receiver = node_factory()
    assert receiver.status()["data_ipc"]
    path = make_file(1024 * 1024, name="s-off.bin")
    assert_sent(receiver, sender.send_to(path, receiver), path)
    assert sends(sender, ("sender.data-tcp", 1)) == (0, 1, 0)


def test_stale_then_foreign_socket_fall_back_to_tcp(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A stale socket left at the path is replaced at start; one that goes
    stale while the node runs is not dialled (TCP), though a connection kept
    from before is taken; one where something else listens is connected to,
    fails, and the lanes move to TCP mid-transfer."""
    sender = node_factory()
    receiver = node_factory(start=False)
    sock_path = receiver.data_dir / "ipc" / "data.sock"
    sock_path.parent.mkdir(parents=True, mode=0o700)
    listening(sock_path).close()  # left behind by an earlier run
    receiver.start()
    path = make_file(1024 * 1024 + 1, name="a.bin")
    assert_sent(receiver, sender.send_to(path, receiver), path)
    assert sends(sender, ("sender.data-ipc", 1)) == (1, 0, 0)

    # A sender that dials afresh each time: it keeps its connections a while
    # after a send (actors/sender.py, IDLE_KEEP), and the kept one to this
    # receiver's socket, connected before the path was replaced, is taken
    # again without the checks (they ran when it was dialled).
    sock_path.unlink()
    listening(sock_path).close()  # stale while the node runs
    path = make_file(1024 * 1024 + 4, name="kept.bin")
    assert_sent(receiver, sender.send_to(path, receiver), path)
    assert sends(sender, ("sender.data-ipc", 2)) == (2, 0, 0)  # the kept connection
    sender.stop()
    sender.start()
    path = make_file(1024 * 1024 + 2, name="b.bin")
    assert_sent(receiver, sender.send_to(path, receiver), path)
    assert sends(sender, ("sender.data-tcp", 1)) == (0, 1, 0)  # counted since the restart
    # The connection kept from that send (TCP: the socket failed its checks)
    # is the next send's: no new connection and check for each send while
    # the socket stays unusable (it is dialled again once the kept one ends).
    path = make_file(1024 * 1024 + 6, name="again.bin")
    assert_sent(receiver, sender.send_to(path, receiver), path)
    assert sends(sender, ("sender.data-tcp", 2)) == (0, 2, 0)
    c = sender.counters()
    assert (c.get("sender.data-connections"), c.get("sender.data-connections-reused", 0)) == (1, 1)

    sender.stop()
    sender.start()
    sock_path.unlink()
    impostor = listening(sock_path)
    impostor.setblocking(True)
    impostor.settimeout(0.1)  # the loop below sees `stop` within 0.1 s
    stop = threading.Event()

    def hang_up() -> None:  # accepts and closes: not a ZeroMQ peer
        while not stop.is_set():
            with contextlib.suppress(OSError):
                impostor.accept()[0].close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        path = make_file(2 * 1024 * 1024 + 3, name="c.bin")
        assert_sent(receiver, sender.send_to(path, receiver), path)
        ipc, tcp, fallbacks = sends(sender, ("sender.data-ipc-fallbacks", 1))
        assert (ipc, tcp) == (1, 0) and fallbacks >= 1  # counted since the restart
    finally:
        stop.set()
        thread.join(5)
        impostor.close()
