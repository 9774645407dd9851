"""What a user sees of a send and of the node: the progress of a send, phase
by phase (the core names what a transfer waits for; the CLI draws it on
stderr only on a terminal or with --progress, never with --json; real sends
show the phases they wait in, and a multicast send one line per receiver),
and the listings' tables and --json."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pexpect
import pytest

from peercrypt import errors
from peercrypt.cli import progress
from peercrypt.cli.follow import follow
from peercrypt.client import ControlClient
from peercrypt.core.modes import Policy
from peercrypt.core.outgoing import HashFile, OutgoingTransfer, SendChunk, SendDone
from peercrypt.crypto.identity import new_network_key
from peercrypt.testing.nodes import (
    NodeProcess,
    blake3_file,
    cli_env,
    dead_port,
    multicast_targets,
    random_file,
    start_cli,
    wait_until,
)
from peercrypt.wire.codec import Message
from peercrypt.wire.local_messages import SendRequest, SendResult
from peercrypt.wire.messages import McTargetProgress, Progress

CHUNK = 4096
MiB = 1024 * 1024


def test_the_core_names_what_a_transfer_waits_for() -> None:
    flow = OutgoingTransfer(Policy(), size=3 * CHUNK, chunk_size=CHUNK, timeout=5.0, now=0.0)
    assert flow.waiting_for == "offering"
    flow.on_accept([(0, 2)], 16, 0.1)  # a resume: the receiver holds chunks 0 and 1
    assert flow.waiting_for == "sending"
    # Every chunk sent: the hash is asked for now (for a Done with the last chunk).
    assert [type(o) for o in flow.poll(0.1)] == [SendChunk, HashFile]
    flow.on_ack(3, [], 16, 0.2)
    # Every chunk written; the sender still reads back what was held, for the hash.
    assert flow.poll(0.2) == []
    assert flow.waiting_for == "hashing"
    flow.on_digest(b"d" * 32, 0.3)
    assert [type(o) for o in flow.poll(0.3)] == [SendDone]
    assert flow.waiting_for == "verifying"
    flow.on_verified(b"d" * 32, "name")
    assert flow.waiting_for == "ended"


def _drawn(monkeypatch: pytest.MonkeyPatch, *messages: Progress | McTargetProgress) -> str:
    """What a view draws for ``messages``, as text without terminal controls."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    view = progress.ProgressView("file.bin", 4 * MiB)
    try:
        for msg in messages:
            if isinstance(msg, Progress):
                view.on_progress(msg)
            else:
                view.on_target(msg)
        progress.echo("a line above the bars")
    finally:
        view.close()
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", err.getvalue())


def test_the_view_names_each_phase_and_its_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    def at(phase: str, done: int) -> Progress:
        return Progress(request=1, done_bytes=done, total_bytes=4 * MiB, phase=phase)

    text = _drawn(
        monkeypatch,
        at("checking", 0),
        at("offering", 0),
        at("sending", 2 * MiB),
        at("hashing", 3 * MiB),
        at("verifying", 0),
        at("verifying", 3 * MiB),
        Progress(request=1, done_bytes=MiB, total_bytes=8 * MiB, done_files=3, total_files=5),
    )
    for expected in (
        "checking the peer 0 s",
        "waiting for the receiver 0 s",
        "2.00M/4.00M",
        "3.00M/4.00M",
        "hashing what the receiver held",
        "1.00M/8.00M",
        "3/5 files",
        "a line above the bars\n",
    ):
        assert expected in text, (expected, text)
    # The receiver's final check: its bytes and rate, not seconds waited.
    assert re.search(r"75%.*3\.00M/4\.00M \[[^]]*B/s, receiver verifying\]", text), text
    assert "receiver verifying 0 s" not in text
    # Rates in binary units, labelled so (tqdm divides by 1024 either way).
    assert "iB/s" in text and not re.search(r"\d[kMGT]B/s", text), text

    def target(name: str, state: str, done: int) -> McTargetProgress:
        return McTargetProgress(
            request=1, target=name, state=state, done_bytes=done, total_bytes=4 * MiB
        )

    receivers = _drawn(monkeypatch, target("a:1", "multicast", MiB), target("b:2", "unicast", 0))
    assert re.search(r"a:1: +25%.*1.00M/4.00M.*multicast", receivers), receivers
    assert re.search(r"b:2: +0%.*0.00/4.00M.*unicast", receivers), receivers


