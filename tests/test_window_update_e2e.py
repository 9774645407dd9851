"""Window updates between real node processes on loopback (content checked
by BLAKE3).

A receiver (``--window 4096``) takes a send of 256 KiB chunks alone, so its
credit is the whole receive buffer (128 chunks: 32 MiB); that send then
trickles (its node capped at 24 KiB/s: a chunk every ~11 s). A second send
(1 MiB chunks, its node capped at 4 MiB/s: about 6 s for 24 MiB) starts
beside it with one chunk of credit, as the first holds the whole buffer.
The receiver tells the trickling send its smaller share in a window update
(an ack of nothing new), so once that old credit's grace has passed the
new send's credit grows past one chunk, long before the trickler's next
chunk would have carried the shrink; the trickling sender takes the update
for no loss (no fast retransmission). Both files arrive whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import BackgroundSend, NodeProcess, blake3_file, wait_until

pytestmark = pytest.mark.timeout(180)

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[NodeProcess, NodeProcess, NodeProcess]]:
    key = new_network_key()
    started: list[NodeProcess] = []
    try:
        for name, args in (
            ("receiver", ("--window", "4096")),
            ("trickler", ()),
            ("newcomer", ("--max-rate", str(4 * MiB))),
        ):
            started.append(NodeProcess(tmp_path / name, network_key=key, extra_args=args).start())
        yield started[0], started[1], started[2]
    finally:
        codes = [node.stop() for node in started]
    assert codes == [0] * 3, codes


def acked_bytes(sender: NodeProcess) -> int:
    rows = json.loads(sender.cli("transfers", "--json").stdout)
    return max((int(row.get("bytes", "0") or 0) for row in rows), default=0)


def test_a_trickling_send_gives_back_its_credit_to_one_that_starts_beside_it(
    nodes: tuple[NodeProcess, NodeProcess, NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver, trickler, newcomer = nodes
    # More than the whole buffer left to write, so its allowance is its credit.
    slow = make_file(40 * MiB, name="slow.bin")
    fresh = make_file(24 * MiB, name="fresh.bin")
    capped = trickler.cli("max-rate", str(24 * KiB))
    assert capped.returncode == 0, capped.describe()
    # Its chunks as asked: the cap cuts a paced send's chunks to what moves
    # in half its --timeout (of at most the receiver's idle limit, 30 s).
    chunk = ("--chunk-size", str(256 * KiB), "--timeout", "30")
    first = BackgroundSend(trickler, slow, receiver, *chunk)
    # Its first chunk acked: the receiver has its route (where updates go).
    # A chunk every ~11 s at that rate, the first once the bucket filled.
    wait_until(lambda: acked_bytes(trickler) >= 256 * KiB or None, 60.0, "the first chunk")
    code, info = BackgroundSend(newcomer, fresh, receiver).join(120.0)
    assert code == 0 and info.get("ok"), (code, info)
    assert blake3_file(receiver.inbox / str(info["stored_as"])) == blake3_file(fresh)
    # One chunk while the trickler held the whole buffer; more once its
    # update's grace (2 s) had passed, well within the ~6 s this send
    # takes at its cap and before the trickler's next chunk (~11 s after
    # its first; the bound is loose for a loaded machine: any growth).
    assert info["stats"]["peak_credit"] > 1, info["stats"]
    assert receiver.counters().get("receiver.window-updates", 0) >= 1
    uncapped = trickler.cli("max-rate", "0")
    assert uncapped.returncode == 0, uncapped.describe()
    code, info = first.join(120.0)
    assert code == 0 and info.get("ok"), (code, info)
    assert blake3_file(receiver.inbox / str(info["stored_as"])) == blake3_file(slow)
    # The update repeated its last ack's cumulative index and ranges: the
    # sender inferred no loss from it.
    assert info["stats"]["fast_retransmits"] == 0, info["stats"]
