"""``peercrypt top`` driven in a pseudo-terminal (pexpect): it shows a running
transfer with its progress, changes its rate and cancels it with keys, and
quits cleanly; without a node it is one error line."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect

from peercrypt.client import ControlClient
from peercrypt.testing.nodes import (
    NodeProcess,
    WaitTimeout,
    blake3_file,
    cli_env,
    cli_running,
    dead_port,
    run_cli,
    start_cli,
    tcp_connected_to,
    wait_until,
)
from peercrypt.wire.local_messages import Progress, SendRequest, SendResult

MiB = 1024 * 1024


ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Z0-9]|[=>78])")


class Screen:
    """What top wrote to the terminal, escape sequences removed, searched
    from where the previous match ended."""

    def __init__(self, child: pexpect.spawn) -> None:  # type: ignore[type-arg]
        self.child = child
        self.text = ""
        self.pos = 0

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            with contextlib.suppress(pexpect.TIMEOUT):
                self.text += ANSI.sub("", self.child.read_nonblocking(1 << 16, timeout=0.1))
            return regex.search(self.text, self.pos)

        try:
            match = wait_until(found, timeout, f"{pattern!r} on the screen", interval=0)
        except WaitTimeout as exc:  # say what was on the screen instead
            seen = self.text[self.pos :][-3000:]
            raise WaitTimeout(f"{exc}; the screen since the last match:\n{seen}") from None
        self.pos = match.end()
        return match


def spawn_top(node: NodeProcess, columns: int) -> pexpect.spawn:  # type: ignore[type-arg]
    """``peercrypt top`` on ``node`` in a terminal 30 lines high."""
    return pexpect.spawn(
        sys.executable,
        ["-m", "peercrypt", "--data-dir", str(node.data_dir), "top", "--interval", "0.3"],
        dimensions=(30, columns),
        env=cli_env(node.env),
        encoding="utf-8",
        timeout=15,
    )


def wait_for_rate(node: NodeProcess, transfer: str, rate: int) -> None:
    """The scheduler reports ``rate`` as the transfer's cap (its flows fact)."""

    def reached() -> bool:
        flows = json.loads(node.status()["flows"])
        return any(str(f["id"]) == transfer and f["rate"] == rate for f in flows)

    wait_until(reached, 10.0, f"the scheduler to cap transfer {transfer} at {rate}")


