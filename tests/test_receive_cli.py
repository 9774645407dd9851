"""``peercrypt receive`` against a real node: it announces the transfer
coming in (its size to read at a glance, the id `cancel` takes), exits 0
with the verified outcome once the file is stored, and 1 with one error
line when the transfer is discarded (here the receiving user cancels it).
Every stored file is checked by its BLAKE3 hash."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from peercrypt.testing.nodes import (
    BackgroundSend,
    NodeProcess,
    assert_sent,
    run_cli,
    start_cli,
)

MiB = 1024 * 1024
WAIT = 60.0


class Lines:
    """A process's stderr read line by line on a thread, so a test can wait
    for a line with a deadline; the lines read so far stay in :attr:`seen`."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(proc.stderr,), daemon=True).start()

    def _read(self, stream: Iterable[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)  # the end: the process closed its stderr

    def until(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {self.seen}") from None
            if line is None:
                raise AssertionError(f"no line matching {pattern!r} in {self.seen}")
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found

    def rest(self, timeout: float = WAIT) -> str:
        """Every line, once the process closed its stderr."""
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return "".join(self.seen)


def _ended(proc: subprocess.Popen[str]) -> str:
    """Wait for the command to exit; its stdout (stderr is :class:`Lines`')."""
    assert proc.stdout is not None
    proc.wait(timeout=WAIT)
    return proc.stdout.read()


def _receive(receiver: NodeProcess) -> tuple[subprocess.Popen[str], Lines]:
    proc = start_cli("receive", "--timeout", str(WAIT), data_dir=receiver.data_dir)
    lines = Lines(proc)
    lines.until("^waiting for the next incoming transfer")
    return proc, lines


def test_receive_announces_the_incoming_file_and_ends_with_its_verified_outcome(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    proc, lines = _receive(receiver)
    try:
        path = make_file(3 * MiB // 2, name="report.pdf")
        send = BackgroundSend(sender, path, receiver, "-r", "512K")  # 3 s: seen coming in
        lines.until(r"^incoming report\.pdf \(1\.5 MiB; `peercrypt cancel in\d+` stops it\)$")
        out = _ended(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0, lines.rest()
    done = send.join(WAIT)
    assert_sent(receiver, done, path)
    stored = done[1]["stored_as"]
    assert out == f"received report.pdf (1572864 bytes) as {stored}, verified\n"


def test_receive_exits_1_with_one_line_when_the_transfer_is_cancelled(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    proc, lines = _receive(receiver)
    try:
        path = make_file(4 * MiB, name="big.iso")
        send = BackgroundSend(sender, path, receiver, "-r", "256K", "--timeout", "5")
        ident = lines.until(r"^incoming big\.iso \(4\.0 MiB; `peercrypt cancel (in\d+)`")[1]
        cancel = run_cli("cancel", ident, data_dir=receiver.data_dir)
        assert cancel.returncode == 0, cancel
        out = _ended(proc)
    finally:
        proc.kill()
    err = lines.rest()
    assert proc.returncode == 1 and out == "", (out, err)
    failed = [x for x in err.splitlines() if x.startswith("peercrypt: error:")]
    assert len(failed) == 1 and failed[0].startswith(
        "peercrypt: error: receiving big.iso failed: "
    ), err
    assert "Traceback" not in err
    assert send.join(WAIT)[0] != 0  # the sender was told; nothing stored
    assert not (receiver.inbox / "big.iso").exists()
