"""The interactive shell: ``peercrypt start`` (a node and a prompt in one
process) and ``peercrypt shell`` (a prompt for the node already running for
the data dir).

Every line runs through the same click group as the one-shot CLI (same
names, options, help and errors); the shell adds only ``help``, ``quit``/
``exit`` and ``jobs``. On a terminal (prompt_toolkit): history
across sessions in ``DATA_DIR/shell_history``, completion of commands,
options, file paths and known peers, sends in the background with a live
progress line under the prompt, announcements of incoming transfers, and a
"proceed or abort" question when the pre-send health check fails. Ctrl-C
cancels the command running in the foreground (or clears the line), never
the node; Ctrl-D leaves.

Without a terminal it reads one command per line from stdin, runs each to
its end (sends included), and exits 0 only if every command succeeded, else
with the exit code of the first that failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from peercrypt import errors
from peercrypt.cli import configure, follow, precheck
from peercrypt.cli.common import UserError, count_in, from_shell
from peercrypt.cli.node import node_options, node_settings, run_node
from peercrypt.cli.receive import Inbound, inbound, inbound_multicast
from peercrypt.cli.runner import execute, unknown_command
from peercrypt.cli.status_view import describe_outcome
from peercrypt.client import AnotherRelease, ControlClient, NodeRefused, NodeUnavailable
from peercrypt.core.address import join_host_port
from peercrypt.core.modes import ALL_MODES, CONGESTION_KEYS
from peercrypt.core.names import shortened
from peercrypt.crypto.known_peers import UnreadablePins, changed_here
from peercrypt.wire.messages import TransfersReply, TransfersRequest
from peercrypt.wire.network_messages import PeersReply, PeersRequest

HISTORY_FILE = "shell_history"  # in the data dir
PROMPT = "peercrypt> "
WATCH_EVERY = 0.5  # seconds between the watcher's looks at the node, at least
# Seconds the watcher waits for the node's news (StatusWait) before it looks
# anyway: an idle node and its prompt do not wake for nothing.
NEWS_WAIT = 30.0
# Seconds a background send's first line waits for the send's id in the node
# (the first progress of the actor that took it names it, a few milliseconds
# after the request; a send the node refuses ends first, in the foreground).
ID_WAIT = 2.0
# Writes of other threads kept while `top` has the screen (beyond: counted).
MAX_HELD = 1000
# The old tool's names of commands, still taken (hidden in `peercrypt --help`).
ALIASES = {"list-peers": "peers", "mreceive": "multicast-receive"}
# Shell-only commands (everything else is a command of the CLI).
SHELL_COMMANDS = {
    "help": "The commands, and the node's status; `help COMMAND` for one command.",
    "quit": "Leave the shell (`start`: and stop its node, asking first while background sends "
    "run).",
    "exit": "Leave the shell (as `quit`).",
    "clear": "Clear the screen (as Ctrl-L).",
    "jobs": "The background sends, their transfer IDs and how they ended (`cancel ID` or "
    "`cancel %JOB` stops one; `jobs --json`: a JSON list).",
}
# Commands that only make sense outside a running shell.
NOT_IN_SHELL = {"start", "shell", "node"}
# Arguments worth completing, by command: what the n-th positional argument is.
ARGUMENTS: dict[str, tuple[str, ...]] = {
    "send": ("path", "host", "port"),
    "join": ("host", "port"),
    "health-check": ("host", "port"),
    "reconnect": ("host", "port"),
    "set-mode": ("mode",),
    "gossip": ("gossip",),
    "congestion": ("congestion", "any") * 6,
    "rate": ("any", "any"),  # [ID] BYTES_PER_SEC: no file names
    "cancel": ("any",),
    "help": ("command",),
}


@dataclass
class Job:
    """A send running in the background."""

    number: int
    line: str
    thread: threading.Thread | None = None
    code: int | None = None  # None while running
    # The send's id in the node (`transfers`, `cancel ID`): not the job's
    # number, which counts this shell's sends only. 0 until its first progress.
    transfer: int = 0
    settled: threading.Event = field(default_factory=threading.Event)  # id known, or ended
    # Whether its first line was told: its end is told too. A send that ended
    # before (the node refused it) was a foreground command: its own lines say it.
    announced: bool = False
    told: threading.Lock = field(default_factory=threading.Lock)

    @property
    def running(self) -> bool:
        return self.code is None

    def learned(self, transfer: int) -> None:
        if not self.transfer:
            self.transfer = transfer
        self.settled.set()


class Wake:
    """A flag another thread sets to wake the watcher: as an Event, and as a
    descriptor that turns readable (the watcher's wait for the node's news
    is a read on its control connection). The pipe is made by the first
    :meth:`fileno` and closed by :meth:`close` (the watcher's end)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._pipe: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def fileno(self) -> int:
        with self._lock:
            if self._pipe is None:
                self._pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                if self.event.is_set():
                    os.write(self._pipe[1], b"w")
            return self._pipe[0]

    def set(self) -> None:
        with self._lock:
            self.event.set()
            if self._pipe is not None:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._pipe[1], b"w")

    def clear(self) -> None:
        with self._lock:
            self.event.clear()
            if self._pipe is not None:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._pipe[0], 64):
                        pass

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)

    def close(self) -> None:
        with self._lock:
            if self._pipe is not None:
                os.close(self._pipe[0])
                os.close(self._pipe[1])
                self._pipe = None