def test_a_resumed_phase_counts_its_rate_from_what_was_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A send that goes on after a retry, the receiver holding 34% of it:
    its bar goes from 40% to 34% without showing 0% on the way, and its
    rate counts only what moves from there (a resume showed 34 MiB/s
    under a 20 MiB/s cap)."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    view = progress.ProgressView("file.bin", 100 * MiB)

    def at(phase: str, done: int) -> None:
        view.on_progress(
            Progress(request=1, done_bytes=done * MiB, total_bytes=100 * MiB, phase=phase)
        )

    try:
        at("sending", 40)
        mark = len(err.getvalue())
        at("retrying", 40)
        at("offering", 40)
        at("sending", 34)
        assert (view.bar.initial, view.bar.n) == (34 * MiB, 34 * MiB)
        at("sending", 35)
        assert view.bar.format_dict["initial"] == 34 * MiB  # the rate's start
    finally:
        view.close()
    after = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", err.getvalue()[mark:])
    assert "34%" in after and not re.search(r"(?<!\d)0%", after), after


def test_a_view_interrupted_as_it_is_made_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C as the bars are made leaves no view open (a shell that goes
    on would keep the terminal's echo off and draw above a dead bar)."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())

    class CtrlCAsTheBarIsMade(progress.ProgressView):
        def _new_bar(self, desc: str, total: int | None, position: int, initial: int = 0) -> Any:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        CtrlCAsTheBarIsMade("file.bin", MiB)
    assert progress._open_views == []


def test_progress_is_wanted_on_a_terminal_or_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert not progress.wanted(as_json=False, no_progress=False, progress=False)
    assert progress.wanted(as_json=False, no_progress=False, progress=True)
    assert not progress.wanted(as_json=True, no_progress=False, progress=True)
    assert not progress.wanted(as_json=False, no_progress=True, progress=True)


# -- real sends ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    base, key = tmp_path_factory.mktemp("progress"), new_network_key()
    nodes = [NodeProcess(base / n, network_key=key).start() for n in ("s", "r1", "r2")]
    try:
        yield nodes
    finally:
        codes = [n.stop() for n in nodes]
    assert codes == [0, 0, 0]


class Stderr:
    """A running CLI's stderr, collected by a thread, searched with deadlines."""

    def __init__(self, proc: object) -> None:
        self.text = ""
        stream = proc.stderr  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: io.TextIOBase) -> None:
        while chunk := stream.read(1):
            self.text += chunk

    def finish(self, timeout: float = 30.0) -> str:
        """Everything the command wrote to stderr (it has exited: EOF)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "stderr still open after the command exited"
        return self.text

    def wait_for(self, text: str) -> None:
        wait_until(lambda: text in self.text, 30.0, f"{text!r} on stderr")


def _request(client: ControlClient, source: Path, receiver: NodeProcess, **extra: object) -> int:
    """Hand the node a send of ``source`` to ``receiver``; its request id."""
    request = client.next_id()
    client.send(
        SendRequest(
            request=request, path=str(source), host=receiver.host, port=receiver.port,
            chunk_size=65536, timeout=30.0, **extra,  # type: ignore[arg-type]
        )
    )  # fmt: skip
    return request


def _verified(result: SendResult, source: Path, receiver: NodeProcess) -> None:
    assert result.code == "ok" and result.digest == blake3.blake3(source.read_bytes()).digest()
    assert blake3_file(receiver.inbox / result.stored_as) == blake3_file(source)


def test_a_send_that_ends_verified_before_its_cancel_is_a_success(
    trio: list[NodeProcess], tmp_path: Path
) -> None:
    """Ctrl-C as the send ends: its verified result, already on its way,
    is what the command reports (it said "cancelled", exit 130, of a file
    stored and verified). The Ctrl-C comes from the view (raised as the
    terminal would, while the view draws), once the node counted the send."""
    sender, receiver, _ = trio
    source = random_file(tmp_path / "late-cancel.bin", 64 * 1024)
    before = sender.counters().get("sender.sent", 0)

    class CtrlCAfterTheEnd(progress.ProgressView):
        pressed = False

        def on_progress(self, msg: Progress) -> None:
            if not self.pressed:  # once: the progress still queued then draws as ever
                self.pressed = True
                sender.wait_for_counter("sender.sent", before + 1, timeout=30)
                raise KeyboardInterrupt
            super().on_progress(msg)

    with ControlClient.for_data_dir(sender.data_dir) as client:
        request = _request(client, source, receiver, quiet=False)
        view = CtrlCAfterTheEnd(source.name, source.stat().st_size)
        result = follow(client, request, source, SendResult, 30.0, view=view)
    _verified(result, source, receiver)


def test_a_send_that_fails_before_its_cancel_reports_its_failure(
    trio: list[NodeProcess], tmp_path: Path
) -> None:
    """Ctrl-C as the send fails on its own (nothing listens at the port):
    its failure, already on its way, is what the command reports (it said
    "interrupted; the transfer was cancelled", exit 130). The Ctrl-C comes
    from the view once the node counted the failure."""
    sender, _, _ = trio
    source = random_file(tmp_path / "late-failure.bin", 64 * 1024)
    counter = "sender.failed-unreachable"
    before = sender.counters().get(counter, 0)

    class CtrlCAfterTheFailure(progress.ProgressView):
        pressed = False

        def on_progress(self, msg: Progress) -> None:
            if not self.pressed:  # once: the progress still queued then draws as ever
                self.pressed = True
                sender.wait_for_counter(counter, before + 1, timeout=30)
                raise KeyboardInterrupt
            super().on_progress(msg)

    with ControlClient.for_data_dir(sender.data_dir) as client, dead_port() as port:
        request = client.next_id()
        client.send(
            SendRequest(
                request=request, path=str(source), host=sender.host, port=port,
                chunk_size=65536, timeout=30.0,
            )
        )  # fmt: skip
        view = CtrlCAfterTheFailure(source.name, source.stat().st_size)
        result = follow(client, request, source, SendResult, 30.0, view=view)
    assert (result.code, result.reason) == (
        "unreachable",
        f"cannot connect to {sender.host}:{port}: connection refused: nothing listens "
        "on that port; `send --force` tries anyway",
    )


def test_a_verdict_read_as_ctrl_c_comes_is_what_the_send_reports(
    trio: list[NodeProcess], tmp_path: Path
) -> None:
    """Ctrl-C just as the receiver's verdict has been read off the control
    socket, before the command handled it: the send reports it verified.
    Raised there, the interrupt lost the verdict (the node sends it once):
    the command cancelled a send already ended, waited 5 s for a result
    that had come, and said "interrupted; the transfer was cancelled",
    exit 130, of a file stored and verified. The signal is sent here by the
    client that read the verdict, so it comes at that very point."""
    sender, receiver, _ = trio
    source = random_file(tmp_path / "verdict-read.bin", 64 * 1024)

    class CtrlCAsTheVerdictIsRead(ControlClient):
        def receive(self, timeout: float) -> Message:
            msg = super().receive(timeout)
            if isinstance(msg, SendResult):
                os.kill(os.getpid(), signal.SIGINT)  # handled here (os.kill checks at once)
            return msg

    with CtrlCAsTheVerdictIsRead.for_data_dir(sender.data_dir) as client:
        request = _request(client, source, receiver, quiet=True)
        result = follow(client, request, source, SendResult, 30.0)
    _verified(result, source, receiver)


def test_ctrl_c_while_waiting_cancels_and_a_node_that_does_not_answer_is_said(
    trio: list[NodeProcess], tmp_path: Path
) -> None:
    """Ctrl-C while the command waits for the node cancels at once (it is
    held only while a reply is read); where the node answers the cancel
    with nothing (here: stopped), the line says what is known, not
    "cancelled"; a second Ctrl-C stops waiting for the answer and says so."""
    sender, receiver, _ = trio
    source = random_file(tmp_path / "unanswered.bin", 8 * MiB)
    main = threading.main_thread().ident
    assert main is not None

    following = threading.Event()  # (a timer late past follow's end must not hit pytest)

    def ctrl_c() -> None:  # to the main thread: its wait is interrupted, as at a terminal
        if following.is_set():
            signal.pthread_kill(main, signal.SIGINT)

    def follow_until(stop_node: bool, second: bool) -> errors.CommandError:
        class Interrupting(progress.ProgressView):
            timers: list[threading.Timer] = []

            def on_progress(self, msg: Progress) -> None:
                super().on_progress(msg)
                if msg.phase == "sending" and not self.timers:
                    if stop_node:
                        os.kill(sender.pid, signal.SIGSTOP)
                    self.timers += [threading.Timer(0.2, ctrl_c)]
                    if second:
                        self.timers += [threading.Timer(1.5, ctrl_c)]
                    for timer in self.timers:
                        timer.start()

        with ControlClient.for_data_dir(sender.data_dir) as client:
            request = _request(
                client, source, receiver, quiet=False, mode="token-bucket", rate=MiB, burst=65536
            )
            view = Interrupting(source.name, source.stat().st_size)
            following.set()
            try:
                follow(client, request, source, SendResult, 30.0, view=view)
            except errors.CommandError as exc:
                return exc
            finally:
                following.clear()
                for timer in view.timers:
                    timer.join(10)
                if stop_node:
                    os.kill(sender.pid, signal.SIGCONT)
        raise AssertionError("the send was not interrupted")

    started = time.monotonic()
    cancelled = follow_until(stop_node=False, second=False)
    assert time.monotonic() - started < 10  # (8 s at the rate)
    assert (str(cancelled), cancelled.exit_code) == (
        "interrupted; the transfer was cancelled (the receiver keeps what arrived: "
        "sending it again resumes)",
        130,
    )
    unanswered = follow_until(stop_node=True, second=False)
    assert (str(unanswered), unanswered.exit_code) == (
        "interrupted; the transfer was told to cancel, but the node did not answer within "
        "5 s (`peercrypt transfers` shows whether it still runs)",
        130,
    )
    not_waited = follow_until(stop_node=True, second=True)
    assert (str(not_waited), not_waited.exit_code) == (
        "interrupted; the transfer was told to cancel (its answer not waited for: "
        "`peercrypt transfers` shows whether it still runs)",
        130,
    )
    wait_until(lambda: sender.cli("transfers").stdout == "no transfers running\n", 30, "the end")


def _cancelled_and_gone(sender: NodeProcess, receiver: NodeProcess, source: Path) -> None:
    """The node ended the send (nothing runs) and no byte of it is under its name."""
    wait_until(lambda: sender.cli("transfers").stdout == "no transfers running\n", 30, "its end")
    assert not (receiver.inbox / source.name).exists()


CANCELLED = re.compile(
    r"interrupted; the transfer was cancelled"
    r"( \(the receiver keeps what arrived: sending it again resumes\))?"
)


def _fast_send_paced(sender: NodeProcess, receiver: NodeProcess, source: Path) -> int | None:
    """``peercrypt send SOURCE`` through send's fast path, here, the node
    capped at 1 MiB/s meanwhile (an 8 MiB file: cancelled long before)."""
    from peercrypt.cli import fast

    line = [str(source), receiver.host, str(receiver.port), "--no-progress"]
    assert sender.cli("max-rate", "1M").returncode == 0
    try:
        return fast.run(["--data-dir", str(sender.data_dir), "send", *line])
    finally:
        assert sender.cli("max-rate", "0").returncode == 0


@pytest.mark.parametrize(
    "when", ["the request goes", "the first reply is read", "the bars are made"]
)
def test_ctrl_c_as_the_fast_path_takes_its_first_reply_cancels_the_send(
    trio: list[NodeProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    when: str,
) -> None:
    """``send``'s fast path (a node running): a Ctrl-C as the request goes
    to the node, as the node's first reply is read (held, then raised once
    follow takes over), or after it, as the bars are made (tqdm's import),
    cancels the send in the node and says so. The first and the last came
    outside any handler (the request went before them; the bars were made
    between the first reply's and follow's): the command said
    "interrupted" (exit 130) and the node went on sending for no one."""
    sender, receiver, _ = trio
    source = random_file(tmp_path / "fast-ctrl-c.bin", 8 * MiB)
    made, receive, send = progress.progress_view, ControlClient.receive, ControlClient.send
    read: list[Message] = []

    def ctrl_c_as_made(paths: list[Path], show: bool) -> progress.ProgressView | None:
        os.kill(os.getpid(), signal.SIGINT)  # (handled before os.kill returns)
        return made(paths, show)

    def ctrl_c_as_read(client: ControlClient, timeout: float) -> Message:
        msg = receive(client, timeout)
        if not read:
            read.append(msg)
            os.kill(os.getpid(), signal.SIGINT)
        return msg

    def ctrl_c_as_sent(client: ControlClient, msg: Message) -> None:
        send(client, msg)
        if isinstance(msg, SendRequest):
            os.kill(os.getpid(), signal.SIGINT)

    if when == "the bars are made":
        monkeypatch.setattr(progress, "progress_view", ctrl_c_as_made)
    elif when == "the request goes":
        monkeypatch.setattr(ControlClient, "send", ctrl_c_as_sent)
    else:
        monkeypatch.setattr(ControlClient, "receive", ctrl_c_as_read)
    code = _fast_send_paced(sender, receiver, source)
    err = capsys.readouterr().err
    assert code == 130 and re.fullmatch(f"peercrypt: error: {CANCELLED.pattern}\n", err), err
    _cancelled_and_gone(sender, receiver, source)


def test_a_second_ctrl_c_as_the_fast_path_cancels_does_not_stop_the_cancel(
    trio: list[NodeProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``send``'s fast path: a Ctrl-C while it waits for the node's first
    reply, a second just as it tells the node to cancel: the cancel goes
    (it went after the handlers were put back, and the second stopped it:
    "interrupted", the node sending on)."""
    sender, receiver, _ = trio
    source = random_file(tmp_path / "fast-second.bin", 8 * MiB)
    receive, send = ControlClient.receive, ControlClient.send

    def ctrl_c_while_waiting(client: ControlClient, timeout: float) -> Message:
        client.sock.waiting = True  # (as in its poll: raised at once)
        try:
            os.kill(os.getpid(), signal.SIGINT)
        finally:
            client.sock.waiting = False
        return receive(client, timeout)

    def ctrl_c_as_the_cancel_goes(client: ControlClient, msg: Message) -> None:
        if type(msg).__name__ == "CancelRequest":
            os.kill(os.getpid(), signal.SIGINT)
        send(client, msg)

    monkeypatch.setattr(ControlClient, "receive", ctrl_c_while_waiting)
    monkeypatch.setattr(ControlClient, "send", ctrl_c_as_the_cancel_goes)
    code = _fast_send_paced(sender, receiver, source)
    err = capsys.readouterr().err
    # (the second, held until the cancel went, then ends the wait for its answer)
    assert (code, err) == (
        130,
        "peercrypt: error: interrupted; the transfer was told to cancel (its answer not "
        "waited for: `peercrypt transfers` shows whether it still runs)\n",
    )
    _cancelled_and_gone(sender, receiver, source)


def _stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (a SIGSTOP is delivered to
    each as it next runs: one on the other core may still take a message)."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            stat = (task / "stat").read_text()
            states.append(stat[stat.rindex(")") + 2])
    return bool(states) and all(state in "tT" for state in states)


@pytest.mark.parametrize(
    "ended", ["cancelled", "verified", "failed", "unanswered", "terminated", "multicast-default"]
)
def test_ctrl_c_as_the_fast_path_waits_for_its_first_reply_says_how_the_send_ended(
    trio: list[NodeProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    ended: str,
) -> None:
    """``send``'s fast path: a Ctrl-C while it waits for the node's first
    reply cancels the send and waits (5 s at most) for the node's answer,
    which says what happened: cancelled (exit 130); a send that had ended
    on its own meanwhile is reported as it ended (verified: exit 0; failed:
    its failure and exit code); a node that does not answer is said so
    (exit 130). It said "the transfer was cancelled" without waiting, of a
    file verified too. The Ctrl-C is raised as the terminal's would be
    while the socket waits, once the send has ended (or the node was
    stopped) where the case asks for it. A SIGTERM there, the send verified
    meanwhile, ends the command as a SIGTERM (143, saying how the send
    ended: it said the send's exit 0); a Ctrl-C as the node answers that its
    default mode is multicast is the end: nothing was sent (the command went
    on to send by multicast)."""
    from peercrypt.cli import fast

    sender, receiver, _ = trio
    source = random_file(tmp_path / f"fast-{ended}.bin", (8 if ended == "cancelled" else 1) * MiB)
    receive = ControlClient.receive
    before = sender.counters()
    pressed: list[bool] = []

    def ctrl_c_while_waiting(client: ControlClient, timeout: float) -> Message:
        if not pressed:  # the first reply's wait (those after: the cancel's answer)
            pressed.append(True)
            if ended in ("verified", "terminated"):
                sender.wait_for_counter("sender.sent", before.get("sender.sent", 0) + 1, 30)
            elif ended == "failed":
                failed = "sender.failed-unreachable"
                sender.wait_for_counter(failed, before.get(failed, 0) + 1, 30)
            elif ended == "unanswered":
                os.kill(sender.pid, signal.SIGSTOP)
                wait_until(lambda: _stopped(sender.pid), 10, "the node stopped")  # (all threads)
            elif ended == "multicast-default":  # its answer on its way (the counter, after)
                told = "scheduler.refused-multicast-default"
                sender.wait_for_counter(told, before.get(told, 0) + 1, 30)
            client.sock.waiting = True  # (as in its poll: raised at once)
            try:
                os.kill(os.getpid(), signal.SIGTERM if ended == "terminated" else signal.SIGINT)
            finally:
                client.sock.waiting = False
        return receive(client, timeout)

    monkeypatch.setattr(ControlClient, "receive", ctrl_c_while_waiting)
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(dead_port()) if ended == "failed" else receiver.port
        if ended == "cancelled":
            assert sender.cli("max-rate", "1M").returncode == 0  # 8 s: cancelled long before
            stack.callback(lambda: sender.cli("max-rate", "0"))
        if ended == "unanswered":
            stack.callback(os.kill, sender.pid, signal.SIGCONT)
        if ended == "multicast-default":
            assert sender.cli("set-mode", "multicast").returncode == 0
            stack.callback(lambda: sender.cli("set-mode", "normal"))
        line = [str(source), receiver.host, str(port), "--json"]
        code = fast.run(["--data-dir", str(sender.data_dir), "send", *line])
    out, err = capsys.readouterr()
    if ended == "terminated":
        assert (code, out) == (143, ""), (out, err)
        assert err == "peercrypt: error: SIGTERM: it came as the transfer ended (verified)\n"
        assert blake3_file(receiver.inbox / source.name) == blake3_file(source)
        return
    if ended == "multicast-default":
        assert (code, out) == (130, ""), (out, err)
        assert err == "peercrypt: error: interrupted; nothing was sent\n", err
        assert not (receiver.inbox / source.name).exists()
        return
    if ended in ("cancelled", "unanswered"):
        if ended == "cancelled":
            assert re.fullmatch(f"peercrypt: error: {CANCELLED.pattern}\n", err), err
        else:
            assert err == (
                "peercrypt: error: interrupted; the transfer was told to cancel, but the node "
                "did not answer within 5 s (`peercrypt transfers` shows whether it still runs)\n"
            )
        assert (code, out) == (130, "")
        _cancelled_and_gone(sender, receiver, source)
        return
    result = json.loads(out)
    if ended == "verified":
        assert (code, err, result["code"]) == (0, "", "ok"), (out, err)
        assert result["blake3"] == blake3_file(source)
        assert blake3_file(receiver.inbox / result["stored_as"]) == blake3_file(source)
    else:
        assert (code, err, result["code"]) == (errors.UNREACHABLE, "", "unreachable"), (out, err)
        assert result["error"] == (
            f"cannot connect to {receiver.host}:{port}: connection refused: nothing listens "
            "on that port; `send --force` tries anyway"
        ), result


def test_a_followed_send_is_asked_under_the_handlers(
    trio: list[NodeProcess], tmp_path: Path
) -> None:
    """``follow`` sends the request itself once its handlers are in: a
    Ctrl-C before the request went leaves nothing to cancel (and says so,
    not waiting 5 s for a cancel's answer); one as the bars are made
    cancels the send sent (the click ``send`` made its bars, and sent its
    request, before the handlers were in: a Ctrl-C there left the node
    sending, a SIGTERM killed the command without a cancel)."""
    from peercrypt.cli.follow import ending_signals_cancel

    sender, receiver, _ = trio
    source = random_file(tmp_path / "asked.bin", 8 * MiB)

    def ask(client: ControlClient) -> SendRequest:
        return SendRequest(
            request=client.next_id(), path=str(source), host=receiver.host,
            port=receiver.port, chunk_size=65536, timeout=30.0, quiet=True,
        )  # fmt: skip

    with ControlClient.for_data_dir(sender.data_dir) as client:
        before = ask(client)
        with ending_signals_cancel(client) as interrupts:
            interrupts.held = KeyboardInterrupt()  # (as a caller holding one hands over)
            with pytest.raises(errors.CommandError) as unsent:
                follow(client, before.request, source, SendResult, 30.0, ask=before,
                       interrupts=interrupts)  # fmt: skip
        assert (str(unsent.value), unsent.value.exit_code) == (
            "interrupted; nothing was sent",
            130,
        )
        assert sender.cli("transfers").stdout == "no transfers running\n"

        def ctrl_c_as_made() -> None:
            os.kill(os.getpid(), signal.SIGINT)

        assert sender.cli("max-rate", "1M").returncode == 0  # 8 s: cancelled long before
        try:
            sent = ask(client)
            with pytest.raises(errors.CommandError) as cancelled:
                follow(client, sent.request, source, SendResult, 30.0, ask=sent,
                       view=ctrl_c_as_made)  # fmt: skip
        finally:
            assert sender.cli("max-rate", "0").returncode == 0
    assert CANCELLED.fullmatch(str(cancelled.value)) and cancelled.value.exit_code == 130
    _cancelled_and_gone(sender, receiver, source)


def test_a_second_ctrl_c_as_the_cancel_goes_does_not_stop_it(
    trio: list[NodeProcess], tmp_path: Path
) -> None:
    """Ctrl-C, then Ctrl-C again just as the command tells the node to
    cancel: the cancel goes all the same (held as it is sent, then the
    second ends the wait for its answer). Raised there, it stopped the
    cancel: the command said the transfer was told to cancel and the node
    sent on."""
    sender, receiver, _ = trio
    source = random_file(tmp_path / "second.bin", 8 * MiB)

    class CtrlCAsTheCancelGoes(ControlClient):
        def send(self, msg: Message) -> None:
            if type(msg).__name__ == "CancelRequest":
                os.kill(os.getpid(), signal.SIGINT)  # the second
            super().send(msg)

    def ctrl_c() -> None:  # the first, as the bars are made
        os.kill(os.getpid(), signal.SIGINT)

    assert sender.cli("max-rate", "1M").returncode == 0  # 8 s: cancelled long before
    try:
        with CtrlCAsTheCancelGoes.for_data_dir(sender.data_dir) as client:
            ask = SendRequest(
                request=client.next_id(), path=str(source), host=receiver.host,
                port=receiver.port, chunk_size=65536, timeout=30.0, quiet=True,
            )  # fmt: skip
            with pytest.raises(errors.CommandError) as ended:
                follow(client, ask.request, source, SendResult, 30.0, ask=ask, view=ctrl_c)
    finally:
        assert sender.cli("max-rate", "0").returncode == 0
    assert (str(ended.value), ended.value.exit_code) == (
        "interrupted; the transfer was told to cancel (its answer not waited for: "
        "`peercrypt transfers` shows whether it still runs)",
        130,
    )
    _cancelled_and_gone(sender, receiver, source)


def test_a_send_shows_the_phases_it_waits_in(trio: list[NodeProcess], tmp_path: Path) -> None:
    sender, receiver, _ = trio
    source = random_file(tmp_path / "phases.bin", 4 * MiB)
    os.kill(receiver.pid, signal.SIGSTOP)  # it answers nothing: each wait shows
    resumed = False
    try:
        args = ["send", source, receiver.host, str(receiver.port), "--timeout", "3", "--progress"]
        cli = start_cli(*args, "-r", str(4 * MiB), data_dir=sender.data_dir, env=sender.env)
        try:
            err = Stderr(cli)
            err.wait_for("checking the peer")
            err.wait_for("waiting for the receiver")
            os.kill(receiver.pid, signal.SIGCONT)
            resumed = True
            cli.wait(timeout=60)  # its few lines of stdout fit the pipe
            err.finish()  # stderr is the reader thread's alone (not communicate's)
            assert cli.stdout is not None
            out = cli.stdout.read()
        finally:
            cli.kill()
    finally:
        if not resumed:
            os.kill(receiver.pid, signal.SIGCONT)
    assert cli.returncode == 0, (out, err.text)
    assert re.search(r"phases\.bin: +\d+%.*/4\.00M", err.text), err.text
    assert "verified" in out and "error" not in err.text
    (stored,) = receiver.inbox.glob("phases*.bin")
    assert blake3_file(stored) == blake3_file(source)


def test_a_terminal_gets_a_bar_and_json_gets_none(trio: list[NodeProcess], tmp_path: Path) -> None:
    sender, receiver, _ = trio
    source = random_file(tmp_path / "on a tty.bin", 2 * MiB)

    def on_tty(*extra: str, size: tuple[int, int] = (24, 160)) -> str:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "peercrypt", "--data-dir", str(sender.data_dir), "send", str(source),
             receiver.host, str(receiver.port), "-r", str(2 * MiB), *extra],
            env=cli_env(sender.env), encoding="utf-8", timeout=60, dimensions=size,
        )  # fmt: skip
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0, child.before
        return str(child.before)

    drawn = on_tty()
    assert re.search(r"on a tty\.bin: +\d+%.*/2\.00M", drawn), drawn
    # A terminal that says it is 0 x 0 (a serial console, some containers'):
    # a bar of 80 columns, not none.
    (receiver.inbox / source.name).unlink()  # (else the receiver has it: no bar)
    drawn = on_tty(size=(0, 0))
    assert re.search(r"on a tty\.bin: +\d+%.*/2\.00M", drawn), drawn
    quiet = on_tty("--json")
    assert quiet.strip().startswith("{") and "%" not in quiet and "\r" not in quiet.strip(), quiet


