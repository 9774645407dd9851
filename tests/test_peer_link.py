"""A link's connect probe is bounded: a peer that accepts TCP and never
speaks does not leave the probe set forever (the link could never be
diagnosed again)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import zmq

from actors.peer_link import PROBE_LIMIT, Link
from peercrypt.core.redial import REDIAL_INITIAL
from peercrypt.crypto.identity import KeyPair, network_server_keys, new_network_key
from peercrypt.runtime.actor import Actor, ActorEnv, node_context
from peercrypt.runtime.supervisor import Supervisor
from peercrypt.settings import NodeSettings
from peercrypt.testing.hostile import FloodingGateway
from peercrypt.testing.nodes import wait_until
from peercrypt.wire.messages import Ping

DEADLINE = 10.0


class Prober(Actor):
    """Links to ``url`` and diagnoses it as after a failed connect; records
    whether a probe runs, every 50 ms, and diagnoses again once it ended."""

    name = "prober"
    REPORT_TO = None

    def __init__(self, env: ActorEnv, settings: NodeSettings, url: str, seen: list[str]) -> None:
        super().__init__(env)
        self.settings, self.url, self.seen = settings, url, seen

    def setup(self) -> None:
        self.link = Link(self, self.settings, self.url, lambda _m: None, monitored=True)
        self._diagnose()
        self.call_every(0.05, self._look)

    def _diagnose(self) -> None:
        self.link._diagnose()
        self.seen.append("probing" if self.link.probe is not None else "idle")

    def _look(self) -> None:
        if self.link.probe is None and self.seen[-1] == "probing":
            self.seen.append(f"ended ({self.link.cause or 'no cause'})")
            if self.seen.count("probing") < 2:
                self._diagnose()

    def teardown(self) -> None:
        self.link.close()


def test_a_probe_of_a_peer_that_accepts_and_never_speaks_ends(tmp_path: Path) -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])  # and never a byte back
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    settings = NodeSettings(
        data_dir=tmp_path,
        inbox=tmp_path / "inbox",
        identity=KeyPair.from_seed(bytes(32)),
        server_keys=network_server_keys(None),
    )
    url = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
    seen: list[str] = []
    env = ActorEnv(context=zmq.Context(), node_uid=f"t{time.monotonic_ns()}")
    sup = Supervisor(env, [("prober", lambda e: Prober(e, settings, url, seen))])
    started = time.monotonic()
    sup.start()
    try:
        wait_until(lambda: len(seen) >= 4 or None, DEADLINE, "two probes to end")
        took = time.monotonic() - started
    finally:
        assert sup.stop() is True
        env.context.term()
        stop.set()
        thread.join(DEADLINE)
        for s in (*accepted, silent):
            s.close()
    # Nothing wrong below the handshake: ended without a cause, and probed again.
    assert seen[:4] == ["probing", "ended (no cause)", "probing", "ended (no cause)"], seen
    assert took >= 2 * PROBE_LIMIT
    assert len(accepted) >= 3  # ZeroMQ's own connection and both probes


class Linker(Actor):
    """Makes ``count`` links to ``url`` in one actor, as health and
    discovery keep one to every member; records how many it made, or the
    error that stopped it."""

    name = "linker"
    REPORT_TO = None

    def __init__(
        self, env: ActorEnv, settings: NodeSettings, url: str, count: int, made: list[object]
    ) -> None:
        super().__init__(env)
        self.settings, self.url, self.count_, self.made = settings, url, count, made
        self.links: list[Link] = []

    def setup(self) -> None:
        try:
            for _ in range(self.count_):
                self.links.append(Link(self, self.settings, self.url, lambda _m: None))
        except zmq.ZMQError as exc:
            self.made.append(exc)
        self.made.append(len(self.links))

    def teardown(self) -> None:
        for link in self.links:
            link.close()


def test_a_node_context_holds_a_link_to_every_member_for_health_and_discovery(
    tmp_path: Path,
) -> None:
    """Health and discovery each keep a link to every member (at most
    ``max_members``); each link is three ZeroMQ sockets (its DEALER and its
    monitor's two PAIRs, which its port guard reads). A node's context makes
    them all, on top of what the node's other actors open: with libzmq's
    default of 1023 sockets the 341st link failed ("Too many open files")."""
    settings = NodeSettings(
        data_dir=tmp_path,
        inbox=tmp_path / "inbox",
        identity=KeyPair.from_seed(bytes(32)),
        server_keys=network_server_keys(None),
    )
    closed = socket.create_server(("127.0.0.1", 0))
    url = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens: the links keep trying, as to a member that is down
    count = 2 * settings.max_members + 64  # and room for an idle node's own ~65 sockets
    made: list[object] = []
    env = ActorEnv(context=node_context(), node_uid=f"t{time.monotonic_ns()}")
    sup = Supervisor(env, [("linker", lambda e: Linker(e, settings, url, count, made))])
    sup.start()
    try:
        wait_until(lambda: isinstance(made[-1:] and made[-1], int) or None, DEADLINE, "the links")
    finally:
        assert sup.stop() is True
        env.context.term()
    assert made == [count], made


class Flooded(Actor):
    """Links to a member that floods the link; records every 20 ms whether
    the link's watch has a connection (after one was closed for the flood)."""

    name = "flooded"
    REPORT_TO = None

    def __init__(
        self, env: ActorEnv, settings: NodeSettings, url: str, seen: list[tuple[float, int]]
    ) -> None:
        super().__init__(env)
        self.settings, self.url, self.seen = settings, url, seen

    def setup(self) -> None:
        self.link = Link(self, self.settings, self.url, lambda _m: None)
        self.sent = False
        self.call_every(0.02, self._look)

    def _look(self) -> None:
        if not self.sent:  # (not before the link is connected: immediate)
            self.sent = self.link.send(Ping(seq=1)) > 0
        self.seen.append((time.monotonic(), self.link.watch.connections))

    def teardown(self) -> None:
        self.link.close()


def test_a_link_closed_for_a_flood_connects_again_only_after_a_pause(tmp_path: Path) -> None:
    """A member floods a link the node dialled: the link's watch closes the
    connection, and the link connects again only after the redial's pause
    (1 s: core/redial.py), not at once as libzmq would (100 ms). The bound
    checked is a lower one (a loaded machine only makes the pause longer)."""
    key = new_network_key()
    settings = NodeSettings(
        data_dir=tmp_path,
        inbox=tmp_path / "inbox",
        identity=KeyPair.from_seed(bytes(32)),
        server_keys=network_server_keys(key),
        control_port_memory=1 << 20,
    )
    hostile = FloodingGateway(key, messages=2_000_000)
    seen: list[tuple[float, int]] = []
    env = ActorEnv(context=node_context(), node_uid=f"t{time.monotonic_ns()}")
    url = f"tcp://127.0.0.1:{hostile.port}"
    sup = Supervisor(env, [("flooded", lambda e: Flooded(e, settings, url, seen))])
    sup.start()

    def gap() -> float | None:
        """Seconds without a connection after the first one closed, once a
        connection came again."""
        states = list(seen)
        first = next((i for i, (_, n) in enumerate(states) if n), None)
        if first is None:
            return None
        gone = next((i for i in range(first, len(states)) if not states[i][1]), None)
        if gone is None:
            return None
        back = next((i for i in range(gone, len(states)) if states[i][1]), None)
        return None if back is None else states[back][0] - states[gone - 1][0]

    try:
        pause = wait_until(gap, 4 * DEADLINE, "the link to close and connect again")
    finally:
        assert sup.stop() is True
        env.context.term()
        hostile.close()
    assert pause >= 0.9 * REDIAL_INITIAL, f"connected again {pause:.2f} s after the close"
