"""A control link kept after a send (``IDLE_KEEP``, actors/sender.py) to a
receiver whose host then goes silent (its link unplugged at the switch: no
FIN, no RST, its packets dropped) is not taken for a live one: the next
send's pre-send check, unanswered on it, asks again on a connection of its
own, so the send fails as unreachable, naming the cause, as a send on a
fresh connection does, not after its whole ``--timeout`` as "did not
answer"."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peercrypt import errors
from peercrypt.testing import netns
from peercrypt.testing.netns import Host, TestNetwork
from peercrypt.testing.nodes import NodeProcess, blake3_file, running

pytestmark = [
    pytest.mark.skipif(
        not netns.available(),
        reason=f"network namespaces unavailable: {netns.unavailable_reason()}",
    ),
    pytest.mark.timeout(180),
]

TIMEOUT = "40"  # the second send's --timeout: far more than the links' heartbeat timeout


@pytest.fixture
def pair(
    tmp_path: Path, network_key: str
) -> Iterator[tuple[TestNetwork, Host, NodeProcess, NodeProcess]]:
    with TestNetwork(groups=1, prefix="pckeep") as net:
        hosts = net.add_host("s"), net.add_host("r")
        nodes = [
            NodeProcess(
                data_dir=tmp_path / host.name,
                network_key=network_key,
                host=host.ip,
                netns=host.ns,
                extra_args=("--max-retries", "0"),  # one attempt: its own failure
            )
            for host in hosts
        ]
        with running(*nodes) as (sender, receiver):
            yield net, hosts[1], sender, receiver


def test_a_kept_link_to_a_host_gone_silent_is_not_taken_for_a_live_one(
    pair: tuple[TestNetwork, Host, NodeProcess, NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    net, r_host, sender, receiver = pair
    first = make_file(64 * 1024, name="first.bin")
    result = sender.send_result(first, receiver.host, receiver.port, timeout=60)
    assert result.returncode == 0 and result.json.get("ok"), result.describe()
    assert blake3_file(receiver.inbox / result.json["stored_as"]) == blake3_file(first)
    net.isolate(r_host)  # the receiver's host goes silent; the kept link saw nothing
    second = make_file(64 * 1024, name="second.bin")
    result = sender.send_result(
        second, receiver.host, receiver.port, "--timeout", TIMEOUT, timeout=120
    )
    assert result.returncode == errors.UNREACHABLE, result.describe()
    info = result.json
    assert info["code"] == "unreachable" and not info["ok"], result.describe()
    assert info["error"].startswith(f"cannot connect to {receiver.host}:{receiver.port}: ")
