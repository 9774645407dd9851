"""Outages in network namespaces the test builds: a host's link unplugged at
the switch (``isolate``) on the sender's side or on the receiver's side, for
less and for more than the send's ``--timeout``.

- Shorter than the timeout: the same transfer survives it (one attempt, the
  data connection is re-established and what was in flight resent) and the
  stored file has the sender's BLAKE3.
- Longer: the transfer times out, the sender offers it again by itself with
  backoff, and once the link is back the receiver resumes it: the file
  verifies and the chunks the receiver held were not sent again.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.inbox import scan
from peercrypt.testing import netns
from peercrypt.testing.netns import Host, TestNetwork
from peercrypt.testing.nodes import NodeError, NodeProcess, blake3_file, wait_until

pytestmark = [
    pytest.mark.skipif(
        not netns.available(),
        reason=f"network namespaces unavailable: {netns.unavailable_reason()}",
    ),
    pytest.mark.timeout(240),
]

MIB = 1 << 20
CHUNK = 256 * 1024
TIMEOUT = 6.0  # the send's --timeout
RATE = str(6 * MIB)  # bytes/s: the 48 MiB file takes ~8 s, outages land mid-way


@pytest.fixture
def pair(
    tmp_path: Path, network_key: str
) -> Iterator[tuple[TestNetwork, Host, Host, NodeProcess, NodeProcess]]:
    counter = itertools.count()
    started: list[NodeProcess] = []
    with TestNetwork(groups=1, prefix="pcout") as net:
        hosts = net.add_host("s"), net.add_host("r")
        for host in hosts:
            node = NodeProcess(
                data_dir=tmp_path / f"node{next(counter)}-{host.name}",
                network_key=network_key,
                host=host.ip,
                netns=host.ns,
                extra_args=("--max-retries", "10"),
            )
            node.start()
            started.append(node)
        try:
            yield net, hosts[0], hosts[1], started[0], started[1]
        finally:
            problems = []
            for node in started:
                node.send_signal(signal.SIGTERM)
            for node in started:
                try:
                    if node.stop() != 0:
                        problems.append(node.log_tail())
                except NodeError as exc:
                    problems.append(str(exc))
            assert not problems, "\n".join(problems)


def _checkpointed(receiver: NodeProcess) -> int:
    """Chunks the receiver's manifests list as durable."""
    return sum(m.held().count for m in scan(receiver.inbox).manifests)


def _send(sender: NodeProcess, path: Path, receiver: NodeProcess) -> dict[str, Any]:
    result = sender.send_result(
        path, receiver.host, receiver.port,
        "--chunk-size", str(CHUNK), "--timeout", str(TIMEOUT), "-r", RATE, "--force",
        timeout=180,
    )  # fmt: skip
    info = result.json
    assert result.returncode == 0 and info.get("ok"), result.describe()
    assert blake3_file(receiver.inbox / info["stored_as"]) == blake3_file(path) == info["blake3"]
    return info


@pytest.mark.parametrize(
    ("side", "outage"), [("sender", 3.0), ("receiver", 3.0), ("sender", 11.0), ("receiver", 11.0)]
)
def test_outage_then_the_transfer_moves_again(
    side: str,
    outage: float,
    pair: tuple[TestNetwork, Host, Host, NodeProcess, NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    net, s_host, r_host, sender, receiver = pair
    path = make_file(48 * MIB, name="big.bin")
    cut = s_host if side == "sender" else r_host
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sending = pool.submit(_send, sender, path, receiver)
        # Cut mid-way: once the receiver has checkpointed written chunks (its
        # manifest exists from the accept on, listing none at first).
        wait_until(lambda: _checkpointed(receiver) > 0, 60, "a checkpoint with chunks")
        net.isolate(cut)
        try:
            time.sleep(outage)
        finally:
            net.rejoin(cut)
        info = sending.result(timeout=180)
    counters = sender.counters_when("sender.sent", 1)  # (any retry counted before)
    if outage < TIMEOUT:
        assert counters.get("sender.retries", 0) == 0, counters  # the same attempt went on
    else:
        assert counters.get("sender.retries", 0) >= 1, counters
        assert info["stats"]["resumed_chunks"] > 0, info["stats"]
        stats = info["stats"]
        assert (
            stats["sent_chunks"] - stats["retransmits"] == stats["chunks"] - stats["resumed_chunks"]
        )
    assert scan(receiver.inbox).kept == []