@dataclass
class NodeView:
    """What the watcher last saw of the node (read by the prompt's toolbar)."""

    transfers: list[dict[str, Any]] = field(default_factory=list)
    incoming: list[tuple[str, int, int, str]] = field(default_factory=list)
    incoming_count: int = 0  # all of them (``incoming`` lists the first few)
    peers: list[str] = field(default_factory=list)  # "host:port" of known members
    mode: str = ""
    stopped: bool = False  # the node's process is gone


TOOLBAR_NAME = 24  # characters of a file name on the toolbar


class Told:
    """What the shell has told of the node's incoming transfers: each look at
    the node's facts gives the news since the last (an incoming transfer, a
    transfer's outcome, a multicast session and its outcome)."""

    def __init__(self) -> None:
        self.seq: int | None = None  # None: nothing looked at yet (no news of the past)
        self.incoming: set[str] = set()
        self.mc_seq: int | None = None  # multicast sessions: their own outcome and list
        self.sessions: set[tuple[str, str]] = set()

    def news(self, facts: dict[str, Any], quiet: bool = False) -> list[str]:
        """The lines to tell of ``facts`` (none if ``quiet``: taken as told)."""
        from peercrypt.sizes import readable

        lines: list[str] = []
        now = inbound(facts)
        for name, size, _, ident in now.incoming:
            if name not in self.incoming:
                lines.append(f"incoming {name} ({readable(size)}; `cancel {ident}` stops it)")
        if self.seq is not None and now.seq > self.seq:
            lines.append(describe_outcome(now.last))
        sessions, mc_last = inbound_multicast(facts)
        for name, size, sender in sessions:
            if (name, sender) not in self.sessions:
                lines.append(f"incoming {name} ({readable(size)}) by multicast from {sender}")
        mc_seq = int(mc_last.get("seq", 0))
        if self.mc_seq is not None and mc_seq > self.mc_seq:
            lines.append(f"{describe_outcome(mc_last)} (multicast)")
        self._take(now, sessions, mc_seq)
        return [] if quiet else lines

    def told(self, facts: dict[str, Any]) -> None:
        """Take ``facts`` as told (a `receive` told the user of them)."""
        sessions, mc_last = inbound_multicast(facts)
        self._take(inbound(facts), sessions, int(mc_last.get("seq", 0)))

    def _take(self, now: Inbound, sessions: list[tuple[str, int, str]], mc_seq: int) -> None:
        self.incoming = {name for name, _, _, _ in now.incoming}
        self.seq = now.seq
        self.sessions = {(name, sender) for name, _, sender in sessions}
        self.mc_seq = mc_seq


