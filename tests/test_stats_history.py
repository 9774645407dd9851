"""The statistics history end to end: real node processes on loopback, every
mode and both sides recorded in one schema, read back from the SQLite file
(read-only, as a user's own tools would); a node killed with SIGKILL in the
middle of a transfer loses nothing it had committed."""

from __future__ import annotations

import itertools
import json
import math
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
import pytest

from peercrypt.chunking import DEFAULT_MIN_CHUNK
from peercrypt.cli.stats import recorded_text
from peercrypt.crypto.identity import new_network_key
from peercrypt.history.db import (
    SAMPLE_COLUMNS,
    TRANSFER_COLUMNS,
    db_path,
    get_samples,
    get_transfers,
    list_transfers,
    open_reader,
)
from peercrypt.history.export import parse_csv, parse_json
from peercrypt.testing.nodes import (
    NodeProcess,
    blake3_file,
    cli_env,
    multicast_targets,
    random_file,
    run_cli,
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


def finished(
    node: NodeProcess, count: int, sessions: set[str] | None = None
) -> list[dict[str, Any]]:
    """Wait until the node's history holds ``count`` finished transfers (of
    ``sessions`` only, if given: other tests send to the same receivers)."""

    def done() -> list[dict[str, Any]] | None:
        if not db_path(node.data_dir).exists():
            return None
        with open_reader(db_path(node.data_dir)) as conn:
            rows = [
                r
                for r in list_transfers(conn)
                if r["result"] != "running" and (sessions is None or r["session"] in sessions)
            ]
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


@dataclass
class Recorded:
    sender: NodeProcess
    r1: NodeProcess
    r2: NodeProcess
    source: Path
    sent: list[dict[str, Any]]
    received: list[dict[str, Any]]
    inbox: dict[tuple[str, str], Path]


@pytest.fixture(scope="module")
def recorded(
    trio: tuple[NodeProcess, NodeProcess, NodeProcess], tmp_path_factory: pytest.TempPathFactory
) -> Recorded:
    """One file sent in every mode, and by multicast to two receivers."""
    sender, r1, r2 = trio
    source = random_file(tmp_path_factory.mktemp("files") / "payload, ü.bin", 8 * MiB + 5)
    for n, (mode, args) in enumerate(MODES.items()):
        # A new version of the file each time (its mtime): the same file sent
        # again would be answered from the receiver's table of deliveries
        # without moving a byte (docs/resume.md), not received in this mode.
        os.utime(source, ns=(time.time_ns(), time.time_ns() + n * 1_000_000_000))
        code, result = sender.send_to(source, r1, *args)
        assert code == 0 and result["mode"] == mode, result
    code, result = sender.send_to(source, r1, "-m", *multicast_targets(r2))
    assert code == 0, result
    sent = finished(sender, 7)
    sessions = {r["session"] for r in sent}
    inbox = {}
    received = []
    for node, count in ((r1, 6), (r2, 1)):
        for row in finished(node, count, sessions):
            inbox[row["session"], row["peer"]] = node.inbox
            received.append(row)
    return Recorded(sender, r1, r2, source, sent, received, inbox)


def test_a_send_without_chunk_size_cuts_the_receivers_choice(recorded: Recorded) -> None:
    """A send that names no chunk size offers DEFAULT_MIN_CHUNK to
    DEFAULT_MAX_CHUNK (peercrypt/chunking.py) and the receiver cuts a file
    of fewer than 128 chunks of the larger sizes in the smallest
    (core/receive_window.py, choose_chunk): the file is cut in those, the
    last one short, both sides say so, and the file stored is the source."""
    row = next(r for r in recorded.sent if r["mode"] == "normal")
    other = next(
        r for r in recorded.received if r["session"] == row["session"] and r["side"] == "receive"
    )
    chunks = -(-recorded.source.stat().st_size // DEFAULT_MIN_CHUNK)
    assert chunks > 2
    assert (row["chunk_size"], row["chunks"]) == (DEFAULT_MIN_CHUNK, chunks)
    assert (other["chunk_size"], other["chunks"]) == (DEFAULT_MIN_CHUNK, chunks)
    stored = recorded.inbox[row["session"], other["peer"]] / other["file"]
    assert blake3_file(stored) == blake3_file(recorded.source)


def test_every_mode_and_both_sides_fill_one_schema(recorded: Recorded) -> None:
    sender, r1, r2, source = recorded.sender, recorded.r1, recorded.r2, recorded.source
    sent, received, inbox = recorded.sent, recorded.received, recorded.inbox
    digest = blake3_file(source)
    schema = columns(sender)
    assert [c for c, _ in schema["transfers"]] == list(TRANSFER_COLUMNS)
    assert [c for c, _ in schema["samples"]][1:] == list(SAMPLE_COLUMNS)
    assert columns(r1) == columns(r2) == schema

    assert sorted(r["mode"] for r in sent) == sorted([*MODES, "multicast", "multicast"])
    assert sorted(r["mode"] for r in received) == sorted(r["mode"] for r in sent)
    by_key = {(r["session"], r["side"]): r for r in received}
    proven = {f"{n.host}:{n.port}": n.fingerprint for n in (r1, r2)}
    for row in sent:
        assert row["side"] == "send"
        # The receiver's fingerprint as it proved it, in every mode.
        assert row["peer_fingerprint"] == proven[row["peer"]], row
        assert row["file"] == str(source)
        # The receiving end of the same transfer, on the receiver's machine.
        other = by_key[(row["session"], "receive")]
        assert other["peer_fingerprint"] == sender.fingerprint
        assert other["mode"] == row["mode"]
        assert blake3_file(inbox[row["session"], other["peer"]] / other["file"]) == digest
    # One schema: the same columns, each of one type, in every mode and on both sides.
    kinds = {c: type(v) for c, v in sent[0].items()}
    for row in sent + received:
        assert set(row) == {*TRANSFER_COLUMNS, "samples"}
        assert {c: type(v) for c, v in row.items()} == kinds, row
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
    # The CLI reads it with no node running.
    listed = run_cli("stats", "show", str(after["id"]), "--json", data_dir=sender.data_dir)
    assert json.loads(listed.stdout) == {**after, "samples": points}, listed.describe()
    assert points[: len(before)] == before and points[-1]["bytes"] < source.stat().st_size
    # The next start of the node says what happened to it.
    node_factory(network_key=key, name=sender.data_dir.name)
    with open_reader(db_path(sender.data_dir)) as conn:
        (again,) = list_transfers(conn)
    assert again["result"] == "interrupted" and again["id"] == after["id"]


def test_concurrent_transfers_share_one_samples_message_per_tick(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """Each side's actor sends its running transfers' samples of a progress
    tick to the stats actor in one message, not one message per transfer;
    the sender its sends' Progress to control likewise, and every client
    still gets its own."""
    sender, receiver = node_factory(), node_factory()
    flows = 4
    sources = [make_file(4 * MiB) for _ in range(flows)]  # about 2 s each at 2 MiB/s
    limit = ["-r", str(2 * MiB), "-b", str(256 * 1024)]
    with ThreadPoolExecutor(flows) as pool:
        sent = list(pool.map(lambda f: sender.send_to(f, receiver, *limit), sources))
    assert [code for code, _ in sent] == [0] * flows, sent
    for node in (sender, receiver):
        rows = finished(node, flows)
        assert all(r["result"] == "ok" and len(r["samples"]) >= 2 for r in rows), rows
        # the last record of each transfer follows its samples in the stats
        # actor's mail: once all are counted, so are the samples
        node.wait_for_counter("stats.records", 2 * flows)
        counters = node.counters()
        batches, samples = counters["stats.sample-batches"], counters["stats.samples"]
        # the transfers overlap for most of their 2 s: most ticks carry all four
        assert samples >= 2 * batches > 0, counters
        assert "stats.samples-malformed" not in counters, counters
    # control counts live, and relayed the last Progresses before the SendResults
    counters = sender.counters()
    batches, relayed = counters["control.progress-batches"], counters["control.progress-relayed"]
    assert relayed >= 2 * batches > 0, counters
    assert "control.progress-malformed" not in counters, counters


# -- the CLI ------------------------------------------------------------------------


def test_list_and_show_print_what_was_recorded(recorded: Recorded) -> None:
    sender = recorded.sender
    listed = sender.cli("stats", "list")
    assert listed.returncode == 0, listed.describe()
    header, *lines = listed.stdout.splitlines()
    assert header.split() == [
        "ID", "STARTED", "SIDE", "MODE", "PEER", "FILE", "SIZE", "TIME", "RATE", "RESULT"
    ]  # fmt: skip
    assert len(lines) == 7 and all("payload, ü.bin" in line for line in lines)
    as_json = json.loads(sender.cli("stats", "list", "--json").stdout)
    assert [r["id"] for r in as_json] == [r["id"] for r in recorded.sent]
    aimd = json.loads(sender.cli("stats", "list", "--mode", "aimd", "--json").stdout)
    assert [r["mode"] for r in aimd] == ["aimd"]
    assert json.loads(sender.cli("stats", "list", "--mode", "AIMD", "--json").stdout) == aimd
    peer = f"{recorded.r2.host}:{recorded.r2.port}"
    to_r2 = json.loads(sender.cli("stats", "list", "--peer", peer, "--json").stdout)
    assert [(r["mode"], r["peer"]) for r in to_r2] == [("multicast", peer)]
    assert sender.cli("stats", "list", "--failed").stdout == "no transfers recorded that match\n"
    assert json.loads(sender.cli("stats", "list", "--since", "1h", "--json").stdout) == as_json
    assert json.loads(sender.cli("stats", "list", "--since", "2999-01-01", "--json").stdout) == []
    # A receiver's list finds the sender by its proven fingerprint.
    mine = recorded.r1.cli("stats", "list", "--peer", recorded.sender.fingerprint[:9], "--json")
    assert len(json.loads(mine.stdout)) == 6
    # A prefix as fingerprints are accepted elsewhere: any case, dashes or none.
    bare = recorded.sender.fingerprint[:9].replace("-", "").upper()
    assert recorded.r1.cli("stats", "list", "--peer", bare, "--json").stdout == mine.stdout
    # A host's name without its port reads as a prefix too: if nothing
    # matches, the list says how it was read.
    none = recorded.r1.cli("stats", "list", "--peer", "localhost")
    assert none.returncode == 0 and none.stdout.splitlines() == [
        "no transfers recorded that match",
        "(--peer localhost was read as a fingerprint prefix; a host takes its port: HOST:PORT)",
    ], none.stdout

    ident = aimd[0]["id"]
    shown = sender.cli("stats", "show", str(ident))
    assert shown.returncode == 0, shown.describe()
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines() if " " in line)
    assert fields["mode"].strip() == "aimd" and fields["result"].strip() == "ok"
    assert fields["file"].strip() == str(recorded.source)
    full = json.loads(sender.cli("stats", "show", str(ident), "--json").stdout)
    assert full == next(r for r in recorded.sent if r["id"] == ident)
    stat = {
        line.split()[1]: line.split(None, 2)[2]
        for line in shown.stdout.splitlines()
        if line.startswith("stat ")
    }
    chunk = int(full["stats"]["chunk_size"])
    assert stat["chunk_size"] == recorded_text("chunk_size", chunk) and "(" in stat["chunk_size"]
    assert stat["sent_chunks"] == str(int(full["stats"]["sent_chunks"]))  # a count: no '.0'
    assert stat["srtt"].endswith(" ms"), stat


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("chunk_size", 1048576.0, "1.0 MiB (1048576 bytes)"),
        ("sent_bytes", 209715200.0, "200.0 MiB (209715200 bytes)"),
        ("window_bytes", 512.0, "512 bytes"),
        ("burst", 0, "0 (the default: 50 ms of the rate, 4096 bytes at least)"),
        ("rate", 20971520, "20.0 MiB/s"),
        ("rate", 0.0, "0 (no limit)"),
        ("srtt", 0.006982, "6.98 ms"),
        ("accept_seconds", 1.5, "1.500 s"),
        ("held_share", 0.56, "56%"),
        ("scheduler_reports", 1742.0, "1742"),
        ("rttvar_ratio", 0.25, "0.25"),
        ("priority", "high", "high"),
        # Parameters are recorded as the sender gave them: text (found by use:
        # `param rate 10485760` beside `stat rate 10.0 MiB/s`).
        ("rate", "10485760", "10.0 MiB/s"),
        ("burst", "0", "0 (the default: 50 ms of the rate, 4096 bytes at least)"),
        ("chunk_size", "1048576", "1.0 MiB (1048576 bytes)"),
        ("delivered_before", "report 2.pdf", "report 2.pdf"),
        ("delivered_before", "nan", "nan"),
        ("delivered_before", "007", "007"),  # a name that looks like a number stays
        ("delivered_before", "1e3", "1e3"),
    ],
)
def test_recorded_numbers_show_in_their_units(key: str, value: object, text: str) -> None:
    assert recorded_text(key, value) == text


