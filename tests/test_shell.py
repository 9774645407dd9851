"""The interactive shell through a pseudo-terminal (pexpect), against real
nodes on loopback; and the shell fed from stdin by a script.

Every wait has a deadline (pexpect's timeout); content is checked by hash.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pexpect
import pytest

from peercrypt import errors
from peercrypt.cli import shell as shell_module
from peercrypt.cli.app import main as cli
from peercrypt.cli.receive import inbound
from peercrypt.cli.shell import PROMPT, Shell
from peercrypt.client import ControlClient
from peercrypt.testing.nodes import (
    NodeProcess,
    blake3_file,
    cli_env,
    run_cli,
    start_cli,
    wait_until,
)

WAIT = 60  # seconds any one expected output may take under load
PROMPT_RE = re.escape(PROMPT.rstrip())  # the terminal moves the cursor for the space


class Pty:
    """A ``peercrypt`` process on a pseudo-terminal."""

    def __init__(
        self,
        args: list[str],
        cwd: Path,
        stderr: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``stderr``: a file the process's stderr goes to (``2>FILE``), not
        the terminal."""
        argv = [sys.executable, "-m", "peercrypt", *args]
        if stderr is not None:
            argv = ["/bin/sh", "-c", 'exec "$@" 2>"$0"', str(stderr), *argv]
        self.child = pexpect.spawn(
            argv[0],
            argv[1:],
            cwd=str(cwd),
            env=cli_env({"PROMPT_TOOLKIT_NO_CPR": "1", **(env or {})}),
            encoding="utf-8",
            timeout=WAIT,
            dimensions=(40, 200),
        )

    def expect(self, pattern: str, timeout: float = WAIT) -> str:
        self.child.expect(pattern, timeout=timeout)
        return str(self.child.before) + str(self.child.after)

    def run(self, line: str, *patterns: str) -> str:
        """Type ``line``, wait for each pattern in turn, then for the prompt."""
        self.child.sendline(line)
        out = ""
        for pattern in patterns:
            out += self.expect(pattern)
        return out + self.expect(PROMPT_RE)

    def run_until(self, line: str, pattern: str) -> None:
        """Type ``line`` and wait for its prompt and for ``pattern``, which a
        background job may print before the prompt comes back or after."""
        if not re.search(pattern, self.run(line)):
            self.expect(pattern)

    def leave(self) -> int:
        """Ctrl-D at the prompt. Typed while a command still ends (a wait for
        the prompt can match the typed line's own echo), the terminal is not
        in the prompt's raw mode and the line discipline takes the Ctrl-D
        as an empty read nobody makes: it is lost. So it is typed again
        every few seconds until the shell ends (WAIT in all)."""
        deadline = time.monotonic() + WAIT
        while True:
            self.child.sendeof()
            try:
                self.child.expect(pexpect.EOF, timeout=min(5.0, deadline - time.monotonic()))
                break
            except pexpect.TIMEOUT:
                if time.monotonic() >= deadline:
                    raise
        self.child.close()
        return int(self.child.exitstatus or 0)


@pytest.fixture
def started(tmp_path: Path, network_key: str) -> Iterator[tuple[Pty, Path]]:
    """``peercrypt start`` (a node and its prompt) in tmp_path/shell."""
    data_dir = tmp_path / "shell"
    pty = Pty(
        ["--data-dir", str(data_dir), "start", "--host", "127.0.0.1", "--port", "0",
         "--network-key", network_key, "--gossip-interval", "0.5"],
        tmp_path,
    )  # fmt: skip
    try:
        pty.expect("listening on")
        pty.expect(PROMPT_RE)
        yield pty, data_dir
    finally:
        if pty.child.isalive():
            pty.child.terminate(force=True)


def _background_send(
    shell: Shell, line: str, capsys: pytest.CaptureFixture[str]
) -> tuple[str, str]:
    """Run the `send` ``line`` at ``shell``'s prompt: a job, waited for until
    it ended with exit 0; what it printed (stdout, stderr)."""
    assert shell.run_line(line) == errors.OK
    job = shell.jobs[0]
    assert job.thread is not None
    job.thread.join(WAIT)
    assert job.code == errors.OK
    out, err = capsys.readouterr()
    assert re.search(r"^\[1\] sending in the background", out, re.M), out
    return out, err


def _port(data_dir: Path) -> int:
    out = run_cli("status", "--json", data_dir=data_dir)
    return int(out.json["port"])


def _watching(
    node_factory: Callable[..., NodeProcess], monkeypatch: pytest.MonkeyPatch, every: float
) -> tuple[Shell, NodeProcess, NodeProcess, list[str], threading.Thread]:
    """A shell's watcher (not started) on a receiving node, looking at
    most every ``every`` s, what it says, and a node to send from."""
    monkeypatch.setattr(shell_module, "WATCH_EVERY", every)
    receiver = node_factory(name="receiver")
    sender = node_factory(name="sender")
    shell = Shell(cli, {"data_dir": receiver.data_dir}, owns_node=False)
    said: list[str] = []
    watcher = threading.Thread(target=shell.watch, args=(said.append,), daemon=True)
    return shell, receiver, sender, said, watcher


