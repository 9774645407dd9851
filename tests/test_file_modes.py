"""Received files and the inbox honour the umask; an inbox the user names is
owner-only by default; the control file is never written or read through a
symbolic link."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.testing.nodes import NodeProcess, assert_sent


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_received_files_honour_the_umask(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    with umask(0o027):  # the node process inherits it
        receiver = node_factory()
    sender = node_factory()
    src = make_file(100_000)
    done = sender.send_to(src, receiver)
    assert_sent(receiver, done, src)
    assert mode(receiver.inbox / done[1]["stored_as"]) == 0o640
    assert mode(receiver.inbox) == 0o750


def test_a_custom_inbox_is_owner_only(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    inbox = tmp_path / "drop" / "box"
    with umask(0o022):
        receiver = node_factory("--inbox", str(inbox))
    sender = node_factory()
    src = make_file(100_000)
    done = sender.send_to(src, receiver)
    assert_sent(receiver, done, src)
    assert mode(inbox / done[1]["stored_as"]) == 0o600
    assert mode(inbox) == 0o700


def test_the_control_file_is_not_read_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.json"
    real.write_text(json.dumps({"endpoint": "tcp://127.0.0.1:1", "token": "x", "pid": os.getpid()}))
    (tmp_path / "control.json").symlink_to(real)
    with pytest.raises(NodeUnavailable):
        ControlClient.for_data_dir(tmp_path)
    (tmp_path / "control.json").unlink()
    real.rename(tmp_path / "control.json")
    assert ControlClient.for_data_dir(tmp_path).pid == os.getpid()  # the same file, not linked
