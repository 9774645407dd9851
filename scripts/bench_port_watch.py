"""The CPU a port's guard costs to read its connections' counters.

Opens N loopback TCP connections, hands their accepted ends to a
:class:`~actors.port_watch.PortWatch` as its monitor would, and times its
readings (CPU time of this process, not wall time: the machine is shared).
Prints the CPU per reading and per connection, and the share of one core
that each port's sampling then costs at most: idle (nothing read, nothing
held), steady, and under a flood (a quarter of the bound held).

    .venv/bin/python scripts/bench_port_watch.py [--connections 1 10 100] [--readings 2000]
"""

from __future__ import annotations

import argparse
import os
import socket
import time

from actors.port_watch import DATA_PORT_SAMPLING, PUBLIC_PORT_SAMPLING, PortWatch, Sampling
from peercrypt.core.port_guard import GuardLimits


def share(cost: float, connections: int, interval: float, sampling: Sampling) -> float:
    """The share of a core: one reading's CPU over the interval used."""
    return cost / max(interval, sampling.cost * connections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--readings", type=int, default=2000)
    args = parser.parse_args()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    kept: list[socket.socket] = []
    watch = PortWatch(GuardLimits(held=1 << 30, connections=4096, per_address=4096), print)
    ports = {"data port": DATA_PORT_SAMPLING, "public port": PUBLIC_PORT_SAMPLING}
    print(
        "connections  CPU/reading  per connection  "
        + "  ".join(f"{name} idle/steady/flood" for name in ports)
    )
    for wanted in sorted(args.connections):
        while watch.connections < wanted:
            client = socket.create_connection(server.getsockname())
            accepted, _ = server.accept()
            kept += [client, accepted]
            inode = os.fstat(accepted.fileno()).st_ino
            watch._fds[inode] = accepted.fileno()
            watch.guard.accepted(inode, "127.0.0.1")
        start = time.process_time()
        for _ in range(args.readings):
            watch.sample()
        cost = (time.process_time() - start) / args.readings
        cells = []
        for sampling in ports.values():
            shares = [
                share(cost, wanted, i, sampling)
                for i in (sampling.idle, sampling.interval, sampling.busy)
            ]
            cells.append("/".join(f"{100 * s:.2f}%" for s in shares))
        print(
            f"{wanted:>11}  {cost * 1e6:>8.1f} us  {cost * 1e6 / wanted:>11.1f} us  "
            + "  ".join(f"{c:>30}" for c in cells)
        )
    for sock in kept:
        sock.close()
    server.close()


if __name__ == "__main__":
    main()
