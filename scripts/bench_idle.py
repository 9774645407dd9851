"""The CPU an idle node uses with default intervals, from /proc.

Starts one real node (``peercrypt node --port 0 --open`` on loopback, a
temporary data dir), lets it settle, then reads the CPU time of the
process's threads from /proc at the start and the end of
``--seconds`` and prints the share of one core, and the threads (by name)
that used it.

    .venv/bin/python scripts/bench_idle.py --seconds 60 [--tree OTHER_CHECKOUT ...]

With ``--tree DIR`` a node from that source tree (e.g. an export of an older
commit) idles in the same window: an interleaved before/after on a shared,
loaded machine. With ``--member`` each measured node has joined another
(of its tree, not measured): what an idle node of a network costs, with its
gossip rounds, health probes and the port watches of its member links (a
node alone has none of them).

    .venv/bin/python scripts/bench_idle.py --seconds 60 --member [--key]

``--key``: the nodes share a network key (as a user's do: CURVE on every
member connection, members proving their keys) instead of an open network.

``--shell``: each measured node is ``peercrypt start`` (a node and its
prompt in one process, on a pseudo-terminal, as a user leaves it open):
what an idle shell costs, its prompt and the prompt's watcher included.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import NodeProcess

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(stat: str) -> tuple[str, int]:
    """(name, utime + stime) of one /proc stat line."""
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    return name, int(fields[11]) + int(fields[12])


def threads(pid: int) -> dict[str, tuple[int, int]]:
    """Each thread's CPU time in ns and the times it was run: the
    scheduler's own counts (``schedstat``), not the clock ticks of ``stat``,
    which sample the thread running at each tick (10 ms): a thread waking a
    few times a second for 0.3 ms is charged a tick now and then, or none.
    The runs count its wake-ups: on this shared machine the CPU of a few
    wake-ups a second swings by half from run to run, their number not."""
    out: dict[str, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = cpu_ticks((task / "stat").read_text())[0]
            ns, _, runs = (int(v) for v in (task / "schedstat").read_text().split()[:3])
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[f"{name}/{task.name}"] = (ns, runs)
    return out


def started_shell(
    data_dir: Path, env: dict[str, str], extra: tuple[str, ...], stack: contextlib.ExitStack
) -> int:
    """``peercrypt start`` for ``data_dir`` on a pseudo-terminal, at its
    prompt: its pid. The admission comes as the nodes' does: the network
    key in the environment (never in argv), or ``--open``."""
    import pexpect

    key = ADMISSION.get("network_key")
    child_env = {**os.environ, **env, **({"PEERCRYPT_NETWORK_KEY": key} if key else {})}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "peercrypt", "--data-dir", str(data_dir), "start", "--host", "127.0.0.1",
         "--port", "0", *([] if key else ["--open"]), *extra],
        env=child_env, encoding="utf-8", timeout=30, dimensions=(40, 160),
    )  # fmt: skip
    stack.callback(lambda: child.terminate(force=True))
    child.expect("listening on")
    child.expect("peercrypt>")
    return int(child.pid)


ADMISSION: dict[str, Any] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument(
        "--tree",
        type=os.path.abspath,
        action="append",
        default=[],
        help="run a node from this source tree too (PYTHONPATH), measured in the same window",
    )
    parser.add_argument(
        "--member",
        action="store_true",
        help="each measured node joins a node of its own (not measured) first",
    )
    parser.add_argument(
        "--key",
        action="store_true",
        help="a network key (CURVE, members' proofs) instead of an open network",
    )
    parser.add_argument(
        "--shell",
        action="store_true",
        help="measure `peercrypt start` (a node and its prompt) on a pseudo-terminal",
    )
    args = parser.parse_args()
    admission: dict[str, Any] = (
        {"network_key": new_network_key()} if args.key else {"open_network": True}
    )
    ADMISSION.update(admission)
    here = str(Path(__file__).resolve().parent.parent)
    trees: list[str] = [here, *args.tree]
    with tempfile.TemporaryDirectory(prefix="pc-idle-") as tmp, contextlib.ExitStack() as stack:
        os.chdir(tmp)  # `python -m` puts the working directory first on sys.path
        nodes = []
        for i, tree in enumerate(trees):
            env = {"PYTHONPATH": tree}
            extra: tuple[str, ...] = ()
            if args.member:
                seed = NodeProcess(Path(tmp) / f"seed{i}", env=env, **admission).start()
                stack.callback(seed.stop)
                extra = ("--bootstrap-host", "127.0.0.1", "--bootstrap-port", str(seed.port))
            if args.shell:
                nodes.append((tree, started_shell(Path(tmp) / f"node{i}", env, extra, stack)))
                continue
            node = NodeProcess(
                Path(tmp) / f"node{i}", env=env, extra_args=extra, **admission
            ).start()
            stack.callback(node.stop)
            assert node.proc is not None
            nodes.append((tree, node.proc.pid))
        time.sleep(args.settle)
        before = {
            pid: (cpu_ticks(Path(f"/proc/{pid}/stat").read_text())[1], threads(pid))
            for _, pid in nodes
        }
        start = time.monotonic()
        time.sleep(args.seconds)
        after = {
            pid: (cpu_ticks(Path(f"/proc/{pid}/stat").read_text())[1], threads(pid))
            for _, pid in nodes
        }
        elapsed = time.monotonic() - start
    for name, pid in nodes:
        ticks = (after[pid][0] - before[pid][0]) / TICKS
        # The threads' own counts (one that ended within the span is missed:
        # an idle node starts none), the ticks' total beside it.
        was = before[pid][1]
        grown = {
            k: (ns - was.get(k, (0, 0))[0], runs - was.get(k, (0, 0))[1])
            for k, (ns, runs) in after[pid][1].items()
        }
        used = sum(ns for ns, _ in grown.values()) / 1e9
        wakes = sum(runs for _, runs in grown.values())
        kind = "idle node with a member" if args.member else "idle node"
        kind = f"{kind}, `start` with its prompt" if args.shell else kind
        print(
            f"{kind} ({name}): {used:.2f} CPU s in {elapsed:.1f} s"
            f" = {100 * used / elapsed:.2f}% of a core (clock ticks: {ticks:.2f} s),"
            f" {wakes / elapsed:.1f} wake-ups a second"
        )
        busy = sorted(((ns, runs, k) for k, (ns, runs) in grown.items()), reverse=True)
        for ns, runs, thread in busy[:6]:
            if ns:
                print(
                    f"  thread {thread:20} {ns / 1e9:7.3f} CPU s {runs / elapsed:6.2f} wake-ups/s"
                )


if __name__ == "__main__":
    main()
