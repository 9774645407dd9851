"""docker-compose.yml's cluster, run in network namespaces (scripts/netns_cluster.py).

One cluster for the module: the compose file's bootstrap node and three peer
replicas, each in its own namespace on one bridge, started with the image's
entrypoint and each service's command, the key from the compose secret.
Peers find the bootstrap node by its service name and each other by gossip.

- Membership converges: every node lists every other as alive, at the
  address of its own interface (the container's address).
- One transfer in every mode between two hosts, addressed by container name;
  the stored file has the sent file's BLAKE3.
- Multicast from one host to all the others over the IP group (the compose
  file's MULTICAST_GROUP): one UDP stream, every receiver verifies.
- A host cut off (unplugged at the bridge): a send to it fails as
  unreachable within its timeout; a transfer that runs across a short cut
  completes once the host is back; after restoring, a new transfer succeeds.
- Every node exits 0 on SIGTERM when the cluster stops; no namespace or
  hosts file is left.

Needs root; skipped (with the reason) where namespaces are unavailable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peercrypt import errors
from peercrypt.testing import netns
from peercrypt.testing.cluster import NETNS_ETC, NetnsCluster, Node
from peercrypt.testing.netns import list_namespaces
from peercrypt.testing.nodes import SEND_MODE_ARGS, blake3_file, random_file, wait_until

pytestmark = [
    pytest.mark.skipif(
        not netns.available(),
        reason=f"network namespaces unavailable: {netns.unavailable_reason()}",
    ),
    pytest.mark.timeout(300),
]

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
PORT = 7400
PEERS = 3
MODES = SEND_MODE_ARGS


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NetnsCluster]:
    from peercrypt.crypto.identity import new_network_key

    workdir = tmp_path_factory.mktemp("cluster")
    environ = {"PEERCRYPT_NETWORK_KEY": new_network_key(), "GOSSIP_INTERVAL": "0.5"}
    with NetnsCluster(
        ROOT / "docker-compose.yml", workdir, scale={"peer": PEERS}, environ=environ
    ) as running:
        running.wait_all_healthy()
        yield running
    codes = running.close()
    assert codes == {node.name: 0 for node in running.nodes}, codes
    namespaces = set(list_namespaces())
    for node in running.nodes:
        assert node.host.ns not in namespaces
        assert not (NETNS_ETC / node.host.ns).exists()
        assert "Traceback" not in node.log_text(), node.log_text()


def peers_of(node: Node) -> dict[str, str]:
    """``peers --json`` of ``node``: address -> state."""
    result = node.cli("peers", "--json", timeout=30)
    assert result.returncode == 0, result.stderr
    return {row["address"]: row["state"] for row in json.loads(result.stdout)}


def send(sender: Node, path: Path, target: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = sender.cli("send", path, target, str(PORT), "--json", *args, timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return result.returncode, (json.loads(lines[-1]) if lines else {"stderr": result.stderr})


def inbox(node: Node) -> Path:
    status = node.status()
    assert status is not None
    return Path(status["inbox"])


def assert_delivered(result: dict[str, Any], receiver: Node, path: Path) -> None:
    assert result.get("ok"), result
    stored = inbox(receiver) / result["stored_as"]
    assert blake3_file(stored) == blake3_file(path) == result["blake3"]


def test_the_containers_are_the_compose_files(cluster: NetnsCluster) -> None:
    names = [node.name for node in cluster.nodes]
    assert names == ["peercrypt-bootstrap-1"] + [f"peercrypt-peer-{i}" for i in (1, 2, 3)]
    boot = cluster.node("peercrypt-bootstrap-1")
    # the secret is a file; the key is in no command line
    assert "PEERCRYPT_NETWORK_KEY" not in boot.env
    assert boot.env["PEERCRYPT_NETWORK_KEY_FILE"].startswith(str(cluster.workdir))
    assert all(cluster.environ["PEERCRYPT_NETWORK_KEY"] not in a for a in boot.argv)
    # named volume of the bootstrap inbox, one directory per peer replica
    assert inbox(boot) == cluster.workdir / "volumes" / "bootstrap-inbox"
    for node in cluster.service("peer"):
        assert inbox(node) == cluster.workdir / "volumes" / "peer-inboxes" / node.name


def test_membership_converges_across_all_hosts(cluster: NetnsCluster) -> None:
    everyone = {f"{node.ip}:{PORT}" for node in cluster.nodes}

    def converged() -> bool:
        for node in cluster.nodes:
            seen = peers_of(node)
            others = everyone - {f"{node.ip}:{PORT}"}
            if any(seen.get(address) != "alive" for address in others):
                return False
        return True

    wait_until(converged, 60, "every node to see every other alive", interval=0.5)
    for node in cluster.nodes:  # each advertises its own interface's address
        status = node.status()
        assert status is not None and status["advertise"] == f"tcp://{node.ip}:{PORT}"


@pytest.mark.parametrize("mode", list(MODES))
def test_one_transfer_in_every_mode_between_two_hosts(
    cluster: NetnsCluster, tmp_path: Path, mode: str
) -> None:
    sender, receiver = cluster.node("peercrypt-peer-1"), cluster.node("peercrypt-peer-2")
    path = random_file(tmp_path / f"{mode}.bin", 3 * MiB + 11)
    code, result = send(sender, path, receiver.container.hostname, *MODES[mode])
    assert code == 0, result
    assert result["mode"] == mode
    assert_delivered(result, receiver, path)


def test_multicast_from_one_host_to_all_others_over_the_group(
    cluster: NetnsCluster, tmp_path: Path
) -> None:
    sender = cluster.node("peercrypt-bootstrap-1")
    first, *rest = cluster.service("peer")
    path = random_file(tmp_path / "group.bin", 6 * MiB + 5)
    targets = [arg for node in rest for arg in ("--to", f"{node.container.hostname}:{PORT}")]
    code, result = send(sender, path, first.container.hostname, "-m", *targets, "--timeout", "30")
    assert code == 0, result
    assert result["stats"]["udp"] == 1  # over the IP group, not PUB/SUB
    digest = blake3_file(path)
    rows = {row["target"]: row for row in result["receivers"]}
    for node in cluster.service("peer"):
        row = rows[f"{node.container.hostname}:{PORT}"]
        assert row["code"] == "ok", row
        assert blake3_file(inbox(node) / row["stored_as"]) == digest


def test_a_host_cut_off_and_restored(cluster: NetnsCluster, tmp_path: Path) -> None:
    sender, victim = cluster.node("peercrypt-peer-1"), cluster.node("peercrypt-peer-3")
    target = victim.container.hostname
    cluster.network.isolate(victim.host)
    try:
        code, result = send(
            sender, random_file(tmp_path / "cut.bin", MiB), target, "--timeout", "2"
        )
        assert code in (errors.UNREACHABLE, errors.FAILED), result
        assert result.get("code") in ("unreachable", "timeout"), result
    finally:
        cluster.network.rejoin(victim.host)
    # A transfer running across a short cut (paced to last ~4 s) completes.
    path = random_file(tmp_path / "across.bin", 16 * MiB)
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["code"], outcome["result"] = send(
            sender, path, target, "-r", str(4 * MiB), "--force", "--timeout", "30"
        )

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_until(lambda: _receiving(victim), 30, "the transfer to start", interval=0.1)
        cluster.network.isolate(victim.host)
        threading.Event().wait(1.5)  # the outage itself, shorter than the send's timeout
    finally:
        cluster.network.rejoin(victim.host)
        worker.join(150)
    assert not worker.is_alive()
    assert outcome["code"] == 0, outcome
    assert_delivered(outcome["result"], victim, path)
    # And after restoring, a new transfer succeeds.
    path = random_file(tmp_path / "after.bin", 2 * MiB)
    code, result = send(sender, path, target)
    assert code == 0, result
    assert_delivered(result, victim, path)


def _receiving(node: Node) -> bool:
    status = node.status()
    return status is not None and int(status.get("active", "0")) > 0


def test_the_script_without_a_network_key_is_one_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PEERCRYPT_NETWORK_KEY"}
    for name in ("docker-compose.yml", "Dockerfile"):  # beside no .env
        (tmp_path / name).write_text((ROOT / name).read_text())
    script = ROOT / "scripts" / "netns_cluster.py"
    result = subprocess.run(
        [sys.executable, str(script), "--file", str(tmp_path / "docker-compose.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "peercrypt: error: secret network_key: PEERCRYPT_NETWORK_KEY is not set "
        "(in the environment or .env; `peercrypt keygen` makes a network key)"
    ]


def test_the_script_runs_the_cluster_until_sigterm_then_stops_every_node(tmp_path: Path) -> None:
    """Without a command the script runs the cluster until a signal, then
    stops every node (each exit 0, said) and deletes its namespaces."""
    import queue
    import signal

    from peercrypt.crypto.identity import new_network_key

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # (as a user's)
    env["PEERCRYPT_NETWORK_KEY"] = new_network_key()
    script = ROOT / "scripts" / "netns_cluster.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--scale", "peer=1", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read(stream: Any) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=read, args=(stream,), daemon=True).start()
    said: list[str] = []
    try:
        # (stdout's lines and stderr's come through two pipes: in any order)
        while (
            "running; Ctrl-C stops the cluster\n" not in said or sum(" ns " in x for x in said) < 2
        ):
            line = lines.get(timeout=120)
            assert line is not None, said
            said.append(line)
        namespaces = [line.split(" ns ")[1].split()[0] for line in said if " ns " in line]
        assert len(namespaces) == 2 and set(namespaces) <= set(list_namespaces()), said
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, said
    finally:
        # After a failed assertion: SIGTERM first, so that the script stops
        # its nodes (killed at once, it left them running in their namespaces).
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
    ended = 0
    while ended < 2:  # both streams read to their end
        line = lines.get(timeout=10)
        ended += line is None
        said += [line] if line else []
    stopped = [line for line in said if line.startswith("stopped: ")]
    assert len(stopped) == 1 and stopped[0].count("exit 0") == 2, said
    assert not set(namespaces) & set(list_namespaces())
    assert not any("Traceback" in line for line in said)
