"""The network-namespace harness (:mod:`peercrypt.testing.netns`) with real nodes.

- Two hosts on one bridge: a node in each (``NodeProcess(netns=...)``), a 2 MiB
  file goes from one to the other and arrives with the same BLAKE3.
- Two groups: a cut trunk makes a cross-group send fail as unreachable (or
  timed out) within its ``--timeout 2`` while a send inside a group still
  works; after :meth:`heal` the cross-group send works again.
- ``isolate``/``rejoin`` of one host, checked with plain TCP connects.
- A 40 mbit ``tbf`` (on the receiver's ingress, then on the sender's egress)
  makes a 4 MiB transfer take at least 0.6 s (it needs ~0.84 s on the wire).
- Cleanup: no namespace of a network is left after it closes, also after an
  error in the ``with`` block; namespaces of a killed run are removed.

Needs root and iproute2; skipped (with the reason) only where namespaces are
not available. Every wait is bounded.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peercrypt import errors
from peercrypt.testing import netns
from peercrypt.testing.netns import Host, NetnsError, TestNetwork, list_namespaces
from peercrypt.testing.nodes import NodeError, NodeProcess, blake3_file

pytestmark = [
    pytest.mark.skipif(
        not netns.available(),
        reason=f"network namespaces unavailable: {netns.unavailable_reason()}",
    ),
    pytest.mark.timeout(60),
]

PREFIX = "pctest"
SEND_TIMEOUT = 60.0  # seconds for one CLI send, far above what any send here needs
MIB = 1 << 20


@pytest.fixture
def nodes(tmp_path: Path, network_key: str) -> Iterator[Callable[[Host], NodeProcess]]:
    """``start(host) -> NodeProcess``: a node in ``host``'s namespace on its address.

    At teardown all are stopped (SIGTERM) and each must exit with 0. Ask for
    this fixture *after* the network, so nodes stop before namespaces go.
    """
    started: list[NodeProcess] = []
    counter = itertools.count()

    def start(host: Host) -> NodeProcess:
        node = NodeProcess(
            data_dir=tmp_path / f"node{next(counter)}-{host.name}",
            network_key=network_key,
            host=host.ip,
            netns=host.ns,
        )
        assert node.argv[:4] == host.argv_prefix()
        node.start()
        started.append(node)
        return node

    yield start

    problems: list[str] = []
    for node in started:
        if node.running:
            node.send_signal(signal.SIGTERM)
    for node in started:
        try:
            code = node.stop()
        except NodeError as exc:
            problems.append(str(exc))
            continue
        if code != 0:
            problems.append(f"node in {node.data_dir} exited with {code}\n{node.log_tail()}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def make_file(directory: Path, name: str, size: int) -> Path:
    """A file of ``size`` random bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


def send_ok(sender: NodeProcess, path: Path, receiver: NodeProcess) -> dict[str, Any]:
    """Send ``path`` and check the stored file's BLAKE3; return the JSON result."""
    result = sender.send_result(path, receiver.host, receiver.port, timeout=SEND_TIMEOUT)
    info = result.json
    assert result.returncode == 0 and info.get("ok"), result.describe()
    stored = receiver.inbox / info["stored_as"]
    assert blake3_file(stored) == blake3_file(path) == info["blake3"]
    return info


