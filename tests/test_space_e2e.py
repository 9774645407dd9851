"""One space ledger for the whole inbox, with real node processes: a unicast
offer and a multicast session that do not both fit cannot both be accepted
(whichever comes first), and a multicast part kept by a killed node is
charged by the restarted one (docs/resume.md, "Space")."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors.inbox import scan
from peercrypt.crypto.identity import load_or_create_identity
from peercrypt.testing.hostile import CoReceiver
from peercrypt.testing.hostile_sender import HostileSender, HostileTransfer, Refused
from peercrypt.testing.nodes import (
    NodeProcess,
    assert_stored,
    cli_running,
    json_success,
    wait_until,
)
from peercrypt.wire.multicast_messages import McJoin

MiB = 1024 * 1024
CHUNK = 64 * 1024
SIZE = 16 * MiB  # two of them do not fit the 24 MiB inbox


def _send_args(kind: str, path: Path, target: NodeProcess) -> list[str]:
    args = ["send", str(path), target.host, str(target.port), "--json"]
    args += ["--chunk-size", str(CHUNK), "--timeout", "30"]
    return args + (["-m"] if kind == "multicast" else [])


def _refused_for_space(kind: str, result: dict[str, Any]) -> str:
    """The error of a send the receiver refused (unicast or multicast)."""
    if kind == "multicast":
        (row,) = result["receivers"]
        assert row["code"] == "refused", row
        return str(row["error"])
    assert result["code"] == "refused", result
    return str(result["error"])


@pytest.mark.parametrize(("first", "second"), [("unicast", "multicast"), ("multicast", "unicast")])
def test_a_unicast_offer_and_a_multicast_session_cannot_both_have_the_last_space(
    small_inbox: Path,
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    blake3_file: Any,
    first: str,
    second: str,
) -> None:
    receiver = node_factory("--inbox", str(small_inbox), name="receiver")
    sender = node_factory("--max-rate", str(6 * MiB))  # the first runs ~3 s
    one = make_file(SIZE, name="one.bin")
    two = make_file(SIZE, name="two.bin")
    with cli_running(*_send_args(first, one, receiver), data_dir=sender.data_dir) as proc:
        wait_until(lambda: scan(small_inbox).kept or proc.poll() is not None, 30, "a part")
        refused = sender.cli(*_send_args(second, two, receiver), timeout=60)
        result = json_success(proc, sender)
    assert refused.returncode != 0, refused.describe()
    assert "not enough space in the inbox" in _refused_for_space(second, refused.json)
    digest = blake3_file(one)
    if first == "multicast":
        assert_stored(receiver, result, digest)
    else:
        assert blake3_file(small_inbox / result["stored_as"]) == digest
    assert not (small_inbox / "two.bin").exists()
    kind = "receiver" if second == "unicast" else "mreceiver"
    assert receiver.wait_for_counter(f"{kind}.refused-no-space", 1) == 1
    assert [p.name for p in small_inbox.iterdir() if p.name.startswith(".")] == []


def test_a_kept_multicast_part_is_charged_after_a_restart(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], blake3_file: Any
) -> None:
    """A node killed mid-session keeps its multicast part; restarted with a
    quota of parts that the part and a new unicast file exceed together, the
    kept part is counted (it gives way to the new file) rather than ignored."""
    sender = node_factory("--max-rate", str(3 * MiB))
    target = node_factory(name="target")
    path = make_file(8 * MiB)
    with cli_running(*_send_args("multicast", path, target), data_dir=sender.data_dir):

        def checkpointed() -> bool:
            found = scan(target.inbox, multicast=True)
            return any(m.held().count > 0 for m in found.manifests)

        wait_until(checkpointed, 20, "a checkpoint of the multicast part")
        target.kill()
        sender.kill()  # its session never comes back for the kept part
    (kept,) = scan(target.inbox, multicast=True).kept
    target.extra_args = ("--part-quota", str(10 * MiB))
    target.start()
    other = node_factory()
    small = make_file(4 * MiB)  # 8 MiB kept + 4 MiB > 10 MiB
    code, result = other.send(small, target.host, target.port)
    assert code == 0, result
    assert blake3_file(target.inbox / result["stored_as"]) == blake3_file(small)
    assert target.wait_for_counter("space.parts-given-way", 1) == 1
    assert not (target.inbox / kept.part).exists()


def test_a_unicast_id_equal_to_a_multicast_session_id_keeps_neither_out(
    node_factory: Callable[..., NodeProcess], network_key: str
) -> None:
    """Transfer ids and multicast session ids are chosen by peers, and a
    session's id travels in clear on the group: a member holding a unicast
    transfer under a session's id must not make the receiver refuse that
    session (nor the other way round). Each receiver's ids are its own in
    the one space ledger."""
    receiver = node_factory(name="receiver")
    to = load_or_create_identity(receiver.data_dir).public
    shared = os.urandom(16)
    hostile = CoReceiver(network_key)
    try:
        with HostileSender(network_key, receiver.host, receiver.port) as squatter:
            held = squatter.offer("squat.bin", 4 * CHUNK, CHUNK, tid=shared)
            assert isinstance(held, HostileTransfer), held
            answers = hostile.announce(
                receiver.host,
                receiver.port,
                [hostile.sealed_announce(to, shared, "session.bin", 4 * CHUNK, CHUNK)],
            )
            assert len(answers) == 1 and isinstance(answers[0], McJoin), answers
            # Both hold a reservation; a second unicast offer of that id is
            # still refused by the unicast receiver itself.
            again = squatter.offer("again.bin", CHUNK, CHUNK, tid=shared)
            assert isinstance(again, Refused) and again.answer.code == "duplicate", again
    finally:
        hostile.close()
    # (the report that counts the session joined would count a refusal too)
    counters = receiver.counters_when("mreceiver.joined", 1)
    assert counters.get("mreceiver.refused-duplicate", 0) == 0, counters
