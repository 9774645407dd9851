"""The chunk size the receiver chooses, with real node processes: a send
that names none is cut as the receiver chose by its load; a part kept in
chunks the offer allows is continued in them, one in chunks outside them in
the receiver's choice; ``send --chunk-size`` is honoured; a member choosing or
offering absurd chunk sizes gets a clean refusal or a failed send, never a
crashed actor or a buffer of its choosing. Every stored file is checked by
its BLAKE3 hash."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from actors.inbox import load_manifest, manifest_name, scan
from peercrypt.chunking import DEFAULT_MAX_CHUNK, DEFAULT_MIN_CHUNK, MAX_CHUNK, MiB
from peercrypt.core.resume import rechunked
from peercrypt.crypto.identity import load_or_create_identity
from peercrypt.testing.hostile import FloodingReceiver
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer, Refused
from peercrypt.testing.nodes import (
    NodeProcess,
    assert_sent,
    blake3_file,
    start_cli,
    wait_until,
)
from peercrypt.wire.messages import Refuse, Verified

WAIT = 60.0


def _send_json(sender: NodeProcess, path: Path, receiver: NodeProcess, *extra: str) -> dict:
    code, result = sender.send_to(path, receiver, *extra, timeout=120)
    assert_sent(receiver, (code, result), path)
    return result


def _background(
    sender: NodeProcess, path: Path, receiver: NodeProcess, *extra: str
) -> subprocess.Popen[str]:
    return start_cli(
        "send", str(path), receiver.host, str(receiver.port), "--json", *extra,
        data_dir=sender.data_dir,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[str]) -> None:
    """Ctrl-C: the node cancels the send (no retry extends a kept part)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=30)


def _held(inbox: Path) -> tuple[int, int]:
    """(chunk size, chunks held) of the one kept part's manifest; (0, 0) if none."""
    found = scan(inbox)
    if not found.manifests:
        return 0, 0
    (m,) = found.manifests
    manifest = load_manifest(inbox, manifest_name(m.part))
    return manifest.key.chunk_size, manifest.held().count


def _chosen(h: HostileSender, name: str, size: int) -> int:
    """The chunk size the receiver chooses for an offer of ``size`` bytes in
    the range a send naming none allows (the offer is then abandoned: no
    data moves)."""
    t = h.offer(name, size, DEFAULT_MAX_CHUNK, min_chunk=DEFAULT_MIN_CHUNK)
    assert isinstance(t, HostileTransfer) and t.accept is not None, t
    t.abandon()
    return t.accept.chunk_size