def test_list_on_an_80_column_terminal_fits_it(recorded: Recorded) -> None:
    """On a terminal the list leaves out what does not fit (a pipe: every
    column, above); ID, peer, file, size, rate and result stay."""
    sender = recorded.sender
    child = pexpect.spawn(
        sys.executable,
        ["-m", "peercrypt", "--data-dir", str(sender.data_dir), "stats", "list"],
        dimensions=(40, 80),
        env=cli_env(sender.env),
        encoding="utf-8",
        timeout=30,
    )
    out = child.read()
    child.close()
    assert child.exitstatus == 0, out
    header, *lines = out.replace("\r\n", "\n").strip().splitlines()
    assert header.split() == ["ID", "PEER", "FILE", "SIZE", "RATE", "RESULT"], out
    assert len(lines) == 7 and all(len(line) <= 80 for line in lines), out
    for line, row in zip(lines, recorded.sent, strict=True):
        assert line.split()[0] == str(row["id"]) and line.rstrip().endswith(row["result"]), line
        assert "payload, ü.bin" in line and row["peer"] in line, line


def test_exports_parse_back_to_the_database_rows(recorded: Recorded, tmp_path: Path) -> None:
    sender = recorded.sender
    with open_reader(db_path(sender.data_dir)) as conn:
        rows = get_transfers(conn, [])
    out = tmp_path / "aimd_congestion_stats.json"
    done = sender.cli("stats", "export", "--format", "json", "-o", out)
    assert done.returncode == 0, done.describe()
    assert parse_json(out.read_text()) == rows
    as_csv = sender.cli("stats", "export", "--format", "csv").stdout
    assert parse_csv(as_csv) == [{k: v for k, v in r.items() if k != "samples"} for r in rows]
    samples = sender.cli("stats", "export", "--format", "csv", "--samples").stdout
    assert parse_csv(samples, "samples") == [
        {"transfer": r["id"], **s} for r in rows for s in r["samples"]
    ]
    some = [str(rows[1]["id"]), str(rows[3]["id"])]
    picked = parse_json(sender.cli("stats", "export", *some).stdout)
    assert picked == [rows[1], rows[3]]
    by_mode = parse_json(sender.cli("stats", "export", "--mode", "token-bucket").stdout)
    assert [r["mode"] for r in by_mode] == ["token-bucket"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_draws_a_png_and_compares(recorded: Recorded, tmp_path: Path) -> None:
    sender = recorded.sender
    ids = [str(r["id"]) for r in recorded.sent]
    one = sender.cli("stats", "plot", ids[0], "-o", tmp_path / "one.png")
    assert one.returncode == 0, one.describe()
    assert png_size(tmp_path / "one.png") >= (800, 600)
    many = sender.cli("stats", "plot", "--compare", *ids, "-o", tmp_path / "all.svg")
    assert many.returncode == 0, many.describe()
    assert "</svg>" in (tmp_path / "all.svg").read_text()
    default = run_cli("--data-dir", sender.data_dir, "stats", "plot", ids[1], cwd=tmp_path)
    assert default.stdout.strip() == f"transfer-{ids[1]}.png"
    assert png_size(tmp_path / f"transfer-{ids[1]}.png")[0] >= 800


def test_last_names_the_latest_transfers(recorded: Recorded, tmp_path: Path) -> None:
    """`last`, `last-1`... for an id (a send's result names no history id):
    the transfers recorded last, in the order they started."""
    sender = recorded.sender
    with open_reader(db_path(sender.data_dir)) as conn:
        rows = sorted(list_transfers(conn), key=lambda r: (r["started"], r["id"]))
    newest, before = rows[-1]["id"], rows[-2]["id"]
    for given, ident in (("last", newest), ("LAST-1", before), ("last-0", newest)):
        shown = sender.cli("stats", "show", given, "--json")
        assert shown.returncode == 0 and shown.json["id"] == ident, (given, shown.describe())
    exported = sender.cli("stats", "export", "last", "last-1", str(rows[0]["id"]))
    assert [r["id"] for r in parse_json(exported.stdout)] == [newest, before, rows[0]["id"]]
    default = run_cli("--data-dir", sender.data_dir, "stats", "plot", "last", cwd=tmp_path)
    assert default.stdout.strip() == f"transfer-{newest}.png"
    assert png_size(tmp_path / f"transfer-{newest}.png")[0] >= 800
    beyond = sender.cli("stats", "show", f"last-{len(rows)}")
    assert (beyond.returncode, beyond.stderr_lines) == (
        2,
        [f"peercrypt: error: only {len(rows)} transfer(s) in the statistics history"],
    ), beyond.describe()


def test_a_transfer_without_a_limit_gets_no_limit_panel(tmp_path: Path) -> None:
    """A normal send that recorded no window, rate or credit (all 0) is drawn
    as throughput and RTT only; a line at 0 would read as a limit of 0."""
    from peercrypt.history.plot import limit_series, plot

    def row(ident: int, credit: int) -> dict[str, Any]:
        sample = {"t": 0.05, "bytes": 3 * MiB, "throughput": 60.0 * MiB, "window": 0,
                  "rate": 0.0, "rtt": 0.016, "credit": credit}  # fmt: skip
        return {"id": ident, "mode": "normal", "side": "send", "file": "/x/big.iso",
                "size": 3 * MiB, "duration": 0.05, "result": "ok", "samples": [sample]}  # fmt: skip

    assert limit_series(row(1, 0)) is None
    assert limit_series(row(2, 16)) == ("receiver credit (chunks)", [16.0])
    two, three = tmp_path / "two.png", tmp_path / "three.png"
    plot([row(1, 0)], two)
    plot([row(1, 0), row(2, 16)], three)
    (w2, h2), (w3, h3) = png_size(two), png_size(three)
    assert w2 == w3 and h2 * 3 == h3 * 2, (h2, h3)  # 2 panels, 3 with the credit


def test_plot_without_matplotlib_says_how_to_install_it(recorded: Recorded, tmp_path: Path) -> None:
    """A None entry in sys.modules is how Python marks a module as not
    importable: the command runs exactly as where matplotlib is missing."""
    code = (
        "import sys; sys.modules['matplotlib'] = None; "
        "from peercrypt.cli import run; sys.argv[0] = 'peercrypt'; run()"
    )
    ident = str(recorded.sent[0]["id"])
    args = ["--data-dir", str(recorded.sender.data_dir), "stats", "plot", ident]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "-o", str(tmp_path / "x.png")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 2, proc
    assert proc.stderr == (
        "peercrypt: error: plotting needs matplotlib: pip install 'peercrypt[plot]'\n"
    )
    assert not (tmp_path / "x.png").exists()
    # The history itself still reads without it.
    listed = subprocess.run(
        [sys.executable, "-c", code, *args[:2], "stats", "list"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 8, listed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stats", "show", "999"], "no transfer 999 in the statistics history"),
        (["stats", "show", "lst"], "'lst' is no transfer id (a number, `last` or `last-N`)"),
        (["stats", "plot", "-1"], "stats plot: -1: a negative number"),
        (["stats", "list", "--since", "yesterday"], "invalid --since 'yesterday'"),
        (["stats", "list", "--mode", "token_bucket"], "unknown mode 'token_bucket': one of"),
        (["stats", "export", "--mode", "bogus"], "unknown mode 'bogus': one of normal,"),
        (["stats", "plot", "1", "2"], "several IDs need --compare"),
        (["stats", "plot", "--compare", "1"], "--compare needs at least two IDs"),
        (["stats", "plot", "1", "-o", "x.jpg"], "must end in .png or .svg"),
        (["stats", "export", "--samples"], "--samples applies to --format csv"),
        (["stats", "export", "-o", "/nonexistent/dir/x.json"], "cannot write /nonexistent"),
        # A --peer that is neither HOST:PORT nor a fingerprint prefix matched
        # nothing, silently (exit 0), as if no transfer went there.
        (
            ["stats", "list", "--peer", "127.0.0.1"],
            "--peer '127.0.0.1': neither HOST:PORT nor a fingerprint (prefix); a host needs "
            "its port (127.0.0.1:PORT)",
        ),
        (
            ["stats", "export", "--peer", "127.0.0.1:99999"],
            "--peer '127.0.0.1:99999': port 99999 is out of range; expected 1..65535",
        ),
        (["stats", "list", "--peer", "host:"], "--peer 'host:': neither HOST:PORT nor"),
        # (read as host ":" and port 1)
        (["stats", "list", "--peer", "::1"], "--peer '::1': an IPv6 address takes brackets"),
    ],
)
def test_bad_input_is_one_line(recorded: Recorded, args: list[str], message: str) -> None:
    result = recorded.sender.cli(*args)
    assert result.returncode == 2, result.describe()
    assert len(result.stderr_lines) == 1 and result.stderr_lines[0].startswith(
        "peercrypt: error: "
    ), result.describe()
    assert message in result.stderr, result.describe()


def test_no_history_yet_and_a_broken_file_are_one_line(tmp_path: Path) -> None:
    empty = run_cli("stats", "list", data_dir=tmp_path / "fresh")
    assert empty.returncode == 2
    assert empty.stderr_lines == [
        f"peercrypt: error: no statistics recorded yet ({tmp_path / 'fresh' / 'stats.sqlite'} "
        "does not exist)"
    ]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "stats.sqlite").write_bytes(b"\x00garbage" * 1000)
    broken = run_cli("stats", "list", data_dir=tmp_path / "broken")
    assert broken.returncode == 2 and len(broken.stderr_lines) == 1
    assert broken.stderr_lines[0].startswith("peercrypt: error: cannot read ")


def test_retention_and_no_stats_are_node_settings(
    trio: tuple[NodeProcess, NodeProcess, NodeProcess],
    key: str,
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    _, receiver, _ = trio
    keeping = node_factory("--stats-max-transfers", "2", network_key=key)
    quiet = node_factory("--no-stats", network_key=key)
    sessions = []
    for i in range(3):
        code, result = keeping.send_to(make_file(1000 + i), receiver)
        assert code == 0, result
        sessions.append(result)
    code, result = quiet.send_to(make_file(10), receiver)
    assert code == 0, result

    def two_newest() -> list[dict[str, Any]] | None:
        with open_reader(db_path(keeping.data_dir)) as conn:
            rows = list_transfers(conn)
        sizes = [r["size"] for r in rows if r["result"] == "ok"]
        return rows if sizes == [1001, 1002] and len(rows) == 2 else None

    wait_until(two_newest, 10.0, "the history to keep only the two newest transfers")
    assert not db_path(quiet.data_dir).exists()
    assert quiet.status()["history"] == "off"
