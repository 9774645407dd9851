"""The two commands a user runs most, without click: ``status`` and ``send``
through the data dir's running node.

Building the click group, a command's options and the settings table they
name costs about as much CPU as the rest of such a command. :func:`run`
takes only command lines whose meaning is plain, and does what the click
command would do with them:

    [--data-dir DIR] status [--json] [--data-dir DIR]
    [--data-dir DIR] send FILE... HOST PORT [--json] [--no-progress] [--progress]
        [--timeout S] [--chunk-size SIZE] [--force] [--expect FINGERPRINT] [--data-dir DIR]
        [-t N | --threads N]

(options in any order among the arguments, ``--name=value`` or ``--name
value`` (``-t N`` only so), each at most once; ``-t N`` is a parallel send
on N lanes, as the command makes it, so a ``-t`` send starts as cheaply as a
normal one). It declines (returns None, and the click command runs as
before) everything else: help, any other option, any value click would
refuse (a missing or unreadable file, a port, a timeout or a ``-t`` out of
range, a host that does not resolve, two files of the same name), no node
answering for the data dir, and a node whose default mode is multicast
(unless ``-t`` names the mode).
So every usage error, help text and other path stays click's own;
``tests/test_cli_fast.py`` checks that each line it takes sends the same
request and prints the same as the click command. The progress bar is the
command's own (:mod:`peercrypt.cli.progress`).

A send is one request to the node, answered until its verified result: no
status round trip first (the node's first reply, at once, says it took the
request; without one within 2 s the request is cancelled and click's path,
which may start a temporary node, runs instead).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from peercrypt import config_sources as sources
from peercrypt import errors
from peercrypt.chunking import DEFAULT_MAX_CHUNK, DEFAULT_MIN_CHUNK, MAX_CHUNK, MIN_CHUNK
from peercrypt.sizes import parse_size

FIRST_REPLY = 2.0  # seconds the node has to take a request (as for `status`)
MIN_TIMEOUT, MAX_TIMEOUT, DEFAULT_TIMEOUT = 0.1, 3600, 10.0  # send --timeout (seconds)

# command: (flags, options with a value)
# (``--data-dir`` after the command wins over one before it, as in the group.)
TAKES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "status": (frozenset({"--json"}), frozenset({"--data-dir"})),
    "send": (
        frozenset({"--json", "--no-progress", "--progress", "--force"}),
        frozenset({"--timeout", "--chunk-size", "--expect", "--data-dir", "--threads"}),
    ),
}
SHORT = {"-t": "--threads"}  # short options with a value (``-t N``, never ``-t=N``, ``-tN``)


@dataclass
class Line:
    """A command line the fast path takes, as parsed."""

    command: str
    data_dir: Path | None = None
    flags: set[str] = field(default_factory=set)
    values: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


def parse(argv: list[str]) -> Line | None:
    """``argv`` (after ``peercrypt``) if it is one of the plain forms above, else None."""
    i, data_dir = 0, None
    while i < len(argv) and argv[i].startswith("-"):  # the group's options
        name, eq, value = argv[i].partition("=")
        if name != "--data-dir" or data_dir is not None:
            return None
        if not eq:
            i += 1
            if i == len(argv):
                return None
            value = argv[i]
        if not value or value.startswith("-"):
            return None
        data_dir = value
        i += 1
    if i == len(argv) or argv[i] not in TAKES:
        return None
    line = Line(argv[i], Path(data_dir) if data_dir is not None else None)
    flags, options = TAKES[line.command]
    rest = argv[i + 1 :]
    j = 0
    while j < len(rest):
        token = rest[j]
        j += 1
        if not token.startswith("-"):
            line.args.append(token)
            continue
        name, eq, value = token.partition("=")
        if name in SHORT and not eq:  # ``-t=4`` stays unknown: click reads the value "=4"
            name = SHORT[name]
        if name in flags and not eq and name not in line.flags:
            line.flags.add(name)
        elif name in options and name not in line.values:
            if not eq:
                if j == len(rest):
                    return None
                value, j = rest[j], j + 1
            if value.startswith("-"):
                return None
            line.values[name] = value
        else:  # "-", "--", help, any other option, a repeated one
            return None
    if "--data-dir" in line.values:
        if not line.values["--data-dir"]:
            return None
        line.data_dir = Path(line.values.pop("--data-dir"))
    return line


def data_dir_of(line: Line) -> Path | None:
    """The data dir as ``peercrypt.cli.app.invocation`` resolves it (None:
    a value click would refuse, a ``.env`` it cannot read, or a config file
    named by ``PEERCRYPT_CONFIG`` that does not exist)."""
    flag = line.data_dir
    if flag is not None and flag.exists() and not (flag.is_dir() and os.access(flag, os.R_OK)):
        return None  # click.Path(file_okay=False) refuses it
    try:
        dotenv = sources.read_env_file(Path.cwd() / sources.ENV_FILE)
    except sources.ConfigError:
        return None
    data_dir = sources.data_dir_from(flag, os.environ, dotenv, sources.default_data_dir())
    config, required = sources.config_path_from(None, os.environ, dotenv, data_dir)
    if required and not config.exists():
        return None  # the config file named does not exist: click says so
    return data_dir


def run(argv: list[str]) -> int | None:
    """Run ``peercrypt ARGV`` here and return its exit code, or None: not a
    line this path takes (nothing was done; run the click command)."""
    line = parse(argv)
    if line is None:
        return None
    data_dir = data_dir_of(line)
    if data_dir is None:
        return None
    try:
        if line.command == "status":
            return _status(line, data_dir)
        return _send(line, data_dir)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except errors.CommandError as exc:  # e.g. a node of another release: its one line
        _error(str(exc))
        return exc.exit_code


def _error(text: str) -> None:
    from peercrypt.cli.echo import echo

    echo(f"peercrypt: error: {text}", err=True)


def _status(line: Line, data_dir: Path) -> int | None:
    if line.args:
        return None
    from peercrypt.cli.status_view import show
    from peercrypt.client import AnotherRelease, ControlClient, NodeUnavailable

    try:
        with ControlClient.for_data_dir(data_dir) as client:
            reply = client.status()
    except NodeUnavailable:
        return None  # the command says why, with this data dir's fingerprint
    except AnotherRelease:
        if "--json" in line.flags:
            return None  # the command answers in JSON, with the fingerprint
        raise
    show(reply, "--json" in line.flags)
    return errors.OK


def _number(
    text: str | None, kind: Callable[[str], float], low: float, high: float
) -> float | None:
    """``text`` converted as click converts it, if within [low, high]."""
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        return None
    return value if low <= value <= high else None


def _send(line: Line, data_dir: Path) -> int | None:
    if len(line.args) < 3:
        return None
    *files, host, port_text = line.args
    port = _number(port_text, int, 1, 65535)
    timeout = _number(
        line.values.get("--timeout", str(DEFAULT_TIMEOUT)), float, MIN_TIMEOUT, MAX_TIMEOUT
    )
    # No --chunk-size: the receiver chooses within the default range.
    named = line.values.get("--chunk-size")
    chunk = _number(named or str(DEFAULT_MAX_CHUNK), parse_size, MIN_CHUNK, MAX_CHUNK)
    lanes = _number(line.values.get("--threads"), int, 1, 64)
    if port is None or timeout is None or chunk is None:
        return None
    if "--threads" in line.values and lanes is None:
        return None
    if not all(os.path.exists(f) and os.access(f, os.R_OK) for f in files):
        return None
    as_json = "--json" in line.flags
    expect = ""
    if "--expect" in line.values:
        from peercrypt.crypto.identity import normalise_fingerprint

        try:
            expect = normalise_fingerprint(line.values["--expect"])
        except ValueError:
            return None
    paths = source_paths(files)
    names = [p.name for p in paths]
    if len(set(names)) != len(names) or not _resolvable(host, int(port)):
        return None
    if not_utf8(paths) is not None:  # the command says so (the node would get a '?')
        return None
    from peercrypt.cli.follow import (
        answered_cancel,
        ended_text,
        ending_signals_cancel,
        follow,
        killed,
        stronger,
        with_late,
    )
    from peercrypt.cli.progress import progress_view, wanted
    from peercrypt.cli.send_report import report
    from peercrypt.client import AnotherRelease, ControlClient, NodeUnavailable
    from peercrypt.errors import ResultCode
    from peercrypt.wire.codec import Message
    from peercrypt.wire.local_messages import CancelRequest, ErrorReply, SendRequest, SendResult

    try:
        client = ControlClient.for_data_dir(data_dir)
    except NodeUnavailable:
        return None  # the command runs a temporary node
    show = wanted(as_json, "--no-progress" in line.flags, "--progress" in line.flags)
    with client:
        request = client.next_id()
        ask = SendRequest(
            request=request,
            path=str(paths[0]),
            more=[str(p) for p in paths[1:]],
            host=host,
            port=int(port),
            chunk_size=int(chunk),
            min_chunk=0 if named is not None else DEFAULT_MIN_CHUNK,
            timeout=timeout,
            force="--force" in line.flags,
            expect=expect,
            # -t alone selects parallel mode (peercrypt.cli.modes.select_mode).
            mode="parallel" if lanes is not None else None,
            lanes=int(lanes) if lanes is not None else None,
            quiet=not show,
        )
        result: SendResult | None = None
        first: Message | None = None
        sent = cancelled = False  # (known: held as each goes)
        try:
            with ending_signals_cancel(client) as interrupts:
                # Held from here (but while the socket only waits) until follow
                # takes over: a Ctrl-C from the request on cancels it, in
                # either (sent before the handlers, one then left it running).
                interrupts.taking_reply = True
                client.send(ask)
                sent = True
                try:
                    first = client.receive(FIRST_REPLY)
                except KeyboardInterrupt as exc:
                    # Under the handlers, a second signal held from the first:
                    # the cancel goes (put back first, one then stopped it),
                    # and the node's answer says how the send ended (it said
                    # "cancelled" unanswered: of a send verified meanwhile too).
                    cancelled = True
                    first = answered_cancel(client, request, exc, interrupts, SendResult)
                except (NodeUnavailable, AnotherRelease):
                    client.send(CancelRequest(request=request))  # should it arrive after all
                    cancelled = True
                    raise
                ours = isinstance(first, SendResult) and first.request == request
                interrupts.result_in_hand = ours
                if not ours and not isinstance(first, ErrorReply):
                    view = functools.partial(progress_view, paths, show)
                    result = follow(
                        client, request, paths[0], SendResult, timeout, view=view,
                        interrupts=interrupts,
                    )  # fmt: skip
        except (NodeUnavailable, AnotherRelease, KeyboardInterrupt) as exc:
            if isinstance(exc, KeyboardInterrupt) and not sent:
                text, code = ended_text(exc, unconfirmed="nothing was sent")
                _error(text)
                return code
            if isinstance(exc, KeyboardInterrupt) and interrupts.late is not None:
                exc = stronger(exc, interrupts.late)  # (a kill as the cancel went: its end)
            if not cancelled:
                client.send(CancelRequest(request=request))
            client.linger = int(FIRST_REPLY * 1000)
            if isinstance(exc, AnotherRelease):  # the click command would not read it either
                _error(f"{exc} (the transfer was cancelled)")
                return exc.exit_code
            if isinstance(exc, NodeUnavailable):
                return None
            text, code = ended_text(exc)
            _error(text)
            return code
        except errors.CommandError as exc:  # as the command says it
            stop = killed(exc, interrupts)  # (a kill held as it ended: its end)
            _error(str(stop))
            return stop.exit_code
        if isinstance(first, ErrorReply):  # it did not take the request
            if interrupts.late is not None:  # (a signal as it came: no click command after)
                text, code = ended_text(interrupts.late, unconfirmed="nothing was sent")
                _error(text)
                return code
            return None
        if ours:
            assert isinstance(first, SendResult)
            result = first
        try:
            ended = with_late(result, interrupts.late)
        except errors.CommandError as exc:  # a kill as it came
            _error(str(exc))
            return exc.exit_code
        except KeyboardInterrupt:  # a Ctrl-C as "multicast-default" came: nothing sent
            _error("interrupted")
            return 130  # (as ended_text says a Ctrl-C)
    if ended.code == ResultCode.MULTICAST_DEFAULT:
        return None  # the command asks the node for its mode and sends a multicast
    return report(ended, paths, host, int(port), as_json)


def source_paths(files: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The paths a send hands its node: absolute, the links among their
    folders resolved, but one named through a symbolic link keeps the
    link's name (its content read through it), as `scp link.bin host:`
    stores `link.bin`: resolved, it arrived under its target's name."""
    paths = []
    for f in files:
        path = Path(f)
        if path.is_symlink():
            paths.append(path.absolute().parent.resolve() / path.name)
        else:
            paths.append(path.resolve())
    return paths


def not_utf8(paths: list[Path]) -> Path | None:
    """The first of ``paths`` that is not UTF-8 (a byte of it is no
    character: handed on, the node would read a '?' and say "No such
    file"), or None."""
    for path in paths:
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            return path
    return None


def _resolvable(host: str, port: int) -> bool:
    """What ``peercrypt.cli.common.check_resolvable`` accepts (an IPv4
    address always: without loading the socket module and the IDNA codec)."""
    import ipaddress

    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    import socket

    try:
        socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return True
