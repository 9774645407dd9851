"""Following a request to the local node until its result: progress to a
view, notes to stderr, Ctrl-C cancels it in the node.

Light on purpose (no click, no settings table): the fast path of ``send``
(:mod:`peercrypt.cli.fast`) and the click commands use it alike; its end
without a result is a :class:`~peercrypt.errors.CommandError` (one line).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from peercrypt import errors
from peercrypt.client import AnotherRelease, ControlClient, NodeUnavailable
from peercrypt.errors import CommandError as Stop
from peercrypt.errors import ResultCode
from peercrypt.wire.codec import Message
from peercrypt.wire.local_messages import (
    CancelRequest,
    ErrorReply,
    McTargetProgress,
    Progress,
    SendResult,
)

R = TypeVar("R", bound=Message)

# Told the send's id in the node (``transfers``, ``cancel ID``) once its
# first progress names it: ``listener.on_transfer(id)``, if the thread that
# follows the send set one (the shell's background jobs: each runs the send
# command in a thread of its own).
listener = threading.local()


KEPT = " (the receiver keeps what arrived: sending it again resumes)"
CANCEL_WAIT = 5.0  # seconds a cancelled send's result is waited for
# What is known of a send whose cancel the node did not answer, or whose
# answer a second Ctrl-C did not wait for.
UNCONFIRMED = (
    f"the transfer was told to cancel, but the node did not answer within {CANCEL_WAIT:g} s "
    "(`peercrypt transfers` shows whether it still runs)"
)
NOT_WAITED = (
    "the transfer was told to cancel (its answer not waited for: "
    "`peercrypt transfers` shows whether it still runs)"
)
ACCEPTED = frozenset({"sending", "hashing", "verifying"})  # phases of a send the receiver took


def ended_text(
    exc: KeyboardInterrupt, kept: bool = False, unconfirmed: str = ""
) -> tuple[str, int]:
    """The line and exit code of a send cancelled by ``exc`` (Ctrl-C, or a
    SIGTERM or SIGHUP: :class:`Ended`); ``kept``: a unicast send under way,
    whose receiver keeps its part (docs/resume.md), which "cancelled" alone
    made a user think lost; ``unconfirmed``: what is known instead of
    "cancelled" when the node did not say how the send ended."""
    said = unconfirmed or f"the transfer was cancelled{KEPT if kept else ''}"
    if isinstance(exc, Ended):
        return f"{signal.Signals(exc.signum).name}: {said}", 128 + exc.signum
    return f"interrupted; {said}", 130


def follow(
    client: ControlClient,
    request: int,
    path: Path,
    result_type: type[R],
    timeout: float,
    *,
    view: Any = None,
    on_other: Callable[[Message], None] | None = None,
    ask: Message | None = None,
    interrupts: Interrupts | None = None,
) -> R:
    """Feed the progress of ``request`` to ``view`` (a
    :class:`peercrypt.cli.progress.ProgressView`, closed at the end, or a
    callable that makes one once the handlers are in, so that a Ctrl-C as
    it is made - tqdm's import - cancels the send as a later one does;
    None: nothing shown) until its ``result_type`` arrives.

    ``ask``: the request itself, sent once the handlers are in (a Ctrl-C
    before it went: nothing to cancel; sent before the handlers, a Ctrl-C
    then left the node sending for no one). ``interrupts``: the handlers of
    a caller that took the node's first reply under them (``send``'s fast
    path), used as they are, a signal held by the caller raised here; that
    caller applies :func:`with_late` and :func:`killed` once it put them
    back. Other replies to the request go to ``on_other``. Ctrl-C cancels
    the request in the node (exit 130). Raises CommandError when the node
    stops, or after ``timeout`` + 30 s of silence (it reports progress
    every 0.1 s), or at once, cancelling the request, when a reply cannot be
    read (the node runs another release).
    """
    phases: set[str] = set()  # the Progress phases seen
    result: R | None = None
    shown: Any = None  # the view, once made
    handlers = ending_signals_cancel(client) if interrupts is None else _kept(interrupts)
    try:
        with handlers as interrupts:
            asked = ask is None  # (known: held as it goes)
            try:  # (the bars closed before the handlers go back: a late kill finds them closed)
                interrupts.taking_reply = False  # (a caller's hold ends: one held is raised)
                interrupts.check()
                if ask is not None:
                    with interrupts.taking():
                        client.send(ask)
                        asked = True
                    interrupts.check()
                shown = view() if callable(view) else view
                result = _await_result(
                    client, request, shown, result_type, timeout + 30.0, on_other, phases,
                    interrupts,
                )  # fmt: skip
            except KeyboardInterrupt as exc:
                if not asked:
                    raise Stop(*ended_text(exc, unconfirmed="nothing was sent")) from None
                result = answered_cancel(
                    client, request, exc, interrupts, result_type, shown, on_other, phases
                )  # (returned: it had ended on its own before the cancel came)
            finally:
                if shown is not None:
                    shown.close()
        return with_late(result, interrupts.late)  # (a caller's handlers: no late yet)
    except AnotherRelease as exc:  # this command cannot follow it: nor would the next
        client.send(CancelRequest(request=request))
        stop = Stop(f"{exc} (the transfer was cancelled)", errors.FAILED)
        raise killed(stop, interrupts) from None
    except Stop as exc:  # the node's own end (a refusal), or a cancel's
        raise killed(exc, interrupts) from None
    finally:
        if shown is not None:
            shown.close()


def answered_cancel(
    client: ControlClient,
    request: int,
    exc: KeyboardInterrupt,
    interrupts: Interrupts,
    result_type: type[R],
    view: Any = None,
    on_other: Callable[[Message], None] | None = None,
    phases: set[str] | frozenset[str] = frozenset(),
) -> R:
    """Cancel ``request``, sent, for ``exc`` (Ctrl-C, or a kill: raised by
    ``interrupts``, which hold the next until the cancel went), and wait
    CANCEL_WAIT s at most for the node's answer, its result. Returned when
    the send had ended on its own before the cancel came (verified, or
    failed: it is what the command reports); else raises the Stop that
    says it was cancelled (``phases``: those its progress showed, for
    whether the receiver keeps a part), or what is known instead: no answer
    in time, or, with a second signal, its answer not waited for."""
    try:  # (a second signal since exc is held: the cancel goes all the same)
        client.send(CancelRequest(request=request))
        interrupts.ended_with()
    except KeyboardInterrupt as again:
        raise Stop(*ended_text(stronger(exc, again), unconfirmed=NOT_WAITED)) from None
    last: Message | None = None
    try:
        last = _await_result(
            client, request, view, result_type, CANCEL_WAIT, on_other, interrupts=interrupts
        )
    except Unanswered:  # neither the cancel's result nor a verdict came
        raise Stop(*ended_text(exc, unconfirmed=UNCONFIRMED)) from None
    except KeyboardInterrupt as again:  # Ctrl-C again (or a kill): not waited for
        raise Stop(*ended_text(stronger(exc, again), unconfirmed=NOT_WAITED)) from None
    except Stop:  # the node stopped (and the send with it), or refused
        pass
    code = str(getattr(last, "code", ""))
    if code == ResultCode.MULTICAST_DEFAULT:  # no end: the command would go on by multicast
        raise Stop(*ended_text(exc, unconfirmed="nothing was sent")) from None
    if isinstance(last, result_type) and code != ResultCode.CANCELLED:
        # It ended (verified, or failed) before the cancel came: so it is
        # said; a SIGTERM or SIGHUP still ends the command as one.
        return with_late(last, exc if isinstance(exc, Ended) else None)
    # the terminal closed, a `kill`: as Ctrl-C
    # Accepted: the receiver has a part (a multicast session's: its own);
    # seen in its progress, or in the cancelled send's result (no
    # progress with --json): its flow, or a retry's first accept.
    accepted = bool(phases & ACCEPTED) or (
        isinstance(last, SendResult)
        and bool(last.stats.get("chunks") or "held_share" in last.stats)
    )
    kept = result_type is SendResult and accepted
    raise Stop(*ended_text(exc, kept)) from None


@contextlib.contextmanager
def _kept(interrupts: Interrupts) -> Iterator[Interrupts]:
    """A caller's handlers, used as they are (it puts them back)."""
    yield interrupts