def test_multicast_shows_each_receiver(trio: list[NodeProcess], tmp_path: Path) -> None:
    sender, r1, r2 = trio
    source = random_file(tmp_path / "many.bin", 8 * MiB)
    assert sender.cli("max-rate", str(8 * MiB)).returncode == 0  # a second: progress reports
    try:
        result = sender.cli(
            "send", source, r1.host, str(r1.port), "-m", *multicast_targets(r2), "--progress"
        )
    finally:
        assert sender.cli("max-rate", "0").returncode == 0
    assert result.returncode == 0, result.describe()
    for r in (r1, r2):
        line = re.escape(f"{r.host}:{r.port}")
        assert re.search(line + r": +\d+%.*/8\.00M", result.stderr), result.stderr
        assert f"{r.host}:{r.port}: verified, stored as" in result.stderr


def test_ctrl_c_on_a_multicast_send_leaves_no_echo_beside_its_bars(
    trio: list[NodeProcess], tmp_path: Path
) -> None:
    """Ctrl-C in a terminal while a multicast send draws its bars: the
    terminal echoes no "^C" (its "^" stayed at the end of the session's
    bar, which the "C" wrapped below and which was then never cleared),
    the bars are cleared and the one line says it was interrupted; the
    terminal echoes control characters again once the command ended."""
    sender, r1, r2 = trio
    source = random_file(tmp_path / "interrupted.bin", 32 * MiB)
    assert sender.cli("max-rate", str(MiB)).returncode == 0  # half a minute: interrupted
    try:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "peercrypt", "--data-dir", str(sender.data_dir), "send", str(source),
             r1.host, str(r1.port), "-m", *multicast_targets(r2)],
            env=cli_env(sender.env), encoding="utf-8", timeout=30, dimensions=(24, 100),
        )  # fmt: skip
        try:
            assert termios.tcgetattr(child.child_fd)[3] & termios.ECHOCTL  # (as by default)
            child.expect(r"interrupted\.bin: +\d+%.*multicast\]")  # every bar drawn
            child.sendintr()
            child.expect(pexpect.EOF)
            shown = str(child.before)
            echoes = termios.tcgetattr(child.child_fd)[3] & termios.ECHOCTL
        finally:
            child.close(force=True)
    finally:
        assert sender.cli("max-rate", "0").returncode == 0
    assert child.exitstatus == 130, shown
    assert "^C" not in shown, repr(shown[-400:])
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", shown)
    last = text.replace("\r\n", "\n").split("\n")[-2]  # (the output ends with a newline)
    assert last.split("\r")[-1] == "peercrypt: error: interrupted; the transfer was cancelled"
    assert echoes, "the terminal was left not echoing control characters"


