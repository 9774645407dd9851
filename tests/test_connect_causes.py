"""``health-check`` (and every monitored connect) names the real cause of a
failed connection, checked in network namespaces the test builds: refused
(nothing on the port), network unreachable (no route from the host), no route
to host (nobody at the address on its own network), timed out (the SYN goes
out, nothing comes back)."""

from __future__ import annotations

import errno
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.peer_link import connect_cause
from peercrypt import errors
from peercrypt.testing import netns
from peercrypt.testing.netns import TestNetwork
from peercrypt.testing.nodes import CliResult, NodeProcess

pytestmark = [
    pytest.mark.skipif(
        not netns.available(),
        reason=f"network namespaces unavailable: {netns.unavailable_reason()}",
    ),
    pytest.mark.timeout(90),
]


def test_every_errno_has_words() -> None:
    assert connect_cause(errno.ECONNREFUSED).startswith("connection refused")
    assert connect_cause(errno.ENETUNREACH).startswith("network unreachable")
    assert connect_cause(errno.EHOSTUNREACH).startswith("no route to host")
    assert connect_cause(errno.ETIMEDOUT).startswith("timed out")
    assert connect_cause(errno.EPIPE) == "broken pipe"


@pytest.fixture
def node(tmp_path: Path, network_key: str) -> Iterator[tuple[TestNetwork, NodeProcess]]:
    with TestNetwork(prefix="pccause") as net:
        host = net.add_host("a")
        # Someone whose SYNs vanish: a neighbour entry for a MAC nobody has.
        net._ip(host.ns, "neigh", "add", "10.200.0.201", "lladdr", "02:00:00:00:00:01",
                "dev", host.iface, "nud", "permanent")  # fmt: skip
        n = NodeProcess(
            data_dir=tmp_path / "a",
            network_key=network_key,
            host=host.ip,
            netns=host.ns,
            extra_args=("--timeout", "7", "--max-retries", "0"),
        )
        n.start()
        try:
            yield net, n
        finally:
            n.send_signal(signal.SIGTERM)
            assert n.stop() == 0, n.log_tail()


def check(node: NodeProcess, host: str, port: int = 7400) -> str:
    result: CliResult = node.cli("health-check", host, str(port), timeout=40)
    assert result.returncode == errors.UNREACHABLE, result.describe()
    lines = [x for x in result.stderr.splitlines() if x.startswith("peercrypt: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.describe()
    assert f"cannot connect to {host}:{port}: " in lines[0], lines[0]
    return lines[0]


def test_health_check_names_the_cause(node: tuple[TestNetwork, NodeProcess]) -> None:
    _, n = node
    assert "connection refused" in check(n, n.host, 1)
    assert "network unreachable" in check(n, "192.0.2.55")
    assert "no route to host" in check(n, "10.200.0.200")
    assert "timed out" in check(n, "10.200.0.201")