def stronger(first: KeyboardInterrupt, then: KeyboardInterrupt) -> KeyboardInterrupt:
    """Of two signals, the one the command ends by: a kill over a Ctrl-C."""
    return then if isinstance(then, Ended) and not isinstance(first, Ended) else first


def killed(stop: Stop, interrupts: Interrupts | None) -> Stop:
    """``stop``, or, where a SIGTERM or SIGHUP came as it was raised (held:
    ``late``) and it is not that signal's end already, the end by that
    signal (a shell that follows a send ends on 143 or 129 only)."""
    late = interrupts.late if interrupts is not None else None
    if isinstance(late, Ended) and stop.exit_code != 128 + late.signum:
        return Stop(f"{signal.Signals(late.signum).name}: {stop}", 128 + late.signum)
    return stop


def with_late(result: R | None, late: KeyboardInterrupt | None) -> R:
    """``result``, unless a signal came as it was taken (held, then kept
    for here: :class:`Interrupts`). A SIGTERM or SIGHUP ends the command
    as one (a shell too), saying how the send had ended; a Ctrl-C is
    dropped - the send had ended, and its result says how - but where the
    result is no end (``multicast-default``: the command would go on and
    send by multicast)."""
    assert result is not None
    code = str(getattr(result, "code", ""))
    if isinstance(late, Ended):
        how = "verified" if code == ResultCode.OK else code
        signame = signal.Signals(late.signum).name
        raise Stop(f"{signame}: it came as the transfer ended ({how})", 128 + late.signum)
    if late is not None and code == ResultCode.MULTICAST_DEFAULT:
        raise late
    return result


