"""The CPU a port watch's actor spends while one of many idle connections
sends small messages one by one, each taken at once.

A real actor loop (a Supervisor with one actor) binds a ROUTER guarded by a
:class:`~actors.port_watch.PortWatch`; N DEALERs connect to it and stay
quiet long enough for the watch to rest; then one of them sends a 20-byte
message every ``--period`` seconds for ``--seconds``. Prints the actor
thread's CPU share, the watch's readings and its requests to the kernel
(``O_ASYNC`` set or cleared): what messages that come one by one cost a
watch that rests between them, against the readings a watch that never
rests makes. For an A/B, run it with ``PYTHONPATH`` set to another tree.

    .venv/bin/python scripts/bench_watch_messages.py --connections 1000 --period 0.025 --public
    PYTHONPATH=/tmp/other .venv/bin/python scripts/bench_watch_messages.py --connections 65
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

import zmq

from actors import port_watch
from actors.port_watch import DATA_PORT_SAMPLING, PUBLIC_PORT_SAMPLING, PortWatch
from peercrypt.core.port_guard import DATA_HANDSHAKE, GuardLimits
from peercrypt.runtime.actor import Actor, ActorEnv
from peercrypt.runtime.supervisor import Supervisor

calls = {"readings": 0, "asks": 0, "taken": 0}
state: dict[str, Any] = {}


def count_calls() -> None:
    """Count the watch's readings and (where this tree has them) its
    requests to the kernel, by wrapping the methods."""
    sample = PortWatch.sample

    def counted_sample(self: PortWatch) -> Any:
        calls["readings"] += 1
        return sample(self)

    PortWatch.sample = counted_sample  # type: ignore[method-assign]
    arrivals = getattr(port_watch, "Arrivals", None)
    if arrivals is not None:
        set_async = arrivals._set_async

        def counted_set(self: Any, inode: int, fd: int, on: bool) -> bool:
            calls["asks"] += 1
            return bool(set_async(self, inode, fd, on))

        arrivals._set_async = counted_set


class Watched(Actor):
    name = "receiver"
    REPORT_TO = None
    public = False

    def setup(self) -> None:
        state["tid"] = threading.get_native_id()
        sock = self.socket(zmq.ROUTER)
        sock.rcvhwm = 0
        self.port_watch = PortWatch(
            GuardLimits(held=64 << 20, connections=4096, per_address=4096),
            self.count,
            sampling=PUBLIC_PORT_SAMPLING if self.public else DATA_PORT_SAMPLING,
            allowance=DATA_HANDSHAKE,
        )
        self.port_watch.start(self, sock, "bench")
        sock.bind("tcp://127.0.0.1:0")
        state["endpoint"] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.watch(sock, self._on_peer)
        state["actor"] = self

    def _on_peer(self, sock: zmq.Socket[Any]) -> None:
        for _ in range(64):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            calls["taken"] += 1
            self.port_watch.delivered(frames)


def thread_cpu(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--period", type=float, default=0.01, help="seconds between messages")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quiet", type=float, default=1.0, help="seconds of quiet first")
    parser.add_argument("--public", action="store_true", help="the public port's sampling")
    args = parser.parse_args()
    Watched.public = args.public
    count_calls()
    context: zmq.Context[Any] = zmq.Context()
    supervisor = Supervisor(
        ActorEnv(context=context, node_uid=f"bench{os.getpid()}"), [("receiver", Watched)]
    )
    supervisor.start()
    clients_context: zmq.Context[Any] = zmq.Context()
    clients = []
    for _ in range(args.connections):
        dealer = clients_context.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(state["endpoint"])
        clients.append(dealer)
    deadline = time.monotonic() + 30
    while state["actor"].port_watch.connections < args.connections:
        if time.monotonic() > deadline:
            raise SystemExit("the connections were not all seen within 30 s")
        time.sleep(0.05)
    time.sleep(args.quiet)
    cpu, before = thread_cpu(state["tid"]), dict(calls)
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < args.seconds:
        clients[0].send(b"x" * 20)
        sent += 1
        time.sleep(args.period)
    time.sleep(0.1)
    used = thread_cpu(state["tid"]) - cpu
    took = time.monotonic() - started
    print(
        f"{args.connections} connections, {sent} messages in {took:.1f} s: the actor's CPU"
        f" {used:.2f} s = {100 * used / took:.1f}% of a core; readings"
        f" {calls['readings'] - before['readings']}, requests to the kernel"
        f" {calls['asks'] - before['asks']}, messages taken {calls['taken'] - before['taken']}"
    )
    for dealer in clients:
        dealer.close()
    supervisor.stop()
    clients_context.term()
    context.term()


if __name__ == "__main__":
    main()