class Shell:
    """One prompt on one node (the data dir's)."""

    def __init__(self, group: click.Group, obj: dict[str, Any], *, owns_node: bool) -> None:
        self.group = group
        self.obj = obj
        self.data_dir: Path = obj["data_dir"]
        self.owns_node = owns_node
        self.jobs: list[Job] = []
        self.view = NodeView()
        self.stop = threading.Event()
        self.watch_quiet = threading.Event()  # a foreground `receive` reports instead
        # Set as a `receive` ends: the node's facts then, taken by the watcher
        # as told (the command said them), so its outcome is not told twice
        # and what ends after it is told; {} if the node did not answer (the
        # watcher's next look is taken as told). Under _baseline_lock.
        self._watch_baseline: dict[str, Any] | None = None
        self._baseline_lock = threading.Lock()
        self.watch_wake = Wake()  # look now (a `receive` ended, the shell stops)
        self.prompt_app: Any = None  # the prompt's application, while it runs: redrawn on news
        self.looks = 0  # the watcher's looks at the node so far
        # Lines of other threads (the watcher's news, a background send's
        # end) while a full-screen command has the terminal (`top`): told
        # once it ends, instead of lost in its screen.
        self.screen_busy = False
        self.held: list[tuple[str, bool]] = []  # (text, to stderr)
        self.held_dropped = 0  # lines beyond MAX_HELD
        self._held_lock = threading.Lock()
        self.failures: list[int] = []
        self.interactive = sys.stdin.isatty()

    # -- running one line ---------------------------------------------------------------

    def global_args(self) -> list[str]:
        args = ["--data-dir", str(self.data_dir)]
        if self.obj.get("config_required"):
            args += ["--config", str(self.obj["config_path"])]
        if self.obj.get("debug"):
            args.append("--debug")
        return args

    def run_line(self, line: str) -> int | None:
        """Run one line; its exit code, or None to leave the shell. A line
        the shell's own code cannot end (the node runs another release: a
        reply it cannot read) is one error line too; the shell goes on."""
        said = from_shell.set(True)
        try:
            return self._run_line(line)
        except errors.CommandError as exc:
            return self._error(str(exc), exc.exit_code)
        finally:
            from_shell.reset(said)

    def _run_line(self, line: str) -> int | None:
        try:
            words = [expand_home(w) for w in shlex.split(line, comments=True)]
        except ValueError as exc:
            return self._error(f"cannot read that line: {exc}")
        if not words:
            return errors.OK
        ampersand = words[-1] == "&"
        if ampersand:  # a habit of shells: `send` backgrounds anyway
            if not self.interactive:
                return self._error("no `&` in a script: each line runs to its end")
            if words[0] != "send":
                only = "only `send` runs in the background"
                return self._error(f"`{words[0]}` runs in the foreground (no `&`): {only}")
            words = words[:-1]
            line = line.rstrip().removesuffix("&").rstrip()
        name, rest = words[0], words[1:]
        if name in ("quit", "exit"):
            return None
        if name == "help":
            return self._help(rest)
        if name == "clear":
            if rest:
                return self._error("`clear` takes no argument")
            click.clear()
            return errors.OK
        if name == "jobs":
            if rest not in ([], ["--json"]):
                return self._error("`jobs` takes no argument but --json")
            return self._jobs(as_json=bool(rest))
        if name in ("cancel", "rate") and any(w.startswith("%") for w in rest):
            given = [w for i, w in enumerate(rest) if not w.startswith("-")
                     and (i == 0 or rest[i - 1] != "--transfer")]  # fmt: skip
            if name == "rate" and given and given[-1].startswith("%"):  # (else its ID, as a rate)
                if len(given) == 1:
                    return self._error(
                        f"`rate {given[-1][:20]}` needs BYTES_PER_SEC too (`rate %1 10M`)"
                    )
                return self._error(f"the job comes first: `rate {given[-1][:20]} {given[0][:20]}`")
            verb = "cancel" if name == "cancel" else "change"
            mapped = [self._job_transfer(w, verb) if w.startswith("%") else w for w in rest]
            if None in mapped:
                return errors.USAGE
            words = [name, *(str(w) for w in mapped)]
        if name in NOT_IN_SHELL:
            return self._error(f"`{name}` is not a shell command (the shell runs on its node)")
        if name not in command_names(self):  # the shell's commands, not the CLI's
            return self._error(unknown_command(name, command_names(self)))
        if name == "send" and self.interactive and not _wants_help(rest):
            return self._send(words, line, ampersand)
        if name in ("receive", "multicast-receive", "mreceive") and self.interactive:
            # It tells the transfer and shows its progress itself (the prompt
            # and its toolbar are not shown meanwhile); the watcher stays quiet
            # (and takes what came meanwhile as told: a session's outcome too).
            self.watch_quiet.set()
            try:
                return execute(self.group, [*self.global_args(), *words])
            finally:
                self.receive_ended()
        if name == "top" and self.interactive:
            with self._held_lock:
                self.screen_busy = True
            try:
                return execute(self.group, [*self.global_args(), *words])
            finally:
                self.tell_held()
        return execute(self.group, [*self.global_args(), *words])

    def tell_held(self) -> None:
        """`top` ended: what was held is told, in order (a line written
        meanwhile waits for the lock, then goes straight to the terminal
        after these), and nothing is held any more, even if telling it
        failed (a Ctrl-C, a closed terminal)."""
        with self._held_lock:
            try:
                for text, err in self.held:
                    click.echo(text, nl=False, err=err)
                if self.held_dropped:
                    click.echo(f"({self.held_dropped} more lines while `top` ran, not kept)")
            finally:
                self.screen_busy, self.held, self.held_dropped = False, [], 0

    def say(self, text: str) -> None:
        """A line from another thread: held while `top` has the screen."""
        if not self.hold(f"{text}\n", err=False):
            print(text, flush=True)

    def hold(self, text: str, err: bool) -> bool:
        """Keep ``text`` (written by another thread than the one running
        the line) to tell once `top` ends, if it has the screen now."""
        with self._held_lock:
            if self.screen_busy and len(self.held) < MAX_HELD:
                self.held.append((text, err))
            elif self.screen_busy:
                self.held_dropped += text.count("\n")
            return self.screen_busy

    def _error(self, text: str, code: int = errors.USAGE) -> int:
        click.echo(f"peercrypt: error: {text}", err=True)
        return code

    # -- shell-only commands ------------------------------------------------------------

    def _help(self, rest: list[str]) -> int:
        if rest:
            if rest[0] in SHELL_COMMANDS:
                click.echo(f"{rest[0]}: {SHELL_COMMANDS[rest[0]]}")
                return errors.OK
            if rest[0] not in command_names(self):  # the shell's commands, not the CLI's
                return self._error(unknown_command(rest[0], command_names(self)))
            return execute(self.group, [*self.global_args(), *rest, "--help"])
        ctx = click.Context(self.group, info_name="peercrypt")
        width = shutil.get_terminal_size().columns
        limit = max(20, width - 21)  # each line within the terminal: "  NAME(18) TEXT"
        commands = [
            cmd
            for name in self.group.list_commands(ctx)
            if (cmd := self.group.get_command(ctx, name)) is not None
            and not cmd.hidden
            and name not in NOT_IN_SHELL
        ]
        commands += [click.Command(name, help=text) for name, text in SHELL_COMMANDS.items()]
        # The old tool's names (`peercrypt --help` leaves them out: one name a command there).
        commands += [click.Command(old, help=f"The same as `{to}`.") for old, to in ALIASES.items()]
        click.echo("commands (`help COMMAND` or `COMMAND --help` for its options):")
        for cmd in sorted(commands, key=lambda c: c.name or ""):
            click.echo(f"  {cmd.name:18} {cmd.get_short_help_str(limit)}")
        click.echo(textwrap.fill(self._status_line(), width=width))
        return errors.OK

    def _status_line(self) -> str:
        try:
            with ControlClient.for_data_dir(self.data_dir) as client:
                facts = client.status().node
        except NodeUnavailable as exc:
            return f"node: not running ({exc})"
        except AnotherRelease as exc:
            return f"node: running, but {exc}"
        running, peers = sum(1 for j in self.jobs if j.running), len(self.view.peers)
        return (
            f"node {facts.get('fingerprint')} on port {facts.get('port')}: default mode "
            f"{facts.get('mode')}, {peers} peer{'' if peers == 1 else 's'} known, "
            f"{running} background send{'' if running == 1 else 's'}, inbox {facts.get('inbox')}"
        )

    def _jobs(self, as_json: bool = False) -> int:
        if as_json:
            rows = [
                {"id": j.number, "state": "running" if j.running else "done", "exit": j.code,
                 "transfer": j.transfer or None, "line": j.line}
                for j in self.jobs
            ]  # fmt: skip
            click.echo(json.dumps(rows))
            return errors.OK
        if not self.jobs:
            click.echo("no background sends")
        width = len(f"[{len(self.jobs)}]")  # the numbers' column, [10] as wide as [1]
        for job in self.jobs:
            state = "running" if job.running else f"exit {job.code}"
            transfer = f"transfer {job.transfer}" if job.transfer else "transfer -"
            click.echo(f"{f'[{job.number}]':{width}} {state:8} {transfer:12} {job.line}")
        return errors.OK

    def _job_transfer(self, spec: str, verb: str = "cancel") -> int | None:
        """The transfer ID of the running job ``%N`` (for ``cancel``, ``rate``), or
        None after saying why not (an ended job: nothing to ``verb``)."""
        number = spec[1:]
        job = None
        if (
            number.isascii()
            and number.isdigit()
            and len(number) <= 9
            and 1 <= int(number) <= len(self.jobs)
        ):
            job = self.jobs[int(number) - 1]
        if job is None:
            self._error(f"no job {spec[:20]} (`jobs` lists this shell's sends)")
        elif not job.running:
            self._error(f"job {spec} has ended (exit {job.code}): nothing to {verb}")
        elif not job.transfer:
            self._error(f"job {spec} has no transfer ID yet; try again in a moment")
        else:
            return job.transfer
        return None

    # -- sends in the background --------------------------------------------------------

    def _send(self, words: list[str], line: str, ampersand: bool = False) -> int:
        command = self.group.get_command(click.Context(self.group), "send")
        assert command is not None
        try:
            ctx = command.make_context("send", list(words[1:]), obj=self.obj)
        except click.ClickException:
            return execute(self.group, [*self.global_args(), *words])  # its one-line error
        params = ctx.params
        multicast = bool(params.get("multi") or params.get("dual") or params.get("to"))
        multicast = multicast or params.get("mode") == "multicast"
        if multicast:  # may ask for targets: in the foreground, with a line per receiver
            if ampersand:  # (it went on in the foreground without a word)
                click.echo(
                    "a multicast send runs in the foreground: it may ask for its targets, "
                    "and says how each receiver ended",
                    err=True,
                )
            with precheck.asking():  # and whether to go on without those it cannot reach
                return execute(self.group, [*self.global_args(), *words])
        args = list(words)
        if not params.get("force"):
            pinned = next(iter(params.get("expect") or ()), "")  # its --expect (one)
            verdict = self._check(str(params["host"]), int(params["port"]), pinned)
            if verdict is None:
                return errors.UNREACHABLE
            if verdict:
                args.append("--force")
        if "--no-progress" not in args and "--json" not in args:
            args.append("--no-progress")
        job = Job(number=len(self.jobs) + 1, line=line.strip())
        job.thread = threading.Thread(
            target=self._run_job, args=(job, args), name=f"send-{job.number}", daemon=True
        )
        self.jobs.append(job)
        job.thread.start()
        interrupted = False
        try:
            job.settled.wait(ID_WAIT)
        except KeyboardInterrupt:  # the send goes on (no signal reaches its thread): a job
            interrupted = True
        with job.told:
            if not job.running and not job.transfer:
                # Ended before the node named it: refused (no rate for a
                # token-bucket default, the same file already sending...),
                # its one error line printed. No job: the line's own status.
                self.jobs.remove(job)
                assert job.code is not None
                return job.code
            job.announced = True
            if job.transfer:
                click.echo(
                    f"[{job.number}] sending in the background as transfer {job.transfer} "
                    f"(`cancel {job.transfer}` or `cancel %{job.number}` stops it)"
                )
            else:
                click.echo(
                    f"[{job.number}] sending in the background (`jobs`; `cancel %{job.number}`)"
                )
        if interrupted:  # (the line was taken: a Ctrl-C here stops no send)
            click.echo(f"Ctrl-C: the send goes on; `cancel %{job.number}` stops it", err=True)
        return errors.OK

    def _run_job(self, job: Job, args: list[str]) -> None:
        follow.listener.on_transfer = job.learned
        _background.on = True  # its lines (its result) are held while `top` runs
        from_shell.set(True)  # (this thread's own context)
        try:
            job.code = execute(self.group, [*self.global_args(), *args])
        except KeyboardInterrupt:  # cancelled before the send started following
            job.code = 130
        finally:
            job.settled.set()
        with job.told:
            if not job.announced:
                return
        if job.code != errors.OK:
            self.failures.append(job.code)
        self.say(f"[{job.number}] done, exit {job.code}: {job.line}")

    def _check(self, host: str, port: int, expect: str = "") -> bool | None:
        """The pre-send health check: False (reachable), True (proceed anyway)
        or None (abort)."""
        click.echo(f"checking {join_host_port(host, port)} ...")
        target = join_host_port(host, port)
        try:
            with ControlClient.for_data_dir(self.data_dir) as client:
                reply = precheck.check_targets(client, [target]).get(target)
        except NodeUnavailable as exc:
            self._error(str(exc), errors.FAILED)
            return None
        if reply is not None and reply.code == "ok":
            # Reachable, but not with the key this node knows there: the
            # send would end on it (exit 4); said now, nothing asked.
            try:
                changed = changed_here(self.data_dir, host, port, reply.fingerprint, expect)
            except UnreadablePins as exc:  # (the send would end on it)
                raise errors.CommandError(str(exc), errors.USAGE) from None
            if changed:
                raise errors.CommandError(changed, errors.NOT_ADMITTED)
        if reply is None or reply.code == "ok":
            return False
        click.echo(f"the health check failed: {reply.reason or reply.code}")
        if precheck.proceed_or_abort():
            return True
        click.echo("send aborted")
        return None

    # -- watching the node --------------------------------------------------------------

    def receive_ended(self) -> None:
        """A foreground `receive` ended: what it told is the watcher's
        baseline, then the watcher speaks again, at once."""
        try:
            self._told_until_now()
        finally:  # (a Ctrl-C meanwhile must not leave the watcher silent)
            self.watch_quiet.clear()  # after the baseline: see watch()
            self.watch_wake.set()

    def _told_until_now(self) -> None:
        """Give the watcher the node's facts now as told (a `receive` just
        told the user what came), asked here so a transfer ending after this
        (one sent once the prompt is back) is compared with them and told."""
        facts: dict[str, Any] = {}
        try:
            with ControlClient.for_data_dir(self.data_dir) as client:
                facts = client.status().node
        except (NodeUnavailable, AnotherRelease):
            pass  # the watcher's next look stands in for it
        with self._baseline_lock:
            self._watch_baseline = facts

    def _take_baseline(self) -> dict[str, Any] | None:
        with self._baseline_lock:
            baseline, self._watch_baseline = self._watch_baseline, None
        return baseline

    def watch(self, announce: Callable[[str], None]) -> None:
        """Until the shell stops: refresh :attr:`view` and announce incoming
        transfers and their outcomes."""
        try:
            self._watch(announce)
        finally:
            self.watch_wake.close()

    def _watch(self, announce: Callable[[str], None]) -> None:
        told = Told()
        resync = False  # a `receive` ended when the node did not answer: the next look is told
        client: ControlClient | None = None
        unreadable = False  # the node's last answer could not be read (another release)
        changes: int | None = None  # the node's news at the last look (None: not known)
        waits = True  # whether the node holds a StatusWait (an older release refuses it)
        shown = ""  # the toolbar as last drawn
        # Whether the node answered, and whether its end was told: a node
        # that stopped under an open prompt left its toolbar as it was, and
        # said nothing until the next command failed.
        answered = gone = False
        while not self.stop.is_set():
            # Quiet first, then the baseline: a `receive` sets its baseline
            # before it clears quiet, so a look that is not quiet has it.
            self.watch_wake.clear()
            quiet = self.watch_quiet.is_set()
            baseline = self._take_baseline()
            if baseline:  # what `receive` told: compared with from here on
                told.told(baseline)
                resync = False
                quiet = self.watch_quiet.is_set()  # unless another `receive` began since
            elif baseline is not None:
                resync = True
            try:
                if client is None:
                    try:
                        client = ControlClient.for_data_dir(self.data_dir)
                    except NodeUnavailable as exc:  # its process is gone (not one slow to answer)
                        if answered and not gone:
                            announce(f"{exc}: commands need one; `status` tells when it runs")
                            self.view = NodeView(stopped=True)  # (the toolbar: nothing of it)
                        gone = True
                        raise
                    waits = True
                status = client.status()
                if gone:  # (another process: what it tells of its transfers is new)
                    announce(f"a node runs for {self.data_dir} again")
                    self.view, resync = NodeView(), True
                answered, gone = True, False
                changes, facts = status.changes, status.node
                for line in told.news(facts, quiet=quiet or resync):
                    announce(line)
                resync = False
                now = inbound(facts)
                self.view.incoming = now.incoming
                self.view.incoming_count = count_in(facts.get("active"))
                self.view.mode = facts.get("mode", "")
                self.view.transfers = _ask(client, TransfersRequest, TransfersReply, "transfers")
                self.view.peers = [
                    str(p.get("address"))
                    for p in _ask(client, PeersRequest, PeersReply, "peers")
                    if p.get("address")
                ]
            except NodeUnavailable:
                if client is not None:
                    client.close()
                client = None
            except AnotherRelease as exc:  # said once; read again once the node is restarted
                if not unreadable:
                    announce(f"peercrypt: error: {exc}")
                unreadable = True
                if client is not None:
                    client.close()
                client = None
            else:
                unreadable = False
            self.looks += 1
            shown = self._redraw(shown)
            if self.watch_wake.wait(WATCH_EVERY) or client is None or not waits:
                continue
            try:  # until the node's next news (none while it idles), or a wake
                client.status_wait(changes or 0, NEWS_WAIT, self.watch_wake.fileno())
            except NodeRefused as exc:
                if exc.code == "bad-request":  # a node of an older release: polled
                    waits = False
                else:  # (a node restarted on the port with another token)
                    client.close()
                    client = None
            except (NodeUnavailable, AnotherRelease):  # woken, or no answer: a new connection
                client.close()
                client = None
        if client is not None:
            client.close()

    def _redraw(self, shown: str) -> str:
        """Redraw the prompt's toolbar if what it shows changed (it is not
        redrawn on a clock); what it shows now."""
        app = self.prompt_app
        if app is None:
            return shown
        now = self.toolbar()
        if now != shown:
            app.invalidate()  # (thread-safe: the prompt's loop redraws)
        return now

    def known_peers(self) -> list[str]:
        """Members' "host:port", asked now (Tab is rare), else what the watcher saw."""
        try:
            with ControlClient.for_data_dir(self.data_dir) as client:
                rows = _ask(client, PeersRequest, PeersReply, "peers")
        except (NodeUnavailable, AnotherRelease):  # (Tab must not raise)
            return self.view.peers
        return [str(p.get("address")) for p in rows if p.get("address")]

    def toolbar(self, width: int | None = None) -> str:
        """The live progress line under the prompt, within ``width`` columns
        (the terminal's): what does not fit is counted in "+N more"."""
        from peercrypt.sizes import readable

        width = width or shutil.get_terminal_size().columns
        parts = []
        for row in self.view.transfers[:3]:
            size = count_in(row.get("size"))  # 0: not known ("?": a walk's)
            done = count_in(row.get("bytes"))  # a walk's: read and hashed so far
            pct = f"{100 * done // size}%" if size else readable(done) if done else "-"
            name = shortened(Path(str(row.get("file") or "-")).name, TOOLBAR_NAME)
            parts.append(f"send {name} {pct} ({row.get('state') or '-'})")
        for name, size, done, ident in self.view.incoming[:3]:
            pct = f"{100 * done // size if size else 100}%"
            parts.append(f"recv {ident} {shortened(name, TOOLBAR_NAME)} {pct}")
        incoming = max(self.view.incoming_count, len(self.view.incoming))
        hidden = max(0, len(self.view.transfers) - 3) + max(0, incoming - 3)
        shown: list[str] = []
        for i, part in enumerate(parts):  # as many as fit beside the count of the rest
            rest = hidden + len(parts) - i - 1
            line = "  |  ".join([*shown, part, *([f"+{rest} more (`top`)"] if rest else [])])
            if shown and len(line) > width:
                hidden += len(parts) - i
                break
            shown.append(part)
        if hidden:  # `transfers` lists the sends, `top` both
            shown.append(f"+{hidden} more (`top`)")
        if self.view.stopped:
            return "no node running for the data dir; `help` lists the commands"
        return "  |  ".join(shown) or f"mode {self.view.mode or '?'}; `help` lists the commands"

    # -- the loops ----------------------------------------------------------------------

    def run(self) -> int:
        """Run until quit, Ctrl-D or the end of stdin; the exit code."""
        from peercrypt.cli import receive

        named, receive.COMMAND = receive.COMMAND, ""  # hints name its commands (`cancel in4`)
        try:
            if not self.interactive:
                return self._run_script(sys.stdin)
            return self._run_prompt()
        finally:
            receive.COMMAND = named

    def _run_script(self, lines: Iterable[str]) -> int:
        streams = sys.stderr
        sys.stderr = _Held(self, sys.stderr, True)  # hints name the commands as a script has them
        try:
            for line in lines:
                code = self.run_line(line)
                if code is None:
                    break
                if code != errors.OK:
                    self.failures.append(code)
                if code in ENDED:  # a SIGTERM or SIGHUP cancelled the line's send: the end
                    break
        finally:
            sys.stderr = streams
        return self.failures[0] if self.failures else errors.OK

    def _run_prompt(self) -> int:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory
        from prompt_toolkit.patch_stdout import patch_stdout

        self.data_dir.mkdir(parents=True, exist_ok=True)
        # What the history says of a line it keeps out is told once the
        # prompt has returned the line: said on the prompt's own loop as it
        # accepts the line, it went to patch_stdout's writer, whose hand-off
        # to a loop that was just ending could be lost.
        notes: list[str] = []
        session: PromptSession[str] = PromptSession(
            history=private_history(FileHistory, self.data_dir / HISTORY_FILE, notes.append),
            completer=ShellCompleter(self),
            complete_while_typing=False,
            bottom_toolbar=self.toolbar,
        )
        self.prompt_app = session.app
        if threading.current_thread() is threading.main_thread():
            # SIGWINCH tells it of a resize: no polling of the terminal's
            # size (two wake-ups a second).
            session.app.terminal_size_polling_interval = None
        watcher = threading.Thread(target=self.watch, args=(self.say,), daemon=True)
        watcher.start()
        click.echo("type `help` for the commands, Ctrl-D to leave")
        ended = errors.OK
        streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Held(self, sys.stdout, False), _Held(self, sys.stderr, True)
        try:
            while True:
                try:
                    # Output of other threads goes above the prompt while it is shown;
                    # a command in the foreground has the terminal to itself.
                    with patch_stdout(raw=True), _logs_to(sys.stderr):
                        # (the hints of a line written above the prompt too)
                        sys.stderr = _Held(self, sys.stderr, True)
                        line = session.prompt(PROMPT)
                    while notes:
                        click.echo(notes.pop(0))
                except KeyboardInterrupt:
                    continue  # Ctrl-C at the prompt clears the line
                except EOFError:
                    if self._may_leave():
                        break
                    continue
                try:
                    code = self.run_line(line)
                except KeyboardInterrupt:
                    code = 130
                    click.echo("peercrypt: error: interrupted", err=True)
                except click.Abort:  # Ctrl-C or Ctrl-D in a question
                    code = 130
                    click.echo("", err=True)
                if code is None:
                    if self._may_leave():
                        break
                    continue
                if code in ENDED:  # a SIGTERM or SIGHUP cancelled the line's send: the end
                    ended = code
                    break
        finally:
            sys.stdout, sys.stderr = streams
            self.stop.set()
            self.watch_wake.set()
            watcher.join(timeout=5.0)
        running = [j for j in self.jobs if j.running]
        if running and self.owns_node:  # `start`: its node stops now, and they with it
            ends = "ends" if len(running) == 1 else "end"
            click.echo(f"{_sends(len(running))} {ends} with the node", err=True)
        elif running:
            click.echo(f"{_sends(len(running))} still running in the node", err=True)
        return ended

    def _may_leave(self) -> bool:
        """Whether to leave the prompt of `start` now: asked when background
        sends would end with its node (quit and Ctrl-D ended them unasked);
        Ctrl-C or Ctrl-D at the question leaves."""
        running = [j for j in self.jobs if j.running]
        if not (running and self.owns_node):
            return True
        ends = "ends" if len(running) == 1 else "end"
        question = f"{_sends(len(running))} {ends} with the node: leave anyway?"
        try:
            return click.confirm(question, default=False, err=True)
        except click.Abort:
            return True