class Unanswered(Stop):
    """The node sent nothing for the request for longer than it may."""


class Ended(KeyboardInterrupt):
    """SIGTERM or SIGHUP while a command follows its send: it cancels the
    send as Ctrl-C does (else the node went on with a transfer nobody
    followed, its result seen by no one)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Interrupts:
    """Ctrl-C (SIGINT), SIGTERM and SIGHUP while the main thread follows a
    request: raised at once, but while a reply is taken (:meth:`taking`:
    from the socket's answer to the poll until the reply is in the
    command's hands) and from the result on (``result_in_hand``), where one
    is held: raised right after a reply that is no end (:meth:`check`), or
    kept for the caller once the handlers are back (``late``:
    :func:`with_late`). Raised as the send's verdict was being read, one
    lost it: the command then waited for a result the node had already
    sent, and said "interrupted; the transfer was cancelled" (exit 130) of a
    file its receiver verified. Raised at once elsewhere: a write that
    blocks (a full pipe) is interrupted as before. From one raised on
    (``ending``), the next are held until the caller is done with it
    (:meth:`ended_with`): a second Ctrl-C just after the first stopped the
    cancel the first was to send."""

    def __init__(self, client: ControlClient | None) -> None:
        self.client = client
        self.held: KeyboardInterrupt | None = None
        self.taking_reply = False
        self.result_in_hand = False  # (until the handlers are back)
        self.late: KeyboardInterrupt | None = None  # held as the result came
        self.ending = False  # one was raised: the next are held (ended_with)
        self.active = True  # (until its handlers are put back)

    def on_signal(self, signum: int, _frame: object) -> None:
        exc = KeyboardInterrupt() if signum == signal.SIGINT else Ended(signum)
        if not self.active:
            raise exc
        waiting = self.client is not None and self.client.waiting
        if self.ending or self.result_in_hand or (self.taking_reply and not waiting):
            if self.held is None or isinstance(exc, Ended):  # (a kill outranks a Ctrl-C)
                self.held = exc
            return
        self.ending = True
        raise exc

    def ended_with(self) -> None:
        """The interrupt raised is taken care of (its cancel sent): the
        next are raised again as before, one held meanwhile now."""
        self.ending = False
        self.check()

    @contextlib.contextmanager
    def taking(self) -> Iterator[None]:
        """While a reply is taken, or a request sent (a signal then is
        raised once it is known whether it went): signals held unless the
        client only waits."""
        self.taking_reply = True
        try:
            yield
        finally:
            self.taking_reply = False

    def check(self) -> None:
        """Raise the interrupt held, if one is."""
        held, self.held = self.held, None
        if held is not None:
            self.ending = True
            raise held


@contextlib.contextmanager
def ending_signals_cancel(client: ControlClient | None = None) -> Iterator[Interrupts]:
    """SIGTERM and SIGHUP raise :class:`Ended` meanwhile, Ctrl-C
    KeyboardInterrupt as ever; with ``client``, held while a reply is taken
    (:class:`Interrupts`). In the main thread only: a shell's background
    send follows in a thread of its own. The handlers are put back SIGINT's
    last, and a signal held then is kept in ``late`` (one that comes after
    meets the handlers put back: the caller closes its bars before)."""
    interrupts = Interrupts(client)
    if threading.current_thread() is not threading.main_thread():
        yield interrupts
        return
    # Only where the signal would end the command: one ignored (`nohup`)
    # or handled by whoever started it stays so.
    # Each put in inside the try: one that raises as the next goes in finds
    # the ones in put back (a handler left in, its hold on, held every
    # signal after: Ctrl-C stopped nothing more in a shell).
    previous: dict[signal.Signals, Any] = {}
    try:
        for sig, default in (
            (signal.SIGINT, signal.default_int_handler),
            (signal.SIGTERM, signal.SIG_DFL),
            (signal.SIGHUP, signal.SIG_DFL),
        ):
            if signal.getsignal(sig) is default:
                previous[sig] = signal.getsignal(sig)
                signal.signal(sig, interrupts.on_signal)
        yield interrupts
    finally:
        try:
            interrupts.result_in_hand = True  # (held from here, as handlers go back)
        finally:
            # SIGINT's last: until then every signal is held here (none
            # raises between two restores), and a Ctrl-C after it meets
            # handlers all put back.
            for signum in sorted(previous, key=lambda signum: signum == signal.SIGINT):
                signal.signal(signum, previous[signum])
            interrupts.late, interrupts.held = interrupts.held, None
            interrupts.active = False  # (were it left in anyway: it raises as the default)


def _await_result(
    client: ControlClient,
    request: int,
    view: Any,
    result_type: type[R],
    silence: float,
    on_other: Callable[[Message], None] | None,
    phases: set[str] | None = None,
    interrupts: Interrupts | None = None,
) -> R:
    quiet_since = time.monotonic()
    said = ""
    taking = interrupts.taking if interrupts is not None else contextlib.nullcontext
    while True:
        with taking():
            try:
                msg: Message | None = client.receive(min(1.0, silence))
            except NodeUnavailable:
                msg = None
            ours = getattr(msg, "request", None) == request
            ends = isinstance(msg, ErrorReply) or (
                ours and isinstance(msg, result_type | SendResult)
            )
            if ends and interrupts is not None:
                interrupts.result_in_hand = True  # (a signal from here on: late)
            if ours and isinstance(msg, result_type):
                return msg
        if interrupts is not None and not ends:
            interrupts.check()  # (one held while this reply was taken)
        if msg is None:
            if not client.node_alive():
                raise Stop("the local node stopped", errors.FAILED) from None
            if time.monotonic() - quiet_since < silence:
                continue
            raise Unanswered("the local node stopped answering", errors.FAILED) from None
        quiet_since = time.monotonic()
        if isinstance(msg, ErrorReply):
            raise Stop(refusal(msg), errors.FAILED)
        if getattr(msg, "request", None) != request:
            continue
        if isinstance(msg, Progress):
            if phases is not None:
                phases.add(msg.phase)
            if msg.transfer and (told := getattr(listener, "on_transfer", None)) is not None:
                told(msg.transfer)
            if view is not None:
                view.on_progress(msg)
            if msg.note and msg.note != said:  # e.g. the receiver's port closed; retrying
                said = msg.note
                line = f"peercrypt: {msg.note}"
                if view is not None:
                    view.write(line)
                else:
                    print(line, file=sys.stderr, flush=True)
        elif isinstance(msg, McTargetProgress):
            if view is not None:
                view.on_target(msg)
        elif isinstance(msg, SendResult):  # e.g. "cancelled: the node is stopping"
            raise Stop(msg.reason or msg.code, errors.exit_code(msg.code))
        elif on_other is not None:
            on_other(msg)


def refusal(reply: ErrorReply) -> str:
    """A node's ErrorReply as words for the user. A request the node cannot
    read ("bad-request") comes from a command of another PeerCrypt version
    than the running node (updated while it ran): say so, and what to do."""
    if reply.code == "bad-request":
        return (
            "the local node cannot read this request: it runs another version of PeerCrypt "
            f"than this command (restart the node with this one) [{reply.reason}]"
        )
    return f"the local node refused: {reply.reason}"
