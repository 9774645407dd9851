"""Resume with real node processes: kill -9 of either side at random points
and a resend that moves only what the receiver lacks; a changed source file
restarts cleanly; a disk that fills mid-way keeps the part, tells the sender
and resumes once there is room; nothing is left in the inbox afterwards.

Every round checks the content (BLAKE3 of the stored file) and the exact
accounting of the resend: chunks sent, less retransmissions, is the file's
chunk count less the chunks the receiver said it held."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.inbox import load_manifest, manifest_name, scan
from peercrypt import errors
from peercrypt.sizes import readable
from peercrypt.testing.nodes import NodeProcess, blake3_file, start_cli, wait_until

CHUNK = 64 * 1024
SIZE = 16 * 1024 * 1024  # 256 chunks; a checkpoint every 64
TOTAL = SIZE // CHUNK
SLOW = ("-r", str(12 * 1024 * 1024))  # ~1.3 s for the file: room to kill mid-way
ROUNDS = 10  # per side: 20 kills in all
MiB = 1024 * 1024


def _parts(inbox: Path) -> list[str]:
    return sorted(k.part for k in scan(inbox).kept)


def _orphans(inbox: Path) -> set[str]:
    """Kept parts without a readable manifest. A kill between a part's
    creation and its first manifest (written by the writer thread just after
    the accept) leaves one: nothing can resume it, and the sweep deletes it
    after ``--part-expiry`` like any incomplete pair (core/resume.py)."""
    return {k.part for k in scan(inbox).kept if k.manifest is None and k.has_part}


def _held(inbox: Path) -> int:
    """Chunks the kept part's manifest lists (0 if there is none)."""
    found = scan(inbox)
    if not found.manifests:
        return 0
    (m,) = found.manifests
    return load_manifest(inbox, manifest_name(m.part)).held().count


def _resend_ok(sender: NodeProcess, path: Path, receiver: NodeProcess) -> dict[str, Any]:
    result = sender.send_result(
        path, "127.0.0.1", receiver.port, "--chunk-size", str(CHUNK), timeout=120
    )
    info = result.json
    assert result.returncode == 0 and info.get("ok"), result.describe()
    stored = receiver.inbox / info["stored_as"]
    assert blake3_file(stored) == blake3_file(path) == info["blake3"]
    stats = info["stats"]
    # Only what the receiver lacked moved (plus any retransmission).
    assert stats["sent_chunks"] - stats["retransmits"] == TOTAL - stats["resumed_chunks"], stats
    return info


