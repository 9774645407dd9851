"""Starting and stopping nodes: repeatedly, by signal, in-process, after SIGKILL."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from peercrypt import errors
from peercrypt.client import ControlClient
from peercrypt.crypto.identity import (
    fingerprint,
)
from peercrypt.node import Node
from peercrypt.runtime.supervisor import StartError
from peercrypt.settings import NodeSettings
from peercrypt.testing.nodes import (
    NodeProcess,
    blake3_file,
    loopback_settings,
    run_cli,
    start_cli,
    wait_until,
)

CYCLES = 20
STOP_BOUND = 5.0  # seconds from SIGTERM to exit


def assert_clean_log(node: NodeProcess) -> None:
    text = node.log_text()
    for bad in ("Traceback", "ERROR", "KeyboardInterrupt", "crashed"):
        assert bad not in text, node.log_tail()


# -- node processes --------------------------------------------------------------------


def test_start_stop_many_times(tmp_path: Path, network_key: str) -> None:
    """start -> status -> SIGTERM -> exit 0, CYCLES times on one data dir."""
    node = NodeProcess(tmp_path / "node", network_key=network_key)
    fingerprints = set()
    try:
        for cycle in range(CYCLES):
            node.start()
            status = node.status()
            assert status["pid"] == str(node.pid)
            assert status["port"] == str(node.port) and node.port > 0
            assert status["data_port"] == str(node.data_port) and node.data_port > 0
            fingerprints.add(status["fingerprint"])
            started = time.monotonic()
            code = node.stop(timeout=10)
            elapsed = time.monotonic() - started
            assert code == 0, f"cycle {cycle}: exit {code}\n{node.log_tail()}"
            assert elapsed < STOP_BOUND, f"cycle {cycle}: stop took {elapsed:.1f} s"
            assert not (node.data_dir / "control.json").exists(), f"cycle {cycle}"
    finally:
        if node.running:
            node.kill()
    assert len(fingerprints) == 1  # the identity persists across restarts
    assert_clean_log(node)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_node_cleanly(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    sig: signal.Signals,
) -> None:
    """After real work (a transfer), a signal still ends the node with 0."""
    receiver = node_factory()
    sender = node_factory()
    source = make_file(200 * 1024)
    code, result = sender.send_to(source, receiver)
    assert code == 0, result
    assert blake3_file(receiver.inbox / result["stored_as"]) == blake3_file(source)
    for node in (receiver, sender):
        started = time.monotonic()
        assert node.stop(timeout=10, sig=sig) == 0, node.log_tail()
        assert time.monotonic() - started < STOP_BOUND
        assert not (node.data_dir / "control.json").exists()
        assert_clean_log(node)
    not_running = run_cli("status", "--json", data_dir=receiver.data_dir)
    assert not_running.returncode == errors.FAILED
    assert not_running.json["running"] is False


def test_recovery_after_sigkill(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    network_key: str,
) -> None:
    """A killed node leaves a stale control file; nothing is fooled by it."""
    receiver = node_factory()
    victim = node_factory()
    old_fingerprint = victim.fingerprint
    assert victim.kill() == -signal.SIGKILL
    assert (victim.data_dir / "control.json").exists()  # nobody could remove it

    status = victim.cli("status", "--json")
    assert status.returncode == errors.FAILED, status.describe()
    assert status.json["running"] is False
    assert "stale" in status.json["reason"]

    # A send through the dead node's data dir runs a temporary node instead.
    source = make_file(64 * 1024 + 1)
    code, result = victim.send(
        source, receiver.host, receiver.port, "--network-key", network_key, timeout=60
    )
    assert code == 0, result
    assert blake3_file(receiver.inbox / result["stored_as"]) == blake3_file(source)

    # And a new node starts on that data dir, with the same identity.
    victim.start()
    assert victim.fingerprint == old_fingerprint
    assert victim.status()["pid"] == str(victim.pid)
    assert victim.stop() == 0


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never says anything."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def test_send_reports_promptly_when_its_node_dies(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], blackhole: int
) -> None:
    """The local node is killed while `send` waits for the peer's answer."""
    sender = node_factory()
    source = make_file(1024)
    args = ["send", str(source), "127.0.0.1", str(blackhole), "--timeout", "20"]
    with start_cli(*args, data_dir=sender.data_dir) as cli:
        try:
            # The send is in progress: no check answered, so its sender asks who is there.
            sender.wait_for_counter("sender.hellos", 1)
            sender.kill()  # a crash, the OOM killer, kill -9
            try:
                _, stderr = cli.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                pytest.fail("`send` still waits 5 s after its node died")
        finally:
            cli.kill()
    assert cli.returncode == errors.FAILED
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peercrypt: error: "), stderr
    assert "stopped" in lines[0]


# -- in-process nodes ----------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, network_key: str) -> NodeSettings:
    return loopback_settings(tmp_path / "inproc", network_key)


def _ports_known(client: ControlClient) -> dict[str, str] | None:
    facts = client.status().node
    return facts if "port" in facts and "data_port" in facts else None


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _extra_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


def test_in_process_node_start_stop_leaves_no_threads(settings: NodeSettings) -> None:
    # One warm-up cycle: first use may create lasting process-wide state.
    with Node(settings):
        pass
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    for cycle in range(CYCLES):
        node = Node(settings)
        node.start()
        try:
            assert _extra_threads(threads_before), "the node runs no threads?"
            with ControlClient.for_data_dir(settings.data_dir) as client:
                facts = wait_until(functools.partial(_ports_known, client), 5.0, "port facts")
            assert facts["fingerprint"] == fingerprint(settings.identity.public)
            assert int(facts["port"]) > 0
            assert facts["pid"] == str(os.getpid())
        finally:
            started = time.monotonic()
            node.stop()
            assert time.monotonic() - started < STOP_BOUND, f"cycle {cycle}"
        node.stop()  # a second stop is harmless
        assert node.context.closed, f"cycle {cycle}: context left open"
        assert not (settings.data_dir / "control.json").exists()
        assert _extra_threads(threads_before) == [], f"cycle {cycle}"
    assert _open_fds() <= fds_before, "file descriptors leaked"


def test_in_process_failed_start_leaves_no_threads(settings: NodeSettings) -> None:
    with Node(settings):
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        threads_before = set(threading.enumerate())
        fds_before = _open_fds()
        for _ in range(5):
            node = Node(dataclasses.replace(settings, port=port))
            with pytest.raises((StartError, zmq.ZMQError)):
                node.start()
            node.stop()
            assert node.context.closed
            assert _extra_threads(threads_before) == []
            assert not (settings.data_dir / "control.json").exists()
        assert _open_fds() <= fds_before
