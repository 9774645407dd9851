"""Resume benchmark: a transfer killed half way, then sent again.

Two node processes on loopback. A file (1 GiB by default) is sent; when the
receiver's manifest records half of it, one side is killed with SIGKILL
(``--kill receiver``, ``sender`` or ``both``, one run each), restarted, and
the file is sent again. Reported per run: the share of the file's bytes the
resend moved (the goal is <= 55%), the resume check (offer to accept, which
finds the kept part and its manifest without reading either file whole; the
goal is < 2 s), the resend's duration and that the stored file's BLAKE3 is
the source's. ``--fsync-cost`` also measures what the durable checkpoints
cost the writer: ``fdatasync`` time per GiB at one checkpoint per 16 MiB.

    .venv/bin/python scripts/bench_resume.py [--size 1G] [--kill both] [--fsync-cost]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from actors.file_writer import _writeback_starter
from actors.inbox import scan
from peercrypt.core.resume import CHECKPOINT_BYTES
from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import (
    NodeProcess,
    blake3_file,
    parse_size,
    random_file,
    start_cli,
    wait_until,
)

MiB = 2**20


def held_bytes(inbox: Path) -> int:
    found = scan(inbox)
    return max((m.held_bytes() for m in found.manifests), default=0)


def one_run(work: Path, path: Path, victim_side: str) -> dict[str, Any]:
    key = new_network_key()
    receiver = NodeProcess(data_dir=work / f"receiver-{victim_side}", network_key=key).start()
    sender = NodeProcess(data_dir=work / f"sender-{victim_side}", network_key=key).start()
    size = path.stat().st_size
    try:
        proc = start_cli(
            "send", str(path), "127.0.0.1", str(receiver.port), "--json",
            data_dir=sender.data_dir,
        )  # fmt: skip
        try:
            wait_until(
                lambda: held_bytes(receiver.inbox) >= size // 2 or proc.poll() is not None,
                600,
                "half of the file",
            )
            killed_at = held_bytes(receiver.inbox)
            victim = receiver if victim_side == "receiver" else sender
            victim.kill()
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
        victim.start()
        started = time.monotonic()
        result = sender.send_result(path, "127.0.0.1", receiver.port, timeout=900)
        seconds = time.monotonic() - started
        info = result.json
        if result.returncode != 0 or not info.get("ok"):
            raise SystemExit(f"resend failed: {result.describe()}")
        stats = info["stats"]
        stored = receiver.inbox / info["stored_as"]
        verified = blake3_file(stored) == blake3_file(path) == info["blake3"]
        return {
            "killed": victim_side,
            "killed_at_bytes": killed_at,
            "resent_bytes": stats["sent_bytes"],
            "resent_share": round(stats["sent_bytes"] / size, 4),
            "resumed_chunks": stats["resumed_chunks"],
            "retransmits": stats["retransmits"],
            "timeouts": stats["timeouts"],
            "chunks": stats["chunks"],
            "resume_check_seconds": stats["accept_seconds"],
            "resend_seconds": round(seconds, 2),
            "verified": verified,
        }
    finally:
        for node in (sender, receiver):
            if node.running:
                node.stop()


def fsync_cost(directory: Path, size: int) -> dict[str, float]:
    """Write ``size`` bytes in 1 MiB chunks with writeback started per chunk
    (as the writer does), with and without an fdatasync per checkpoint."""
    start = _writeback_starter()
    chunk = os.urandom(MiB)
    out: dict[str, float] = {}
    for label, every in (("no checkpoints", 0), ("checkpoints", CHECKPOINT_BYTES // MiB)):
        target = directory / "fsync-cost.part"
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            synced = 0.0
            began = time.perf_counter()
            for i in range(size // MiB):
                os.pwrite(fd, chunk, i * MiB)
                start(fd, i * MiB, MiB)
                if every and (i + 1) % every == 0:
                    t = time.perf_counter()
                    os.fdatasync(fd)
                    synced += time.perf_counter() - t
            os.fsync(fd)
            total = time.perf_counter() - began
        finally:
            os.close(fd)
            target.unlink()
        out[f"{label}: seconds"] = round(total, 2)
        if every:
            out["fdatasync seconds per GiB"] = round(synced * 2**30 / size, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--kill", choices=("receiver", "sender", "both"), default="both")
    ap.add_argument("--fsync-cost", action="store_true")
    ap.add_argument("--json", type=Path, help="Also write the numbers to this file.")
    args = ap.parse_args()
    size = parse_size(args.size)
    sides = ("receiver", "sender") if args.kill == "both" else (args.kill,)
    results: dict[str, Any] = {"size": size, "runs": []}
    with tempfile.TemporaryDirectory(prefix="pc-bench-resume-") as tmp:
        work = Path(tmp)
        path = random_file(work / "source.bin", size)
        for side in sides:
            run = one_run(work, path, side)
            results["runs"].append(run)
            print(
                f"killed the {side} at {run['killed_at_bytes'] / size:.1%}: the resend moved "
                f"{run['resent_share']:.1%} of the bytes ({run['resumed_chunks']} of "
                f"{run['chunks']} chunks held, {run['retransmits']} resent), "
                f"resume check {run['resume_check_seconds']:.3f} s, "
                f"resend {run['resend_seconds']:.1f} s, verified: {run['verified']}"
            )
        if args.fsync_cost:
            results["fsync_cost"] = fsync_cost(work, size)
            print("checkpoint cost:", results["fsync_cost"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
