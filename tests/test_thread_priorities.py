"""The nice values of a real node's threads (docs/architecture.md, "Threads
and their priorities"): the control plane at the node's own, the threads
that move bulk data under the interpreter lock (sender, receiver) DATA_NICE
nicer, and the bulk workers that work mostly outside it (the writer) nicer
again by BULK_NICE, so that on a saturated machine they do not keep a
lock-holding thread of their node from a core while a control-plane thread
waits for that lock."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from peercrypt.runtime.actor import BULK_NICE, DATA_NICE
from peercrypt.testing.nodes import blake3_file, nice_by_thread, node_pair

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's"
)

MiB = 1 << 20


def process_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_bulk_workers_run_nicer_than_the_lock_holding_data_threads(
    tmp_path: Path, make_file: Callable[..., Path]
) -> None:
    with node_pair(tmp_path) as (sender, receiver):
        source = make_file(3 * MiB + 5)
        code, result = sender.send_to(source, receiver)
        assert code == 0, result
        assert blake3_file(receiver.inbox / result["stored_as"]) == blake3_file(source)
        assert sender.pid is not None and receiver.pid is not None
        base = process_nice(receiver.pid)
        theirs = nice_by_thread(receiver.pid)
        ours = nice_by_thread(sender.pid)
    data = min(19, base + DATA_NICE)
    bulk = min(19, base + DATA_NICE + BULK_NICE)
    # Strictly ordered, unless the node already runs so nice that the lowest
    # priority (19) caps them (a suite run under ``nice``).
    assert BULK_NICE > 0 and (bulk > data > base or bulk == 19)
    # the unicast writer; the multicast receiver's runs at the node's priority
    assert theirs["pc-writer"] == [base, bulk], theirs
    assert set(theirs["pc-receiver"]) == {data}, theirs
    assert set(ours["pc-sender"]) == {data}, ours  # threads it starts carry its name
    for control_plane in ("pc-control", "pc-health", "pc-gateway"):
        assert set(theirs[control_plane]) == {base}, theirs
        assert set(ours[control_plane]) == {base}, ours
