"""Sending what is not a regular file (a FIFO, a character device) through
a running node: one clear error at once, unicast and multicast, and the
node's sender goes on with the next send (opening a FIFO used to wait for a
writer inside the sender actor, holding every later send)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from peercrypt.testing.nodes import NodeProcess, assert_sent, random_file


@pytest.mark.parametrize("multicast", [False, True])
def test_a_fifo_or_device_is_refused_at_once_and_the_next_send_goes(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, multicast: bool
) -> None:
    receiver, other, sender = node_factory(), node_factory(), node_factory()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    extra = ("-m", "--to", f"{other.host}:{other.port}") if multicast else ()
    for special in (fifo, Path("/dev/zero")):
        result = sender.send_result(special, receiver.host, receiver.port, *extra, timeout=30)
        assert result.returncode != 0, result.json
        assert "is not a regular file" in result.json.get("error", ""), result.json
    path = random_file(tmp_path / "after.bin", 256 * 1024)
    assert_sent(receiver, sender.send_to(path, receiver), path)


def test_a_file_name_with_escapes_is_shown_escaped_in_the_result_line(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """The sent line names the local file: a name holding a terminal's escape
    sequence (one that sets the window's title) is shown escaped, not played
    (found by use)."""
    receiver, sender = node_factory(), node_factory()
    name = "evil\x1b]0;pwn\x07name.txt"
    path = random_file(tmp_path / name, 4096)
    done = sender.cli("send", path, receiver.host, str(receiver.port))
    assert done.returncode == 0, done.describe()
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout, repr(done.stdout)
    assert "sent evil\\x1b]0;pwn\\x07name.txt (4096 bytes)" in done.stdout, done.stdout


@pytest.mark.parametrize("multicast", [False, True])
def test_a_file_of_proc_is_refused_and_an_empty_file_still_goes(
    node_factory: Callable[..., NodeProcess], tmp_path: Path, multicast: bool
) -> None:
    """A file of /proc says its size is 0 and holds text made as it is read:
    sent as it says, it arrived empty and verified (exit 0). Refused in one
    line; a file that is empty goes as before."""
    receiver, other, sender = node_factory(), node_factory(), node_factory()
    extra = ("-m", "--to", f"{other.host}:{other.port}") if multicast else ()
    proc = Path("/proc/version")
    assert proc.stat().st_size == 0 and proc.read_bytes()
    result = sender.send_result(proc, receiver.host, receiver.port, *extra, timeout=30)
    assert result.returncode != 0, result.json
    assert result.json.get("error", "") == (
        "/proc/version does not tell its size (a file of /proc?): copy it to a file and send that"
    ), result.json
    assert not (receiver.inbox / "version").exists()
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert_sent(receiver, sender.send_to(empty, receiver), empty)
    assert (receiver.inbox / "empty.bin").read_bytes() == b""


def test_a_folder_of_proc_files_skips_them(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """In a folder they are skipped (and said so), as special files are."""
    receiver, sender = node_factory(), node_factory()
    folder = Path("/proc/sys/kernel/random")
    result = sender.send_result(folder, receiver.host, receiver.port, timeout=60)
    assert result.returncode == 0, result.json
    stats = result.json["stats"]
    assert stats["files"] == 0 and stats["skipped"] >= 3, stats
    assert (receiver.inbox / "random").is_dir()
    assert list((receiver.inbox / "random").iterdir()) == []


def test_a_zero_size_file_that_refuses_a_read_is_refused_and_leaks_nothing() -> None:
    """/proc/self/mem answers a read at 0 with EIO: refused like the others,
    its descriptor closed (the check's read raised past the close)."""
    from actors.file_chunks import NotRegularFile, open_source

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    for path in ("/proc/self/mem", "/proc/version"):
        with pytest.raises(NotRegularFile, match="does not tell its size"):
            open_source(path)
    assert fds() == before
