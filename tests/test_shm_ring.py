"""Chunks through a shared-memory ring between two nodes of one host
(peercrypt/shm_ring.py).

The ring's own checks first, without nodes (what an Accept can and cannot
make a sender write into), then real nodes on loopback: a transfer through
the ring, with it turned off on either side, a parallel send (its lanes keep
their sockets); then a hostile sender with the transfer's keys against a
real receiving node: slots rewritten before and after their descriptor,
descriptors out of range, and the rings' memory bound under many offers.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peercrypt import local_ipc, shm_ring
from peercrypt.crypto.transfer import TAG_BYTES
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer, Refused
from peercrypt.testing.nodes import (
    BackgroundSend,
    NodeProcess,
    assert_sent,
    blake3_file,
    one_host_trio,
    wait_until,
)
from peercrypt.wire import codec
from peercrypt.wire.messages import Ack, ChunkHeader, SlotHeader, Verified

HOST = local_ipc.host_id()
WAIT = 30.0
MiB = 1 << 20
SLOT = 4096 + TAG_BYTES


@pytest.fixture
def lent() -> Iterator[shm_ring.ReceiverRing]:
    ring = shm_ring.ReceiverRing(4, SLOT)
    yield ring
    ring.close()


def opened(ring: shm_ring.ReceiverRing, **claim: Any) -> shm_ring.SenderRing | None:
    args: dict[str, Any] = {
        "path": ring.path,
        "token": ring.token,
        "slots": ring.intake.slots,
        "slot_size": SLOT,
        "claimed_host": HOST,
        "own_host": HOST,
    }
    args.update(claim)
    return shm_ring.open_ring(**args)


def test_what_the_sender_seals_into_a_slot_the_receiver_copies_out(
    lent: shm_ring.ReceiverRing,
) -> None:
    mine = opened(lent)
    assert mine is not None
    try:
        seq, offset = mine.slots.take(100) or (-1, -1)
        assert (seq, offset) == (0, 0)
        mine.slot(offset, 100)[:] = b"x" * 100
        seq, offset = mine.slots.take(SLOT) or (-1, -1)
        mine.slot(offset, SLOT)[:] = b"y" * SLOT
        out = bytearray(SLOT)
        lent.copy_out(lent.intake.offset(1, SLOT) or 0, memoryview(out))
        assert out == b"y" * SLOT
    finally:
        mine.close()


def test_the_ring_cannot_shrink_nor_grow(lent: shm_ring.ReceiverRing) -> None:
    fd = os.open(lent.path, os.O_RDWR)
    try:
        for size in (0, lent.size + 1):
            with pytest.raises(PermissionError):
                os.ftruncate(fd, size)
        assert os.fstat(fd).st_size == lent.size
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    "claim",
    [
        {"claimed_host": "another-host"},
        {"own_host": "", "claimed_host": ""},
        {"token": bytes(16)},  # the right file, another name
        {"token": b""},
        {"slots": 3},  # not the size the file has
        {"slots": 5},
        {"slots": 1},
        {"slots": shm_ring.MAX_SLOTS + 1},
        {"slot_size": SLOT + 1},
        {"path": "/proc/self/fd/3"},
        {"path": "/dev/shm/ring"},
        {"path": "/proc/1/fd/3/../../2/fd/3"},
        {"path": "/proc/999999999/fd/3"},  # no such process
    ],
)
def test_claims_that_do_not_hold_are_not_written_into(
    lent: shm_ring.ReceiverRing, claim: dict[str, Any]
) -> None:
    assert opened(lent, **claim) is None


def test_a_file_with_a_name_in_a_folder_is_not_written_into(tmp_path: Path) -> None:
    """The same size and an open fd a path can name, but a file in a folder
    (what a hostile receiver would point at to have it overwritten)."""
    target = tmp_path / "precious"
    target.write_bytes(b"p" * (4 * SLOT))
    fd = os.open(target, os.O_RDWR)
    try:
        path = f"/proc/{os.getpid()}/fd/{fd}"
        assert shm_ring.open_ring(path, bytes(16), 4, SLOT, HOST, HOST) is None
    finally:
        os.close(fd)
    assert target.read_bytes() == b"p" * (4 * SLOT)


def memfd(name: str, size: int, seals: int) -> int:
    fd = os.memfd_create(name, os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


@pytest.mark.parametrize(
    "prefix,seals,taken",
    [
        (shm_ring.PREFIX, 0, False),  # may shrink under the sender's mapping
        (shm_ring.PREFIX, fcntl.F_SEAL_GROW, False),
        ("something-", fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW, False),  # not a ring
        (shm_ring.PREFIX, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW, True),
    ],
)
def test_only_a_sealed_memfd_named_by_the_token_is_written_into(
    prefix: str, seals: int, taken: bool
) -> None:
    token = os.urandom(shm_ring.TOKEN_BYTES)
    fd = memfd(prefix + token.hex(), 4 * SLOT, seals)
    try:
        ring = shm_ring.open_ring(f"/proc/{os.getpid()}/fd/{fd}", token, 4, SLOT, HOST, HOST)
        assert (ring is not None) == taken
        if ring is not None:
            ring.close()
    finally:
        os.close(fd)


@given(st.text(max_size=60), st.binary(max_size=20), st.integers(-5, 300))
def test_only_a_proc_fd_path_a_token_and_a_ring_size_are_well_formed(
    path: str, token: bytes, slots: int
) -> None:
    if shm_ring.well_formed(path, token, slots, HOST, HOST):
        parts = path.split("/")
        assert parts[:2] == ["", "proc"] and parts[3] == "fd" and len(parts) == 5
        assert parts[2].isdigit() and parts[4].isdigit()
        assert len(token) == shm_ring.TOKEN_BYTES and 2 <= slots <= shm_ring.MAX_SLOTS
    assert not shm_ring.well_formed(path, token, slots, HOST, "")


@pytest.mark.parametrize(
    "credit,budget,slots",
    [(16, 8 * MiB, 8), (16, 3 * MiB, 3), (16, MiB, 0), (1, 8 * MiB, 5), (300, 1 << 40, 8)],
)
def test_a_ring_holds_the_credit_and_slack_within_the_budget_and_its_cap(
    credit: int, budget: int, slots: int
) -> None:
    assert shm_ring.ring_slots(credit, MiB, budget) == slots


# -- real nodes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:
    """(sender, receiver, receiver with the ring turned off, network key)."""
    with one_host_trio(tmp_path_factory.mktemp("ring"), {"PEERCRYPT_SHM_RING": "true"}) as nodes:
        yield nodes


def rings(node: NodeProcess) -> list[int]:
    """The sizes of the shared-memory rings a node's process holds open
    (each once: a mapping holds a second descriptor of its file)."""
    assert node.proc is not None
    fds = Path(f"/proc/{node.proc.pid}/fd")
    sizes: dict[tuple[int, int], int] = {}
    for fd in fds.iterdir():
        try:
            if os.readlink(fd).startswith("/memfd:" + shm_ring.PREFIX):
                info = os.stat(fd)
                sizes[info.st_dev, info.st_ino] = info.st_size
        except OSError:
            continue
    return sorted(sizes.values())


# Chunks of 1 MiB, as the counts below say (6 chunks; a ring of 8 slots):
# the default's 4 MiB chunks get a ring of 2 slots from the 8 MiB the
# node's rings may hold (shm_ring.node_budget).
MIB_CHUNKS = ("--chunk-size", str(MiB))


def test_two_nodes_of_one_host_send_through_the_ring(
    trio: tuple[Any, ...],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    """A receiver of its own: its counters count this transfer's chunks only."""
    sender = trio[0]
    receiver = node_factory("--shm-ring", network_key=trio[3])
    before = sender.counters().get("sender.data-ring", 0)
    path = make_file(5 * MiB + 17, name="through-the-ring.bin")
    assert_sent(receiver, sender.send_to(path, receiver, *MIB_CHUNKS), path)
    sender.wait_for_counter("sender.data-ring", before + 1)
    # Every chunk came through a slot, copied out and authenticated.
    assert receiver.wait_for_counter("receiver.ring-chunks", 6) == 6
    assert receiver.counters().get("receiver.rings-lent") == 1
    assert sender.counters().get("sender.data-ring-refused", 0) == 0
    assert rings(receiver) == []  # closed with the transfer


