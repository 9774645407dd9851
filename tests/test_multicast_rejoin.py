"""A multicast receiver killed mid-session (SIGKILL) and restarted rejoins
and gets only what it lacks (docs/multicast.md, "Part files"), with real
node processes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors.inbox import scan
from peercrypt.core.resume import Manifest
from peercrypt.testing.nodes import (
    NodeProcess,
    assert_stored,
    cli_running,
    free_port,
    json_success,
    wait_until,
)

MiB = 1024 * 1024
CHUNK = 64 * 1024  # a checkpoint every 64 chunks (4 MiB): several in one session


def _kept(node: NodeProcess) -> Manifest | None:
    """The multicast part's manifest in ``node``'s inbox, once it lists a chunk."""
    for m in scan(node.inbox).manifests:
        if m.part.endswith(".mc.part") and m.held().count > 0:
            return m
    return None


def test_a_killed_receiver_rejoins_and_gets_only_what_it_lacks(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], blake3_file: Any
) -> None:
    # The node's cap keeps the session running ~4 s: long enough for a
    # checkpoint, a kill and a restart while chunks flow.
    sender = node_factory("--max-rate", str(3 * MiB))
    steady = node_factory()
    port = free_port()
    victim = node_factory("--port", str(port), name="victim")
    path = make_file(8 * MiB + 5)
    total = -(-(8 * MiB + 5) // CHUNK)
    digest = blake3_file(path)
    with cli_running(
        "send", path, steady.host, str(steady.port), "-m", "--to", f"127.0.0.1:{port}",
        "--chunk-size", str(CHUNK), "--timeout", "30", "--json",
        data_dir=sender.data_dir,
    ) as proc:  # fmt: skip
        wait_until(lambda: _kept(victim), 20, "a checkpoint of the multicast part")
        victim.kill()
        kept = _kept(victim)  # what the killed node left durably: final now
        assert kept is not None
        held = kept.held().count
        assert 0 < held < total, held
        victim = node_factory("--port", str(port), name="victim")
        result = json_success(proc, sender)
    assert result["blake3"] == digest
    assert_stored(steady, result, digest)
    assert_stored(victim, result, digest)
    # The restarted node continued the kept part: it wrote exactly the chunks
    # it lacked, none of those it held (counters reach the status every 0.5 s).
    written = victim.wait_for_counter("mreceiver.chunks-written", total - held)
    counters = victim.counters()
    assert counters.get("mreceiver.resumed") == 1, counters
    assert counters.get("mreceiver.resumed-chunks") == held, (counters, held)
    assert written == counters["mreceiver.chunks-written"] == total - held, (counters, held)
    assert result["stats"]["seals_first"] == total  # the sender read and sealed once
    # Nothing is left behind: the part and its manifest went with the verdict.
    assert [p.name for p in victim.inbox.iterdir() if p.name.startswith(".")] == []
    # Its history rates the bytes that crossed: what the part held did not.
    held_bytes = kept.held_bytes()
    row = _received_row(victim)
    assert row["stats"].get("held_bytes") == held_bytes, row
    shown = victim.cli("stats", "show", str(row["id"])).stdout
    already = f"({held_bytes / MiB:.1f} MiB held already)"
    moved = f"{(8 * MiB + 5 - held_bytes) / MiB:.1f} MiB in"
    assert re.search(rf"^moved +{re.escape(moved)} .* {re.escape(already)}$", shown, re.M), shown


def _received_row(node: NodeProcess) -> dict[str, Any]:
    """The node's one verified receiving row (the stats actor commits every
    second: waited for)."""

    def found() -> dict[str, Any] | None:
        listed = node.cli("stats", "list", "--json")
        rows = json.loads(listed.stdout) if listed.returncode == 0 else []
        ok = [r for r in rows if r["side"] == "receive" and r["result"] == "ok"]
        return ok[0] if len(ok) == 1 else None

    return wait_until(found, 20, "the receiving row")


def test_a_unicast_send_of_the_same_file_leaves_the_running_multicast_part_alone(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], blake3_file: Any
) -> None:
    """``send -m F --to B`` and ``send F B`` at once: the unicast receiver
    sees a kept part of the same file from the same sender with another
    source and must not take the multicast part for an obsolete version."""
    sender = node_factory("--max-rate", str(3 * MiB))
    target = node_factory()
    path = make_file(8 * MiB + 5)
    digest = blake3_file(path)
    with cli_running(
        "send", path, target.host, str(target.port), "-m", "--chunk-size", str(CHUNK),
        "--timeout", "30", "--json",
        data_dir=sender.data_dir,
    ) as proc:  # fmt: skip
        wait_until(lambda: _kept(target), 20, "a checkpoint of the multicast part")
        code, unicast = sender.send(path, target.host, target.port)
        assert code == 0, unicast
        result = json_success(proc, sender)
    assert unicast["blake3"] == result["blake3"] == digest
    assert_stored(target, result, digest)
    assert blake3_file(target.inbox / unicast["stored_as"]) == digest
    assert result["receivers"][0]["stored_as"] != unicast["stored_as"]


@pytest.mark.parametrize(
    ("quota", "limit", "refusal"),
    [
        ("--peer-quota", 3 * MiB, f"over your quota of parts on this node ({3 * MiB} bytes)"),
        (
            "--pending-quota",
            2 * MiB + 1,
            f"too many bytes still to come from you (max {2 * MiB + 1})",
        ),
    ],
)
def test_multicast_parts_count_against_the_quotas(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    blake3_file: Any,
    quota: str,
    limit: int,
    refusal: str,
) -> None:
    """Two sessions from one sender, each within the quota but not both:
    the second is refused while the first runs (before, each was checked
    against the free space alone), and the first still verifies."""
    # The first runs paced at 128 KiB/s (16 s) until the second was refused,
    # then uncapped: at 1 MiB/s a loaded machine started the second send
    # after the first was stored, and it was (rightly) admitted.
    sender = node_factory("--max-rate", str(128 * 1024))
    target = node_factory(quota, str(limit))
    first = make_file(2 * MiB, name="first.bin")
    second = make_file(2 * MiB, name="second.bin")
    with cli_running(
        "send", first, target.host, str(target.port), "-m", "--chunk-size", str(CHUNK),
        "--timeout", "30", "--json",
        data_dir=sender.data_dir,
    ) as proc:  # fmt: skip
        wait_until(lambda: scan(target.inbox, multicast=True).kept, 20, "the first session's part")
        code, refused = sender.send(second, target.host, target.port, "-m", "--timeout", "10")
        lifted = sender.cli("max-rate", "0")
        assert lifted.returncode == 0, lifted.describe()
        result = json_success(proc, sender)
    assert code != 0, refused
    row = refused["receivers"][0]
    assert row["code"] == "refused", row
    assert refusal in row["error"], row
    assert_stored(target, result, blake3_file(first))
    assert not (target.inbox / "second.bin").exists()
    # Within the quota again once the first is stored (a finished file is no part).
    code, again = sender.send(second, target.host, target.port, "-m", "--timeout", "10")
    assert code == 0, again
    assert_stored(target, again, blake3_file(second))