# What a followed send exits with when SIGTERM or SIGHUP cancelled it
# (peercrypt/cli/follow.py): the shell ends too, as the signal asked.
ENDED = frozenset({128 + signal.SIGTERM, 128 + signal.SIGHUP})


def _sends(count: int) -> str:
    return f"{count} background send{'' if count == 1 else 's'}"


def _wants_help(words: list[str]) -> bool:
    return "--help" in words or "-h" in words


def _ask(client: ControlClient, request: Any, reply_type: Any, attr: str) -> list[Any]:
    client.send(request(request=client.next_id()))
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        reply = client.receive(1.0)
        if isinstance(reply, reply_type):
            return list(getattr(reply, attr))
    return []


# Set in a background send's thread: what it writes is held while `top` runs.
_background = threading.local()
# `peercrypt CMD` in a hint, CMD a command of the shell (`peercrypt node` stays).
_HINT = re.compile(rf"`peercrypt (?!(?:{'|'.join(sorted(NOT_IN_SHELL))})\b)")


class _Held:
    """The prompt's stdout or stderr (beneath prompt_toolkit's own while the
    prompt is shown): what a background send's thread writes while `top`
    has the screen (its result line, a note) is held and told once `top`
    ends, not written into its alternate screen and lost with it (found by
    use: the `[N] done` line came, the result line it followed never did).
    On stderr (errors and notes: what hints are in; stdout carries data,
    `--json`, `top`'s frames) a command named in a hint (`` `peercrypt
    status` ``, the node's words too) is named as typed here, without the
    `peercrypt` in front; one that is no shell command keeps it."""

    def __init__(self, shell: Shell, stream: Any, err: bool) -> None:
        self._shell, self._stream, self._err = shell, stream, err

    def write(self, text: Any) -> int:
        if not isinstance(text, str):
            return int(self._stream.write(text))
        told = len(text)
        if self._err:
            text = _HINT.sub("`", text)
        if getattr(_background, "on", False) and self._shell.hold(text, self._err):
            return told
        self._stream.write(text)
        return told

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding, fileno ...
        return getattr(self._stream, name)