def connects(host: Host, ip: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connect from ``host`` to ``ip:port`` succeeds within ``timeout``."""
    code = (
        "import socket, sys\n"
        f"try: socket.create_connection(({ip!r}, {port}), timeout={timeout}).close()\n"
        "except OSError: sys.exit(1)\n"
    )
    return host.run([sys.executable, "-c", code], timeout=timeout + 10).returncode == 0


def ours(net: TestNetwork) -> list[str]:
    """Namespaces of ``net`` that exist."""
    return [name for name in list_namespaces() if name.startswith(net.tag + "-")]


@pytest.fixture
def net() -> Iterator[TestNetwork]:
    with TestNetwork(groups=1, prefix=PREFIX) as network:
        yield network
    assert ours(network) == []


@pytest.fixture
def net2() -> Iterator[TestNetwork]:
    with TestNetwork(groups=2, prefix=PREFIX) as network:
        yield network
    assert ours(network) == []


def test_two_hosts_in_one_group_transfer_a_file(
    net: TestNetwork, nodes: Callable[[Host], NodeProcess], tmp_path: Path
) -> None:
    a, b = net.add_host("a"), net.add_host("b")
    assert (a.ip, b.ip) == ("10.200.0.1", "10.200.0.2")
    assert len(ours(net)) == 3  # switch + two hosts
    sender, receiver = nodes(a), nodes(b)
    assert receiver.address == (b.ip, receiver.port)
    status = receiver.status()
    assert status["running"] and status["pid"] == str(receiver.pid)
    assert net.host("b") is b
    path = make_file(tmp_path / "files", "two-mib.bin", 2 * MIB)
    info = send_ok(sender, path, receiver)
    assert info["size"] == 2 * MIB
    assert info["peer"] == f"{b.ip}:{receiver.port}"


def test_cut_trunk_partitions_groups_until_healed(
    net2: TestNetwork, nodes: Callable[[Host], NodeProcess], tmp_path: Path
) -> None:
    a, b, c = net2.add_host("a", 0), net2.add_host("b", 0), net2.add_host("c", 1)
    assert c.ip == "10.200.1.1"
    node_a, node_b, node_c = nodes(a), nodes(b), nodes(c)
    files = tmp_path / "files"
    send_ok(node_a, make_file(files, "before.bin", 256 * 1024), node_c)

    net2.cut(0, 1)
    started = time.monotonic()
    result = node_a.send_result(
        make_file(files, "cut.bin", 256 * 1024),
        c.ip,
        node_c.port,
        "--timeout",
        "2",
        timeout=SEND_TIMEOUT,
    )
    elapsed = time.monotonic() - started
    code = result.json.get("code")
    assert code in ("unreachable", "timeout"), result.describe()
    assert result.returncode == errors.exit_code(str(code)), result.describe()
    assert result.returncode in (errors.UNREACHABLE, errors.FAILED)
    assert elapsed < 15, f"a cut send should give up after ~2 s\n{result.describe()}"
    # Inside group 0 nothing changed.
    send_ok(node_a, make_file(files, "inside.bin", 256 * 1024), node_b)

    net2.heal(0, 1)
    send_ok(node_a, make_file(files, "healed.bin", 256 * 1024), node_c)
    send_ok(node_c, make_file(files, "back.bin", 256 * 1024), node_b)


def test_isolate_and_rejoin_one_host(net2: TestNetwork) -> None:
    a, b, c = net2.add_host("a", 0), net2.add_host("b", 0), net2.add_host("c", 1)
    server = b.popen(
        [
            sys.executable,
            "-c",
            "import socket\n"
            "s = socket.create_server(('0.0.0.0', 7777))\n"
            "while True: s.accept()[0].close()\n",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not connects(a, b.ip, 7777):
            assert server.poll() is None and time.monotonic() < deadline, "server not up"
            time.sleep(0.05)
        assert connects(c, b.ip, 7777)
        net2.isolate(b)
        assert not connects(a, b.ip, 7777)
        assert not connects(c, b.ip, 7777)
        net2.rejoin(b)
        assert connects(a, b.ip, 7777)
        net2.cut(0, 1)
        assert not connects(c, b.ip, 7777)
        assert connects(a, b.ip, 7777)
    finally:
        server.kill()
        server.wait(5)


def test_tbf_shaping_slows_a_transfer(
    net: TestNetwork, nodes: Callable[[Host], NodeProcess], tmp_path: Path
) -> None:
    a, b = net.add_host("a"), net.add_host("b")
    sender, receiver = nodes(a), nodes(b)
    files = tmp_path / "files"
    # 4 MiB at 40 mbit is ~0.84 s on the wire; the node measures the transfer.
    net.shape(b, "40mbit", direction="ingress")
    assert "tbf" in net.qdisc(b, ns=net.switch_ns, dev=b.switch_port)
    assert "tbf" not in net.qdisc(b)
    info = send_ok(sender, make_file(files, "ingress.bin", 4 * MIB), receiver)
    assert info["seconds"] >= 0.6, info

    net.unshape(b)
    assert "tbf" not in net.qdisc(b, ns=net.switch_ns, dev=b.switch_port)
    net.shape(a, "40mbit")  # egress of the sender
    assert "tbf" in net.qdisc(a)
    info = send_ok(sender, make_file(files, "egress.bin", 4 * MIB), receiver)
    assert info["seconds"] >= 0.6, info
    net.unshape(a)
    net.unshape(a)  # no shape: no error


def test_errors_name_the_command(net: TestNetwork) -> None:
    a = net.add_host("a")
    with pytest.raises(NetnsError) as caught:
        net.shape(a, "40mbit", latency="soon")
    message = str(caught.value)
    assert "tc -n" in message and "qdisc replace" in message and caught.value.stderr
    with pytest.raises(ValueError):
        net.shape(a, "fast")
    with pytest.raises(ValueError):
        net.add_host("a")
    with pytest.raises(ValueError):
        net.cut(0, 0)


def test_cleanup_after_an_error_and_of_stale_runs() -> None:
    procs: list[subprocess.Popen[bytes]] = []
    with pytest.raises(RuntimeError, match="boom"), TestNetwork(2, prefix=PREFIX) as network:
        host = network.add_host("x", 1)
        procs.append(host.popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        assert len(ours(network)) == 2
        raise RuntimeError("boom")
    assert ours(network) == []
    assert procs[0].poll() is not None  # what ran in a host was killed

    # A namespace left by a run whose process is gone goes when the next network starts.
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait(10)
    stale = f"{PREFIX}-{dead.pid}-abcdef-sw"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10)
    try:
        with TestNetwork(prefix=PREFIX) as network:
            assert stale not in list_namespaces()
            assert [n for n in list_namespaces() if n.startswith(network.tag)]
    finally:
        if stale in list_namespaces():
            subprocess.run(["ip", "netns", "delete", stale], check=False, timeout=10)
    assert ours(network) == []