def test_chunks_beyond_a_full_ring_follow_the_descriptors_sealed_before_them(
    trio: tuple[Any, ...],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    """A window of 16 chunks and a ring of 8 slots: the first 8 are sealed
    into it, the rest go over the socket, after the descriptors of the
    first (out of order, the receiver's SACK would show the ring's chunks
    missing and the sender resend them): nothing is sent twice."""
    sender = trio[0]
    receiver = node_factory("--shm-ring", network_key=trio[3])
    full = sender.counters().get("sender.data-ring-full", 0)
    path = make_file(24 * MiB + 1, name="beyond-the-ring.bin")
    result = sender.send_to(path, receiver, *MIB_CHUNKS)
    assert_sent(receiver, result, path)
    assert sender.wait_for_counter("sender.data-ring-full", full + 1) > full
    stats = result[1]["stats"]
    assert (stats["retransmits"], stats["fast_retransmits"]) == (0, 0), stats
    assert receiver.wait_for_counter("receiver.ring-chunks", 8) >= 8


def test_a_sender_writes_into_one_ring_at_a_time(
    trio: tuple[Any, ...],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    """A ring's pages count in the RSS of the node that writes into it too:
    while one of its sends uses a ring, a send to another receiver of the
    host goes over the Unix socket, though that receiver lends one."""
    sender, _, _, key = trio
    first, second = (node_factory("--shm-ring", network_key=key) for _ in range(2))
    c = sender.counters()
    slow = make_file(24 * MiB, name="paced-through-a-ring.bin")
    other = make_file(3 * MiB + 5, name="beside-it.bin")
    paced = BackgroundSend(sender, slow, first, "--mode", "token-bucket", "-r", str(8 * MiB))
    sender.wait_for_counter("sender.data-ring", c.get("sender.data-ring", 0) + 1)
    assert_sent(second, sender.send_to(other, second), other)
    assert_sent(first, paced.join(), slow)
    # (the report that counts both sent has each one's choice of a ring)
    after = sender.counters_when("sender.sent", c.get("sender.sent", 0) + 2)
    assert after.get("sender.data-ring-busy", 0) == c.get("sender.data-ring-busy", 0) + 1
    assert after.get("sender.data-ring", 0) == c.get("sender.data-ring", 0) + 1
    # (the report that counts its file has the chunks before it)
    received = second.counters_when("receiver.received", 1)
    assert received.get("receiver.rings-lent") == 1  # lent, not taken
    assert received.get("receiver.ring-chunks", 0) == 0


def test_slots_copied_out_are_given_back_before_they_are_written() -> None:
    """The receiver owes the sender an Ack as soon as a slot was copied out
    (not only with the ack of its write), and none once told."""
    ring = shm_ring.ReceiverRing(8, SLOT)
    try:
        assert not ring.release_due
        ring.intake.consumed(0)
        assert ring.release_due
        assert ring.told() == 1 and not ring.release_due
        ring.intake.consumed(5)  # 1..4 lost: skipped over
        assert ring.release_due and ring.told() == 6
        ring.intake.consumed(3)  # behind: moves nothing
        assert not ring.release_due
    finally:
        ring.close()


PACED = ("--mode", "token-bucket", "-r", str(64 * MiB))


@pytest.mark.parametrize("mode", [("--mode", "aimd"), PACED])
def test_the_scheduler_hears_every_report_and_demand_of_a_send_through_the_ring(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], mode: tuple[str, ...]
) -> None:
    """An aimd flow's congestion reports and a paced flow's grant requests
    come after the chunks of the same step, sealed into the ring: each one
    reaches the scheduler (the flow counts what it made, the scheduler what
    it heard), none is lost behind the chunks' descriptors."""
    sender, receiver = node_factory("--shm-ring"), node_factory("--shm-ring")
    path = make_file(6 * MiB + 11, name="reported.bin")
    result = sender.send_to(path, receiver, *mode, "--chunk-size", str(256 * 1024))
    assert_sent(receiver, result, path)
    assert sender.wait_for_counter("sender.data-ring", 1) == 1
    made = int(result[1]["stats"]["scheduler_reports"])
    assert made > 1
    name = "scheduler.flow-reports" if "aimd" in mode else "scheduler.flow-demands"
    assert sender.wait_for_counter(name, made) == made


@pytest.mark.parametrize("env", [None, {"PEERCRYPT_SHM_RING": "false"}])
def test_a_receiver_without_the_ring_lends_none(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    env: dict[str, str] | None,
) -> None:
    """Off by default: a receiver started without ``--shm-ring``, or with the
    setting false, lends no ring to a sender that has it (the chunks go over
    the Unix socket)."""
    sender, receiver = node_factory("--shm-ring"), node_factory(env=env)
    path = make_file(2 * MiB + 3, name="default.bin")
    assert_sent(receiver, sender.send_to(path, receiver), path)
    sender.wait_for_counter("sender.data-ipc", 1)
    assert receiver.counters_when("receiver.received", 1).get("receiver.rings-lent", 0) == 0
    assert sender.counters().get("sender.data-ring", 0) == 0


def test_turned_off_by_the_receiver_no_ring_is_lent(
    trio: tuple[Any, ...], make_file: Callable[..., Path]
) -> None:
    sender, _, off, _ = trio
    c = sender.counters()
    received = off.counters().get("receiver.received", 0)
    path = make_file(2 * MiB + 5, name="no-ring.bin")
    assert_sent(off, sender.send_to(path, off), path)
    sender.wait_for_counter("sender.data-tcp", c.get("sender.data-tcp", 0) + 1)
    after = sender.counters()
    for name in ("sender.data-ring", "sender.data-ring-refused"):
        assert after.get(name, 0) == c.get(name, 0)
    # (the report that counts its file has what came before it)
    assert off.counters_when("receiver.received", received + 1).get("receiver.rings-lent", 0) == 0


def test_a_configuration_that_turned_the_ring_on_still_starts_and_uses_it(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    """The ring is turned on by ``shm_ring = true`` in a config file,
    ``--shm-ring`` or ``PEERCRYPT_SHM_RING=true``: each is accepted, and the
    ring is used."""
    config = tmp_path / "ring.toml"
    config.write_text("shm_ring = true\n")
    receiver = node_factory(env={"PEERCRYPT_CONFIG": str(config)})
    sender = node_factory("--shm-ring", env={"PEERCRYPT_SHM_RING": "true"})
    path = make_file(2 * MiB + 7, name="old-setting.bin")
    assert_sent(receiver, sender.send_to(path, receiver), path)
    assert receiver.wait_for_counter("receiver.rings-lent", 1) >= 1
    assert sender.wait_for_counter("sender.data-ring", 1) >= 1


@pytest.mark.parametrize("args", [("--shm-ring", "--no-local-ipc"), ()])
def test_turned_off_by_the_sender_the_ring_is_not_used(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], args: tuple[str, ...]
) -> None:
    """With ``--no-local-ipc`` (over TCP), or without ``--shm-ring`` (over
    the Unix socket): the ring the receiver lends is not used."""
    sender = node_factory(*args)
    receiver = node_factory("--shm-ring")
    path = make_file(2 * MiB, name="s-off.bin")
    assert_sent(receiver, sender.send_to(path, receiver), path)
    tcp = "--no-local-ipc" in args
    sender.wait_for_counter("sender.data-tcp" if tcp else "sender.data-ipc", 1)
    received = receiver.counters_when("receiver.received", 1)  # (its chunks counted before)
    assert received.get("receiver.rings-lent", 0) >= 1  # offered, and not taken
    c = sender.counters()
    assert c.get("sender.data-ring", 0) == 0 and c.get("sender.data-ring-refused", 0) == 0
    assert received.get("receiver.ring-chunks", 0) == 0


def test_a_parallel_send_keeps_its_sockets(
    trio: tuple[Any, ...], make_file: Callable[..., Path]
) -> None:
    """(The sender's counters are awaited by every test that sends from it,
    so ``c`` is current; they come as one snapshot with data-ipc's.)"""
    sender, receiver, _, _ = trio
    c = sender.counters()
    path = make_file(3 * MiB + 1, name="parallel.bin")
    assert_sent(receiver, sender.send_to(path, receiver, "-t", "2"), path)
    sender.wait_for_counter("sender.data-ipc", c.get("sender.data-ipc", 0) + 1)
    after = sender.counters()
    for name in ("sender.data-ring", "sender.data-ring-refused"):
        assert after.get(name, 0) == c.get(name, 0)


# -- a hostile sender ----------------------------------------------------------------


def ring_of(t: HostileTransfer, chunk: int) -> shm_ring.SenderRing:
    """The ring the receiver lent ``t`` (opened as a real sender would)."""
    accept, secrets = t.accept, t.secrets
    assert accept is not None and secrets is not None and accept.data_ring
    mine = local_ipc.host_tag(HOST, t.tid, secrets)
    ring = shm_ring.open_ring(
        accept.data_ring, accept.ring_token, accept.ring_slots, chunk + TAG_BYTES,
        accept.host_tag, mine,
    )  # fmt: skip
    assert ring is not None
    return ring


def describe(t: HostileTransfer, ring: shm_ring.SenderRing, index: int, data: bytes) -> list[bytes]:
    """Seal chunk ``index`` into the next slot; its descriptor (a message's frames)."""
    last = index == t.total - 1
    seq, offset = ring.slots.take(len(data) + TAG_BYTES) or (-1, -1)
    assert seq >= 0
    nonce = t.keys.seal_chunk_into(index, last, data, ring.slot(offset, len(data) + TAG_BYTES))
    header = SlotHeader(tid=t.tid, index=index, last=last, nonce=nonce, seq=seq)
    return [codec.encode(header)]


def acked(t: HostileTransfer, cumulative: int) -> Ack:
    return t.acked(cumulative, WAIT)


def test_a_slot_rewritten_around_its_descriptor_never_reaches_the_file(
    trio: tuple[Any, ...],
) -> None:
    """Scribbled before the receiver copies it: dropped ("auth"), nothing
    written, no slot released; rewritten once it was copied (acked): the
    file keeps the authentic bytes; a slot scribbled all the time meanwhile:
    every chunk is either authentic or dropped, and the file is stored with
    the right hash."""
    _, receiver, _, key = trio
    chunk = 64 * 1024
    content = os.urandom(8 * chunk)
    auth = receiver.counters().get("receiver.data-dropped-auth", 0)
    with HostileSender(key, receiver.host, receiver.port) as h:
        t = h.offer("scribbled.bin", len(content), chunk)
        assert not isinstance(t, Refused), t
        ring = ring_of(t, chunk)
        try:
            frames = describe(t, ring, 0, content[:chunk])
            ring.slot(0, 64)[:] = os.urandom(64)  # before the receiver looks
            t.send_frames(frames)
            receiver.wait_for_counter("receiver.data-dropped-auth", auth + 1, WAIT)
            (part,) = receiver.inbox.glob(".scribbled.bin.*.part")
            assert part.read_bytes()[:chunk] == bytes(chunk)
            ring.slots.on_released(0)
            ring.slots = type(ring.slots)(ring.slots.slots, ring.slots.slot_size)  # seq 0 again
            t.send_frames(describe(t, ring, 0, content[:chunk]))  # the same seq, authentic
            ack = acked(t, 1)
            assert ack.released == 1  # its slot is the sender's again
            ring.slot(0, chunk)[:] = bytes(chunk)  # after the copy: changes nothing
            stop = threading.Event()

            def scribble() -> None:
                while not stop.is_set():
                    ring.slot(0, 4096)[:] = os.urandom(4096)

            thread = threading.Thread(target=scribble, daemon=True)
            thread.start()
            try:
                for index in range(1, 5):
                    ring.slots.on_released(index)
                    t.send_frames(
                        describe(t, ring, index, content[index * chunk : (index + 1) * chunk])
                    )
            finally:
                stop.set()
                thread.join(WAIT)
            answer = t.send_stream(content)  # every chunk over the socket, then Done
        finally:
            ring.close()
        digest = blake3.blake3(content).digest()
        assert isinstance(answer, Verified) and answer.digest == digest, answer
        assert blake3_file(receiver.inbox / answer.stored_as) == digest.hex()
    assert receiver.running


def test_a_replayed_descriptor_is_dropped_before_its_slot_is_copied(
    trio: tuple[Any, ...], node_factory: Callable[..., NodeProcess]
) -> None:
    """A descriptor naming a slot in range with a nonce already taken: dropped
    as a replay before the slot is copied out (a flood of them costs no
    copies); the transfer still completes. A receiver of its own: its
    counters count this transfer only."""
    receiver = node_factory("--shm-ring", network_key=trio[3])
    chunk = 64 * 1024
    content = os.urandom(3 * chunk)
    with HostileSender(trio[3], receiver.host, receiver.port) as h:
        t = h.offer("replayed.bin", len(content), chunk)
        assert not isinstance(t, Refused), t
        ring = ring_of(t, chunk)
        try:
            frames = describe(t, ring, 0, content[:chunk])
            t.send_frames(frames)
            assert acked(t, 1).released == 1
            nonce = codec.decode_as(frames[0], SlotHeader).nonce
            for _ in range(3):  # each in a slot of its own, in range
                seq, _offset = ring.slots.take(chunk + TAG_BYTES) or (-1, -1)
                assert seq > 0
                again = SlotHeader(tid=t.tid, index=0, last=False, nonce=nonce, seq=seq)
                t.send_frames([codec.encode(again)])
            receiver.wait_for_counter("receiver.data-dropped-replay", 3, WAIT)
            answer = t.send_stream(content)
        finally:
            ring.close()
    digest = blake3.blake3(content).digest()
    assert isinstance(answer, Verified) and answer.digest == digest, answer
    assert blake3_file(receiver.inbox / answer.stored_as) == digest.hex()
    assert receiver.wait_for_counter("receiver.ring-chunks", 1, WAIT) == 1
    assert receiver.counters().get("receiver.ring-copies") == 1  # the authentic one only


def dropped(node: NodeProcess, before: dict[str, int], kind: str) -> None:
    name = f"receiver.data-dropped-{kind}"
    node.wait_for_counter(name, before.get(name, 0) + 1, WAIT)


def test_descriptors_out_of_range_are_dropped(trio: tuple[Any, ...]) -> None:
    """An old sequence number, a chunk index past the end, a descriptor for a
    transfer the receiver lent no ring, one raced from another connection,
    a frame of a batch that is no descriptor, a batch too long: each dropped
    and counted; the transfer still completes."""
    _, receiver, off, key = trio
    chunk = 64 * 1024
    content = os.urandom(3 * chunk)
    c = receiver.counters()
    with HostileSender(key, receiver.host, receiver.port) as h:
        t = h.offer("ranges.bin", len(content), chunk)
        assert not isinstance(t, Refused), t
        ring = ring_of(t, chunk)
        try:
            t.send_frames(describe(t, ring, 0, content[:chunk]))
            assert acked(t, 1).released == 1
            old = SlotHeader(tid=t.tid, index=1, last=False, nonce=bytes(12), seq=0)
            t.send_frames([codec.encode(old)])
            dropped(receiver, c, "bad-slot")
            past = SlotHeader(tid=t.tid, index=3, last=True, nonce=bytes(12), seq=5)
            t.send_frames([codec.encode(past)])
            dropped(receiver, c, "bad-index")
            thief = t.connect(h.ctx)
            thief.send_multipart(describe(t, ring, 1, content[chunk : 2 * chunk]))
            dropped(receiver, c, "route")
            thief.close(0)
            # One message of descriptors: a frame that is not one is dropped,
            # the others are taken; more frames than a batch holds: all dropped.
            odd = ChunkHeader(tid=t.tid, index=1, last=False, nonce=bytes(12))
            batch = describe(t, ring, 1, content[chunk : 2 * chunk])
            batch += [codec.encode(odd), *describe(t, ring, 2, content[2 * chunk :])]
            t.send_frames(describe(t, ring, 0, content[:chunk]) * (shm_ring.MAX_BATCH + 1))
            dropped(receiver, c, "frames")
            t.send_frames(batch)
            dropped(receiver, c, "unexpected-type")
            assert acked(t, 3).released == 4  # seqs 2 and 3 taken (1 went to the thief)
        finally:
            ring.close()
        answer = t.send_stream(content)
        assert isinstance(answer, Verified), answer
        assert blake3_file(receiver.inbox / answer.stored_as) == blake3.blake3(content).hexdigest()
    with HostileSender(key, off.host, off.port) as h:
        t = h.offer("no-ring.bin", len(content), chunk)
        assert not isinstance(t, Refused) and t.accept is not None and not t.accept.data_ring
        header = SlotHeader(tid=t.tid, index=0, last=False, nonce=bytes(12), seq=0)
        t.send_frames([codec.encode(header)])
        off.wait_for_counter("receiver.data-dropped-bad-slot", 1, WAIT)
        t.abandon()
    assert receiver.running and off.running


def test_the_rings_of_many_offers_stay_within_a_quarter_of_the_receive_buffer(
    trio: tuple[Any, ...],
) -> None:
    """Offers that never send: the rings lent to them together never hold
    more than a quarter of the receiving node's receive buffer (8 MiB of
    chunks and their tags), and go with them."""
    _, receiver, _, key = trio
    with HostileSender(key, receiver.host, receiver.port) as h:
        for n in range(4):
            t = h.offer(f"hoard-{n}.bin", 64 * MiB, MiB)
            assert not isinstance(t, Refused), t
        held = rings(receiver)
        assert held and sum(held) <= 8 * (MiB + TAG_BYTES), held
        named = [t.accept.data_ring for t in h.transfers if t.accept is not None]
        assert len([n for n in named if n]) == len(held) < 4  # the rest go over sockets
        for t in h.transfers:
            t.abandon()
    wait_until(lambda: rings(receiver) == [], WAIT, "the rings closed with their transfers")


def test_the_ring_sizes_slots_for_the_tag_the_transfer_keys_seal_with() -> None:
    """shm_ring keeps its own copy of the tag's length (the CLI that imports
    it loads no key library): it is the one the chunks are sealed with."""
    assert shm_ring.TAG_BYTES == TAG_BYTES
