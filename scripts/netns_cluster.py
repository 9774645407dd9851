#!/usr/bin/env python3
"""Run docker-compose.yml's cluster without Docker: one network namespace per
container on one bridge, the same environment, volumes, names and commands
(see peercrypt/testing/cluster.py for what is mapped how). Needs root.

    sudo .venv/bin/python scripts/netns_cluster.py --scale peer=5
    sudo .venv/bin/python scripts/netns_cluster.py -- peercrypt-peer-1 peers

Without a command: starts the cluster, prints each container's address and
how to reach it, and runs until Ctrl-C or SIGTERM, then stops every node
(SIGTERM, exit codes shown) and deletes the namespaces. With ``-- CONTAINER
ARGS...``: starts the cluster, waits until every node is healthy, runs
``peercrypt ARGS`` in that container, tears down and exits with its code.
The network key comes from PEERCRYPT_NETWORK_KEY or .env, as for compose.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peercrypt.testing import compose, netns  # noqa: E402
from peercrypt.testing.cluster import ClusterError, NetnsCluster, parse_scale  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", "-f", type=Path, default=ROOT / "docker-compose.yml")
    parser.add_argument("--scale", action="append", default=[], metavar="SERVICE=N")
    parser.add_argument("--workdir", type=Path, help="volumes, secrets, logs (default: temporary)")
    parser.add_argument("--groups", type=int, default=1, help="bridges to spread containers over")
    parser.add_argument("command", nargs="*", help="CONTAINER ARGS...: run peercrypt ARGS there")
    args = parser.parse_args(argv)
    reason = netns.unavailable_reason()
    if reason is not None:
        print(f"peercrypt: error: {reason}", file=sys.stderr)
        return 2
    # The handler only marks: it runs in the main thread between two of its
    # steps, maybe one holding an Event's lock (setting that Event there
    # would wait for itself).
    signalled: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: signalled.append(signum))
    with tempfile.TemporaryDirectory(prefix="peercrypt-cluster-") as tmp:
        workdir = args.workdir or Path(tmp)
        try:
            cluster = NetnsCluster(
                args.file, workdir, scale=parse_scale(args.scale), groups=args.groups
            )
        except (ValueError, ClusterError, compose.ComposeError) as exc:
            print(f"peercrypt: error: {exc}", file=sys.stderr)
            return 2
        code = 0
        try:
            cluster.start()
            cluster.wait_all_healthy()
            for node in cluster.nodes:
                line = f"{node.name:28} {node.ip:14} ns {node.host.ns}  log {node.log_path}"
                print(line, flush=True)  # (before the cluster runs on: a pipe reads it now)
            if args.command:
                name, *rest = args.command
                result = cluster.node(name).cli(*rest)
                sys.stdout.write(result.stdout)
                sys.stderr.write(result.stderr)
                code = result.returncode
            else:
                print("running; Ctrl-C stops the cluster", file=sys.stderr)
                while not signalled:
                    time.sleep(0.5)  # (a signal is seen within 0.5 s)
                    if signalled:  # a Ctrl-C at the terminal reached the nodes too
                        break
                    gone = [n.name for n in cluster.nodes if not n.running]
                    if gone and not signalled:
                        print(f"peercrypt: error: exited: {', '.join(gone)}", file=sys.stderr)
                        code = 1
                        break
        except (ClusterError, StopIteration, KeyError) as exc:
            print(f"peercrypt: error: {exc}", file=sys.stderr)
            code = 1 if cluster.nodes else 2  # nothing started: the set-up is wrong
        finally:
            codes = cluster.close()
            if codes:
                stopped = ", ".join(f"{k} exit {v}" for k, v in codes.items())
                print(f"stopped: {stopped}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