@contextlib.contextmanager
def _logs_to(stream: Any) -> Iterator[None]:
    """Point the log handlers that write to the terminal at ``stream`` (the
    prompt-safe stderr, above the prompt) meanwhile. One writing elsewhere
    (`start --debug 2>file`) keeps its stream: the proxy would draw its
    lines on the terminal, at the prompt."""
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and _on_terminal(h.stream)
    ]
    saved = [h.setStream(stream) for h in handlers]
    try:
        yield
    finally:
        for handler, old in zip(handlers, saved, strict=True):
            if old is not None:
                handler.setStream(old)


def _on_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def holds_secret(line: str) -> bool:
    """Whether a line typed at the prompt gives the network key itself
    (``--network-key KEY`` or ``--network-key=KEY``; a key file's name is
    no secret)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        words = line.split()
    return any(w == "--network-key" or w.startswith("--network-key=") for w in words)


def private_history(base: Any, path: Path, say: Callable[[str], None]) -> Any:
    """The prompt's history file (prompt_toolkit's ``FileHistory`` as
    ``base``), readable by its owner only, keeping no line that gives the
    network key: such a line is recalled in this session, never written."""

    class _Private(base):  # type: ignore[misc]
        told = False

        def store_string(self, string: str) -> None:
            if holds_secret(string):
                if not self.told:
                    say("(a line giving --network-key is not kept in the shell's history)")
                    self.told = True
                return
            super().store_string(string)

    with contextlib.suppress(OSError):  # (unreadable or elsewhere: prompt_toolkit's error)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        os.chmod(path, 0o600)  # one from an earlier release, made with the umask's mode
    return _Private(str(path))


class ShellCompleter:
    """Completion of commands, options, file paths and known peers."""

    def __new__(cls, shell: Shell) -> Any:
        from prompt_toolkit.completion import Completer, Completion, PathCompleter
        from prompt_toolkit.document import Document

        paths = PathCompleter(expanduser=True)

        class _Completer(Completer):
            def get_completions(self, document: Document, complete_event: Any) -> Any:
                text = closed = document.text_before_cursor
                for closing in ("", "'", '"'):  # a quote opened and not closed yet
                    try:
                        closed = text + closing
                        words = shlex.split(closed)
                        break
                    except ValueError:
                        continue
                else:
                    return
                if closed.endswith((" ", "\t")) or not words:
                    words.append("")
                current = words[-1]
                typed = 0 if closed.endswith((" ", "\t")) else typed_length(closed, current)
                typed -= len(closed) - len(text)
                for candidate in candidates(shell, words):
                    if candidate.startswith(current):
                        yield Completion(candidate, start_position=-typed)
                if len(words) > 1 and argument_kind(shell, words) == "path":
                    # The whole word again, quoted as the line needs it (a
                    # name with a space went in bare: two words).
                    for c in paths.get_completions(Document(current), complete_event):
                        whole = current[: len(current) + c.start_position] + c.text
                        yield Completion(quoted(whole), start_position=-typed, display=c.display)

        return _Completer()


def typed_length(text: str, word: str) -> int:
    """How many characters the line's last word ``word`` (as shlex read it)
    takes as typed, its quotes and backslashes included."""
    for start in range(len(text) - 1, -1, -1):
        if start and text[start - 1] not in " \t":
            continue
        try:
            if shlex.split(text[start:]) == [word]:
                return len(text) - start
        except ValueError:
            continue
    return len(word)


def quoted(word: str) -> str:
    """``word`` as typed at the prompt: quoted if the line would split or
    change it, a leading ``~/`` left outside the quotes (expanded)."""
    if word.startswith("~/"):
        return "~/" + (shlex.quote(word[2:]) if word[2:] else "")
    return shlex.quote(word) if word else word


def expand_home(word: str) -> str:
    """``~`` and ``~/...`` (and ``~user/...``) at a word's start, as a
    shell expands them: completion offers those paths."""
    return os.path.expanduser(word) if word.startswith("~") else word


def command_names(shell: Shell) -> list[str]:
    ctx = click.Context(shell.group, info_name="peercrypt")
    names = [n for n in shell.group.list_commands(ctx) if n not in NOT_IN_SHELL]
    return sorted({*names, *SHELL_COMMANDS})


def argument_kind(shell: Shell, words: list[str]) -> str:
    """What the word being typed is: "option", or the positional argument's kind."""
    current = words[-1]
    if current.startswith("-"):
        return "option"
    positional = [w for w in words[1:-1] if not w.startswith("-")]
    kinds = ARGUMENTS.get(words[0], ("path",))
    return kinds[len(positional)] if len(positional) < len(kinds) else "path"


