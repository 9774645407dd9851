"""The line a verified send prints: its rate counts only the bytes that
crossed, and it says what the receiver held already (a resume, or a file
delivered before)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from peercrypt.cli.send_report import how_fast, moved_rate, report
from peercrypt.errors import ResultCode
from peercrypt.wire.local_messages import SendResult

MiB = 1 << 20
DIGEST = bytes(range(32))


def _result(chunks: int, held: int, size: int = 64 * MiB, seconds: float = 2.0) -> SendResult:
    stats = {"chunks": float(chunks), "resumed_chunks": float(held)} if chunks else {}
    return SendResult(
        request=1,
        code=ResultCode.OK,
        reason="",
        size=size,
        digest=DIGEST,
        stored_as="a.bin",
        seconds=seconds,
        stats=stats,
    )


@pytest.mark.parametrize(
    ("chunks", "held", "shown"),
    [
        (0, 0, "32.0 MiB/s"),  # no statistics: the whole file over the time
        (64, 0, "32.0 MiB/s"),
        (64, 16, "resumed, 25% was there; 24.0 MiB/s"),  # 48 MiB crossed in 2 s
        (64, 63, "resumed, 98% was there; 512.0 KiB/s"),
        (1024, 1, "resumed, 1% was there; 32.0 MiB/s"),  # 0.1%: not "0% was there"
        (64, 64, "the receiver had it all: nothing sent"),
    ],
)
def test_a_verified_send_shows_the_rate_of_what_crossed(
    capsys: pytest.CaptureFixture[str], chunks: int, held: int, shown: str
) -> None:
    assert report(_result(chunks, held), [Path("a.bin")], "h", 7, as_json=False) == 0
    out = capsys.readouterr().out
    assert out == (
        f"sent a.bin ({64 * MiB} bytes) to h:7 as a.bin in 2.00 s ({shown}), "
        f"blake3 {DIGEST.hex()} verified\n"
    )


@pytest.mark.parametrize(
    ("mib_per_s", "shown"),
    [
        (1024 / 0.09 / MiB, "11.1 KiB/s"),
        (0.0, "0 B/s"),
        (1536.0, "1.5 GiB/s"),
        (27.25, "27.2 MiB/s"),
    ],
)
def test_a_send_s_rate_reads_in_its_own_unit(mib_per_s: float, shown: str) -> None:
    """A 1 KiB send is not '(0.0 MiB/s)', a fast one not '(1536.0 MiB/s)'."""
    assert how_fast(_result(64, 0), mib_per_s) == shown


@pytest.mark.parametrize(
    ("chunks", "held", "rate", "share"),
    [(64, 0, 32.0, 0.0), (64, 16, 24.0, 0.25), (64, 64, 0.0, 1.0), (0, 0, 32.0, 0.0)],
)
def test_a_send_s_json_gives_the_rate_of_what_crossed_and_what_was_held(
    capsys: pytest.CaptureFixture[str], chunks: int, held: int, rate: float, share: float
) -> None:
    """As the line says it: a file the receiver had is no 1208 MiB/s send
    (its whole size over the 0.04 s of asking); the held share beside it."""
    assert report(_result(chunks, held), [Path("a.bin")], "h", 7, as_json=True) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["mib_per_s"], shown["held_share"]) == (rate, share)
    assert shown["size"] == 64 * MiB and shown["seconds"] == 2.0


def test_a_retried_send_shows_its_attempts_and_what_the_first_found() -> None:
    """The rate over every attempt of what the first one did not find held
    (the later attempts' resumes are this send's own bytes)."""
    result = _result(64, 40)  # the last attempt found 40 chunks: its own first attempt's
    stats = {**result.stats, "held_share": 0.25, "attempts": 3.0}
    retried = dataclasses.replace(result, stats=stats)
    assert (
        how_fast(retried, moved_rate(retried)) == "resumed, 25% was there; 24.0 MiB/s, 3 attempts"
    )
    fresh = dataclasses.replace(result, stats={**stats, "held_share": 0.0})
    assert how_fast(fresh, moved_rate(fresh)) == "32.0 MiB/s, 3 attempts"


@pytest.mark.parametrize(
    ("names", "shown"),
    [
        (["p1.bin", "p2.bin", "p3.bin"], "p1.bin, p2.bin, p3.bin"),
        (
            ["tiny.txt", "small5k.bin", "dir1", "more", "last"],
            "tiny.txt, small5k.bin, dir1 +2 more",
        ),
    ],
)
def test_several_files_sent_are_named_not_only_the_first(
    capsys: pytest.CaptureFixture[str], names: list[str], shown: str
) -> None:
    """`send p1.bin p2.bin p3.bin` said `sent p1.bin (3 files, ...)`."""
    result = dataclasses.replace(
        _result(64, 0), stats={"files": 3.0, "file_bytes": 3000.0}, stored_as="p1.bin, p2.bin"
    )
    assert report(result, [Path(n) for n in names], "h", 7, as_json=False) == 0
    assert capsys.readouterr().out.startswith(f"sent {shown} (3 files, 3000 bytes) to h:7 as ")


@pytest.mark.parametrize(("files", "said"), [(1, "1 file"), (3, "3 files"), (0, "0 files")])
def test_one_file_among_the_sources_is_one_file(
    capsys: pytest.CaptureFixture[str], files: int, said: str
) -> None:
    """`send link.bin fifo HOST PORT` (the FIFO skipped) said `(1 files, ...)`."""
    result = dataclasses.replace(
        _result(64, 0), stats={"files": float(files), "file_bytes": 3000.0 * files}
    )
    assert report(result, [Path("a.bin"), Path("b")], "h", 7, as_json=False) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"sent a.bin, b ({said}, {3000 * files} bytes) to h:7 as a.bin in "), out


def test_a_source_left_out_is_not_named_as_sent(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`send a.bin pipe HOST PORT`: the FIFO is not sent (a warning line
    says so), and the result line named it among what was."""
    sent = tmp_path / "a.bin"
    sent.write_bytes(b"x" * 3000)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    result = dataclasses.replace(_result(64, 0), stats={"files": 1.0, "file_bytes": 3000.0})
    assert report(result, [sent, pipe], "h", 7, as_json=False) == 0
    out = capsys.readouterr().out
    assert out.startswith("sent a.bin (1 file, 3000 bytes) to h:7 as a.bin in "), out


def test_a_source_gone_before_the_result_is_shown_keeps_the_others_names(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Removed (or renamed) between its send and the result's line: still
    named as stored from the result, and the others' names are read (all
    were null: the names matched against the result were one short)."""
    kept = tmp_path / "a.bin"
    kept.write_bytes(b"x" * 10)
    gone = tmp_path / "b.bin"  # (sent, then removed)
    result = dataclasses.replace(
        _result(64, 0), stored_as="a.bin, b.1.bin", stats={"files": 2.0, "file_bytes": 20.0}
    )
    assert report(result, [kept, gone], "h", 7, as_json=True) == 0
    shown = json.loads(capsys.readouterr().out)["sources"]
    assert [(s["name"], s["kind"], s["bytes"], s["stored_as"], s["verified"]) for s in shown] == [
        ("a.bin", "file", 10, "a.bin", True),
        ("b.bin", "gone", None, "b.1.bin", True),
    ]