def test_the_watcher_tells_what_ends_after_a_receive_and_not_what_it_told(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shell's watcher (its thread, against a real node): a `receive`
    hands it the node's facts as it ends; the watcher does not tell again
    what `receive` told, and tells a transfer that ends after it even
    before its next look (it used to take that look as told, whatever it
    held). Its looks here are only those it is woken for."""
    shell, receiver, sender, said, watcher = _watching(node_factory, monkeypatch, 3600.0)

    def looked(n: int) -> None:
        wait_until(lambda: shell.looks >= n or None, 30, f"the watcher's look {n}")

    def outcome_after(seq: int) -> int:
        with ControlClient.for_data_dir(receiver.data_dir) as client:
            return wait_until(
                lambda: n if (n := inbound(client.status().node).seq) > seq else None,
                30,
                "the receiver's outcome",
            )

    watcher.start()
    try:
        looked(1)
        first, second, third, fourth = (make_file(n * 1024) for n in (10, 20, 30, 40))
        # A `receive` tells the first; the second ends before the watcher's
        # next look (it was busy): told then, the first not again.
        shell.watch_quiet.set()
        assert sender.send_to(first, receiver)[0] == 0
        seq = outcome_after(0)
        shell._told_until_now()  # as `receive` ends...
        shell.watch_quiet.clear()  # ...with no look meanwhile
        assert sender.send_to(second, receiver)[0] == 0
        seq = outcome_after(seq)
        shell.watch_wake.set()
        looked(2)
        assert len(said) == 1 and said[0].startswith(f"received {second.name} (20480 bytes)"), said
        # A `receive` that ends wakes the watcher, which says nothing of
        # what it told.
        shell.watch_quiet.set()
        assert sender.send_to(third, receiver)[0] == 0
        seq = outcome_after(seq)
        shell.receive_ended()
        looked(3)
        assert len(said) == 1, said
        # One `receive` ends and the next begins before the watcher looks:
        # it stays quiet (the next one tells it).
        shell.watch_quiet.set()
        shell._told_until_now()
        assert sender.send_to(fourth, receiver)[0] == 0
        outcome_after(seq)
        shell.watch_wake.set()
        looked(4)
        assert len(said) == 1, said
    finally:
        shell.stop.set()
        shell.watch_wake.set()
        watcher.join(10)
    assert not watcher.is_alive()


def _waiting_in_node(node: NodeProcess) -> bool | None:
    """Whether control holds a StatusWait of a client now (the watcher's
    is the only one these tests make)."""
    counters = node.counters()
    held = counters.get("control.status-waits-held", 0)
    return held - counters.get("control.status-waits-answered", 0) == 1 or None


def test_an_idle_node_s_watcher_waits_for_its_news_and_looks_when_it_comes(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The watcher does not poll a node that has nothing new: after a look
    it waits in the node's control (StatusWait) until a fact changes, a send
    is taken or moves, and looks then. (It looked every 0.5 s: 70 wake-ups
    a second of an idle `peercrypt start`, 1.2-3.9% of a core.)"""
    shell, receiver, sender, said, watcher = _watching(node_factory, monkeypatch, 0.05)
    monkeypatch.setattr(shell_module, "NEWS_WAIT", 3600.0)  # only news ends a wait here
    watcher.start()
    try:
        wait_until(lambda: shell.looks or None, 30, "the watcher's first look")
        wait_until(lambda: _waiting_in_node(receiver), 30, "the watcher's wait in the node")
        looks = shell.looks
        sent = make_file(64 * 1024)
        assert sender.send_to(sent, receiver)[0] == 0
        wait_until(
            lambda: any(line.startswith(f"received {sent.name}") for line in said) or None,
            30,
            "the watcher to tell the file that came",
        )
        assert shell.looks > looks
        wait_until(lambda: _waiting_in_node(receiver), 30, "the watcher's next wait in the node")
    finally:
        shell.stop.set()
        shell.watch_wake.set()
        watcher.join(60)
    assert not watcher.is_alive()


def test_the_shell_s_end_wakes_its_watcher_from_its_wait_in_the_node(
    node_factory: Callable[..., NodeProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher's wait for news is a read on its control connection: the
    shell's end wakes it at once, not when control's wait ends (30 s)."""
    shell, receiver, _, _, watcher = _watching(node_factory, monkeypatch, 0.05)
    monkeypatch.setattr(shell_module, "NEWS_WAIT", 3600.0)  # control holds it 60 s
    watcher.start()
    try:
        wait_until(lambda: _waiting_in_node(receiver), 30, "the watcher's wait in the node")
        shell.stop.set()
        shell.watch_wake.set()
        watcher.join(5)
        assert not watcher.is_alive(), "the shell's end did not wake the watcher"
    finally:
        shell.stop.set()
        shell.watch_wake.set()
        watcher.join(70)


def test_a_ctrl_c_as_a_background_send_is_announced_leaves_it_a_job(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C while the shell waits for the node to name a send it handed
    on: no signal reaches the send's thread, so the send goes on; it is a
    job, said so, and its end is told (its `[1] done` was never told, and
    the prompt said "interrupted" of a file then sent all the same)."""
    import dataclasses

    from peercrypt.cli import shell as shell_mod

    class Pressed(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            if not getattr(self, "pressed", False):
                self.pressed = True
                raise KeyboardInterrupt
            return super().wait(timeout)

    @dataclasses.dataclass
    class Job(shell_mod.Job):
        settled: threading.Event = dataclasses.field(default_factory=Pressed)

    monkeypatch.setattr(shell_mod, "Job", Job)
    sender, receiver = node_factory(), node_factory()
    path = make_file(256 * 1024, name="pressed.bin")
    shell = Shell(cli, {"data_dir": sender.data_dir}, owns_node=False)
    shell.interactive = True
    capsys.readouterr()
    out, err = _background_send(shell, f"send {path} {receiver.host} {receiver.port}", capsys)
    assert "Ctrl-C: the send goes on; `cancel %1` stops it" in err.splitlines(), err
    assert f"[1] done, exit 0: send {path} {receiver.host} {receiver.port}" in out, out
    assert blake3_file(receiver.inbox / path.name) == blake3_file(path)


def test_a_send_the_node_refuses_is_refused_at_the_prompt_not_announced_as_a_job(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The shell (its own code, against real nodes) backgrounds a send only
    once the node took it: one the node refuses (its default mode
    token-bucket and no -r; the same file already sending there) is one
    error line and the line's non-zero status, as the one-shot `send` has
    it, not `[1] sending in the background` and a job that ends at once.
    The refusal's advice names what works at the prompt too (it said
    `peercrypt cancel N`, no command there)."""
    sender = node_factory("--mode", "token-bucket", name="sender")
    receiver = node_factory(name="receiver")
    path = make_file(2 * 1024 * 1024, name="refused.bin")
    shell = Shell(cli, {"data_dir": sender.data_dir}, owns_node=False)
    shell.interactive = True  # as at a prompt: sends go to the background
    target = f"{receiver.host} {receiver.port}"
    capsys.readouterr()
    assert shell.run_line(f"send {path} {target}") == errors.USAGE
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"checking {receiver.host}:{receiver.port} ..."]
    assert err.splitlines() == [
        "peercrypt: error: the node's default mode is token-bucket, which needs a rate: "
        "give -r BYTES_PER_SEC (or --mode normal)"
    ]
    assert shell.jobs == []
    # With a rate it goes to the background; the same file again is refused.
    assert shell.run_line(f"send {path} {target} -r 256K") == errors.OK
    out, _ = capsys.readouterr()
    said = re.search(r"^\[1\] sending in the background as transfer (\d+) ", out, re.M)
    assert said, out
    ident = said.group(1)
    try:
        assert shell.run_line(f"send {path} {target} -r 256K") == errors.USAGE
        out, err = capsys.readouterr()
        assert out.splitlines() == [f"checking {receiver.host}:{receiver.port} ..."]
        assert err.splitlines() == [
            f"peercrypt: error: already sending {path} to {receiver.host}:{receiver.port} "
            f"(transfer {ident}): wait for it, or cancel transfer {ident} first"
        ]
        assert [job.number for job in shell.jobs] == [1]
    finally:
        shell.run_line("cancel %1")
        job = shell.jobs[0]
        assert job.thread is not None
        job.thread.join(WAIT)
    assert job.code == errors.FAILED  # cancelled
    assert not (receiver.inbox / path.name).exists()


def test_start_runs_every_command_of_the_shell(
    started: tuple[Pty, Path],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    pty, data_dir = started
    peer = node_factory()
    host, port = peer.host, str(peer.port)
    out = pty.run("help", "commands")
    for name in ("send", "receive", "congestion", "gossip", "quit", "jobs", "peers"):
        assert f"  {name} " in out, out
    assert "default mode normal" in out
    assert re.search(r"0\s+peers\s+known,\s+0\s+background\s+sends,", out), out
    pty.run("status", "node: running")
    pty.run("clear", re.escape("\x1b[2J"))  # (a habit of shells; Ctrl-L does it too)
    pty.run("clear x", re.escape("peercrypt: error: `clear` takes no argument"))
    pty.run("set-mode aimd", "default mode is now aimd")
    pty.run("set-mode multicast", "default mode is now multicast")
    pty.run("set-mode normal", "default mode is now normal")
    pty.run("congestion", r"congestion window \d+ min-window \d+ max-window \d+ threshold")
    pty.run("congestion window 32 max-window 64", "window 32 KB, min-window 32 KB, max-window 64")
    pty.run("gossip off", "gossip off")
    pty.run("gossip interval 2", "gossip on|gossip off")
    pty.run("gossip on", "gossip on, every 2 s")
    pty.run(f"join {host} {port}", "joined through")
    pty.run(f"health-check {host} {port}", "alive")
    pty.run(f"reconnect {host} {port}", "reconnected to")
    out = pty.run("list-peers", "ADDRESS")
    assert f"{host}:{port}" in out, out
    pty.run("peers --json", r"\[")
    pty.run("transfers", "no transfers running")
    pty.run("rate 0", re.escape("no send is running (`max-rate` caps the node's sends)"))
    pty.run("max-rate", "node rate cap: none")
    # A wrong command or option: one line saying what is valid; the shell goes on.
    out = pty.run("sned", r"peercrypt: error: no such command 'sned' \(did you mean 'send'\?\)")
    assert "commands: " in out and "Traceback" not in out
    pty.run("send --frobnicate", "peercrypt: error: no such option '--frobnicate'")
    pty.run("start", "not a shell command")
    # mreceive waits in the foreground for sessions, and says how to stop it.
    pty.child.sendline("mreceive")
    pty.expect(r"ready for multicast sessions \(repair port \d+; Ctrl-C stops waiting\)")
    pty.child.sendcontrol("c")
    pty.expect(PROMPT_RE)
    # A background send, paced so it lasts, while the prompt answers.
    source = make_file(3 * 1024 * 1024)
    pty.run("max-rate 1.5M", r"node rate cap is now 1\.5 MiB/s")
    pty.run("max-rate", r"node rate cap: 1\.5 MiB/s")
    # Multicast in the foreground (it may ask for more targets), with a line per receiver.
    few = make_file(1024 * 1024)
    pty.child.sendline(f"send {few} {host} {port} -m &")  # (its `&` is said to change nothing)
    pty.expect(re.escape("a multicast send runs in the foreground"))
    pty.expect("another target")
    pty.child.sendline("nonsense")  # a typo is said and asked again
    pty.expect(re.escape("invalid target 'nonsense': expected HOST:PORT (port 1-65535); try"))
    pty.expect("another target")
    pty.child.sendline("")
    pty.expect(re.escape(f"{host}:{port}") + r": +\d+%")
    pty.expect(re.escape(f"{host}:{port}: verified, stored as {few.name}"))
    pty.expect(PROMPT_RE)
    # A shell's habit, `&`: a send backgrounds anyway; another command says it cannot.
    pty.run("status &", r"peercrypt: error: `status` runs in the foreground \(no `&`\)")
    pty.run(f"send {source} {host} {port} &", f"checking {host}:{port}", r"\[1\] sending in the")
    out = pty.run("transfers", "ID +STATE")
    assert source.name in out, out
    pty.run("jobs", r"\[1\] running")
    pty.run("help", r"1\s+peer\s+known,\s+1\s+background\s+send,")  # (it said "1 peers")
    pty.run(
        "jobs --json",
        r'\[\{"id": 1, "state": "running", "exit": null, "transfer": \d+, "line": "send [^"]* '
        + port
        + '"',
    )  # the line as typed, without its `&`
    pty.expect(r"\[1\] done, exit 0")
    stored = [p for p in peer.inbox.iterdir() if p.name == source.name]
    assert stored and blake3_file(stored[0]) == blake3_file(source)
    pty.run("max-rate 0", "removed")
    assert pty.leave() == 0
    assert run_cli("status", data_dir=data_dir).returncode == errors.FAILED  # node stopped


def test_incoming_transfers_are_announced_and_receive_waits_for_one(
    started: tuple[Pty, Path],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    pty, data_dir = started
    port = _port(data_dir)
    peer = node_factory()
    first = make_file(100 * 1024)
    assert peer.send(first, "127.0.0.1", port)[0] == 0
    pty.expect(f"received {re.escape(first.name)} \\(102400 bytes\\) as .*, verified")
    pty.child.sendline("receive")
    pty.expect("waiting for the next incoming transfer")
    second = make_file(1024 * 1024)
    assert peer.send(second, "127.0.0.1", port, "-r", "512K")[0] == 0  # ~2 s: seen coming
    # `receive` tells it and its progress itself (it used to run with no
    # progress, the prompt's toolbar not shown meanwhile), then its result once.
    # (the shell's own command, not `peercrypt cancel`: no command at its prompt)
    pty.expect(f"incoming {re.escape(second.name)} \\(1.0 MiB; `cancel in\\d+`")
    pty.expect(f"received {re.escape(second.name)} \\(1048576 bytes\\) as .*, verified")
    pty.expect(PROMPT_RE)
    stored = data_dir / "inbox" / second.name
    assert blake3_file(stored) == blake3_file(second)
    # The watcher, quiet meanwhile, does not tell it again: the next file's
    # news is the next thing said.
    third = make_file(10 * 1024)
    assert peer.send(third, "127.0.0.1", port)[0] == 0
    out = pty.expect(f"received {re.escape(third.name)} ")
    assert second.name not in out, out
    pty.leave()


def test_a_file_coming_in_is_announced_with_its_size_and_the_id_cancel_takes(
    started: tuple[Pty, Path],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    pty, data_dir = started
    peer = node_factory()
    path = make_file(3 * 1024 * 1024 // 2, name="slides.pdf")
    send = start_cli(
        "send", path, "127.0.0.1", str(_port(data_dir)), "-r", "512K", "--json",
        data_dir=peer.data_dir,
    )  # fmt: skip
    try:
        pty.expect(r"incoming slides\.pdf \(1\.5 MiB; `cancel in\d+` stops it\)")
        pty.expect(r"received slides\.pdf \(1572864 bytes\) as slides\.pdf, verified")
        assert send.wait(timeout=WAIT) == 0
    finally:
        send.kill()
    assert blake3_file(data_dir / "inbox" / "slides.pdf") == blake3_file(path)
    pty.leave()


def test_a_multicast_session_coming_in_is_announced_and_its_outcome(
    started: tuple[Pty, Path],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    """As a unicast transfer is (the shell said nothing of a multicast)."""
    pty, data_dir = started
    peer, other = node_factory("--max-rate", "512K"), node_factory()  # ~3 s: seen coming
    path = make_file(3 * 1024 * 1024 // 2, name="mc-slides.pdf")
    send = start_cli(
        "send", path, "127.0.0.1", str(_port(data_dir)), "-m", "--to",
        f"{other.host}:{other.port}", "--json", data_dir=peer.data_dir,
    )  # fmt: skip
    try:
        pty.expect(
            rf"incoming mc-slides\.pdf \(1\.5 MiB\) by multicast from {peer.fingerprint[:19]}"
        )
        pty.expect(
            r"received mc-slides\.pdf \(1572864 bytes\) as mc-slides\.pdf, verified \(multicast\)"
        )
        assert send.wait(timeout=WAIT) == 0
    finally:
        send.kill()
    assert blake3_file(data_dir / "inbox" / "mc-slides.pdf") == blake3_file(path)
    # `multicast-receive` in the shell tells its session itself: the watcher
    # is quiet meanwhile and does not tell it after (it told it twice).
    pty.child.sendline("multicast-receive --count 1")
    pty.expect("multicast-receive|waiting|listen")  # the command runs
    second = make_file(1024 * 1024, name="mc-second.bin")
    again = start_cli(
        "send", second, "127.0.0.1", str(_port(data_dir)), "-m", "--to",
        f"{other.host}:{other.port}", "--json", data_dir=peer.data_dir,
    )  # fmt: skip
    try:
        told = pty.expect(r"received mc-second\.bin \(1048576 bytes\) as mc-second\.bin, verified")
        told += pty.expect(PROMPT_RE)
        assert again.wait(timeout=WAIT) == 0
    finally:
        again.kill()
    assert "by multicast from" not in told and "(multicast)" not in told, told
    third = make_file(64 * 1024, name="mc-third.bin")
    assert (
        peer.send(third, "127.0.0.1", _port(data_dir), "-m", "--to", f"{other.host}:{other.port}")[
            0
        ]
        == 0
    )
    later = pty.expect(
        r"received mc-third\.bin \(65536 bytes\) as mc-third\.bin, verified \(multicast\)"
    )
    assert "mc-second" not in later, later
    pty.leave()


def test_debug_logs_sent_to_a_file_stay_off_the_prompt(
    tmp_path: Path,
    network_key: str,
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    """`start --debug 2>FILE`: the debug lines go to the file, none to the
    terminal. Those logged while the prompt showed (the node's, a
    background send's, prompt_toolkit's own) were drawn above the prompt:
    the shell pointed every log handler at the prompt's stderr, which is
    the terminal whatever the real one is."""
    peer = node_factory()
    source = make_file(1024 * 1024)
    log = tmp_path / "debug.log"
    seen = io.StringIO()
    pty = Pty(
        ["--data-dir", str(tmp_path / "shell"), "start", "--debug", "--host", "127.0.0.1",
         "--port", "0"],
        tmp_path,
        stderr=log,
        env={"PEERCRYPT_NETWORK_KEY": network_key},
    )  # fmt: skip
    pty.child.logfile_read = seen
    try:
        pty.expect(PROMPT_RE)  # (its "listening on" went to stderr: the file)
        # ~2 s at this rate: the node logs what it decides while the prompt shows.
        pty.run(f"send {source} {peer.host} {peer.port} -r 512K", r"\[1\] sending in the")
        pty.expect(r"\[1\] done, exit 0")
        pty.run("status", "node: running")
        assert pty.leave() == 0
    finally:
        if pty.child.isalive():
            pty.child.terminate(force=True)
    assert blake3_file(peer.inbox / source.name) == blake3_file(source)
    drawn = [line for line in seen.getvalue().splitlines() if " DEBUG " in line]
    assert drawn == [], drawn[:5]
    logged = log.read_text().splitlines()
    assert any(" peercrypt." in line and " DEBUG " in line for line in logged), logged[:20]


def test_ctrl_c_cancels_the_command_not_the_node(started: tuple[Pty, Path]) -> None:
    pty, _ = started
    pty.child.sendline("receive")
    pty.expect("waiting for the next incoming transfer")
    pty.child.sendintr()
    pty.expect("interrupted")
    pty.expect(PROMPT_RE)
    pty.run("status", "node: running")
    pty.child.sendintr()  # at the prompt: clears the line
    pty.run("status", "node: running")
    # `config show` at start's prompt shows this node: its flags as given.
    out = pty.run("config show --json", r"\}")
    shown = json.loads(out[out.index("{") : out.rindex("}") + 1])
    assert shown["host"]["value"] == "127.0.0.1" and shown["host"]["source"] == "flag", shown
    assert shown["gossip_interval"]["value"] == 0.5, shown
    assert shown["network_key"]["value"] == "(set)", shown
    # A hint names the shell's command as typed at it (`peers` wrote its
    # note to stdout, which the shell leaves as it comes).
    pty.run("peers", r"no peers known \(join one with `join HOST PORT`\)")
    assert pty.leave() == 0


def test_the_pre_send_check_asks_proceed_or_abort(
    started: tuple[Pty, Path], make_file: Callable[..., Path], free_port: int
) -> None:
    pty, _ = started
    source = make_file(10)
    nobody = free_port
    pty.child.sendline(f"send {source} 127.0.0.1 {nobody}")
    pty.expect("the health check failed")
    pty.expect("proceed or abort")
    pty.child.sendline("a")
    pty.expect("send aborted")
    pty.expect(PROMPT_RE)
    pty.child.sendline(f"send {source} 127.0.0.1 {nobody}")
    pty.expect("proceed or abort")
    pty.child.sendintr()  # Ctrl-C answers it: abort, said (it said nothing)
    pty.expect("send aborted")
    pty.expect(PROMPT_RE)
    pty.child.sendline(f"send {source} 127.0.0.1 {nobody} --timeout 1")
    pty.expect("proceed or abort")
    pty.child.sendline("p")
    pty.expect(r"\[1\] sending in the background")
    pty.expect(r"\[1\] done, exit 3")
    pty.leave()


def test_a_multicast_send_names_the_targets_it_cannot_reach_and_asks_once(
    started: tuple[Pty, Path],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    free_port: int,
) -> None:
    """Each target is checked first; those that fail are named with their
    cause, and one question decides: abort sends nothing, proceed sends to
    the others and names the left-out ones failed."""
    pty, _ = started
    good = node_factory()
    source = make_file(256 * 1024)
    here, dead = f"{good.host}:{good.port}", f"127.0.0.1:{free_port}"
    line = f"send {source} {good.host} {good.port} -m --to {dead} --timeout 5"
    pty.child.sendline(line)
    out = pty.expect("proceed or abort")
    assert "checking 2 targets ..." in out, out
    assert f"the health check of {dead} failed: cannot connect to {dead}: connection refused" in out
    assert f"the health check of {here}" not in out, out
    pty.child.sendline("a")
    out = pty.expect("send aborted") + pty.expect(PROMPT_RE)
    assert "proceed or abort" not in out, out  # asked once
    assert not list(good.inbox.iterdir())  # nothing sent to the reachable one either
    pty.child.sendline(line)
    pty.expect("proceed or abort")
    pty.child.sendline("p")
    pty.expect(re.escape(f"{here}: verified, stored as {source.name}"))
    pty.expect(re.escape(f"{dead}: failed (unreachable): cannot connect to {dead}"))
    pty.expect(re.escape(f"peercrypt: error: 1 of 2 receivers verified; cannot connect to {dead}"))
    pty.expect(PROMPT_RE)
    assert blake3_file(good.inbox / source.name) == blake3_file(source)
    # Every target reachable: no question; none: one error line, nothing sent.
    other = make_file(64 * 1024)
    out = pty.run(
        f"send {other} {good.host} {good.port} --mode multicast",
        re.escape(f"checking {here} ..."),
        re.escape(f"{here}: verified, stored as {other.name}"),
    )
    assert "proceed or abort" not in out and "health check of" not in out, out
    assert blake3_file(good.inbox / other.name) == blake3_file(other)
    out = pty.run(
        f"send {other} 127.0.0.1 {free_port} --mode multicast",
        re.escape(f"the health check of {dead} failed: cannot connect to {dead}"),
        re.escape("peercrypt: error: no target passed the health check (of 1): nothing sent"),
    )
    assert "proceed or abort" not in out, out
    assert pty.leave() == 0


def test_hints_on_stderr_name_shell_commands_as_typed_at_its_prompt(
    tmp_path: Path,
) -> None:
    """What the shell writes through its streams: on stderr a hint names a
    shell command without `peercrypt` (not one that is no shell command:
    `node`, which the prompt refuses); stdout (data: `--json`, `top`'s
    frames) is written as it came."""
    from peercrypt.cli.shell import _Held

    shell = Shell(cli, {"data_dir": tmp_path}, owns_node=False)
    said = "no (see `peercrypt status`); start one with `peercrypt node` or `peercrypt start`\n"
    err, out = io.StringIO(), io.StringIO()
    assert _Held(shell, err, True).write(said) == len(said)
    _Held(shell, out, False).write(said)
    assert err.getvalue() == (
        "no (see `status`); start one with `peercrypt node` or `peercrypt start`\n"
    )
    assert out.getvalue() == said


def test_what_is_held_while_top_runs_is_bounded(tmp_path: Path) -> None:
    """A busy node's news for hours under `top`: kept up to MAX_HELD writes,
    the lines beyond counted (told as a count when `top` ends)."""
    from peercrypt.cli.shell import MAX_HELD

    shell = Shell(cli, {"data_dir": tmp_path}, owns_node=False)
    assert not shell.hold("before\n", err=False) and shell.held == []
    shell.screen_busy = True
    for i in range(MAX_HELD + 5):
        assert shell.hold(f"line {i}\n", err=False)
    assert len(shell.held) == MAX_HELD and shell.held[-1] == (f"line {MAX_HELD - 1}\n", False)
    assert shell.held_dropped == 5


def test_lines_are_held_no_more_after_top_even_if_telling_them_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C (or a closed terminal) as `top`'s held lines are told: the
    shell holds nothing more after it (every later line was kept back)."""
    shell = Shell(cli, {"data_dir": tmp_path}, owns_node=False)
    shell.screen_busy = True
    assert shell.hold("one\n", err=False) and shell.hold("two\n", err=True)
    told: list[str] = []

    def echo(text: str, nl: bool = True, err: bool = False) -> None:
        told.append(text)
        raise KeyboardInterrupt

    monkeypatch.setattr(click, "echo", echo)
    with pytest.raises(KeyboardInterrupt):
        shell.tell_held()
    assert told == ["one\n"]
    assert (shell.screen_busy, shell.held, shell.held_dropped) == (False, [], 0)
    monkeypatch.undo()
    assert not shell.hold("three\n", err=False)  # (written, not held)


def test_a_multicast_send_aborted_or_sent_without_a_target_exits_3(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    free_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The exit status of the line (the prompt does not show it), against
    real nodes: the shell's own code in this process, the answer typed on
    its stdin."""
    sender, good = node_factory(), node_factory()
    shell = Shell(cli, {"data_dir": sender.data_dir}, owns_node=False)
    shell.interactive = True  # (a terminal's: a multicast send asks)
    source = make_file(128 * 1024)
    here, dead = f"{good.host}:{good.port}", f"127.0.0.1:{free_port}"
    line = f"send {source} {good.host} {good.port} -m --to {dead} --timeout 5 --json"
    monkeypatch.setattr(sys, "stdin", io.StringIO("abort\n"))
    assert shell.run_line(line) == errors.UNREACHABLE
    out, err = capsys.readouterr()
    assert out == "", out
    assert err.splitlines() == [
        "checking 2 targets ...",
        f"the health check of {dead} failed: cannot connect to {dead}: connection refused: "
        "nothing listens on that port",
        "proceed or abort? (proceed, abort, p, a) [abort]: send aborted",  # (the answer unechoed)
    ], err
    assert not list(good.inbox.iterdir())
    monkeypatch.setattr(sys, "stdin", io.StringIO("proceed\n"))
    assert shell.run_line(line) == errors.UNREACHABLE
    out, err = capsys.readouterr()
    result = json.loads(out)
    rows = {r["target"]: r for r in result["receivers"]}
    assert rows[here]["code"] == "ok", result
    assert blake3_file(good.inbox / rows[here]["stored_as"]) == blake3_file(source)
    assert rows[dead]["code"] == "unreachable" and rows[dead]["stored_as"] == "", result
    assert rows[dead]["error"].startswith(f"cannot connect to {dead}: connection refused"), result
    assert result["code"] == "unreachable" and not result["ok"], result
    assert result["error"].startswith(
        f"1 of 2 receivers verified; cannot connect to {dead}: connection refused"
    ), result
    assert "Traceback" not in err
    # Proceeded, and the send fails as a whole: its own cause, not a left-out
    # target's (it said "0 of 1 receivers verified; cannot connect to ...").
    fifo = source.parent / "a-fifo"
    os.mkfifo(fifo)
    monkeypatch.setattr(sys, "stdin", io.StringIO("proceed\n"))
    assert shell.run_line(line.replace(str(source), str(fifo))) == errors.USAGE
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert (result["code"], result["error"]) == ("local", f"{fifo} is not a regular file"), result
    assert [r["target"] for r in result["receivers"]] == [dead], result
    # No target reachable: nothing to ask, one error line.
    line = f"send {source} 127.0.0.1 {free_port} --mode multicast --json"
    assert shell.run_line(line) == errors.UNREACHABLE
    out, err = capsys.readouterr()
    assert out == "", out
    assert err.splitlines() == [
        f"checking {dead} ...",
        f"the health check of {dead} failed: cannot connect to {dead}: connection refused: "
        "nothing listens on that port",
        "peercrypt: error: no target passed the health check (of 1): nothing sent",
    ], err


def test_the_node_stopping_during_a_multicast_check_is_one_error_line(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The shell's node killed while the check waits for a target that takes
    the connection and never answers: one line, exit 1, no traceback."""
    sender, good = node_factory(), node_factory()
    shell = Shell(cli, {"data_dir": sender.data_dir}, owns_node=False)
    shell.interactive = True
    monkeypatch.setattr(sys, "stdin", io.StringIO("abort\n"))
    source = make_file(1024)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = f"127.0.0.1:{silent.getsockname()[1]}"

        def kill_once_dialled() -> None:  # the check's connection waits to be accepted
            if select.select([silent], [], [], WAIT)[0]:
                sender.kill()

        killer = threading.Thread(target=kill_once_dialled, daemon=True)
        killer.start()
        code = shell.run_line(f"send {source} {good.host} {good.port} -m --to {mute} --timeout 30")
        killer.join(WAIT)
    assert code == errors.FAILED
    out, err = capsys.readouterr()
    assert out == "", out
    assert err.splitlines() == [
        "checking 2 targets ...",
        "peercrypt: error: the local node stopped",
    ], err
    assert not list(good.inbox.iterdir())


def test_completion_of_commands_options_paths_and_peers(
    started: tuple[Pty, Path],
    node_factory: Callable[..., NodeProcess],
    tmp_path: Path,
) -> None:
    pty, _ = started
    peer = node_factory()
    pty.run(f"join {peer.host} {peer.port}", "joined through")
    pty.run("peers", re.escape(f"{peer.host}:{peer.port}"))  # known to the node now
    (tmp_path / "unique-payload-name.bin").write_bytes(b"x")

    def completes(typed: str, expected: str) -> None:
        # The terminal shows what Tab adds after the echo of what was typed.
        last = typed.split(" ")[-1]
        assert expected.startswith(last)
        pty.child.send(typed + "\t")
        pty.expect(re.escape(expected[len(last) :]))
        pty.child.sendintr()  # Ctrl-C clears the line: nothing runs
        pty.expect(PROMPT_RE)

    completes("healt", "health-check")
    completes("send unique-pay", "unique-payload-name.bin")
    completes("send unique-payload-name.bin 127.0", peer.host)
    completes(f"send unique-payload-name.bin {peer.host} {str(peer.port)[:2]}", str(peer.port))
    completes(f"send unique-payload-name.bin {peer.host} {peer.port} --no-pro", "--no-progress")
    pty.run("transfers", "no transfers running")
    assert pty.leave() == 0


def test_a_completed_file_name_with_spaces_is_quoted_and_sent(
    started: tuple[Pty, Path],
    node_factory: Callable[..., NodeProcess],
    tmp_path: Path,
) -> None:
    """Tab put a name with spaces in bare (`send my file é.bin`: "Path 'my'
    does not exist"); it goes in quoted, and the send takes that file."""
    pty, _ = started
    peer = node_factory()
    source = tmp_path / "my file é.bin"
    source.write_bytes(os.urandom(64 * 1024))
    pty.child.send("send my\t")
    pty.expect(re.escape("'my file é.bin'"))
    pty.run_until(f" {peer.host} {peer.port}", re.escape("[1] done, exit 0"))
    assert blake3_file(peer.inbox / source.name) == blake3_file(source)
    assert pty.leave() == 0


def test_a_path_from_the_home_directory_is_expanded_as_completion_offers_it(
    node_factory: Callable[..., NodeProcess],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Completion offers `~/...` paths; `send ~/x` said "Path '~/x' does not
    exist". A word's leading `~` is the home directory, as in a shell."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    source = home / "from-home.bin"
    source.write_bytes(os.urandom(32 * 1024))
    sender, receiver = node_factory(), node_factory()
    shell = Shell(cli, {"data_dir": sender.data_dir}, owns_node=False)
    code = shell.run_line(f"send ~/from-home.bin {receiver.host} {receiver.port} --no-progress")
    assert code == errors.OK, capsys.readouterr()
    assert blake3_file(receiver.inbox / source.name) == blake3_file(source)


def test_history_is_kept_across_sessions(started: tuple[Pty, Path], tmp_path: Path) -> None:
    pty, data_dir = started
    pty.run("transfers", "no transfers running")
    assert pty.leave() == 0
    history = (data_dir / "shell_history").read_text()
    assert "+transfers" in history


def test_a_line_giving_the_network_key_is_not_written_to_the_history(
    started: tuple[Pty, Path], network_key: str
) -> None:
    """The history file is the owner's only, and a line with the key itself
    (either spelling) is never in it (it was, in a file of mode 0644). Nor
    is it warned of as one in a command line (typed at the prompt, it is in
    no process's argv)."""
    pty, data_dir = started
    port = _port(data_dir)
    said = pty.run(
        f"health-check 127.0.0.1 {port} --network-key {network_key}",
        re.escape("(a line giving --network-key is not kept in the shell's history)"),
        "alive",
    )
    said += pty.run(f"health-check 127.0.0.1 {port} --network-key={network_key}", "alive")
    assert "alive" in said and "(ps)" not in said
    pty.run("transfers", "no transfers running")
    assert pty.leave() == 0
    path = data_dir / "shell_history"
    history = path.read_text()
    assert "+transfers" in history and "+health-check" not in history
    assert network_key not in history
    assert path.stat().st_mode & 0o777 == 0o600


def test_shell_attaches_to_the_running_node(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    node = node_factory()
    pty = Pty(["--data-dir", str(node.data_dir), "shell"], tmp_path)
    try:
        pty.expect(PROMPT_RE)
        pty.run("status", "node: running")
        pty.run("set-mode qos", "default mode is now qos")
        assert pty.leave() == 0
    finally:
        if pty.child.isalive():
            pty.child.terminate(force=True)
    assert node.status()["mode"] == "qos"  # the node outlives its shell


def test_a_shell_tells_when_its_node_stops_and_when_one_runs_again(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """`peercrypt shell` on a node that stops: said at once (its toolbar
    kept "mode normal" and nothing was said until a command failed), and
    said again once a node runs for the data dir."""
    node = node_factory()
    pty = Pty(["--data-dir", str(node.data_dir), "shell"], tmp_path)
    try:
        pty.expect(PROMPT_RE)
        pty.run("status", "node: running")
        assert node.stop() == 0
        pty.expect(re.escape(f"no node is running for {node.data_dir}: commands need one"))
        node.start()
        pty.expect(re.escape(f"a node runs for {node.data_dir} again"))
        pty.run("status", "node: running")
        assert pty.leave() == 0
    finally:
        if pty.child.isalive():
            pty.child.terminate(force=True)
    # (The terminal gets only the toolbar's changed characters: read here.)
    shell = Shell(cli, {"data_dir": node.data_dir}, owns_node=False)
    shell.view = shell_module.NodeView(stopped=True)
    assert shell.toolbar(80) == "no node running for the data dir; `help` lists the commands"


def test_shell_without_a_node_says_so(tmp_path: Path) -> None:
    result = run_cli("shell", data_dir=tmp_path / "none")
    assert result.returncode == errors.FAILED
    assert result.stderr_lines == [
        f"peercrypt: error: no node is running for {tmp_path / 'none'} "
        "(start one with `peercrypt start` or `peercrypt node`)"
    ]


def _script(data_dir: Path, lines: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peercrypt", "--data-dir", str(data_dir), "shell"],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_a_script_on_stdin_runs_every_line_and_its_exit_says_if_all_succeeded(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    node, peer = node_factory(), node_factory()
    source = make_file(50 * 1024)
    ok = _script(
        node.data_dir,
        ["# a comment", "", "set-mode aimd", f"send {source} {peer.host} {peer.port} --json",
         "congestion window 32", "transfers"],
        tmp_path,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "default mode is now aimd" in ok.stdout and '"mode": "aimd"' in ok.stdout
    assert blake3_file(peer.inbox / source.name) == blake3_file(source)
    bad = _script(node.data_dir, ["set-mode warp", "set-mode normal", "transfers"], tmp_path)
    assert bad.returncode == errors.USAGE, bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "peercrypt: error: set-mode: Invalid value for 'MODE': 'warp' is not one of "
        "'normal', 'token-bucket', 'aimd', 'qos', 'parallel', 'multicast'"
    ]
    assert "default mode is now normal" in bad.stdout  # the lines after still ran
    # A script's lines run to their end: an `&` is refused, on a send as on
    # any other line (docs/commands.md), and nothing of that line runs.
    other = make_file(1000)
    amp = _script(
        node.data_dir,
        [f"send {other} {peer.host} {peer.port} &", "status &", "set-mode normal"],
        tmp_path,
    )
    assert amp.returncode == errors.USAGE, amp.stderr
    assert (
        amp.stderr.strip().splitlines()
        == ["peercrypt: error: no `&` in a script: each line runs to its end"] * 2
    )
    assert amp.stdout.strip() == "default mode is now normal", amp.stdout
    assert not (peer.inbox / other.name).exists()
    quits = _script(node.data_dir, ["quit", "set-mode warp"], tmp_path)
    assert quits.returncode == 0 and not quits.stderr
    # A hint names the command as a script line has it, as at the prompt.
    hinted = _script(
        node.data_dir,
        ["cancel 999", "cancel in999", "peers --bogus", 'send "my file.bin 127.0.0.1 7400',
         "jobs 1", "gossip interval 10s"],
        tmp_path,
    )  # fmt: skip
    assert hinted.returncode == errors.USAGE, hinted.stderr
    assert hinted.stderr.strip().splitlines() == [
        "peercrypt: error: no running transfer 999 (see `transfers`)",
        "peercrypt: error: no incoming transfer in999 (see `status`)",
        "peercrypt: error: no such option '--bogus'; `peers` takes --config, --data-dir, --debug, "
        "--json",
        "peercrypt: error: cannot read that line: No closing quotation",
        "peercrypt: error: `jobs` takes no argument but --json",
        "peercrypt: error: gossip interval '10s': not a number of seconds; expected a number "
        "in 0.01..3600, e.g. `gossip interval 2`",
    ]


def test_a_script_multicast_asks_nothing_and_sends_to_the_targets_it_reaches(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    free_port: int,
    tmp_path: Path,
) -> None:
    """Without a terminal the shell's send is the one-shot command's (as a
    unicast send's, which refuses without --force): no question, the
    unreachable target failed, exit 3."""
    node, good = node_factory(), node_factory()
    source = make_file(64 * 1024)
    dead = f"127.0.0.1:{free_port}"
    # (--timeout: how long the dead target is tried; 2 s made the good one's
    # session end as a timeout on a loaded machine, exit 1)
    line = f"send {source} {good.host} {good.port} -m --to {dead} --timeout 8 --json"
    result = _script(node.data_dir, [line, "abort"], tmp_path)
    assert result.returncode == errors.UNREACHABLE, (result.stdout, result.stderr)
    assert "proceed or abort" not in result.stdout + result.stderr
    assert "health check of" not in result.stderr, result.stderr
    sent = json.loads(result.stdout.splitlines()[0])
    assert [(r["target"], r["code"]) for r in sent["receivers"]] == [
        (f"{good.host}:{good.port}", "ok"),
        (dead, "unreachable"),
    ], sent
    assert blake3_file(good.inbox / source.name) == blake3_file(source)
    # The next line ran as a command of its own (not taken as an answer).
    assert "peercrypt: error: no such command 'abort'" in result.stderr, result.stderr


def test_help_fits_80_columns_and_an_unknown_command_lists_the_shells(
    node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    node = node_factory()
    result = _script(node.data_dir, ["help", "cls", "set-mode qos"], tmp_path)
    assert result.returncode == errors.USAGE, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("commands (`help COMMAND`"), lines
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    listed = [line.split()[0] for line in lines[1:] if line.startswith("  ")]
    assert {"jobs", "quit", "gossip", "health-check", "send"} <= set(listed), listed
    assert "node" not in listed and "start" not in listed
    # The old tool's names are listed too (they worked, `help` did not name them).
    assert "  list-peers         The same as `peers`." in lines, lines
    assert "  mreceive           The same as `multicast-receive`." in lines, lines
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("peercrypt: error: no such command 'cls'; "), (
        error
    )
    commands = error[0].split("commands: ", 1)[1].split(", ")
    assert {"help", "jobs", "quit", "exit", "clear", "send", "mreceive"} <= set(commands), commands
    assert not {"node", "start", "shell"} & set(commands), commands
    assert "default mode is now qos" in result.stdout  # the next line still ran
    # `help NAME` of a command the shell does not have says so (it showed `start`'s help).
    for name in ("start", "nonexist"):
        asked = _script(node.data_dir, [f"help {name}"], tmp_path)
        assert asked.returncode == errors.USAGE, asked.stderr
        error = asked.stderr.strip().splitlines()
        assert len(error) == 1 and "commands: " in error[0], error
        assert not {"node", "start", "shell"} & set(error[0].split("commands: ", 1)[1].split(", "))


def test_receive_as_a_command(
    node_factory: Callable[..., NodeProcess], make_file: Callable[..., Path], tmp_path: Path
) -> None:
    node, peer = node_factory(), node_factory()
    waited = run_cli("receive", "--timeout", "1", data_dir=node.data_dir)
    assert waited.returncode == errors.FAILED
    assert waited.stderr_lines[-1] == "peercrypt: error: nothing received within 1 s"
    # --json prints its one object whatever the outcome (and the error line).
    waited = run_cli("receive", "--timeout", "1", "--json", data_dir=node.data_dir)
    assert waited.returncode == errors.FAILED
    assert json.loads(waited.stdout) == {"ok": False, "reason": "nothing received within 1 s"}
    assert waited.stderr_lines == ["peercrypt: error: nothing received within 1 s"]
    source = make_file(10 * 1024)
    pty = Pty(["--data-dir", str(node.data_dir), "receive", "--timeout", "60"], tmp_path)
    try:
        pty.expect("waiting for the next incoming transfer")
        code, _ = peer.send_to(source, node)
        assert code == 0
        out = pty.expect(r"received \S+ \(10240 bytes\) as (\S+), verified")
        stored = pty.child.match.group(1)
        pty.child.expect(pexpect.EOF, timeout=WAIT)
        pty.child.close()
        assert pty.child.exitstatus == 0, out
    finally:
        if pty.child.isalive():
            pty.child.terminate(force=True)
    assert blake3_file(node.inbox / stored) == blake3_file(source)


def test_cancel_stops_a_background_send(
    started: tuple[Pty, Path],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    pty, data_dir = started
    peer = node_factory()
    source = make_file(4 * 1024 * 1024)
    pty.run("max-rate 200000", "node rate cap")
    pty.run(f"send {source} {peer.host} {peer.port}", r"\[1\] sending in the background")
    out = pty.run("transfers --json", r'"id": "?\d+')
    transfer = re.search(r'"id": "?(\d+)', out)
    assert transfer, out
    pty.run_until(f"cancel {transfer.group(1)}", r"\[1\] done, exit 1")
    pty.run("jobs", r"\[1\] exit 1")
    assert not (peer.inbox / source.name).exists()
    assert run_cli("status", data_dir=data_dir).returncode == 0  # the node goes on
    assert pty.leave() == 0


def test_leaving_start_says_its_background_sends_end_with_its_node(
    started: tuple[Pty, Path],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    """`start` owns its node: leaving it with a send running asks first
    (quit ended it unasked), and says the send ends with the node (it said
    the send still ran in the node, which then stopped)."""
    pty, _ = started
    peer = node_factory()
    source = make_file(8 * 1024 * 1024)  # ~40 s at the cap: running throughout
    pty.run("max-rate 200000", "node rate cap")
    pty.run(f"send {source} {peer.host} {peer.port}", r"\[1\] sending in the background")
    question = re.escape("1 background send ends with the node: leave anyway? [y/N]")
    pty.child.sendline("quit")
    pty.expect(question)
    pty.run("n")  # stays
    pty.run("jobs", r"\[1\] running")
    # (the peers it knows by now: as gossip and health found them)
    pty.run("help", r"\d+\s+peers?\s+known,\s+1\s+background\s+send,")  # (it said "1 ... sends")
    pty.child.sendeof()  # Ctrl-D asks too
    pty.expect(question)
    pty.child.sendline("y")
    pty.child.expect(pexpect.EOF, timeout=WAIT)
    said = str(pty.child.before)
    pty.child.close()
    assert pty.child.exitstatus == 0, said
    assert "1 background send ends with the node" in said, said
    assert "still running" not in said, said
    assert not (peer.inbox / source.name).exists()


def test_a_background_send_is_cancelled_by_its_transfer_id_or_by_its_job(
    started: tuple[Pty, Path],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    """A job's number counts the shell's sends, the transfer ID the node's
    (`transfers`, `cancel ID`): a send from outside the shell makes them
    differ, and the shell names each job's ID and takes `cancel %JOB`."""
    pty, data_dir = started
    peer = node_factory()
    small = make_file(10 * 1024)
    outside = run_cli("send", small, peer.host, str(peer.port), "--json", data_dir=data_dir)
    assert outside.returncode == 0, outside.stderr  # transfer 1, from outside the shell
    pty.run("max-rate 200000", "node rate cap")
    first, second = make_file(4 * 1024 * 1024), make_file(4 * 1024 * 1024)
    out = pty.run(f"send {first} {peer.host} {peer.port}", r"\[1\] sending in the background")
    said = re.search(r"as transfer (\d+) \(`cancel (\d+)` or `cancel %1` stops it\)", out)
    assert said and said.group(1) == said.group(2) == "2", out
    out = pty.run(f"send {second} {peer.host} {peer.port}", r"\[2\] sending in the background")
    assert "as transfer 3 (`cancel 3` or `cancel %2` stops it)" in out, out
    out = pty.run("jobs", r"\[2\] running")
    assert re.search(r"\[1\] running +transfer 2 +send ", out), out
    assert re.search(r"\[2\] running +transfer 3 +send ", out), out
    listed = pty.run("jobs --json", r"\]")
    assert '"transfer": 2' in listed and '"transfer": 3' in listed, listed
    pty.run("rate %2 128K", r"rate of 1 transfer\(s\) is now 128\.0 KiB/s")  # transfer 3's
    pty.run("rate %9 128K", r"peercrypt: error: no job %9 \(`jobs` lists this shell's sends\)")
    # (mapped to its ID alone, the ID would be taken for the rate of every send)
    pty.run("rate %2", r"peercrypt: error: `rate %2` needs BYTES_PER_SEC too \(`rate %1 10M`\)")
    pty.run("rate 128K %2", r"peercrypt: error: the job comes first: `rate %2 128K`")
    pty.run("cancel %9", r"peercrypt: error: no job %9 \(`jobs` lists this shell's sends\)")
    pty.run("cancel %\u00b2", r"peercrypt: error: no job %\u00b2 ")  # a digit, not ASCII
    # Hints name commands as typed here (the node's words too: no `peercrypt `).
    out = pty.run("cancel in99", r"peercrypt: error: no incoming transfer in99 \(see `status`\)")
    out += pty.run("rate --transfr 3 1M", r"`rate --help` lists them")
    assert "`peercrypt " not in out, out
    pty.run_until("cancel %1", r"\[1\] done, exit 1")
    out = pty.run("transfers --json", r"\]")
    ids = re.findall(r'"id": "?(\d+)', out)
    assert ids == ["3"], out  # the second send runs on
    pty.run("cancel %1", r"peercrypt: error: job %1 has ended \(exit 1\): nothing to cancel")
    pty.run("rate %1 1M", r"peercrypt: error: job %1 has ended \(exit 1\): nothing to change")
    pty.run_until("cancel 3", r"\[2\] done, exit 1")
    assert not (peer.inbox / first.name).exists() and not (peer.inbox / second.name).exists()
    assert blake3_file(peer.inbox / small.name) == blake3_file(small)
    assert pty.leave() == 0


def test_news_while_top_has_the_screen_is_told_once_it_ends(
    started: tuple[Pty, Path],
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
) -> None:
    """A background send that ends while `top` runs in the shell: its lines
    (its result, then `[1] done`; and the watcher's news) are told when
    `top` ends, not written into its screen and lost with it (found by use:
    the result line was lost, the `done` line came)."""
    pty, data_dir = started
    peer = node_factory()
    path = make_file(1024 * 1024)
    pty.run(f"send {path} 127.0.0.1 {peer.port} -r 1M &", r"\[1\] sending in the background")
    pty.child.sendline("top")
    pty.expect("(?i)send")  # its screen

    def sent() -> bool | None:
        listed = run_cli("stats", "list", "--json", data_dir=data_dir)
        rows = json.loads(listed.stdout or "[]")
        return any(r.get("result") == "ok" and r.get("side") == "send" for r in rows) or None

    wait_until(sent, WAIT, "the send's end, recorded")  # (its line follows at once)
    assert blake3_file(peer.inbox / path.name) == blake3_file(path)
    pty.child.send("q")
    out = pty.expect(r"\[1\] done, exit 0")
    # After `top` left its alternate screen (where a line is lost with it).
    assert "\x1b[?1049l" in out, repr(out[-400:])
    told = out[out.rindex("\x1b[?1049l") :]
    assert re.search(rf"sent {re.escape(path.name)} \(1048576 bytes\) to .* verified", told), told
    assert "PeerCrypt top" not in told, told  # (its last frame was drawn after it, kept)
    pty.expect(PROMPT_RE)
    pty.leave()


def test_config_show_at_starts_prompt_knows_a_key_typed_at_its_question(
    tmp_path: Path, network_key: str
) -> None:
    data_dir = tmp_path / "typed"
    pty = Pty(
        ["--data-dir", str(data_dir), "start", "--host", "127.0.0.1", "--port", "0"], tmp_path
    )
    try:
        pty.expect("network key")
        pty.child.sendline(network_key)  # hidden: not echoed
        pty.expect("listening on")
        pty.expect(PROMPT_RE)
        out = pty.run("config show --json", r"\}")
        shown = json.loads(out[out.index("{") : out.rindex("}") + 1])
        assert shown["network_key"]["value"] == "(set)", shown
        assert network_key not in out
        assert pty.leave() == 0
    finally:
        if pty.child.isalive():
            pty.child.terminate(force=True)


def test_a_background_send_giving_the_network_key_is_not_warned_of_as_in_argv(
    node_factory: Callable[..., NodeProcess],
    make_file: Callable[..., Path],
    network_key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A `send ... --network-key KEY` at the prompt runs in a job thread of
    the shell: the key is in no process's argv there either."""
    sender, receiver = node_factory(), node_factory()
    path = make_file(64 * 1024, name="keyed.bin")
    shell = Shell(cli, {"data_dir": sender.data_dir}, owns_node=False)
    shell.interactive = True
    capsys.readouterr()
    line = f"send {path} {receiver.host} {receiver.port} --network-key {network_key}"
    _, err = _background_send(shell, line, capsys)
    assert "(ps)" not in err, err
    assert blake3_file(receiver.inbox / path.name) == blake3_file(path)
