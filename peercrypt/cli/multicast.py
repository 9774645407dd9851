"""CLI for multicast (docs/multicast.md).

``send FILE HOST PORT -m [--to HOST:PORT ...]`` (asks for more targets on a
terminal when no ``--to`` is given), ``send FILE HOST PORT -dual --to
HOST:PORT`` (exactly two targets) and ``send ... --mode multicast --to ...``
hand the file to the node's multicast sender; without them ``send`` is the
unicast command it always was. ``multicast-receive [PORT-RANGE]`` (alias
``mreceive``) rebinds the running node's unicast repair port into the range
and reports the multicast sessions it receives.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from peercrypt import errors
from peercrypt.cli import precheck
from peercrypt.cli.common import FiniteRange, UserError, check_resolvable
from peercrypt.cli.fast import source_paths
from peercrypt.cli.follow import follow, refusal
from peercrypt.cli.progress import echo, progress_view
from peercrypt.cli.send_report import file_bytes, sent_names, tree_counts
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.core.address import dialled_target, join_host_port, split_host_port
from peercrypt.errors import ResultCode
from peercrypt.sizes import readable
from peercrypt.wire.codec import Message
from peercrypt.wire.messages import ErrorReply
from peercrypt.wire.multicast_messages import (
    MAX_TARGETS,
    McListen,
    McListenEnd,
    McListening,
    McReceived,
    McSendRequest,
    McSendResult,
    McTargetResult,
)
from peercrypt.wire.network_messages import CheckResult


def parse_target(text: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> normalised ``HOST:PORT``; UserError if invalid."""
    try:
        return join_host_port(*split_host_port(text))
    except ValueError:
        raise UserError(f"invalid target {text!r}: expected HOST:PORT (port 1-65535)") from None


def parse_port_range(text: str) -> tuple[int, int]:
    found = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", text)  # ("7600-" was 7600)
    if found is None:
        raise UserError(f"invalid port range {text!r}: expected PORT or LOW-HIGH")
    lo = int(found[1])
    hi = int(found[2]) if found[2] is not None else lo
    if not 1 <= lo <= hi <= 65535:
        raise UserError(f"invalid port range {text!r}: need 1 <= LOW <= HIGH <= 65535")
    return lo, hi


def typed_target(text: str) -> str:
    """A target typed at the prompt: ``HOST:PORT``, or ``HOST PORT`` as the
    command line names the first one; UserError if invalid."""
    words = text.split()
    if len(words) == 2 and words[1].isdigit():
        text = join_host_port(words[0].strip("[]"), int(words[1]))
    return parse_target(text)


def ask_targets(
    first: list[str], dual: bool, ask: Callable[[str], str], say: Callable[[str], None]
) -> list[str]:
    """``first`` and the targets the user types (``ask`` a question, the
    answer back): for ``-dual`` the second and no more, else more until an
    empty answer (or :data:`MAX_TARGETS`). A typo, or a target named
    already, is said (``say``) and asked again."""
    out = list(first)
    while len(out) < (2 if dual else MAX_TARGETS):
        question = "the second target" if dual else "another target"
        text = ask(f"{question} HOST:PORT" + ("" if dual else " (empty to start)")).strip()
        if not text:
            break
        try:
            target = typed_target(text)
        except UserError as exc:  # a typo at the prompt: ask again, the send goes on
            say(f"{exc.message}; try again")
            continue
        same = next((t for t in out if dialled_target(t) == dialled_target(target)), None)
        if same is not None:
            said = target if same == target else f"{target} (as {same})"
            say(f"{said} is a target already; try again")
            continue
        out.append(target)
    return out


def _prompt(question: str) -> str:
    return str(click.prompt(question, default="", show_default=False, err=True))


def _one_each(targets: list[str]) -> list[str]:
    """One target per receiver, however spelt (``localhost:P`` is
    ``127.0.0.1:P``), under the first spelling given: the same node twice in
    one session was sent the file twice, and its end told twice."""
    named: dict[str, str] = {}
    for target in targets:
        named.setdefault(dialled_target(target), target)
    return list(named.values())


