"""A file multicast again to receivers that hold it, with real node processes
(docs/multicast.md, "Sending again"): nothing is stored twice, each such
receiver is reported as having had it (CLI lines, --json, the statistics
history), receivers that lack it get it in the same session; a changed file,
a changed stored copy or another sender is a fresh transfer; a co-receiver
with the network key and a fresh identity can neither get nor cause a "had
it"; a receiver of an older release (that does not know the sealed source
tag) still joins."""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.multicast_sender import HASH_STEP
from peercrypt.core.resume import SAMPLE_BYTES, sample_offsets
from peercrypt.crypto.identity import KeyPair, load_or_create_identity
from peercrypt.testing.hostile import CoReceiver
from peercrypt.testing.nodes import (
    NodeProcess,
    blake3_file,
    free_port,
    multicast_targets,
    start_cli,
)
from peercrypt.wire.multicast_messages import McHeld, McJoin, McRefuse, McStatus

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
CHUNK = 256 * 1024
SIZE = 3 * MiB + 11
CHUNKS = -(-SIZE // CHUNK)


@pytest.fixture
def co_receiver(network_key: str) -> Iterator[CoReceiver]:
    hostile = CoReceiver(network_key)
    yield hostile
    hostile.close()


def _inbox(node: NodeProcess) -> dict[str, str]:
    """Every final file in the node's inbox and its BLAKE3."""
    return {p.name: blake3_file(p) for p in node.inbox.iterdir() if not p.name.startswith(".")}


def _send(sender: NodeProcess, path: Path, *to: NodeProcess) -> tuple[int, dict[str, Any]]:
    first, *rest = to
    return sender.send(
        path, first.host, first.port, "-m", *multicast_targets(*rest), "--chunk-size", str(CHUNK)
    )


def _row(result: dict[str, Any], node: NodeProcess) -> dict[str, Any]:
    return next(r for r in result["receivers"] if r["target"] == f"{node.host}:{node.port}")


class _WithMember:
    """``send -m`` (``--json``, in the background) to ``honest`` and a member
    listening at ``port``; :attr:`result` once it ended (``wait``)."""

    def __init__(self, sender: NodeProcess, path: Path, honest: NodeProcess, port: int) -> None:
        self.proc = start_cli(
            "send", path, honest.host, str(honest.port), "-m", "--to", f"127.0.0.1:{port}",
            "--chunk-size", str(CHUNK), "--timeout", "30", "--json", data_dir=sender.data_dir,
        )  # fmt: skip
        self.result: dict[str, Any] = {}
        self.err = ""

    def wait(self) -> dict[str, Any]:
        out, self.err = self.proc.communicate(timeout=90)
        self.result = json.loads(out)
        return self.result

    def __enter__(self) -> _WithMember:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _history(node: NodeProcess, side: str) -> list[dict[str, Any]]:
    listed = node.cli("stats", "list", "--json")
    assert listed.returncode == 0, listed.describe()
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    return [r for r in rows if r["side"] == side and r["mode"] == "multicast"]


def test_the_same_file_again_is_stored_once_and_reported_as_had(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender = node_factory()
    receivers = [node_factory() for _ in range(3)]
    path = make_file(SIZE, name="mc.bin")
    digest = blake3_file(path)
    code, first = _send(sender, path, *receivers)
    assert code == 0, first
    assert [(_row(first, r)["code"], _row(first, r)["held"]) for r in receivers] == [
        ("ok", False)
    ] * 3
    code, again = _send(sender, path, *receivers)
    assert code == 0, again
    assert again["blake3"] == digest
    for r in receivers:
        row = _row(again, r)
        assert (row["code"], row["stored_as"], row["held"]) == ("ok", "mc.bin", True), row
        assert _inbox(r) == {"mc.bin": digest}  # no mc.1.bin
        assert r.wait_for_counter("mreceiver.delivered-before-verified", 1) == 1
    stats = again["stats"]
    assert (stats["held"], stats["seals_first"], stats["published_bytes"]) == (3, 0, 0)
    assert first["mib_per_s"] > 0 and again["mib_per_s"] == 0  # nothing crossed: no rate
    # Its text form: one "had it" line per receiver, and the summary.
    text = sender.cli(
        "send", path, receivers[0].host, str(receivers[0].port), "-m",
        *multicast_targets(*receivers[1:]), "--chunk-size", str(CHUNK),
    )  # fmt: skip
    assert text.returncode == 0, text.describe()
    notes = text.stderr.splitlines()  # each receiver's line as it finishes
    for r in receivers:
        assert f"  {r.host}:{r.port}: had it, stored as mc.bin (nothing sent)" in notes
    (summary,) = text.stdout.splitlines()
    assert re.fullmatch(
        rf"sent mc\.bin \({SIZE} bytes\) to 3 receivers by multicast in [0-9.]+ s "
        rf"\(all 3 had it: nothing sent\), blake3 {digest} verified by all",
        summary,
    ), summary
    for r in receivers:
        assert _inbox(r) == {"mc.bin": digest}
        rows = _history(r, "receive")
        held = [x for x in rows if x["params"].get("delivered_before") == "mc.bin"]
        assert len(held) == 2 and len(rows) == 3, rows
        assert all(x["stats"]["held_bytes"] == SIZE and x["result"] == "ok" for x in held)
        shown = r.cli("stats", "show", str(held[0]["id"])).stdout
        assert "had it (3.0 MiB held already)" in shown, shown
    sent = _history(sender, "send")
    assert sum(1 for x in sent if x["stats"].get("held_bytes") == SIZE) == 6, sent


@pytest.mark.parametrize("group", [False, True])
def test_a_receiver_lacking_it_gets_it_while_another_had_it(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], group: bool
) -> None:
    """... also after the one that had it was killed (-9) and restarted: its
    table of deliveries is in its data directory; its ``multicast-receive``
    says it had it."""
    port = free_port()
    # over PUB/SUB, or a UDP group on this host (TTL 0)
    where = f"239.255.{random.randrange(1, 255)}.{random.randrange(1, 255)}:{free_port()}"
    sender = node_factory(*(("--multicast-group", where, "--multicast-ttl", "0") if group else ()))
    had, lacks = node_factory("--port", str(port), name="had"), node_factory()
    path = make_file(SIZE, name="mc.bin")
    digest = blake3_file(path)
    assert _send(sender, path, had)[0] == 0
    had.kill()
    had = node_factory("--port", str(port), name="had")
    listen = start_cli(
        "multicast-receive", "--count", "1", "--timeout", "60", data_dir=had.data_dir
    )
    try:
        assert listen.stderr is not None  # where it says it is ready
        assert listen.stderr.readline().startswith("ready for multicast sessions")
        code, result = _send(sender, path, had, lacks)
        out, err = listen.communicate(timeout=30)
    finally:
        if listen.poll() is None:
            listen.kill()
            listen.communicate()
    assert code == 0, result
    assert listen.returncode == 0, err
    assert out.splitlines() == [f"had mc.bin ({SIZE} bytes) already as mc.bin, verified"]
    assert (_row(result, had)["held"], _row(result, had)["stored_as"]) == (True, "mc.bin")
    assert (_row(result, lacks)["held"], _row(result, lacks)["stored_as"]) == (False, "mc.bin")
    assert result["stats"]["seals_first"] == CHUNKS and result["stats"]["held"] == 1
    assert result["stats"]["udp"] == (1.0 if group else 0.0)
    assert _inbox(had) == _inbox(lacks) == {"mc.bin": digest}
    assert had.wait_for_counter("mreceiver.delivered-before-verified", 1) == 1
    assert had.counters().get("mreceiver.chunks-written") is None  # nothing since its restart


def test_a_changed_copy_a_changed_file_and_another_sender_are_fresh_transfers(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender, other, receiver = node_factory(), node_factory(), node_factory()
    path = make_file(SIZE, name="mc.bin")
    v1 = blake3_file(path)
    assert _send(sender, path, receiver)[0] == 0
    # The stored copy changed (same size): not what was verified -> stored anew.
    stored = receiver.inbox / "mc.bin"
    with open(stored, "r+b") as f:
        f.write(b"changed")
    changed = blake3_file(stored)
    code, result = _send(sender, path, receiver)
    assert code == 0 and _row(result, receiver)["held"] is False, result
    assert _row(result, receiver)["stored_as"] == "mc.1.bin"
    # A new version of the file (another source tag) -> stored anew.
    with open(path, "r+b") as f:
        f.write(os.urandom(16))
    later = path.stat().st_mtime_ns + 10**9  # its mtime moved for sure, without a wait
    os.utime(path, ns=(later, later))
    v2 = blake3_file(path)
    code, result = _send(sender, path, receiver)
    assert code == 0 and _row(result, receiver)["held"] is False, result
    assert _row(result, receiver)["stored_as"] == "mc.2.bin"
    # The very same version from another sender identity -> its own transfer.
    code, result = _send(other, path, receiver)
    assert code == 0 and _row(result, receiver)["held"] is False, result
    assert _row(result, receiver)["stored_as"] == "mc.3.bin"
    # ... and from the first sender again: it had it, as mc.2.bin.
    code, result = _send(sender, path, receiver)
    assert code == 0 and _row(result, receiver)["held"] is True, result
    assert _row(result, receiver)["stored_as"] == "mc.2.bin"
    assert _inbox(receiver) == {"mc.bin": changed, "mc.1.bin": v1, "mc.2.bin": v2, "mc.3.bin": v2}
    # A copy removed: a fresh transfer again.
    (receiver.inbox / "mc.2.bin").unlink()
    code, result = _send(sender, path, receiver)
    assert code == 0 and _row(result, receiver)["held"] is False, result
    assert _row(result, receiver)["stored_as"] == "mc.2.bin"
    assert blake3_file(receiver.inbox / "mc.2.bin") == v2


def test_a_co_receiver_can_neither_get_nor_cause_a_had_it(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    co_receiver: CoReceiver,
) -> None:
    """Invited to the session, the co-receiver learns its id, the file's name,
    size and source tag. Announcing that very file under its own identity to
    the honest receiver (which holds it from the sender) gets a join, never
    ``McHeld``; a status with another hash in the real session's name is
    ``unknown-session`` there; the honest receiver's answer to the sender
    still is "had it", for exactly the stored bytes."""
    sender = node_factory("--max-rate", str(2 * MiB))
    honest = node_factory()
    path = make_file(SIZE, name="mc.bin")
    digest = blake3_file(path)
    assert _send(sender, path, honest)[0] == 0
    with _WithMember(sender, path, honest, co_receiver.port) as send:
        joined = co_receiver.session()
        assert len(joined.source) == 32  # it learnt the source tag
        honest.wait_for_counter("mreceiver.delivered-before", 1, timeout=30)
        real = joined.announce
        to = load_or_create_identity(honest.data_dir).public
        # (before it announces that id itself: then it is a session of its own there)
        forged = McStatus(sid=real.sid, horizon=0, digest=b"\x00" * 32)
        (answer,) = co_receiver.ask(honest.host, honest.port, [forged])
        assert isinstance(answer, McRefuse) and answer.code == "unknown-session", answer
        tries = [
            co_receiver.sealed_announce(
                to, sid, real.name, real.size, real.chunk_size, joined.source
            )
            for sid in (real.sid, os.urandom(16))
        ]
        answers = co_receiver.ask(honest.host, honest.port, tries)
        assert not any(isinstance(a, McHeld) for a in answers), answers
        assert all(isinstance(a, McJoin | McRefuse) for a in answers), answers
        result = send.wait()
    row = _row(result, honest)
    assert (row["code"], row["held"], row["stored_as"]) == ("ok", True, "mc.bin"), send.err
    assert _inbox(honest) == {"mc.bin": digest}
    assert honest.counters().get("mreceiver.delivered-before-mismatch") is None


def test_a_receiver_that_does_not_know_the_source_tag_still_joins(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    network_key: str,
) -> None:
    """A receiver of an older release refuses the sealed McFileDetails as
    malformed: the sender announces plain McDetails to it at once and it
    joins (gets the key), while the receiver that holds the file had it."""
    sender, honest = node_factory(), node_factory()
    path = make_file(SIZE, name="mc.bin")
    assert _send(sender, path, honest)[0] == 0
    old = CoReceiver(network_key, legacy=True)
    try:
        with _WithMember(sender, path, honest, old.port) as send:
            joined = old.session()
            result = send.wait()
        assert old.legacy_refusals == 1 and joined.key and not joined.source
    finally:
        old.close()
    assert _row(result, honest)["held"] is True, (result, send.err)
    assert sender.wait_for_counter("msender.announce-legacy", 1) == 1


def test_a_file_larger_than_a_hash_step_is_hashed_whole_for_its_holder(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """No target joins: the sender hashes the file in steps of HASH_STEP
    between its other work; the holder's verdict is on the whole file."""
    sender, receiver = node_factory(), node_factory()
    path = make_file(HASH_STEP + 3 * CHUNK + 5, name="big.bin")
    digest = blake3_file(path)
    assert _send(sender, path, receiver)[0] == 0
    code, result = _send(sender, path, receiver)
    assert code == 0, result
    assert result["blake3"] == digest and result["stats"]["seals_first"] == 0
    assert (_row(result, receiver)["held"], _row(result, receiver)["stored_as"]) == (
        True,
        "big.bin",
    )
    assert _inbox(receiver) == {"big.bin": digest}


def test_a_member_claiming_to_hold_it_under_another_key_is_not_had(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    network_key: str,
) -> None:
    """A member at a target's address answers the announce with ``McHeld``
    proven with another identity than the one it proved in the hello (one
    whose receiver might hold the file): the sender checks that proof and
    the trust at the address as for a join, so the target fails at once,
    never "had it"; the honest receiver had it."""
    sender, honest = node_factory(), node_factory()
    path = make_file(SIZE, name="mc.bin")
    assert _send(sender, path, honest)[0] == 0
    other = load_or_create_identity(honest.data_dir)  # the honest one's key, say
    member = CoReceiver(network_key, held_as=other)
    try:
        with _WithMember(sender, path, honest, member.port) as send:
            result = send.wait()
        assert member.held_claims >= 1
    finally:
        member.close()
    row = next(r for r in result["receivers"] if r["target"] == f"127.0.0.1:{member.port}")
    assert row["code"] in ("untrusted", "impostor") and row["held"] is False, row
    assert _row(result, honest)["held"] is True, result
    assert result["code"] == row["code"], result
    assert result["seconds"] < 10, result  # the hash did not wait for --timeout (30 s)


def test_a_held_claim_to_an_announce_without_a_source_tag_is_not_had(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    network_key: str,
) -> None:
    """A member that refuses ``McFileDetails`` (as an older release) and then
    answers the plain ``McDetails`` with ``McHeld``, proven with its own
    (trusted) identity, claims a file version it was never told: the sender
    fails it (``protocol``) instead of asking it for a verdict."""
    sender, honest = node_factory(), node_factory()
    path = make_file(SIZE, name="mc.bin")
    assert _send(sender, path, honest)[0] == 0
    own = KeyPair.from_seed(os.urandom(32))
    member = CoReceiver(network_key, identity=own, legacy=True, held_as=own, held_blind=True)
    try:
        with _WithMember(sender, path, honest, member.port) as send:
            result = send.wait()
        assert member.legacy_refusals == 1 and member.held_claims >= 1
    finally:
        member.close()
    row = next(r for r in result["receivers"] if r["target"] == f"127.0.0.1:{member.port}")
    assert (row["code"], row["held"]) == ("protocol", False), row
    assert _row(result, honest)["held"] is True, result


def test_a_file_changed_under_the_same_source_tag_is_not_had(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """The sender's file changed between its samples with its mtime put back:
    the same source tag, so the receiver answers McHeld, but the whole-file
    hash is not the one it verified: it answers a failure and forgets the
    entry (the next send is a fresh transfer), never "had it"."""
    sender, receiver = node_factory(), node_factory()
    path = make_file(SIZE, name="mc.bin")
    v1 = blake3_file(path)
    assert _send(sender, path, receiver)[0] == 0
    before = os.stat(path)
    offset = SAMPLE_BYTES + 100
    assert not any(o <= offset < o + SAMPLE_BYTES for o in sample_offsets(SIZE))
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)
        f.seek(offset)
        f.write(bytes([old[0] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    v2 = blake3_file(path)
    code, result = _send(sender, path, receiver)
    row = _row(result, receiver)
    assert code != 0 and (row["code"], row["held"]) == ("failed", False), result
    assert "the file differs from the one stored as mc.bin" in row["error"], row
    assert receiver.wait_for_counter("mreceiver.delivered-before-mismatch", 1) == 1
    assert _inbox(receiver) == {"mc.bin": v1}
    code, result = _send(sender, path, receiver)
    row = _row(result, receiver)
    assert code == 0 and (row["held"], row["stored_as"]) == (False, "mc.1.bin"), result
    assert _inbox(receiver) == {"mc.bin": v1, "mc.1.bin": v2}
