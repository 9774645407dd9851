"""The same file sent twice at once to the same receiver, with real nodes.

A receiver takes a new offer of a file that one of its transfers from the
same (proven) sender is still receiving for that sender restarted: the old
transfer ends and the new one continues from what it wrote
(docs/resume.md). So a second send of a running file would not make a
second copy: from one node it is refused at once, naming the first, which
goes on. From two processes holding one identity (a sender restarted while
its old process still runs, or one that reached the receiver under a name
it cannot fold), the receiver tells the older send that it ended, and why;
that send used to wait out its acks and fail as "stopped acknowledging"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peercrypt import errors
from peercrypt.testing.nodes import (
    NodeProcess,
    assert_sent,
    blake3_file,
    start_cli,
    wait_until,
)

MiB = 1024 * 1024
WAIT = 60.0

pytestmark = pytest.mark.timeout(240)


def _background(
    sender: NodeProcess, path: Path, host: str, port: int, *extra: str
) -> subprocess.Popen[str]:
    return start_cli(
        "send", str(path), host, str(port), "--json", *extra, data_dir=sender.data_dir
    )  # fmt: skip


def _running_id(sender: NodeProcess, acked: int = 0) -> int | None:
    """The id of the send running with more than ``acked`` bytes acked."""
    rows = json.loads(sender.cli("transfers", "--json").stdout or "[]")
    return next((r["id"] for r in rows if r["state"] == "sending" and r["bytes"] > acked), None)


def _ended(proc: subprocess.Popen[str]) -> tuple[int, dict]:
    out, err = proc.communicate(timeout=WAIT)
    lines = [x for x in out.splitlines() if x.strip()]
    assert lines, f"no result (exit {proc.returncode}): {err}"
    return proc.returncode, json.loads(lines[-1])


def test_a_second_send_of_a_running_file_is_refused_naming_the_first(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    path = make_file(32 * MiB, name="twice.bin")
    first = _background(sender, path, receiver.host, receiver.port, "-r", str(2 * MiB))
    try:
        ident = wait_until(lambda: _running_id(sender), WAIT, "the first send running")
        # The same address under another spelling: the same send.
        second = sender.cli("send", str(path), "localhost", str(receiver.port))
        assert second.returncode == errors.USAGE, second.describe()
        assert second.stderr_lines == [
            f"peercrypt: error: already sending {path} to localhost:{receiver.port} "
            f"(transfer {ident}): wait for it, or cancel transfer {ident} first"
        ], second.describe()
        # The same file of the same name under another path, a hard link or a
        # symbolic one (sent under its own name, the link's: here the same):
        # named as the running send was given, and as this one was.
        for folder, make in (("elsewhere", os.link), ("linked", os.symlink)):
            (path.parent / folder).mkdir()
            other = path.parent / folder / path.name
            make(path, other)
            second = sender.cli("send", str(other), receiver.host, str(receiver.port))
            assert second.returncode == errors.USAGE, second.describe()
            assert second.stderr_lines == [
                f"peercrypt: error: already sending {path} (the same file as {other}) to "
                f"{receiver.host}:{receiver.port} (transfer {ident}): wait for it, or "
                f"cancel transfer {ident} first"
            ], second.describe()
        assert sender.cli("rate", "0", "--transfer", str(ident)).returncode == 0
        assert_sent(receiver, _ended(first), path)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate(timeout=WAIT)
    # (counters come every half second: read once the delivery is counted)
    assert receiver.counters_when("receiver.received", 1).get("receiver.taken-over", 0) == 0
    # Once the first ended, the same file is no longer refused: the
    # receiver had it all.
    code, again = sender.send_to(path, receiver, timeout=WAIT)
    assert code == 0 and again["stored_as"] == "twice.bin", again


def test_a_second_multicast_of_a_running_file_is_refused_naming_the_first(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A multicast session has no offer to take over: each receiver stored
    a second session of the same file as a second copy (`twice.1.bin`)."""
    receiver = node_factory(name="receiver")
    other = node_factory(name="other")
    small = node_factory("--peer-quota", str(MiB), name="small")  # refuses it: ends at once
    sender = node_factory("--max-rate", str(4 * MiB), name="sender")  # the first runs ~6 s
    path = make_file(24 * MiB, name="twice.bin")
    first = _background(
        sender, path, receiver.host, receiver.port, "-m",
        "--to", f"{other.host}:{other.port}", "--to", f"{small.host}:{small.port}",
    )  # fmt: skip
    try:

        def running() -> int | None:
            rows = json.loads(sender.cli("transfers", "--json").stdout or "[]")
            return next((int(r["id"]) for r in rows if r["mode"] == "multicast"), None)

        ident = wait_until(running, WAIT, "the first session running")
        (path.parent / "elsewhere").mkdir()
        link = path.parent / "elsewhere" / path.name
        os.link(path, link)
        # To one receiver of the first (another spelling of its address),
        # from another path to the same file (a hard link).
        second = sender.cli("send", str(link), "localhost", str(other.port), "-m")
        assert second.returncode == errors.USAGE, second.describe()
        assert second.stderr_lines == [
            f"peercrypt: error: already sending {path} (the same file as {link}) by "
            f"multicast to localhost:{other.port} (transfer {ident}): wait for it, or "
            f"cancel transfer {ident} first"
        ], second.describe()

        # A receiver the session has ended with may be sent it again (here
        # refused by that receiver again, for its quota, not by the node).
        def not_ours() -> Any:
            again = sender.cli("send", str(path), small.host, str(small.port), "-m")
            return None if "already sending" in again.stderr else again

        again = wait_until(not_ours, WAIT, "the refused receiver free of the session")
        assert first.poll() is None, "the session ended first: this showed nothing"
        assert again.returncode != 0 and "quota" in again.stderr, again.describe()
        code, result = _ended(first)
        assert code != 0 and not result["ok"], result  # one receiver refused it
        codes = {r["target"]: r["code"] for r in result["receivers"]}
        assert codes == {
            f"{receiver.host}:{receiver.port}": "ok",
            f"{other.host}:{other.port}": "ok",
            f"{small.host}:{small.port}": "refused",
        }, result
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate(timeout=WAIT)
    for node in (receiver, other):  # one copy each
        assert sorted(p.name for p in node.inbox.iterdir()) == ["twice.bin"]
        assert blake3_file(node.inbox / "twice.bin") == blake3_file(path)
    # Once it ended, the same file goes again (the receivers hold it).
    code, again = sender.send(path, receiver.host, receiver.port, "-m", timeout=WAIT)
    assert code == 0 and again["ok"], again