def targets(host: str, port: int, to: tuple[str, ...], multi: bool, dual: bool) -> list[str]:
    targets = _one_each([parse_target(f"{host}:{port}")] + [parse_target(t) for t in to])
    if (multi or dual) and not to and sys.stdin.isatty():
        asked = ask_targets(targets, dual, _prompt, functools.partial(click.echo, err=True))
        targets = _one_each(asked)
    if dual and len(targets) != 2:
        how = "give the second with --to HOST:PORT" if len(targets) < 2 else "one --to only"
        raise UserError(f"-dual needs exactly two different targets (got {len(targets)}: {how})")
    if len(targets) > MAX_TARGETS:
        raise UserError(f"at most {MAX_TARGETS} multicast targets")
    for target in targets:
        name, _, number = target.rpartition(":")
        check_resolvable(name, int(number))
    return targets


def multicast_send(
    client: ControlClient,
    *,
    files: list[Path],
    targets: list[str],
    as_json: bool,
    show: bool,
    chunk_size: int,
    timeout: float,
    group: str,
    expect: list[str],
) -> NoReturn:
    """Hand ``files`` (a file, a folder, or several: one session) to the
    node's multicast sender and report each receiver. In the shell on a
    terminal (:func:`peercrypt.cli.precheck.asks`) the targets are checked
    first, and those that fail are left out if the user says proceed."""
    paths = source_paths(files)
    path = paths[0]
    skipped: dict[str, CheckResult] = {}
    if precheck.asks():
        skipped = _unreachable(client, targets, timeout)
        targets = [t for t in targets if t not in skipped]
    request = client.next_id()
    ask = McSendRequest(
        request=request,
        path=str(path),
        more=[str(p) for p in paths[1:]],
        targets=targets,
        chunk_size=chunk_size,
        timeout=timeout,
        group=group,
        expect=expect,
        quiet=not show,
    )
    result = follow(
        client,
        request,
        path,
        McSendResult,
        timeout,
        view=functools.partial(progress_view, paths, show),
        ask=ask,
        on_other=functools.partial(_target_result, as_json),
    )
    if skipped:
        result = _with_skipped(result, skipped, as_json)
    _report(result, paths, as_json)


def _unreachable(
    client: ControlClient, targets: list[str], timeout: float
) -> dict[str, CheckResult]:
    """The pre-send check of every target at once, within the send's
    ``timeout`` (as a unicast send's own check): the ones that failed, each
    named with its cause, after the user said to proceed without them.
    Exits 3 if the user aborts, or if no target passed (nothing to send)."""
    if len(targets) == 1:
        echo(f"checking {targets[0]} ...")
    else:
        echo(f"checking {len(targets)} targets ...")
    try:
        with client.sibling() as own:  # (its replies apart from the send's)
            checked = precheck.check_targets(own, targets, budget=timeout)
    except NodeUnavailable:
        raise UserError("the local node stopped", errors.FAILED) from None
    failed = {t: r for t, r in checked.items() if r.code != ResultCode.OK}
    for target, result in failed.items():
        echo(f"the health check of {target} failed: {result.reason or result.code}")
    if failed and len(failed) == len(targets):
        raise UserError(
            f"no target passed the health check (of {len(targets)}): nothing sent",
            errors.UNREACHABLE,
        )
    if failed and not precheck.proceed_or_abort(err=True):
        echo("send aborted")
        sys.exit(errors.UNREACHABLE)
    return failed


