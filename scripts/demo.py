"""A local demo of real PeerCrypt transfers (run by scripts/demo.sh).

Starts three nodes (alice, bob, carol) as separate processes on loopback,
each with its own identity and inbox, all sharing a fresh random network
key. Sends real files around the triangle with the CLI a user would type,
plus one send from a data directory with no node running (a temporary
node) and one multicast (alice to bob and carol at once, as UDP datagrams to
a multicast group on the loopback interface), then checks every received
file's BLAKE3 against its source and stops the nodes. Exits non-zero if anything does not match.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import blake3

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import NodeError, NodeProcess, free_port, run_cli, wait_until

NODES = ("alice", "bob", "carol")
FILES = {"empty.txt": 0, "note.txt": 1000, "photo.raw": 5 * 2**20, "dataset.bin": 96 * 2**20}


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
    key = new_network_key()
    env = {"PEERCRYPT_NETWORK_KEY": key}  # a temporary sending node needs it too
    nodes: dict[str, NodeProcess] = {}
    failures = 0
    try:
        print(f"demo directory {root}; one random network key shared by all nodes\n")
        for name in NODES:
            # bob and carol join through alice; gossip makes them find each other
            join = (
                ()
                if not nodes
                else (
                    "--bootstrap-host",
                    "127.0.0.1",
                    "--bootstrap-port",
                    str(nodes["alice"].port),
                )
            )
            nodes[name] = NodeProcess(
                root / name,
                network_key=key,
                extra_args=(
                    *join,
                    *("--gossip-interval", "0.5", "--health-check-interval", "1"),
                    *("--multicast-ttl", "0"),  # multicast datagrams never leave this host
                ),
            ).start()
            print(f"  {name:6} node {nodes[name].fingerprint}  port {nodes[name].port}")

        def everyone_known() -> bool | None:
            peers = json.loads(nodes["carol"].cli("peers", "--json").stdout or "[]")
            return len([p for p in peers if p.get("state") == "alive"]) == 2 or None

        wait_until(everyone_known, 20.0, "carol to learn bob through alice")
        print("\n$ peercrypt --data-dir carol peers")
        print(nodes["carol"].cli("peers").stdout.rstrip())
        source = root / "files"
        source.mkdir()
        for fname, size in FILES.items():
            (source / fname).write_bytes(os.urandom(size))
        plan = [
            ("alice", "bob", "dataset.bin"),
            ("bob", "carol", "photo.raw"),
            ("carol", "alice", "note.txt"),
            ("alice", "carol", "empty.txt"),
            ("alice", "bob", "dataset.bin"),  # the same file again: bob has it, nothing moves
            ("visitor", "carol", "photo.raw"),  # no node running: a temporary one sends
        ]
        print(f"\n  {'from':8} {'to':6} {'file':12} {'bytes':>10} {'MiB/s':>7}  stored as, check")
        for sender, receiver, fname in plan:
            path, target = source / fname, nodes[receiver]
            print(f"  $ peercrypt --data-dir {sender} send {fname} 127.0.0.1 {target.port}")
            result = run_cli(
                "send",
                path,
                "127.0.0.1",
                str(target.port),
                "--json",
                data_dir=root / sender,
                env=env,
            )
            try:
                outcome = result.json
            except ValueError:
                outcome = {"ok": False, "error": result.stderr.strip()}
            stored = target.inbox / str(outcome.get("stored_as"))
            verified = bool(
                outcome.get("ok")
                and stored.is_file()
                and digest(stored) == digest(path) == outcome.get("blake3")
            )
            failures += not verified
            check = "blake3 verified" if verified else f"MISMATCH {outcome.get('error') or ''}"
            # A file the receiver has already (delivered before): no rate, nothing moved.
            stats = outcome.get("stats") or {}
            rate = "had it" if stats.get("held_share", 0) >= 1 else outcome.get("mib_per_s", 0)
            print(
                f"  {sender:8} {receiver:6} {fname:12} {path.stat().st_size:>10} "
                f"{rate:>7}  {outcome.get('stored_as')}, {check}"
            )
        failures += multicast(nodes, source / "dataset.bin")
        status = nodes["bob"].cli("status")
        print("\n$ peercrypt --data-dir bob status\n" + status.stdout)
    finally:
        for name, node in nodes.items():
            try:
                code = node.stop()
            except NodeError as exc:
                code = -1
                print(f"demo: {exc}")
            if code != 0:
                failures += 1
                print(f"demo: node {name} exited with {code}")
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("all transfers verified" if not failures else f"{failures} problem(s)")
    return 1 if failures else 0


def multicast(nodes: dict[str, NodeProcess], path: Path) -> int:
    """alice -> bob and carol at once over a UDP multicast group, then the
    same again (both had it: nothing sent); 0 if every result verified."""
    group = f"239.255.80.67:{free_port()}"
    return _multicast_once(nodes, path, group, again=False) + _multicast_once(
        nodes, path, group, again=True
    )


def _multicast_once(nodes: dict[str, NodeProcess], path: Path, group: str, again: bool) -> int:
    bob, carol = nodes["bob"], nodes["carol"]
    print(
        f"\n  $ peercrypt --data-dir alice send {path.name} 127.0.0.1 {bob.port} "
        f"-m --to 127.0.0.1:{carol.port} --group {group}"
        + ("   # the same file again" if again else "")
    )
    result = nodes["alice"].cli(
        "send", path, "127.0.0.1", str(bob.port), "-m", "--to", f"127.0.0.1:{carol.port}",
        "--group", group, "--json",
    )  # fmt: skip
    try:
        outcome = result.json
    except ValueError:
        outcome = {"ok": False, "error": result.stderr.strip(), "receivers": []}
    problems = 0 if outcome.get("ok") else 1
    for row, node in zip(outcome.get("receivers", []), (bob, carol), strict=False):
        stored = node.inbox / str(row.get("stored_as"))
        verified = row.get("code") == "ok" and stored.is_file() and digest(stored) == digest(path)
        verified = verified and bool(row.get("held")) == again  # the second time: had it
        problems += not verified
        check = "blake3 verified" if verified else f"MISMATCH {row.get('error') or ''}"
        had = " (had it: nothing sent)" if row.get("held") else ""
        print(f"  alice -> {row.get('target')}: {row.get('stored_as')}{had}, {check}")
    stats = outcome.get("stats", {})
    failed = "" if not problems else ", FAILED: " + str(outcome.get("error"))
    if again:
        print(f"  both had it: {int(stats.get('datagrams', 0))} datagrams sent{failed}")
    else:
        print(
            f"  one stream for both: {outcome.get('mib_per_s', 0)} MiB/s each, "
            f"{int(stats.get('datagrams', 0))} datagrams, {int(stats.get('seals_first', 0))} "
            f"chunks sealed once{failed}"
        )
    return problems


if __name__ == "__main__":
    sys.exit(main())
