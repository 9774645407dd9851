"""A local demo of real PeerCrypt transfers (run by scripts/demo.sh).

Starts three nodes (alice, bob, carol) as separate processes on loopback,
each with its own identity and inbox, all sharing a fresh random network
key. Sends real files around the triangle with the CLI a user would type,
plus one send from a data directory with no node running (a temporary
node), then checks every received file's BLAKE3 against its source and
stops the nodes. Exits non-zero if anything does not match.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3

from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.crypto.identity import new_network_key

NODES = ("alice", "bob", "carol")
FILES = {"empty.txt": 0, "note.txt": 1000, "photo.raw": 5 * 2**20, "dataset.bin": 96 * 2**20}


def peercrypt(data_dir: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "peercrypt", "--data-dir", str(data_dir), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def wait_ready(data_dir: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: node in {data_dir} exited with {proc.returncode}")
        try:
            with ControlClient.for_data_dir(data_dir) as client:
                facts = client.status(timeout=1.0).node
            if "port" in facts and "data_port" in facts:
                return facts
        except NodeUnavailable:
            pass
        time.sleep(0.1)
    raise SystemExit(f"demo: node in {data_dir} did not become ready in {timeout:.0f} s")


def digest(path: Path) -> str:
    h = blake3.blake3()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the demo directory")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="peercrypt-demo-"))
    env = {**os.environ, "PEERCRYPT_NETWORK_KEY": new_network_key()}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, str] = {}
    failures = 0
    try:
        print(f"demo directory {root}; one random network key shared by all nodes\n")
        for name in NODES:
            data_dir = root / name
            data_dir.mkdir(mode=0o700)
            log = (root / f"{name}.log").open("wb")
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "peercrypt", "--data-dir", str(data_dir), "node",
                 "--host", "127.0.0.1", "--port", "0"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
            facts = wait_ready(data_dir, procs[name])
            ports[name] = facts["port"]
            print(f"  {name:6} node {facts['fingerprint']}  port {facts['port']}")
        source = root / "files"
        source.mkdir()
        for fname, size in FILES.items():
            with (source / fname).open("wb") as f:
                left = size
                while left:
                    n = min(left, 1 << 20)
                    f.write(os.urandom(n))
                    left -= n
        plan = [
            ("alice", "bob", "dataset.bin"),
            ("bob", "carol", "photo.raw"),
            ("carol", "alice", "note.txt"),
            ("alice", "carol", "empty.txt"),
            ("alice", "bob", "dataset.bin"),  # same name again: stored as dataset.1.bin
            ("visitor", "carol", "photo.raw"),  # no node running: a temporary one sends
        ]
        print(f"\n  {'from':8} {'to':6} {'file':12} {'bytes':>10} {'MiB/s':>8}  stored as / verified")
        for sender, receiver, fname in plan:
            path = source / fname
            result = peercrypt(
                root / sender, "send", str(path), "127.0.0.1", ports[receiver], "--json", env=env
            )
            try:
                outcome = json.loads(result.stdout)
            except ValueError:
                outcome = {"ok": False, "error": result.stderr.strip()}
            stored = root / receiver / "inbox" / str(outcome.get("stored_as"))
            verified = (
                outcome.get("ok")
                and stored.is_file()
                and digest(stored) == digest(path) == outcome.get("blake3")
            )
            failures += not verified
            status = (
                f"{outcome.get('stored_as')}  blake3 {str(outcome.get('blake3'))[:16]}... "
                + ("OK" if verified else f"MISMATCH {outcome.get('error') or ''}")
            )
            print(
                f"  {sender:8} {receiver:6} {fname:12} {path.stat().st_size:>10} "
                f"{outcome.get('mib_per_s', 0):>8}  {status}"
            )
        status = peercrypt(root / "bob", "status", env=env)
        print("\n$ peercrypt --data-dir bob status\n" + status.stdout)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            try:
                code = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = -9
            if code != 0:
                failures += 1
                print(f"demo: node {name} exited with {code}")
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("all transfers verified" if not failures else f"{failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