@pytest.mark.timeout(300)
def test_the_receiver_chooses_smaller_chunks_while_others_receive(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """Alone, an offer of 512 MiB in the range a send naming no chunk size
    allows is cut in 4 MiB chunks (a file of 128 of them); with four slow
    transfers receiving (a share of the 32 MiB buffer: 6.4 MiB each with
    it, or 5.3 with the first offer not yet gone), in 2 MiB (two of them fit
    its share, two of 4 MiB do not). Real sends: a file of fewer than 128
    chunks of 2 MiB in 1 MiB, alone and by aimd; `--chunk-size` is honoured
    beside the slow ones all the same."""
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        assert _chosen(h, "alone.bin", 512 * MiB) == DEFAULT_MAX_CHUNK
    alone = make_file(128 * MiB, name="alone.bin")
    result = _send_json(sender, alone, receiver)
    assert (result["stats"]["chunk_size"], result["stats"]["chunks"]) == (DEFAULT_MIN_CHUNK, 128)
    # aimd: its window in bytes (4 MiB to start) governs, not the credit: it
    # offers the smallest only, where the receiver would choose 4 MiB.
    sparse = alone.with_name("aimd.bin")
    with open(sparse, "xb") as f:
        f.truncate(512 * MiB)
    result = _send_json(sender, sparse, receiver, "--mode", "aimd")
    assert (result["stats"]["chunk_size"], result["stats"]["chunks"]) == (DEFAULT_MIN_CHUNK, 512)
    small = make_file(64 * MiB - 1, name="small.bin")
    result = _send_json(sender, small, receiver)
    assert (result["stats"]["chunk_size"], result["stats"]["chunks"]) == (DEFAULT_MIN_CHUNK, 64)
    # Four transfers that stay receiving: 64 KiB/s each (their own rate, so
    # their chunks are fixed: 64 KiB), 16 MiB each (minutes at that rate).
    slow = [
        _background(sender, make_file(16 * MiB, name=f"slow{i}.bin"), receiver,
                    "--chunk-size", str(64 * 1024), "-r", str(64 * 1024), "--timeout", "120")
        for i in range(4)
    ]  # fmt: skip
    try:
        wait_until(
            lambda: receiver.counters().get("receiver.accepted", 0) >= 8, WAIT, "4 slow transfers"
        )
        with HostileSender(network_key, receiver.host, receiver.port) as h:
            assert _chosen(h, "busy.bin", 512 * MiB) == 2 * MiB
        fixed = make_file(9 * MiB, name="fixed.bin")
        result = _send_json(sender, fixed, receiver, "--chunk-size", str(4 * MiB))
        assert (result["stats"]["chunk_size"], result["stats"]["chunks"]) == (4 * MiB, 3)
        assert all(p.poll() is None for p in slow), "a slow transfer ended early"
    finally:
        for proc in slow:
            _stop(proc)


@pytest.mark.timeout(300)
def test_a_part_kept_in_offered_chunks_resumes_in_them_and_another_in_the_receivers(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A part of a 256 MiB file written in 1 MiB chunks (send --chunk-size,
    the receiver killed after a checkpoint) is continued by a send naming no
    chunk size (it allows 1..4 MiB; alone, the receiver would choose 2 MiB)
    in 1 MiB chunks, from what its manifest held; one written in 64 KiB
    chunks (outside them: a paced send's, say) continues in the receiver's
    choice, from the whole 2 MiB chunks its held bytes make (it was deleted
    and the file sent again whole)."""
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    for chunk, resumes in ((MiB, True), (64 * 1024, False)):
        path = make_file(256 * MiB, name=f"kept{chunk}.bin")
        # -r paces it (a kill after a checkpoint), -b keeps its chunks whole.
        rate = ("-r", str(8 * MiB), "-b", str(MiB))
        proc = _background(sender, path, receiver, "--chunk-size", str(chunk), *rate)
        try:
            wait_until(
                lambda p=proc: _held(receiver.inbox)[1] > 0 or p.poll() is not None,
                WAIT,
                "a checkpoint",
            )
            receiver.kill()
        finally:
            _stop(proc)
        kept_chunk, held = _held(receiver.inbox)
        assert (kept_chunk, held > 0) == (chunk, True), (kept_chunk, held)
        (m,) = scan(receiver.inbox).manifests
        as_chosen = rechunked(load_manifest(receiver.inbox, manifest_name(m.part)), 2 * MiB)
        receiver.start()
        stats = _send_json(sender, path, receiver)["stats"]
        if resumes:
            assert (stats["chunk_size"], stats["resumed_chunks"]) == (MiB, held)
            assert stats["sent_chunks"] - stats["retransmits"] == 256 - held, stats
        else:  # a checkpoint every 64 chunks (4 MiB): at least two whole ones
            again = as_chosen.held().count
            assert again >= 2 and again * 2 * MiB <= held * chunk, (again, held)
            assert (stats["chunk_size"], stats["resumed_chunks"]) == (2 * MiB, again), stats
            assert stats["sent_chunks"] - stats["retransmits"] == 128 - again, stats
        counted = receiver.counters_when("receiver.received", 1)
        assert counted.get("receiver.parts-obsolete", 0) == 0, counted
        assert scan(receiver.inbox).manifests == []


@pytest.mark.timeout(300)
def test_a_paced_send_stopped_resumes_when_sent_again_unpaced(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """The user's case: a send capped with -r (its chunks cut small for
    the rate) stopped with Ctrl-C, then sent again without a cap: the
    receiver continues its kept part in the chunks it chooses now, from the
    whole ones its held bytes make, and the file verifies (the part was
    deleted as an older layout and everything sent again)."""
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    path = make_file(64 * MiB, name="capped-then-not.bin")
    proc = _background(sender, path, receiver, "-r", str(8 * MiB))
    try:
        wait_until(
            lambda: (
                _held(receiver.inbox)[1] * _held(receiver.inbox)[0] >= 8 * MiB
                or proc.poll() is not None
            ),
            WAIT,
            "8 MiB held at a checkpoint",
        )
        assert proc.poll() is None, "the paced send ended before it was stopped"
    finally:
        _stop(proc)
    kept_chunk, held = _held(receiver.inbox)
    assert kept_chunk < MiB and held * kept_chunk >= 8 * MiB, (kept_chunk, held)
    result = _send_json(sender, path, receiver)
    stats = result["stats"]
    assert stats["chunk_size"] >= MiB and stats["resumed_chunks"] > 0, stats
    assert stats["resumed_chunks"] * stats["chunk_size"] <= held * kept_chunk, stats
    assert scan(receiver.inbox).manifests == []


@pytest.mark.timeout(300)
def test_a_running_transfer_offered_again_continues_in_its_own_chunks(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A transfer running in 1 MiB chunks (send --chunk-size, paced) whose
    file its sender offers again naming no chunk size (1..4 MiB; alone, the
    receiver would choose 2 MiB) is taken over: ended, and continued from
    what it wrote, in its own 1 MiB chunks. Its bitmap counts those: read as
    one of 4 MiB chunks it was the wrong length (the offer went unanswered)
    or, for a small file, claimed chunks never written. The second offer
    comes from another process with the sender's identity (its node
    restarted; the node itself refuses a second send of a running file)."""
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    twin = node_factory(name="twin", start=False)
    twin.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sender.data_dir / "identity.key", twin.data_dir / "identity.key")
    twin.start()
    path = make_file(256 * MiB, name="again.bin")
    rate = ("-r", str(8 * MiB), "-b", str(MiB))
    first = _background(sender, path, receiver, "--chunk-size", str(MiB), *rate)
    try:
        wait_until(
            lambda: _held(receiver.inbox)[1] > 0 or first.poll() is not None, WAIT, "a checkpoint"
        )
        assert first.poll() is None, "the first send ended before its checkpoint"
        taken = receiver.counters().get("receiver.taken-over", 0)
        stats = _send_json(twin, path, receiver)["stats"]
    finally:
        _stop(first)
    assert receiver.wait_for_counter("receiver.taken-over", taken + 1) == taken + 1
    assert (stats["chunk_size"], stats["resumed_chunks"] > 0) == (MiB, True), stats
    assert stats["sent_chunks"] - stats["retransmits"] == 256 - stats["resumed_chunks"], stats
    assert scan(receiver.inbox).manifests == []


def test_under_a_low_node_cap_a_send_naming_no_chunk_size_is_cut_as_the_cap_allows(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A node capped at 200 KB/s moves a paced chunk within 5 s: the
    scheduler cuts a send's chunks to 1,000,000 bytes, below the 1 MiB a
    send naming no chunk size offers at least, and the send is cut so
    (in 1 MiB it would take 5.2 s a chunk; at 20 KB/s 52 s, beyond the
    receiver's 30 s idle limit)."""
    receiver = node_factory(name="receiver")
    sender = node_factory("--max-rate", "200000", name="sender")
    path = make_file(1_500_000, name="capped.bin")
    stats = _send_json(sender, path, receiver)["stats"]
    assert (stats["chunk_size"], stats["chunks"]) == (1_000_000, 2), stats


def test_a_member_offering_absurd_chunk_sizes_is_refused(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], network_key: str
) -> None:
    """Ranges that are empty or start outside the chunk bounds are refused
    (bad-offer); a range reaching beyond the receiver's largest chunk gets
    at most that largest (--max-chunk, 16 MiB here: its data port takes no
    more, and one such chunk is written and acked); a file offered in a
    range is cut as the receiver chose (1 MiB for 12 MiB) and verifies. The receiver's actors
    go on."""
    receiver, sender = node_factory(), node_factory()
    with HostileSender(network_key, receiver.host, receiver.port) as h:
        for low, high in ((1, 4 * MiB), (4 * MiB, MiB), (32 * MiB, 64 * MiB), (4095, 4095)):
            refused = h.offer("odd.bin", 64 * MiB, high, min_chunk=low)
            assert isinstance(refused, Refused) and isinstance(refused.answer, Refuse), (low, high)
            assert refused.answer.code == "bad-offer", refused.answer
        data = os.urandom(12 * MiB)  # within the window: alone, 16 chunks
        t = h.offer("ranged.bin", len(data), DEFAULT_MAX_CHUNK, min_chunk=DEFAULT_MIN_CHUNK)
        assert isinstance(t, HostileTransfer), t
        assert t.accept is not None and t.accept.chunk_size == DEFAULT_MIN_CHUNK
        verified = t.send_stream(data)
        assert isinstance(verified, Verified), verified
        assert verified.digest == blake3.blake3(data).digest()
        assert blake3_file(receiver.inbox / verified.stored_as) == verified.digest.hex()
        # 128 chunks of the largest (the file rule), sparse: one is sent.
        wide = h.offer("wide.bin", 128 * MAX_CHUNK, 64 * MiB, min_chunk=DEFAULT_MIN_CHUNK)
        assert isinstance(wide, HostileTransfer), wide
        assert wide.accept is not None and wide.accept.chunk_size == MAX_CHUNK
        wide.send_chunk(0, os.urandom(MAX_CHUNK))
        assert wide.acked(1).cumulative == 1
        wide.abandon()
    good = make_file(4 * MiB)
    assert_sent(receiver, sender.send_to(good, receiver), good)
    # (an actor reports its counters at most every 0.5 s: all of this can take less)
    assert receiver.wait_for_counter("receiver.received", 2) == 2
    counters = receiver.counters()
    assert counters.get("receiver.refused-bad-offer") == 4
    assert counters.get("receiver.handler-errors", 0) == 0


@pytest.mark.parametrize(
    ("extra", "chosen"),
    [
        ((), 4096),  # below the 1 MiB the send allows
        ((), 64 * MiB),  # above its 4 MiB
        (("--chunk-size", str(2 * MiB)), MiB),  # not the one size asked for
    ],
)
def test_a_receiver_choosing_chunks_not_offered_fails_the_send_cleanly(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    network_key: str,
    extra: tuple[str, ...],
    chosen: int,
) -> None:
    """A member accepting with a chunk size the offer did not allow: the
    send fails at once saying so (one line, non-zero exit), before any data
    connection (no buffer of that size is made), and the sender's next send
    verifies."""
    sender, receiver = node_factory(), node_factory()
    identity = load_or_create_identity(sender.data_dir).public
    hostile = FloodingReceiver(network_key, identity, megabytes=1, chunk_size=chosen)
    try:
        answer = sender.cli(
            "send", str(make_file(8 * MiB)), "127.0.0.1", str(hostile.port), *extra, timeout=WAIT
        )
        assert hostile.offers == 1
        assert hostile.flooded == [], "the sender opened a data connection"
    finally:
        hostile.close()
    assert answer.returncode != 0, answer.describe()
    lines = [line for line in answer.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and f"chunks of {chosen} bytes" in lines[0], answer.describe()
    assert "Traceback" not in answer.stderr
    good = make_file(4 * MiB)
    assert_sent(receiver, sender.send_to(good, receiver), good)
    # (counted before the good send's end, when it was the refused one's)
    assert sender.counters_when("sender.sent", 1).get("sender.handler-errors", 0) == 0