@pytest.mark.parametrize("chunks", ["offered", "paced", "scant"])
def test_an_older_send_from_the_same_identity_is_told_it_ended(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], chunks: str
) -> None:
    """The twin's offer takes the running transfer over and continues it:
    in its own 1 MiB chunks (which an offer naming no chunk size allows), or
    rechunked from a paced send's small ones (a new part, and a second
    copy of the file, before); one holding no whole chunk of the receiver's
    choice ("scant") is discarded and the file sent afresh, leaving nothing
    behind (the part was deleted while the writer still had it, which then
    wrote its manifest for a part that was gone)."""
    receiver = node_factory(name="receiver")
    sender = node_factory(
        "--bootstrap-host", receiver.host, "--bootstrap-port", str(receiver.port), name="sender"
    )  # a member: the takeover must not count against the receiver's score
    twin = node_factory(name="twin", start=False)  # the sender's identity, another process
    twin.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sender.data_dir / "identity.key", twin.data_dir / "identity.key")
    twin.start()
    assert twin.fingerprint == sender.fingerprint
    path = make_file(32 * MiB, name="restarted.bin")

    def scored() -> dict[str, Any] | None:
        rows = json.loads(sender.cli("peers", "--json").stdout)
        return next((r for r in rows if r["id"] == receiver.fingerprint), None)

    wait_until(scored, WAIT, "the sender to know the receiver")
    paced: tuple[str, ...] = ("-r", str(2 * MiB))  # cut in chunks of a tenth of a MiB
    if chunks == "offered":
        paced = ("--chunk-size", str(MiB), *paced, "-b", str(MiB))
    held = 8 * MiB  # two whole chunks of the receiver's largest choice
    if chunks == "scant":  # a few small chunks: not one of 1 MiB
        paced, held = ("-r", str(128 * 1024)), 0
    first = _background(sender, path, receiver.host, receiver.port, *paced)
    try:
        wait_until(lambda: _running_id(sender, held), WAIT, "the first send's chunks written")
        taken = receiver.counters().get("receiver.taken-over", 0)
        code, result = twin.send_to(path, receiver, timeout=WAIT)
        assert_sent(receiver, (code, result), path)
        resumed = result["stats"]["resumed_chunks"]
        assert (resumed > 0) == (chunks != "scant"), result  # from what the first wrote
        old_code, old = _ended(first)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate(timeout=WAIT)
    assert receiver.wait_for_counter("receiver.taken-over", taken + 1) == taken + 1
    assert old_code == 1, old
    assert old["code"] == "aborted", old
    how = "starts it afresh" if chunks == "scant" else "continues it"
    assert f"your node offered this file again; the newer offer {how}" in old["error"], old
    stored = [p.name for p in receiver.inbox.iterdir() if not p.name.startswith(".")]
    assert stored == ["restarted.bin"], stored
    # Nothing left behind: no part, no manifest (once the writer closed the
    # old part: the twin's send ended after it).
    assert [p.name for p in receiver.inbox.iterdir() if p.name.startswith(".")] == []
    assert blake3_file(receiver.inbox / "restarted.bin") == blake3_file(path)
    # The receiver answered as it should: its score took no failed transfer
    # (the sender's control has told health the outcome by the time the
    # send's result is out; a second send's success orders it).
    assert sender.send_to(make_file(4096, name="after.bin"), receiver)[0] == 0
    row = wait_until(lambda: (r := scored()) and r["transfers_ok"] == 1 and r, WAIT, "scored")
    assert row["transfers_failed"] == 0, row
