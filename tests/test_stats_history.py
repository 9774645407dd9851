"""The statistics history end to end: real node processes on loopback, every
mode and both sides recorded in one schema, read back from the SQLite file
(read-only, as a user's own tools would); a node killed with SIGKILL in the
middle of a transfer loses nothing it had committed."""

from __future__ import annotations

import itertools
import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from peercrypt.crypto.identity import new_network_key
from peercrypt.history.db import (
    SAMPLE_COLUMNS,
    TRANSFER_COLUMNS,
    db_path,
    get_samples,
    list_transfers,
    open_reader,
)
from peercrypt.testing.nodes import (
    NodeProcess,
    blake3_file,
    multicast_targets,
    start_cli,
    wait_until,
)

MiB = 1024 * 1024
MODES = {
    "normal": ["--mode", "normal"],
    "token-bucket": ["-r", str(16 * MiB), "-b", str(MiB)],
    "aimd": ["--mode", "aimd"],
    "qos": ["--mode", "qos", "-p", "high"],
    "parallel": ["--mode", "parallel", "-t", "2"],
}


@pytest.fixture(scope="module")
def key() -> str:
    return new_network_key()


@pytest.fixture(scope="module")
def trio(
    tmp_path_factory: pytest.TempPathFactory, key: str
) -> Iterator[tuple[NodeProcess, NodeProcess, NodeProcess]]:
    base = tmp_path_factory.mktemp("history")
    nodes = [NodeProcess(base / n, network_key=key).start() for n in ("s", "r1", "r2")]
    try:
        yield nodes[0], nodes[1], nodes[2]
    finally:
        codes = [n.stop() for n in nodes]
    assert codes == [0, 0, 0]


def finished(node: NodeProcess, count: int) -> list[dict[str, Any]]:
    """Wait until the node's history holds ``count`` finished transfers."""

    def done() -> list[dict[str, Any]] | None:
        if not db_path(node.data_dir).exists():
            return None
        with open_reader(db_path(node.data_dir)) as conn:
            rows = [r for r in list_transfers(conn) if r["result"] != "running"]
            for r in rows:
                r["samples"] = get_samples(conn, r["id"])
        return rows if len(rows) >= count else None

    return wait_until(done, 20.0, f"{count} finished transfers in {node.data_dir}")


def columns(node: NodeProcess) -> dict[str, list[tuple[str, str]]]:
    conn = sqlite3.connect(db_path(node.data_dir).resolve().as_uri() + "?mode=ro", uri=True)
    with conn:
        return {
            table: [(c[1], c[2]) for c in conn.execute(f"PRAGMA table_info({table})")]
            for table in ("transfers", "samples")
        }


def test_every_mode_and_both_sides_fill_one_schema(
    trio: tuple[NodeProcess, NodeProcess, NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender, r1, r2 = trio
    source = make_file(8 * MiB + 5)
    for mode, args in MODES.items():
        code, result = sender.send_to(source, r1, *args)
        assert code == 0 and result["mode"] == mode, result
    code, result = sender.send_to(source, r1, "-m", *multicast_targets(r2))
    assert code == 0, result
    digest = blake3_file(source)

    sent = finished(sender, 7)
    inbox = {}
    received = []
    for node, count in ((r1, 6), (r2, 1)):
        for row in finished(node, count):
            inbox[row["session"], row["peer"]] = node.inbox
            received.append(row)
    schema = columns(sender)
    assert [c for c, _ in schema["transfers"]] == list(TRANSFER_COLUMNS)
    assert [c for c, _ in schema["samples"]][1:] == list(SAMPLE_COLUMNS)
    assert columns(r1) == columns(r2) == schema

    assert sorted(r["mode"] for r in sent) == sorted([*MODES, "multicast", "multicast"])
    assert sorted(r["mode"] for r in received) == sorted(r["mode"] for r in sent)
    by_key = {(r["session"], r["side"]): r for r in received}
    for row in sent:
        assert row["side"] == "send"
        assert row["peer"] in (f"{r1.host}:{r1.port}", f"{r2.host}:{r2.port}")
        assert row["file"] == str(source)
        # The receiving end of the same transfer, on the receiver's machine.
        other = by_key[(row["session"], "receive")]
        assert other["peer_fingerprint"] == sender.fingerprint
        assert other["mode"] == row["mode"]
        assert blake3_file(inbox[row["session"], other["peer"]] / other["file"]) == digest
    for row in sent + received:
        assert set(row) == {*TRANSFER_COLUMNS, "samples"}
        size = source.stat().st_size
        assert (row["result"], row["size"], row["bytes"]) == ("ok", size, size), row
        assert row["chunks"] == math.ceil(row["size"] / row["chunk_size"])
        assert row["duration"] > 0 and row["started"] > 1.7e9
        samples = row["samples"]
        assert samples and samples[-1]["bytes"] == row["size"], row
        assert all(
            a["t"] < b["t"] and a["bytes"] <= b["bytes"] for a, b in itertools.pairwise(samples)
        )
        moved = sum(
            s["throughput"] * (s["t"] - prev)
            for s, prev in zip(samples, [0.0] + [s["t"] for s in samples[:-1]], strict=True)
        )
        assert math.isclose(moved, row["size"], rel_tol=1e-6)
    sends = {r["mode"]: r for r in sent}
    paced = sends["token-bucket"]
    assert paced["params"] == {"rate": str(16 * MiB), "burst": str(MiB)}
    assert len(paced["samples"]) >= 3  # half a second at 16 MiB/s, a point every 0.1 s
    assert all(s["rate"] == 16 * MiB for s in paced["samples"])
    assert sends["aimd"]["params"]["window_kb"] and sends["aimd"]["stats"]["window_bytes"] > 0
    assert any(s["window"] > 0 for s in sends["aimd"]["samples"])
    assert sends["parallel"]["params"] == {"lanes": "2"}
    assert any(s["rtt"] > 0 for r in sent if r["mode"] != "multicast" for s in r["samples"])


def test_a_node_killed_mid_transfer_keeps_its_history(
    trio: tuple[NodeProcess, NodeProcess, NodeProcess],
    key: str,
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    _, receiver, _ = trio
    sender = node_factory(network_key=key)
    source = make_file(64 * MiB)
    args = ["send", source, receiver.host, str(receiver.port), "-r", str(8 * MiB), "--json"]
    with start_cli(*args, data_dir=sender.data_dir, env=sender.env) as cli:
        try:

            def sampled() -> list[dict[str, Any]] | None:
                if not db_path(sender.data_dir).exists():
                    return None
                with open_reader(db_path(sender.data_dir)) as conn:
                    rows = list_transfers(conn)
                    if rows and len(points := get_samples(conn, rows[0]["id"])) >= 5:
                        return [rows[0], points]
                return None

            row, before = wait_until(sampled, 20.0, "samples of the running transfer")
            assert row["result"] == "running"
            sender.kill()
            cli.communicate(timeout=30)
        finally:
            cli.kill()
    with open_reader(db_path(sender.data_dir)) as conn:
        (after,) = list_transfers(conn)
        points = get_samples(conn, after["id"])
    assert after["result"] == "running"
    assert points[: len(before)] == before and points[-1]["bytes"] < source.stat().st_size
    # The next start of the node says what happened to it.
    node_factory(network_key=key, name=sender.data_dir.name)
    with open_reader(db_path(sender.data_dir)) as conn:
        (again,) = list_transfers(conn)
    assert again["result"] == "interrupted" and again["id"] == after["id"]
