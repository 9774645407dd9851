"""A node on the IPv6 loopback (``--host ::1``): it starts, a node on
127.0.0.1 sends to it and health-checks it (``::1`` and ``[::1]`` alike),
and a port it cannot take is named as the user gave it.

libzmq binds and dials an IPv6 address only on a socket with its ``IPV6``
option set (peercrypt/runtime/actor.py, ``Actor.bind`` and ``dial``)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from peercrypt import errors
from peercrypt.testing.nodes import NodeProcess, blake3_file, random_file, run_cli, wait_until

IN_USE = "Address already in use"


def _no_ipv6_loopback() -> str:
    """Why this machine cannot listen on ``::1`` ("" if it can)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"no IPv6 loopback here: {exc.strerror or exc}"
    return ""


pytestmark = pytest.mark.skipif(bool(_no_ipv6_loopback()), reason=_no_ipv6_loopback())


@pytest.fixture
def ipv6_receiver(tmp_path: Path, network_key: str) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path / "receiver", network_key=network_key, host="::1")
    with node:
        yield node
        node.send_signal()
        assert node.stop() == 0, node.log_tail()


def test_a_node_on_the_ipv6_loopback_receives_and_answers(
    tmp_path: Path, network_key: str, ipv6_receiver: NodeProcess
) -> None:
    said = f"listening on [::1]:{ipv6_receiver.port} "
    # (its stdout is a file: the line may reach it after the node answers)
    wait_until(lambda: said in ipv6_receiver.log_text(), 30, "the node's listening line")
    with NodeProcess(tmp_path / "sender", network_key=network_key) as sender:
        for n, host in enumerate(("::1", "[::1]")):
            source = random_file(tmp_path / f"over-ipv6-{n}.bin", 3 * 1024 * 1024 + n)
            code, result = sender.send(source, host, ipv6_receiver.port, timeout=60)
            assert code == 0, (result, ipv6_receiver.log_tail())
            assert result["blake3"] == blake3_file(source)
            assert blake3_file(ipv6_receiver.inbox / result["stored_as"]) == blake3_file(source)
            # Named in brackets, as given or not (`::1:PORT` reads as one address).
            where = f"[::1]:{ipv6_receiver.port}"
            assert result["peer"] == where
            alive = sender.cli("health-check", host, str(ipv6_receiver.port), timeout=30)
            assert alive.returncode == 0, alive.describe()
            assert alive.stdout.startswith(f"alive {where}: node "), alive.stdout
        sender.send_signal()
        assert sender.stop() == 0, sender.log_tail()


def test_a_port_taken_on_the_ipv6_loopback_is_named_as_given(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        public = run_cli(
            "node", "--host", "::1", "--port", str(port), "--open", data_dir=tmp_path / "a"
        )
        data = run_cli(
            "node",
            "--host",
            "::1",
            "--port",
            "0",
            "--data-port",
            str(port),
            "--open",
            data_dir=tmp_path / "b",
        )
    assert (public.returncode, public.stderr_lines) == (
        errors.USAGE,
        [f"peercrypt: error: cannot listen on [::1]:{port}: {IN_USE}"],
    ), public.describe()
    assert (data.returncode, data.stderr_lines) == (
        errors.USAGE,
        [f"peercrypt: error: cannot listen on [::1]:{port} (the data port): {IN_USE}"],
    ), data.describe()


def test_the_address_towards_an_ipv6_host_is_found_over_ipv6() -> None:
    """What a node on a wildcard advertises to an IPv6 seed, and what an
    attached receiver advertises towards an IPv6 node: found with an IPv6
    probe (an IPv4 one found no route, and 127.0.0.1 was advertised)."""
    from actors.peer_link import address_towards

    assert address_towards("::1") == "::1"
    assert address_towards("127.0.0.1") == "127.0.0.1"