def candidates(shell: Shell, words: list[str]) -> list[str]:
    """Completions of the last word (paths come from prompt_toolkit)."""
    if len(words) == 1:
        return command_names(shell)
    kind = argument_kind(shell, words)
    if kind == "option":
        ctx = click.Context(shell.group, info_name="peercrypt")
        command = shell.group.get_command(ctx, words[0])
        if command is None:
            return []
        opts = [o for p in command.params if isinstance(p, click.Option) for o in p.opts]
        return sorted({*opts, "--help"})
    if kind == "host":
        return sorted({p.rpartition(":")[0] for p in shell.known_peers()})
    if kind == "port":
        host = [w for w in words[1:-1] if not w.startswith("-")][-1]
        return sorted({p.rpartition(":")[2] for p in shell.known_peers() if p.startswith(host)})
    if kind == "mode":
        return list(ALL_MODES)
    if kind == "gossip":
        return ["on", "off", "interval"]
    if kind == "congestion":
        return list(CONGESTION_KEYS)
    if kind == "command":
        return command_names(shell)
    return []


# -- the commands ------------------------------------------------------------------------


def attach(ctx: click.Context, owns_node: bool) -> int:
    """Run a shell on the data dir's node (which must answer)."""
    group = ctx.find_root().command
    assert isinstance(group, click.Group)
    shell = Shell(group, ctx.obj, owns_node=owns_node)
    return shell.run()