def test_top_shows_changes_and_cancels_a_running_transfer(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender, receiver = node_factory(), node_factory()
    source = make_file(64 * MiB, name="watched file.bin")
    args = ["send", source, receiver.host, str(receiver.port), "-r", str(2 * MiB), "--json"]
    with start_cli(*args, data_dir=sender.data_dir, env=sender.env) as send:
        try:

            def sending() -> str | None:
                rows = json.loads(sender.cli("transfers", "--json").stdout)
                return next((str(r["id"]) for r in rows if r["state"] == "sending"), None)

            ident = wait_until(sending, 15.0, "the send to start")
            listed = sender.cli("transfers")
            header, row = listed.stdout.splitlines()
            assert header.split() == [
                "ID",
                "STATE",
                "MODE",
                "BYTES",
                "DONE",
                "TIME",
                "PEER",
                "FILE",
            ]
            assert row.split()[:3] == [ident, "sending", "token-bucket"]
            assert re.search(r"[0-9.]+ [KM]?i?B/64\.0 MiB +\d+% ", row), row
            assert row.endswith(str(source)), row
            top = spawn_top(sender, columns=170)
            screen = Screen(top)
            try:
                # The transfer, its mode, cap, progress and rate on screen.
                screen.expect("watched file.bin")
                screen.expect("token-bucket")
                screen.expect(r"2\.0 MiB/s")
                screen.expect(r"\d+% of 64\.0 MiB")
                screen.expect(r"\d\.\d MiB/s +\d+:\d\d")  # a measured rate and an ETA
                top.send("+")
                screen.expect(re.escape("rate of 1 transfer(s) is now 4.0 MiB/s"))
                wait_for_rate(sender, ident, 4 * MiB)
                top.send("-")
                top.send("-")
                screen.expect(re.escape("is now 1.0 MiB/s"))
                wait_for_rate(sender, ident, MiB)
                top.send("c")
                screen.expect(re.escape(f"cancel transfer {ident}? y/n"))
                top.send("n")
                screen.expect("not cancelled")
                top.send("c")
                top.send("y")
                # Said at once; the node's answer follows (the view waited for it).
                screen.expect(re.escape(f"cancelling transfer {ident} ..."))
                screen.expect(re.escape(f"cancelled transfer {ident}"))
                out, _ = send.communicate(timeout=15)
                assert json.loads(out.strip().splitlines()[-1])["code"] == "cancelled"
                assert send.returncode != 0
                screen.expect("no sends running")
                top.send("q")
                top.expect(pexpect.EOF)
            finally:
                top.close(force=True)
            assert top.exitstatus == 0, top.before
        finally:
            send.kill()


def test_top_without_a_node_is_one_line(tmp_path: Path) -> None:
    result = run_cli("top", data_dir=tmp_path)
    assert result.returncode == 1
    assert result.stderr_lines == [
        f"peercrypt: error: no node is running for {tmp_path} (start one with `peercrypt node`)"
    ]


def test_top_into_a_pipe_prints_one_view_and_exits(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """Not on a terminal (a pipe, a file) top prints one view, plain text,
    and exits 0; it used to wait for keys for ever and print nothing."""
    node = node_factory()
    result = node.cli("top", "--interval", "0.2", timeout=30)
    assert result.returncode == 0, result.describe()
    lines = result.stdout.splitlines()
    assert all(line == line.rstrip() for line in lines), lines  # no line padded
    assert lines[0].startswith("PeerCrypt top  node ") and node.fingerprint[:19] in lines[0], lines
    assert "Sends" in lines and "Peers" in lines, lines
    assert "\x1b" not in result.stdout, result.stdout  # no terminal's escape sequences
    assert "q quit" not in result.stdout, result.stdout  # no keys to tell
    assert result.stderr == "", result.describe()


def test_top_whose_node_stops_says_so_in_one_line(
    node_factory: Callable[..., NodeProcess],
) -> None:
    """The node stops while top waits for its next refresh: one line, exit 1,
    naming what happened (it said "the node did not answer" after a wait of
    its own)."""
    node = node_factory()
    port = int(json.loads((node.data_dir / "control.json").read_text())["endpoint"].rsplit(":")[-1])
    with cli_running("top", "--interval", "3", data_dir=node.data_dir) as top:
        wait_until(lambda: tcp_connected_to(port), 30, "top's connection")
        assert node.stop() == 0
        out, err = top.communicate(timeout=30)
    assert top.returncode == 1, (out, err)
    assert err.splitlines() == ["peercrypt: error: the node stopped; top stopped"], err


def test_cancel_of_a_send_that_had_ended_says_how_it_ended(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """`cancel N` of a send that had ended by the time the cancel came
    says how it ended, exit 2 (as for no running send of that number),
    never "cancelled": a verified file stays verified (`cancel` said
    "cancelled transfer N" of it when it ended just as the cancel came)."""
    sender, receiver = node_factory(), node_factory()
    source = make_file(64 * 1024)

    def sent(port: int) -> tuple[int, SendResult]:
        """Send ``source`` to ``port`` through the node: its id and its result."""
        with ControlClient.for_data_dir(sender.data_dir) as client:
            request = client.next_id()
            client.send(
                SendRequest(
                    request=request, path=str(source), host=receiver.host, port=port,
                    chunk_size=65536, timeout=30.0,
                )
            )  # fmt: skip
            ident = 0
            while True:
                msg = client.receive(60.0)
                if isinstance(msg, Progress) and msg.transfer:
                    ident = msg.transfer
                if isinstance(msg, SendResult) and msg.request == request:
                    assert ident, "no progress named the send's id"
                    return ident, msg

    ident, verified = sent(receiver.port)
    assert verified.code == "ok", verified
    done = sender.cli("cancel", str(ident))
    assert (done.returncode, done.stdout) == (2, ""), done.describe()
    assert done.stderr_lines == [f"peercrypt: error: transfer {ident} had already ended (verified)"]
    assert blake3_file(receiver.inbox / verified.stored_as) == blake3_file(source)

    with dead_port() as port:
        failed_id, failed = sent(port)
    assert failed.code != "ok" and failed.reason, failed
    done = sender.cli("cancel", str(failed_id))
    assert done.returncode == 2, done.describe()
    assert done.stderr_lines == [
        f"peercrypt: error: transfer {failed_id} had already ended (failed: {failed.reason})"
    ]


def test_cancel_stops_a_running_send_by_its_id(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    sender, receiver = node_factory(), node_factory()
    source = make_file(32 * MiB)
    args = ["send", source, receiver.host, str(receiver.port), "-r", str(2 * MiB), "--json"]
    with start_cli(*args, data_dir=sender.data_dir, env=sender.env) as send:
        try:

            def sending() -> str | None:
                rows = json.loads(sender.cli("transfers", "--json").stdout)
                return next((str(r["id"]) for r in rows if r["state"] == "sending"), None)

            ident = wait_until(sending, 15.0, "the send to start")
            unknown = sender.cli("cancel", str(int(ident) + 1000))
            assert unknown.returncode == 2
            assert unknown.stderr_lines == [
                f"peercrypt: error: no running transfer {int(ident) + 1000} "
                "(see `peercrypt transfers`)"
            ]
            done = sender.cli("cancel", ident)
            assert done.returncode == 0, done.describe()
            assert done.stdout == f"cancelled transfer {ident}\n"  # (it ran no more)
            assert sender.cli("transfers").stdout == "no transfers running\n"
            out, _ = send.communicate(timeout=15)
            assert json.loads(out.strip().splitlines()[-1])["code"] == "cancelled"
        finally:
            send.kill()
    assert sender.cli("transfers").stdout == "no transfers running\n"


def _screen(width: int) -> list[str]:
    """top's screen at ``width`` columns for one send and one peer (no node)."""

    from peercrypt.cli.top import View

    view = View()
    facts = {"fingerprint": "n47j-hxbx-u2u5-g37e-v3th", "pid": "17867", "mode": "normal"}
    facts["max_rate"] = str(40 * MiB)
    facts["flows"] = json.dumps([{"id": 5, "priority": 2, "rate": 20 * MiB}])
    send = {"id": "5", "file": "/data/zero.bin", "peer": "127.0.0.1:7400", "mode": "token-bucket"}
    send.update(size=str(200 * MiB), bytes=str(50 * MiB), state="sending")
    peer = {"id": "zqkg-x7q5-3amw-tscq-abr6-6cvz", "address": "127.0.0.1:7400", "state": "alive"}
    peer.update(rtt_ms="10.91", reliability="0.595", failures="0", last_seen="0.4")
    view.update(0.0, facts, [send], [peer])
    view.update(2.0, facts, [{**send, "bytes": str(90 * MiB)}], [peer])  # 20 MiB/s
    return _render(view, width)


def _render(view: Any, width: int) -> list[str]:
    from rich.console import Console

    from peercrypt.cli.top import render

    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(render(view, width))
    return [line.rstrip() for line in console.export_text().splitlines()]


def test_top_fits_an_80_column_terminal() -> None:
    """At 80 columns the columns to act on are whole (no cell cut to '…');
    the least needed are left out. At 170 every column shows."""
    narrow = _screen(80)
    assert all(len(line) <= 80 for line in narrow), narrow
    assert not any("…" in line for line in narrow), "\n".join(narrow)
    text = "\n".join(narrow)
    assert narrow[1].startswith("mode normal  node cap 40.0 MiB/s  receiving 0"), narrow
    row = next(line for line in narrow if "zero.bin" in line)
    assert row.split()[0] == "5" and "45% of 200.0 MiB" in row, row
    assert "20.0 MiB/s" in row and "0:06" in row, row  # measured rate, ETA
    assert "127.0.0.1:7400" in row, row
    assert "PRIO" not in text and "SHARE" not in text
    peer = next(line for line in narrow if line.startswith("zqkg"))
    assert peer.split()[:4] == ["zqkg-x7q5-3amw-tscq", "127.0.0.1:7400", "alive", "10.91"], peer
    wide = "\n".join(_screen(170))
    assert "pid 17867  mode normal  node cap 40.0 MiB/s" in wide, wide
    for column in ("PRIO", "CAP", "SHARE", "PROGRESS", "MODE", "STATE", "FAILURES"):
        assert column in wide, wide
    assert "token-bucket" in wide and "high" in wide and "100%" in wide and "━" in wide


def test_top_keeps_its_columns_in_place_as_values_gain_and_lose_digits() -> None:
    """Two refreshes whose numbers have other digit counts (a rate from
    512.0 KiB/s to 10.0 MiB/s, 0% to 10%, an RTT of 10.91 ms to 9.5 ms,
    last seen 12.3 s to 0.4 s ago) draw every column where it was: the
    columns were fitted to each refresh's cells and, the table filling the
    terminal, all of them moved sideways as one gained or lost a digit.
    Numbers are right-aligned under their headers."""
    from peercrypt.cli.top import View

    facts = {"fingerprint": "n47j-hxbx-u2u5-g37e-v3th", "pid": "17867", "mode": "normal"}
    facts["max_rate"] = str(40 * MiB)
    facts["flows"] = json.dumps([{"id": 5, "priority": 2, "rate": 20 * MiB}])
    send = {"id": "5", "file": "/data/zero.bin", "peer": "127.0.0.1:7400", "mode": "token-bucket"}
    send.update(size=str(200 * MiB), state="sending")
    peer = {"id": "zqkg-x7q5-3amw-tscq-abr6-6cvz", "address": "127.0.0.1:7400", "state": "alive"}
    peer.update(reliability="0.595", failures="0")
    for width in (80, 150):
        view = View()
        view.update(0.0, facts, [{**send, "bytes": "0"}], [peer])
        slow = {**peer, "rtt_ms": "10.91", "last_seen": "12.3"}
        view.update(2.0, facts, [{**send, "bytes": str(MiB)}], [slow])  # 512.0 KiB/s
        before = _render(view, width)
        fast = {**peer, "rtt_ms": "9.5", "last_seen": "0.4"}
        view.update(4.0, facts, [{**send, "bytes": str(21 * MiB)}], [fast])  # 10.0 MiB/s
        after = _render(view, width)
        shown = []
        for lines, cells in (
            (before, ["0% of 200.0 MiB", "512.0 KiB/s", "6:38", "10.91 ms", "12.3s ago"]),
            (after, ["10% of 200.0 MiB", "10.0 MiB/s", "0:18", "9.5 ms", "0.4s ago"]),
        ):
            sends = lines[lines.index("Sends") + 1]
            peers = lines[lines.index("Peers") + 1]
            row = next(line for line in lines if "zero.bin" in line)
            known = next(line for line in lines if line.startswith("zqkg"))
            for line, header, name, cell in (
                (row, sends, "DONE", cells[0]),
                (row, sends, "RATE", cells[1]),
                (row, sends, "ETA", cells[2]),
                (known, peers, "RTT", cells[3]),
                (known, peers, "LAST SEEN", cells[4]),
            ):  # right-aligned: the cell ends where its header does
                end = header.index(name) + len(name)
                assert line[:end].endswith(f" {cell}"), (width, name, header, line)
            shown.append((sends, peers, row.index("zero.bin"), row.index("127.0.0.1:7400")))
        assert shown[0] == shown[1], (width, "\n".join(before), "\n".join(after))


def test_top_says_sizes_and_rates_as_the_other_commands_do() -> None:
    """In the largest binary unit, as `max-rate`, `status` and `stats` say
    them ('1.5 GiB/s', not '1536.0 MiB/s'): no cell wider than before, and
    the screen still fits 80 columns whole."""
    from peercrypt.cli.top import View

    view = View()
    facts = {"fingerprint": "n47j-hxbx-u2u5-g37e-v3th", "pid": "17867", "mode": "normal"}
    facts["max_rate"] = str(1536 * MiB)
    facts["flows"] = json.dumps([{"id": 5, "priority": 2, "rate": 512 * 1024}])
    facts["incoming"] = json.dumps([["small.txt", 1000, 500, "in7"]])
    send = {"id": "5", "file": "/data/big.iso", "peer": "127.0.0.1:7400", "mode": "token-bucket"}
    send.update(size=str(6 * 1024 * MiB), bytes="0", state="sending")
    view.update(0.0, facts, [send], [])
    view.update(2.0, facts, [{**send, "bytes": str(3 * 1024 * MiB)}], [])  # 1.5 GiB/s
    for width in (80, 170):
        lines = _render(view, width)
        assert all(len(line) <= width for line in lines), lines
        assert not any("…" in line for line in lines), "\n".join(lines)
        assert "node cap 1.5 GiB/s  receiving" in lines[1 if width == 80 else 0], lines
        row = next(line for line in lines if "big.iso" in line)
        assert "50% of 6.0 GiB" in row and " 1.5 GiB/s " in row, row
        if width == 170:
            assert " 512.0 KiB/s " in row, row  # its own cap
        (small,) = [line.split() for line in lines if "small.txt" in line]
        assert small == ["in7", "small.txt", "50%", "of", "1000", "B"], lines


def test_top_lists_incoming_transfers_with_the_ids_cancel_takes() -> None:
    """The receiver's incoming transfers show under "Receiving" with their
    ids; up/down moves from the sends into them (what `c` then cancels)."""
    from peercrypt.cli.top import View

    view = View()
    facts = {"fingerprint": "n47j-hxbx-u2u5-g37e-v3th", "pid": "17867", "mode": "normal"}
    facts["incoming"] = json.dumps([["big.iso", 200 * MiB, 50 * MiB, "in7"]])
    send = {"id": "5", "file": "/data/zero.bin", "peer": "127.0.0.1:7400", "mode": "normal"}
    send.update(size=str(200 * MiB), bytes=str(50 * MiB), state="sending")
    view.update(0.0, facts, [send], [])
    assert view.selectable() == ["5", "in7"]
    view.selected = 1
    assert view.selected_id() == "in7"
    lines = _render(view, 80)
    heading = lines.index("Receiving")
    assert lines[heading + 1].split() == ["ID", "FILE", "DONE"], lines
    assert lines[heading + 2].split() == ["in7", "big.iso", "25%", "of", "200.0", "MiB"], lines
    view.update(1.0, {**facts, "incoming": "[]"}, [send], [])  # it ended
    assert "Receiving" not in _render(view, 80) and view.selected_id() == "5"
    # A multicast session coming in shows there too, with its sender; it is
    # not one `c` cancels here, so up/down passes it by.
    coming = [["film.mkv", 400 * MiB, 100 * MiB, "n47j-hxbx-u2u5-g37e-v3th"]]
    multicast = {**facts, "incoming": "[]", "incoming_multicast": json.dumps(coming)}
    view.update(2.0, multicast, [send], [])
    lines = _render(view, 120)
    heading = lines.index("Receiving")
    assert lines[heading + 1].split() == ["ID", "FILE", "DONE", "FROM"], lines
    assert lines[heading + 2].split() == [
        "multicast", "film.mkv", "25%", "of", "400.0", "MiB", "n47j-hxbx-u2u5-g37e"
    ], lines  # fmt: skip
    assert view.selectable() == ["5"]
    lines = _render(view, 80)  # its sender left out: nothing cut
    heading = lines.index("Receiving")
    assert lines[heading + 1].split() == ["ID", "FILE", "DONE"], lines
    assert lines[heading + 2].split() == ["multicast", "film.mkv", "25%", "of", "400.0", "MiB"]


def test_long_names_sharing_a_start_stay_told_apart() -> None:
    """Four sends and four incoming transfers whose names differ only at
    their end: each row shows its own name (cut in its middle), and a wide
    terminal shows more of it (all of a name that fits)."""
    from peercrypt.cli.top import View
    from peercrypt.core.names import INCOMING_NAME, shortened

    names = [f"a_really_long_file_name_for_testing_columns_number_{i}.dat" for i in range(1, 5)]
    view = View()
    facts = {"fingerprint": "n47j-hxbx-u2u5-g37e-v3th", "pid": "17867", "mode": "normal"}
    facts["incoming"] = json.dumps(
        [[shortened(n, INCOMING_NAME), MiB, 0, f"in{i}"] for i, n in enumerate(names, 9)]
    )
    sends = [
        {"id": str(i), "file": f"/data/{n}", "peer": "127.0.0.1:7400", "mode": "normal",
         "size": str(MiB), "bytes": "0", "state": "sending"}
        for i, n in enumerate(names, 1)
    ]  # fmt: skip
    view.update(0.0, facts, sends, [])
    for width in (80, 160):
        lines = _render(view, width)
        assert all(len(line) <= width for line in lines), lines
        heading = lines.index("Receiving")
        ids = [["1"], ["2"], ["3"], ["4"]]
        sent = [line.split()[1] for line in lines[:heading] if line.split()[:1] in ids]
        came = [line.split()[1] for line in lines[heading:] if line.startswith("in")]
        for shown in (sent, came):
            assert len(shown) == 4 and len(set(shown)) == 4, lines
            for i, one in enumerate(shown, 1):
                assert one.startswith("a_really") and one.endswith(f"_{i}.dat"), shown
                assert one.count("…") <= 1, shown  # the node's cut, not cut again
        if width == 160:
            assert sent == names, lines  # 56 characters: whole at 160 columns
            assert came == [shortened(n, INCOMING_NAME) for n in names], lines
    # A long name never costs a column to act on: with each width, the
    # columns shown are those names of 28 characters would leave.
    short = View()
    named = [{**send, "file": f"/data/{'n' * 22}_{i}.dat"} for i, send in enumerate(sends)]
    short.update(0.0, facts, named, [])  # names of 28 characters, the least room

    def send_header(lines: list[str]) -> list[str]:
        return lines[lines.index("Sends") + 1].split()

    for width in range(80, 200, 5):
        header, expected = send_header(_render(view, width)), send_header(_render(short, width))
        assert header == expected, (width, header, expected)


def test_top_shows_peers_text_as_it_is_never_as_markup() -> None:
    """File names and peers' text are shown literally: rich markup in them
    (a hostile sender's "[link=...]" made a hyperlink on the receiving
    user's terminal; "[x]" hid part of a name) is not interpreted."""
    from peercrypt.cli.top import View

    view = View()
    facts = {"fingerprint": "n47j-hxbx-u2u5-g37e-v3th", "pid": "1", "mode": "normal"}
    facts["incoming"] = json.dumps([["[link=mailto:a@b.c]in.pdf", 100, 50, "in2"]])
    facts["incoming_multicast"] = json.dumps([["[on red]mc.bin", 100, 50, "[bold]who"]])
    send = {"id": "5", "file": "/d/[2024] report.pdf", "peer": "[i]h:1", "state": "sending"}
    send.update(size="100", bytes="50", mode="normal")
    peer = {"id": "[blink]abc", "address": "[link=https:e.vil]x:1", "state": "alive"}
    view.update(0.0, facts, [send], [peer])
    shown = "\n".join(_render(view, 200))
    for text in ("[link=mailto:a@b.c]in.pdf", "[on red]mc.bin", "[bold]who", "[2024] report.pdf",
                 "[i]h:1", "[blink]abc", "[link=https:e.vil]x:1"):  # fmt: skip
        assert text in shown, (text, shown)


def test_top_without_sends_keeps_its_headers_whole_at_80_columns() -> None:
    """No send running: the placeholder line counts when columns are fitted,
    so no header is cut to "…" (it was: "C…", "PROGRE…", "STA…")."""
    from peercrypt.cli.top import View

    view = View()
    view.update(
        0.0, {"fingerprint": "n47j-hxbx-u2u5-g37e-v3th", "pid": "1", "mode": "normal"}, [], []
    )
    for width in (50, 60, 80, 100, 170):
        lines = _render(view, width)
        assert all(len(line) <= width for line in lines), lines
        # (no peer either: its placeholder fitted too, "ADDRE…" and "ST…" at 50)
        assert not any("…" in line for line in lines), "\n".join(lines)
        header = lines[lines.index("Sends") + 1].split()
        assert header[:2] == ["ID", "FILE"] and "DONE" in header and "RATE" in header, header
        assert any(line.split() == ["no", "sends", "running"] for line in lines), lines
        assert any(line.split() == ["no", "peers", "known"] for line in lines), lines


def test_top_on_the_receiving_node_cancels_an_incoming_transfer(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """`top` on the receiving node lists the incoming transfer with its id;
    selecting it and `c`, `y` cancel it: the sender's send fails
    "cancelled" and the part is gone."""
    sender, receiver = node_factory(), node_factory()
    source = make_file(16 * MiB, name="unwanted.bin")
    args = ["send", source, receiver.host, str(receiver.port), "-r", str(MiB), "--json"]
    with start_cli(*args, data_dir=sender.data_dir, env=sender.env) as send:
        try:
            top = spawn_top(receiver, columns=120)
            screen = Screen(top)
            try:
                screen.expect("Receiving")
                ident = screen.expect(r"(in\d+) +unwanted\.bin +\d+% of 16\.0 MiB").group(1)
                top.send("c")  # the only row: it is selected
                screen.expect(re.escape(f"cancel transfer {ident}? y/n"))
                top.send("y")
                screen.expect(re.escape(f"cancelled incoming transfer {ident} "))
                out, _ = send.communicate(timeout=15)
                result = json.loads(out.strip().splitlines()[-1])
                assert result["code"] == "cancelled" and send.returncode == 1, result
                top.send("q")
                top.expect(pexpect.EOF)
            finally:
                top.close(force=True)
            assert top.exitstatus == 0, top.before
        finally:
            send.kill()
    wait_until(
        lambda: not [p for p in receiver.inbox.iterdir() if p.name.startswith(".")],
        15.0,
        "the part removed",
    )


def test_the_selection_and_a_cancels_question_follow_the_transfer_not_its_row() -> None:
    """Rows that come in another order (or one that ended above) keep the
    selected transfer selected; `c` asks about the transfer selected when
    it was pressed, whatever moved before `y`, and is dropped when that
    transfer ends (found by use: it stayed under "no sends running"); the
    node's answer gets a line of its own (beside the keys, 80 columns cut
    it to a few letters)."""
    from peercrypt.cli.top import View, _act

    def row(ident: str) -> dict[str, str]:
        base = {"id": ident, "file": f"/d/f{ident}.bin", "peer": "127.0.0.1:7400"}
        return {**base, "mode": "normal", "size": str(MiB), "bytes": "0", "state": "sending"}

    facts = {"fingerprint": "n47j-hxbx-u2u5-g37e-v3th", "pid": "1", "mode": "normal"}
    view = View()
    view.update(0.0, facts, [row("12"), row("13")], [])
    assert _act(view, None, "down") and view.selected_id() == "13"  # type: ignore[arg-type]
    view.update(1.0, facts, [row("13"), row("12")], [])
    assert view.selected_id() == "13" and view.selected == 0
    assert _act(view, None, "c") and view.confirm_cancel == "13"  # type: ignore[arg-type]
    view.update(2.0, facts, [row("11"), row("12"), row("13")], [])
    assert view.selected_id() == "13"
    assert "cancel transfer 13? y/n" in _render(view, 80)
    view.update(3.0, facts, [row("12"), row("13")], [])  # 11 ended: still about 13
    assert "cancel transfer 13? y/n" in _render(view, 80)
    view.update(4.0, facts, [row("12")], [])  # 13 ended: a `y` would cancel nothing
    assert view.confirm_cancel is None
    lines = _render(view, 80)
    assert lines[-2].startswith("up/down select"), lines
    assert lines[-1] == "transfer 13 ended; nothing to cancel", lines
    assert _act(view, None, "y") and view.confirm_cancel is None  # type: ignore[arg-type]
    view.message = "the rate of transfer 12 is now 2.0 MiB/s (it was 1.0 MiB/s)"
    lines = _render(view, 80)
    assert lines[-2].startswith("up/down select") and lines[-1] == view.message, lines


def test_transfers_lists_sends_in_the_order_of_their_ids(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path]
) -> None:
    """A multicast send between two unicast ones: the sender and the
    msender answer `transfers` apart, and their rows came in the order the
    answers did (`top`'s rows swapped under the selection)."""
    sender = node_factory("--max-rate", "1M")
    a, b = node_factory(), node_factory()
    files = [make_file(64 * MiB, name=f"o{i}.bin") for i in range(3)]
    procs = [
        start_cli("send", files[0], a.host, str(a.port), "-r", "300K", data_dir=sender.data_dir),
        start_cli(
            "send",
            files[1],
            a.host,
            str(a.port),
            "-m",
            "--to",
            f"{b.host}:{b.port}",
            data_dir=sender.data_dir,
        ),
        start_cli("send", files[2], b.host, str(b.port), "-r", "300K", data_dir=sender.data_dir),
    ]
    try:

        def listed() -> list[int] | None:
            rows = json.loads(sender.cli("transfers", "--json").stdout)
            return [r["id"] for r in rows] if len(rows) == 3 else None

        for _ in range(4):
            ids = wait_until(listed, 30, "three sends listed")
            assert ids == sorted(ids), ids
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=30)


def test_top_into_a_pipe_cuts_no_cell_and_counts_multicast_sessions_received() -> None:
    """Into a pipe every cell is whole (a multicast send's receivers, long
    names and a peer's fingerprint were cut to the terminal's widths); the
    header's `receiving` counts the multicast sessions coming in too."""
    from rich.console import Console

    from peercrypt.cli.top import PIPE_WIDTH, View, render

    name = "a-rather-long-file-name-for-a-terminal-column-0123456789.bin"
    peers = "127.0.0.1:17402, 127.0.0.1:17403, 127.0.0.1:17404"
    fp = "n47j-hxbx-u2u5-g37e-v3th-aaaa-bbbb-cccc"
    facts = {"fingerprint": fp, "pid": "1", "mode": "normal", "active": "1"}
    facts["incoming"] = json.dumps([[name, MiB, 0, "in3"]])
    facts["incoming_multicast"] = json.dumps([[name, MiB, 0, fp]])
    send = {"id": "5", "file": f"/d/{name}", "peer": peers, "mode": "multicast"}
    send.update(size=str(MiB), bytes="0", state="sending")
    view = View()
    view.update(0.0, facts, [send], [{"id": fp, "address": "127.0.0.1:17402"}])
    out = Console(width=PIPE_WIDTH, file=io.StringIO(), color_system=None)
    out.print(render(view, PIPE_WIDTH, keys=False))
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert peers in text and text.count(name) == 3 and text.count(fp) >= 3, text
    assert "receiving 2" in text, text
    assert "receiving 2" in "\n".join(_render(view, 80))  # on a terminal too


def test_a_rate_read_in_steps_is_its_average_and_a_steady_one_follows_a_change() -> None:
    """1 MiB chunks under a 300 KiB/s cap move a step every 3.4 s: top read
    each refresh's own rate (514 KiB/s, 16, 0 by turns); over its steps'
    time it stays near 300. A steady rate reads exact, and a doubled one
    shows within two refreshes."""
    from peercrypt.cli.top import RateMeter

    cap = 300 * 1024
    meter = RateMeter(0.0, 0)
    rates = []
    for second in range(1, 61):
        meter.update(float(second), int(second * cap // MiB) * MiB)  # whole chunks so far
        rates.append(meter.rate or 0.0)
    late = rates[20:]
    assert min(late) > 0.7 * cap and max(late) < 1.35 * cap, [round(r / 1024) for r in late]
    steady = RateMeter(0.0, 0)
    done = 0
    for second in range(1, 11):
        done += 100 * MiB
        steady.update(float(second), done)
    assert steady.rate == 100 * MiB
    for second in range(11, 13):
        done += 200 * MiB
        steady.update(float(second), done)
    assert steady.rate == 200 * MiB
    assert steady.eta(400 * MiB) == 2.0


def test_the_answer_to_a_key_goes_after_a_while() -> None:
    from peercrypt.cli.top import MESSAGE_SECONDS, View

    view = View()
    view.update(0.0, {}, [], [])
    view.say("not cancelled")
    view.update(1.0, {}, [], [])
    view.update(MESSAGE_SECONDS, {}, [], [])
    assert view.message == "not cancelled"  # shown at 1.0: not yet
    view.update(1.0 + MESSAGE_SECONDS, {}, [], [])
    assert view.message == ""
    view.say("not cancelled")  # the same answer again, later: shown anew
    view.update(30.0, {}, [], [])
    view.update(31.0, {}, [], [])
    assert view.message == "not cancelled"
    view.update(35.0, {}, [], [])
    view.say("not cancelled")  # and again within its time: its time starts again
    view.update(36.0, {}, [], [])
    view.update(44.0, {}, [], [])
    assert view.message == "not cancelled"
    view.update(46.0, {}, [], [])
    assert view.message == ""


def test_top_takes_cancels_answers_among_its_refreshes_replies(tmp_path: Path) -> None:
    """`top` does not wait for a cancel's answer (it froze up to 7 s on a
    send slow to end): the answers come among the next refresh's replies,
    each told (a crafted control socket answers two cancels, then status)."""
    from peercrypt.cli.top import NodeLink
    from peercrypt.testing.fake_control import FakeControl
    from peercrypt.wire.local_messages import StatusReply, StatusRequest

    fake = FakeControl(tmp_path / "data")
    link = NodeLink(tmp_path / "data")
    try:
        assert link.cancel(3) == "cancelling transfer 3 ..."
        assert link.cancel(4) == "cancelling transfer 4 ..."
        asked = [fake.next() for _ in range(2)]
        assert [(t, f["transfer"]) for _, t, f in asked] == [
            ("cancel-transfer", 3),
            ("cancel-transfer", 4),
        ]
        answered: list[object] = []
        thread = threading.Thread(
            target=lambda: answered.append(link.ask(StatusRequest(request=99))), daemon=True
        )
        thread.start()
        route, type_name, fields = fake.next()
        assert (type_name, fields["request"]) == ("status-request", 99)
        fake.answer(
            route, "cancel-answer", {"request": asked[1][2]["request"], "outcome": "cancelled"}
        )
        fake.answer(
            route,
            "cancel-answer",
            {"request": asked[0][2]["request"], "outcome": "ended", "code": "ok"},
        )
        fake.answer(route, "status-reply", {"request": 99, "node": {}, "counters": {}})
        thread.join(10)
        assert [type(r) for r in answered] == [StatusReply]
        assert link.said() == [
            "cancelled transfer 4",
            "transfer 3 had already ended (verified)",
        ]
        assert link.said() == []
    finally:
        link.close()
        fake.close()