def _with_skipped(
    result: McSendResult, skipped: dict[str, CheckResult], as_json: bool
) -> McSendResult:
    """``result`` with the targets left out after a failed check as failed
    receivers (said a line each, as the others were), counted in its reason
    and exit code."""
    rows = [
        {
            "target": target,
            "code": check.code,
            "error": (check.reason or check.code)[:300],
            "stored_as": "",
            "seconds": "0.000",
            "held": "0",
        }
        for target, check in skipped.items()
    ]
    if not as_json:
        for row in rows:
            echo(f"  {row['target']}: failed ({row['code']}): {row['error']}")
    if not result.results:  # the send failed as a whole (refused, unreadable): its own cause
        return dataclasses.replace(result, results=rows)
    receivers = [*result.results, *rows]
    # As the sender words it: the first receiver that failed gives the code and cause.
    failed = [r for r in receivers if r.get("code") != ResultCode.OK]
    first = failed[0]
    return dataclasses.replace(
        result,
        code=first["code"],
        reason=f"{len(receivers) - len(failed)} of {len(receivers)} receivers verified; "
        + first["error"],
        digest=b"",
        results=receivers,
    )


def _target_result(as_json: bool, msg: Message) -> None:
    """One receiver's outcome (or a note about a target not there yet)."""
    if not isinstance(msg, McTargetResult):
        return
    if msg.code == "waiting":
        echo(f"peercrypt: note: {msg.reason}")
    elif as_json:
        pass
    elif msg.code == ResultCode.OK and msg.held:
        echo(f"  {msg.target}: had it, stored as {msg.stored_as} (nothing sent)")
    elif msg.code == ResultCode.OK:
        echo(f"  {msg.target}: verified, stored as {msg.stored_as}")
    else:
        echo(f"  {msg.target}: failed ({msg.code}): {msg.reason}")


def _report(result: McSendResult, paths: list[Path], as_json: bool) -> NoReturn:
    path = paths[0]
    ok = result.code == ResultCode.OK
    held, count = int(result.stats.get("held", 0)), len(result.results)
    # Each receiver's rate; none (0 in --json) where every receiver had it and
    # nothing crossed, as the line says ("all 2 had it: nothing sent").
    crossed = not (ok and held and held >= count)
    rate = result.size / result.seconds / 2**20 if result.seconds > 0 and crossed else 0.0
    files, skipped = tree_counts(result.stats, as_json)
    tree = "files" in result.stats  # a folder (perhaps of no file) or several files
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": ok,
                    "code": result.code,
                    "error": result.reason or None,
                    "file": str(path),
                    "mode": "multicast",
                    "size": result.size,
                    "blake3": result.digest.hex() if ok else None,
                    "seconds": round(result.seconds, 3),
                    "mib_per_s": round(rate, 1),
                    "files": files or None,
                    "file_bytes": file_bytes(result.stats, result.size) if tree else None,
                    "skipped": skipped if files else None,
                    "receivers": [{**r, "held": r.get("held") == "1"} for r in result.results],
                    "stats": result.stats,
                }
            )
        )
    elif ok:
        if not crossed:  # no rate: nothing crossed (as send's "had it all")
            how = f"all {count} had it: nothing sent"
        else:
            had = f"; {held} of them had it" if held else ""
            how = f"{readable(rate * 2**20, rate=True)} each{had}"
        counted = f"{files} file{'' if files == 1 else 's'}, " if tree else ""
        click.echo(
            f"sent {sent_names(paths)} ({counted}"
            f"{file_bytes(result.stats, result.size) if tree else result.size} bytes) "
            f"to {count} receiver{'s' if count != 1 else ''} by multicast in "
            f"{result.seconds:.2f} s ({how}), "
            f"blake3 {result.digest.hex()} verified by all"
        )
    else:
        click.echo(f"peercrypt: error: {result.reason}", err=True)
    sys.exit(errors.exit_code(result.code))


# -- multicast-receive ---------------------------------------------------------------------


