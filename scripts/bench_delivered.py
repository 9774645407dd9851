"""What persisting the table of delivered files costs the receiver per delivery.

The receiver actor's own methods on a real data directory (the actor is not
run): a full table (256 entries, names of ``--name-chars`` characters), then
``--deliveries`` deliveries of 1-byte files, each persisted

- ``rewrite``: the whole table written to a temporary file, fsynced and
  renamed over the old one (``_save_delivered``, what every delivery cost
  before the journal);
- ``journal``: one row appended to the journal (``_note_delivered``; every
  256 rows the journal is folded into a new snapshot, which is included).

The two alternate, ``--runs`` times each; every run is printed: CPU seconds
of this process (user + system), wall seconds, bytes handed to ``write``
(``wchar`` of /proc/self/io) and the snapshot rewrites.

    .venv/bin/python scripts/bench_delivered.py [--deliveries 200] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import zmq

from actors.receiver import ReceiverActor
from peercrypt.core.delivered import CAPACITY, Delivery, FileStamp, journal_row
from peercrypt.core.resume import ResumeKey
from peercrypt.runtime.actor import ActorEnv
from peercrypt.testing.nodes import loopback_settings


def _delivery(n: int, chars: int) -> Delivery:
    name = f"{n:08d}".ljust(chars, "x") + ".bin"
    key = ResumeKey(bytes([n % 251]) * 32, name, 1, 65536, n.to_bytes(32, "big"))
    return Delivery(key, name, n.to_bytes(32, "big"), FileStamp(1, n, 1, n), float(n))


def _wchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(
    mode: str, deliveries: int, chars: int, ctx: zmq.Context[zmq.Socket[bytes]]
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pc-bench-delivered-") as tmp:
        data = Path(tmp)
        settings = loopback_settings(data, None)
        settings.inbox.mkdir()
        receiver = ReceiverActor(ActorEnv(ctx, f"bench-{mode}"), settings)
        for n in range(CAPACITY):
            receiver.delivered.record(_delivery(n, chars))
        receiver._save_delivered()
        table = (data / "delivered.msgpack").stat().st_size
        saves = 0
        save = receiver._save_delivered

        def counted() -> None:
            nonlocal saves
            saves += 1
            save()

        receiver._save_delivered = counted  # type: ignore[method-assign]
        cpu, wall, wchar = _cpu(), time.perf_counter(), _wchar()
        for n in range(CAPACITY, CAPACITY + deliveries):
            d = _delivery(n, chars)
            receiver.delivered.record(d)
            if mode == "rewrite":
                receiver._save_delivered()
            else:
                receiver._note_delivered(journal_row(d))
        return {
            "cpu": _cpu() - cpu,
            "wall": time.perf_counter() - wall,
            "written": _wchar() - wchar,
            "snapshots": saves,
            "table": table,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--name-chars", type=int, default=200)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}; {args.deliveries} deliveries per run")
    results: dict[str, list[dict[str, float]]] = {"rewrite": [], "journal": []}
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        for i in range(args.runs):
            for mode in results:
                r = run(mode, args.deliveries, args.name_chars, ctx)
                results[mode].append(r)
                print(
                    f"run {i + 1} {mode:8} cpu {r['cpu']:.4f} s  wall {r['wall']:.4f} s  "
                    f"written {r['written'] / 1e6:.2f} MB  snapshots {r['snapshots']:.0f}  "
                    f"(table {r['table'] / 1e3:.0f} KB)"
                )
    finally:
        ctx.term()
    for mode, rs in results.items():
        cpu = statistics.median(r["cpu"] for r in rs)
        wall = statistics.median(r["wall"] for r in rs)
        written = statistics.median(r["written"] for r in rs)
        per = args.deliveries
        print(
            f"median {mode:8} cpu {cpu:.4f} s ({cpu / per * 1e6:.0f} us/delivery)  "
            f"wall {wall:.4f} s ({wall / per * 1e3:.2f} ms/delivery)  "
            f"written {written / per / 1e3:.1f} KB/delivery"
        )


if __name__ == "__main__":
    main()