def test_listings_print_tables_and_json(trio: list[NodeProcess], tmp_path: Path) -> None:
    sender, receiver, _ = trio
    source = random_file(tmp_path / "listed.bin", 64 * MiB)  # a minute: cancelled when seen
    args = ["send", source, receiver.host, str(receiver.port), "-r", str(MiB), "--json"]
    cli = start_cli(*args, data_dir=sender.data_dir, env=sender.env)
    try:

        def sending() -> list[str] | None:
            lines = sender.cli("transfers").stdout.splitlines()
            return lines if any(" sending " in line for line in lines) else None

        header, line = wait_until(sending, 30.0, "the send listed as sending")[:2]
        assert header.split() == ["ID", "STATE", "MODE", "BYTES", "DONE", "TIME", "PEER", "FILE"]
        assert line.split()[1:3] == ["sending", "token-bucket"] and line.endswith(str(source))
        rows = json.loads(sender.cli("transfers", "--json").stdout)
        assert [(r["id"], r["file"], r["size"]) for r in rows] == [
            (int(line.split()[0]), str(source), 64 * MiB)
        ]  # counts as JSON numbers
        assert sender.cli("cancel", line.split()[0]).returncode == 0
        out, _ = cli.communicate(timeout=60)
    finally:
        cli.kill()
    assert json.loads(out)["code"] == "cancelled", out

    aimd = json.loads(sender.cli("congestion", "--json").stdout)
    assert aimd["window_kb"] == 4096 and aimd["min_window_kb"] == 256 and aimd["dupack"] == "on"
    assert json.loads(sender.cli("gossip", "--json").stdout)["enabled"] is True
    alive = sender.cli("health-check", receiver.host, str(receiver.port), "--json")
    assert alive.returncode == 0, alive.describe()
    assert json.loads(alive.stdout)["fingerprint"] == receiver.fingerprint
    with dead_port() as port:
        gone = sender.cli("health-check", "127.0.0.1", str(port), "--json")
    assert gone.returncode == errors.UNREACHABLE, gone.describe()
    assert json.loads(gone.stdout)["ok"] is False and gone.stderr == ""
