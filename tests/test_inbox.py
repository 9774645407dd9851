"""The inbox rules shared by the unicast and multicast receivers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from actors.inbox import Refusal, check_incoming, create_part, publish
from peercrypt.crypto.identity import KeyPair, network_server_keys
from peercrypt.settings import NodeSettings


def settings(inbox: Path) -> NodeSettings:
    return NodeSettings(
        data_dir=inbox.parent,
        inbox=inbox,
        identity=KeyPair.from_seed(bytes(32)),
        server_keys=network_server_keys(None),
    )


def test_part_then_publish_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "report.pdf").write_bytes(b"already here")
    part, fd = create_part(tmp_path, "report.pdf", "abc123", 5)
    try:
        assert part.name == ".report.pdf.abc123.part"
        assert stat.S_IMODE(part.stat().st_mode) == 0o600
        assert part.stat().st_size == 5
        os.pwrite(fd, b"hello", 0)
        assert publish(part, fd, tmp_path, "report.pdf") == "report.1.pdf"
    finally:
        os.close(fd)
    assert (tmp_path / "report.pdf").read_bytes() == b"already here"
    assert (tmp_path / "report.1.pdf").read_bytes() == b"hello"
    assert stat.S_IMODE((tmp_path / "report.1.pdf").stat().st_mode) == 0o644


def test_create_part_refuses_an_existing_part_unless_replacing(tmp_path: Path) -> None:
    part, fd = create_part(tmp_path, "x", "id", 1, kind="mc")
    os.close(fd)
    with pytest.raises(Refusal) as refused:
        create_part(tmp_path, "x", "id", 1, kind="mc")
    assert refused.value.code == "io"
    _, fd = create_part(tmp_path, "x", "id", 3, kind="mc", replace=True)
    os.close(fd)
    assert part.stat().st_size == 3


def test_create_part_in_a_missing_inbox_is_an_io_refusal(tmp_path: Path) -> None:
    with pytest.raises(Refusal, match="cannot create file in inbox") as refused:
        create_part(tmp_path / "missing", "x", "id", 1)
    assert refused.value.code == "io"


@pytest.mark.parametrize(
    ("name", "chunk", "size", "code"),
    [
        ("ok.bin", 100, 10, "bad-offer"),
        ("ok.bin", 64 * 1024 * 1024, 10, "bad-offer"),
        ("..", 65536, 10, "bad-name"),
        ("ok.bin", 65536, 2**62, "no-space"),
    ],
)
def test_check_incoming_refusals(
    tmp_path: Path, name: str, chunk: int, size: int, code: str
) -> None:
    with pytest.raises(Refusal) as refused:
        check_incoming(settings(tmp_path), name, chunk, size)
    assert refused.value.code == code


def test_check_incoming_sanitises(tmp_path: Path) -> None:
    assert check_incoming(settings(tmp_path), "../../etc/passwd", 65536, 10) == "passwd"