def _receive(
    obj: dict[str, Any], port_range: str | None, count: int, timeout: float, as_json: bool
) -> None:
    low, high = parse_port_range(port_range) if port_range else (0, 0)
    data_dir: Path = obj["data_dir"]
    failures = received = 0
    try:
        with ControlClient.for_data_dir(data_dir) as client:
            client.status(timeout=2.0)
            request = client.next_id()
            client.send(McListen(request=request, low=low, high=high, count=count))
            # --timeout counts from the node's answer that it listens (a loaded
            # node may take longer than a short --timeout to bind and say so);
            # that answer itself is waited for READY_WAIT s at most.
            asked = time.monotonic()
            deadline: float | None = None
            ready = False
            while True:
                now = time.monotonic()
                if not ready and now - asked > READY_WAIT:
                    raise UserError(
                        f"the node did not say it listens within {READY_WAIT:g} s",
                        errors.FAILED,
                    )
                left = deadline - now if deadline is not None else 1.0
                if left <= 0:
                    got = f"{received} of {count}" if count else f"{received}"
                    raise UserError(
                        f"timed out after {timeout:g} s ({got} sessions received)", errors.FAILED
                    )
                try:
                    msg = client.receive(min(1.0, left))
                except NodeUnavailable:
                    if not client.node_alive():
                        raise UserError("the local node stopped", errors.FAILED) from None
                    continue
                if isinstance(msg, McListening):
                    if msg.code != ResultCode.OK:
                        raise UserError(msg.reason, errors.USAGE)
                    ready = True
                    if timeout:
                        deadline = time.monotonic() + timeout
                    if as_json:
                        click.echo(json.dumps({"ready": True, "repair_port": msg.repair_port}))
                    else:
                        until = "" if count or timeout else "; Ctrl-C stops waiting"
                        click.echo(
                            f"ready for multicast sessions (repair port {msg.repair_port}{until})",
                            err=True,
                        )
                elif isinstance(msg, McReceived):
                    received += 1
                    failures += not msg.ok
                    _print_received(msg, as_json)
                elif isinstance(msg, McListenEnd):
                    break
                elif isinstance(msg, ErrorReply):
                    raise UserError(refusal(msg), errors.FAILED)
    except NodeUnavailable as exc:
        raise UserError(f"{exc} (start one with `peercrypt node`)", errors.FAILED) from None
    except KeyboardInterrupt:
        pass
    sys.exit(errors.FAILED if failures else errors.OK)


def _print_received(msg: McReceived, as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": msg.ok,
                    "name": msg.name,
                    "stored_as": msg.stored_as or None,
                    "size": msg.size,
                    "error": msg.reason or None,
                    "held": msg.held,
                }
            )
        )
    elif msg.ok and msg.held:
        click.echo(f"had {msg.name} ({msg.size} bytes) already as {msg.stored_as}, verified")
    elif msg.ok:
        click.echo(f"received {msg.name} ({msg.size} bytes) as {msg.stored_as}, verified")
    else:
        click.echo(f"peercrypt: error: {msg.name}: {msg.reason}", err=True)


READY_WAIT = 10.0  # seconds for the node to say it listens (it binds the repair port)
_RANGE_HELP = (
    "PORT-RANGE (PORT or LOW-HIGH): where this node's unicast repair socket listens "
    "(repairs for one receiver and catch-up of a slow or late one come there)."
)


def _receive_command(name: str, hidden: bool) -> click.Command:
    @click.command(
        name, hidden=hidden, help=f"Join multicast sessions and report them. {_RANGE_HELP}"
    )
    @click.argument("port_range", required=False, metavar="[PORT-RANGE]")
    @click.option("--count", type=click.IntRange(0), default=0, help="Stop after N sessions.")
    @click.option(
        "--timeout",
        type=FiniteRange(0),
        default=0.0,
        help="Give up S seconds after the node listens (0: never).",
    )
    @click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
    @click.pass_obj
    def command(
        obj: dict[str, Any], port_range: str | None, count: int, timeout: float, as_json: bool
    ) -> None:
        _receive(obj, port_range, count, timeout, as_json)

    return command


multicast_receive = _receive_command("multicast-receive", hidden=False)
mreceive = _receive_command("mreceive", hidden=True)