@contextlib.contextmanager
def _background_send(
    sender: NodeProcess, path: Path, receiver: NodeProcess
) -> Iterator[subprocess.Popen[str]]:
    proc = start_cli(
        "send", str(path), "127.0.0.1", str(receiver.port), "--json",
        "--chunk-size", str(CHUNK), *SLOW,
        data_dir=sender.data_dir,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def _kill_after_a_checkpoint(
    sender: NodeProcess, path: Path, receiver: NodeProcess, victim: NodeProcess
) -> None:
    """Send ``path`` and SIGKILL ``victim`` once the receiver's manifest holds chunks."""
    with _background_send(sender, path, receiver) as proc:
        _wait_for_checkpoint(receiver.inbox, proc)
        victim.kill()


def _wait_for_checkpoint(receiver_inbox: Path, proc: subprocess.Popen[str]) -> None:
    """Until the receiver's manifest lists chunks (or the send ended)."""
    wait_until(lambda: _held(receiver_inbox) > 0 or proc.poll() is not None, 30, "a checkpoint")


def _wait_for_progress(receiver_inbox: Path, proc: subprocess.Popen[str]) -> None:
    """Until the receiver has a part (the transfer is under way)."""
    wait_until(lambda: bool(_parts(receiver_inbox)) or proc.poll() is not None, 30, "a part")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("side", ["receiver", "sender"])
def test_kill_9_at_random_points_then_resume(
    side: str, node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    inbox = receiver.inbox
    resumed_any = 0
    for round_ in range(ROUNDS):
        path = make_file(SIZE, name=f"round{round_}.bin")
        with _background_send(sender, path, receiver) as proc:
            _wait_for_progress(inbox, proc)
            if round_ % 2:  # every other round right after a checkpoint, however fast or
                _wait_for_checkpoint(inbox, proc)  # slow the machine: something to resume
            else:
                time.sleep(rng.uniform(0.0, 1.2))  # the random point of the kill
            victim = receiver if side == "receiver" else sender
            victim.kill()
            if side == "receiver":
                # Ctrl-C cancels the send in the node: its own retries would
                # otherwise resume (and extend) the part before the resend below.
                proc.send_signal(signal.SIGINT)
                proc.wait(30)
        held = _held(inbox)
        orphans = _orphans(inbox)
        victim.start()
        if side == "receiver":
            inbox = receiver.inbox
        info = _resend_ok(sender, path, receiver)
        resumed = info["stats"]["resumed_chunks"]
        where = f"seed {seed}, round {round_}"
        if side == "receiver":
            assert resumed == held, f"{where}: resumed {resumed}, manifest held {held}"
        elif held < TOTAL:  # the receiver's running transfer is taken over: at least the manifest
            assert resumed >= held, f"{where}: resumed {resumed}, manifest held {held}"
        # (With every chunk written the old transfer may already be verifying
        # its hash: it is not taken over, it stores the file by itself.)
        resumed_any += resumed > 0
        # Nothing resumable is left behind: at most an orphan of the kill,
        # still without a manifest (a resend cannot take it over).
        left = set(_parts(inbox))
        assert left <= orphans & _orphans(inbox), f"{where}: a part was left behind: {left}"
        for part in left:
            (inbox / part).unlink()  # the sweep's job after --part-expiry; later rounds see none
    assert resumed_any, f"seed {seed}: no round was killed after a checkpoint"


def test_a_restarted_sender_at_its_limit_takes_its_transfer_over(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A sender whose node restarted offers its file again while the
    receiver still runs the old transfer, which holds the one slot the
    sender may have there: the offer takes that transfer over (it was
    refused `busy` until the old one gave up, 30 s later)."""
    receiver = node_factory("--max-transfers-per-peer", "1", name="receiver")
    sender = node_factory(name="sender")
    path = make_file(SIZE)
    _kill_after_a_checkpoint(sender, path, receiver, sender)
    held = _held(receiver.inbox)
    assert 0 < held < TOTAL
    sender.start()
    info = _resend_ok(sender, path, receiver)
    assert info["stats"]["resumed_chunks"] >= held
    # (counters come every half second: read once the delivery is counted)
    counters = receiver.counters_when("receiver.received", 1)
    assert counters.get("receiver.taken-over") == 1, counters
    assert "receiver.refused-busy" not in counters, counters


def test_ctrl_c_of_a_send_under_way_says_sending_again_resumes_and_it_does(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """Ctrl-C cancels the send; "cancelled" alone made a user think what had
    crossed was lost: the line says the receiver keeps it, and it does."""
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    path = make_file(SIZE)
    proc = start_cli(
        "send", str(path), "127.0.0.1", str(receiver.port), "--json",
        "--chunk-size", str(CHUNK), "-r", str(2 * MiB),  # 8 s: the Ctrl-C lands mid-way
        data_dir=sender.data_dir,
    )  # fmt: skip
    try:
        _wait_for_checkpoint(receiver.inbox, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == (
        "peercrypt: error: interrupted; the transfer was cancelled "
        "(the receiver keeps what arrived: sending it again resumes)"
    ), err
    held = _held(receiver.inbox)
    assert held > 0
    assert _resend_ok(sender, path, receiver)["stats"]["resumed_chunks"] >= held


def test_changed_source_restarts_cleanly(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    path = make_file(SIZE, name="doc.bin")
    _kill_after_a_checkpoint(sender, path, receiver, receiver)
    assert _held(receiver.inbox) > 0
    old_parts = _parts(receiver.inbox)
    receiver.start()
    # The same name and size, other content (and mtime): nothing may be reused.
    with open(path, "r+b") as f:
        f.seek(SIZE // 2)
        f.write(os.urandom(4096))
    info = _resend_ok(sender, path, receiver)
    assert info["stats"]["resumed_chunks"] == 0
    # (the restarted node counted the file it stored after the part it deleted)
    assert receiver.counters_when("receiver.received", 1).get("receiver.parts-obsolete") == 1
    assert _parts(receiver.inbox) == [], old_parts


def test_another_identity_cannot_continue_a_kept_part(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A member with the network key and a fresh identity offers the very
    same file: it gets a fresh part, not the victim's progress (nor deletes it)."""
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    path = make_file(SIZE, name="shared.bin")
    _kill_after_a_checkpoint(sender, path, receiver, sender)
    sender.start()
    wait_until(lambda: receiver.counters().get("receiver.accepted", 0) >= 1, 10, "accepted")
    intruder = node_factory(name="intruder")
    info = _resend_ok(intruder, path, receiver)
    assert info["stats"]["resumed_chunks"] == 0
    assert len(_parts(receiver.inbox)) == 1  # the victim's part is still there
    assert _resend_ok(sender, path, receiver)["stats"]["resumed_chunks"] > 0


@pytest.mark.parametrize("disk", ["small_inbox", "ext4_inbox"])
def test_disk_full_mid_transfer_then_resume(
    disk: str,
    request: pytest.FixtureRequest,
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    """On tmpfs the write finds the disk full; on ext4 the writer's
    ``fallocate`` of the chunk's blocks, before its write, does."""
    small_inbox: Path = request.getfixturevalue(disk)
    receiver = node_factory("--inbox", str(small_inbox), name="receiver")
    sender = node_factory(name="sender")
    # Someone else fills the disk after the offer passed the space check.
    path = make_file(SIZE, name="big.bin")  # 16 MiB into 24 MiB
    filler = small_inbox / "someone-elses-file"
    with _background_send(sender, path, receiver) as proc:
        # After a checkpoint: on a full disk no newer manifest fits, the last one stands.
        wait_until(lambda: _held(small_inbox) > 0 or proc.poll() is not None, 30, "a checkpoint")
        with contextlib.suppress(OSError), open(filler, "wb") as f:
            for _ in range(24):  # until the disk is full
                f.write(b"\0" * (1024 * 1024))
                f.flush()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == errors.FAILED, (out, err)
    result = json.loads(out)
    assert result["code"] == "no-space" and "disk is full" in result["error"], result
    assert "Traceback" not in err
    kept = _held(small_inbox)
    assert kept > 0 and len(_parts(small_inbox)) == 1
    # Every decrypt buffer the failed transfer took came back to the pool.
    out = lambda: receiver.status().get("decrypt_buffers_out") == "0" or None  # noqa: E731
    wait_until(out, 30, "the receiver's decrypt buffers all given back")
    # The node keeps serving: a small file arrives whole, then the rest resumes.
    filler.unlink()
    small = make_file(3 * CHUNK + 5, name="small.bin")
    done = sender.send_result(small, "127.0.0.1", receiver.port, timeout=60)
    assert done.returncode == 0, done.describe()
    assert blake3_file(small_inbox / done.json["stored_as"]) == blake3_file(small)
    info = _resend_ok(sender, path, receiver)
    assert info["stats"]["resumed_chunks"] >= kept
    assert _parts(small_inbox) == []
    # The small file's new part was checked as written; the kept one, which
    # another process may have held open before this run, all after its fsync.
    assert receiver.wait_for_counter("receiver.checks-full", 1) == 1
    assert receiver.counters().get("receiver.checks-early", 0) == 1


def test_two_offers_cannot_both_have_the_last_space(
    small_inbox: Path, node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver = node_factory("--inbox", str(small_inbox), name="receiver")
    a, b = node_factory(name="a"), node_factory(name="b")
    one = make_file(SIZE, name="one.bin")  # two of 16 MiB into 24 MiB
    two = make_file(SIZE, name="two.bin")
    with _background_send(a, one, receiver) as first:
        _wait_for_progress(small_inbox, first)
        second = b.send_result(two, "127.0.0.1", receiver.port, timeout=60)
        assert second.returncode == errors.REFUSED, second.describe()
        assert "not enough space" in second.json["error"]
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, (out, err)
    assert receiver.wait_for_counter("receiver.refused-no-space", 1) == 1


def test_kept_parts_are_reclaimed_after_the_expiry(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    path = make_file(SIZE, name="abandoned.bin")
    _kill_after_a_checkpoint(sender, path, receiver, receiver)
    inbox = receiver.inbox
    assert len(_parts(inbox)) == 1
    receiver.extra_args = ("--part-expiry", "1")
    time.sleep(1.5)  # older than the expiry by the time the node starts
    receiver.start()
    assert _parts(inbox) == []
    assert receiver.wait_for_counter("receiver.parts-reclaimed", 1) == 1


def test_a_part_without_a_manifest_goes_with_the_next_offer_of_its_name(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A node killed between creating a part and its first checkpoint leaves
    a part no offer can continue: the next offer of that name deletes it
    (before, it stayed until --part-expiry)."""
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    orphan = receiver.inbox / ".orphan.bin.0123456789ab.part"
    orphan.write_bytes(b"\0" * 4096)
    path = make_file(CHUNK * 3, name="orphan.bin")
    result = sender.send_result(path, "127.0.0.1", receiver.port, timeout=60)
    assert result.returncode == 0 and result.json.get("ok"), result.describe()
    assert not orphan.exists()
    assert _parts(receiver.inbox) == []
    assert receiver.wait_for_counter("receiver.parts-orphaned", 1) == 1


def _history_row(node: NodeProcess, side: str, file: str) -> dict[str, Any]:
    """The node's finished ``side`` row of ``file`` (the stats actor commits
    every second: waited for)."""

    def found() -> dict[str, Any] | None:
        listed = node.cli("stats", "list", "--json")
        rows = json.loads(listed.stdout) if listed.returncode == 0 else []
        ok = [r for r in rows if r["side"] == side and r["file"] == file and r["result"] == "ok"]
        return ok[-1] if ok else None

    return wait_until(found, 20, f"the {side} row of {file}")


def _resume_a_killed_receivers_transfer(
    sender: NodeProcess, receiver: NodeProcess, path: Path
) -> tuple[int, dict[str, Any]]:
    """Kill the receiver after a checkpoint, restart it and send again: the
    bytes its kept part held, and the resend's outcome."""
    with _background_send(sender, path, receiver) as proc:
        _wait_for_checkpoint(receiver.inbox, proc)
        receiver.kill()
        proc.send_signal(signal.SIGINT)  # no retry of the node's own extends the part
        proc.wait(30)
    held = _held(receiver.inbox) * CHUNK
    assert 0 < held < SIZE
    receiver.start()
    info = _resend_ok(sender, path, receiver)
    assert info["stats"]["resumed_chunks"] * CHUNK == held, info["stats"]
    return held, info


def test_the_receivers_history_rates_only_what_crossed_in_a_resume(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A resumed transfer's receiving row counts the bytes its kept part
    held as held, not moved: `stats show` and `stats list` rate the rest."""
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    path = make_file(SIZE, name="resumed.bin")
    held, info = _resume_a_killed_receivers_transfer(sender, receiver, path)
    row = _history_row(receiver, "receive", info["stored_as"])
    shown = receiver.cli("stats", "show", str(row["id"])).stdout
    rate = readable((SIZE - held) / row["duration"], rate=True)
    moved = f"{(SIZE - held) / MiB:.1f} MiB in {row['duration']:.3f} s, {rate}"
    already = f"({held / MiB:.1f} MiB held already)"
    assert re.search(rf"^moved +{re.escape(moved)} {re.escape(already)}$", shown, re.M), shown
    listed = receiver.cli("stats", "list").stdout.splitlines()
    (line,) = [x for x in listed if x.startswith(f"{row['id']} ")]
    assert re.search(rf" {re.escape(rate)} +ok$", line), line
    # The row's bytes stay the file's, as exported; what it held is its own count.
    assert row["bytes"] == SIZE and row["stats"]["held_bytes"] == held, row


def test_a_resumes_time_series_adds_up_to_what_crossed_on_both_sides(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """The samples of a resumed transfer, sending and receiving side: their
    throughput over time adds up to the bytes that crossed (within a chunk:
    the receiver counts whole chunks written), not to the whole file (the
    first sample would hold the kept part, a spike in `stats plot`)."""
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    path = make_file(SIZE, name="series.bin")
    held, info = _resume_a_killed_receivers_transfer(sender, receiver, path)
    for node, side, file in (
        (receiver, "receive", info["stored_as"]),
        (sender, "send", str(path)),
    ):
        row = _history_row(node, side, file)
        shown = node.cli("stats", "show", str(row["id"]), "--json")
        samples = json.loads(shown.stdout)["samples"]
        before = [0.0] + [s["t"] for s in samples[:-1]]
        moved = sum(s["throughput"] * (s["t"] - b) for s, b in zip(samples, before, strict=True))
        assert samples and samples[-1]["bytes"] == SIZE, (side, samples)
        assert abs(moved - (SIZE - held)) <= CHUNK, (side, moved, SIZE - held, samples[:3])