@click.command("shell")
@click.pass_context
def shell_command(ctx: click.Context) -> None:
    """A prompt for the node running for the data dir (see `peercrypt start`)."""
    data_dir: Path = ctx.obj["data_dir"]
    try:
        with ControlClient.for_data_dir(data_dir) as client:
            client.status(timeout=2.0)
    except NodeUnavailable as exc:
        raise UserError(
            f"{exc} (start one with `peercrypt start` or `peercrypt node`)", errors.FAILED
        ) from None
    sys.exit(attach(ctx, owns_node=False))


@click.command("start")
@node_options
@click.pass_context
def start_command(ctx: click.Context, /, **_: Any) -> None:
    """Run a node and a prompt on it in one process (the node stops when you leave).

    Takes every option of `peercrypt node`.
    """
    settings, _eff = node_settings(ctx.obj, ctx)
    running = run_node(ctx.obj, settings, quiet_logs=True)  # the prompt stays readable
    configure.STARTED_WITH.clear()  # (one node a process; a test may start another)
    configure.STARTED_WITH.update(configure.node_flags(ctx))  # its prompt's `config show`
    # The prompt has the main thread: crashed actors are restarted from another.
    running.supervisor.run_in_background()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(errors.OK))
    try:
        code = attach(ctx, owns_node=True)
    finally:
        click.echo("stopping the node", err=True)
        running.stop()
    sys.exit(code)
