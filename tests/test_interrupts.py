"""How a command following its send takes Ctrl-C, SIGTERM and SIGHUP
(peercrypt/cli/follow.py, ``Interrupts``): raised at once but while a reply
is taken off the control socket and from the result on, where one is held:
raised right after a reply that is no end, or kept as ``late`` once the
handlers are back, and then a Ctrl-C is dropped (the send had ended: its
result says how) and a SIGTERM or SIGHUP ends the command as one."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from peercrypt.cli.follow import Ended, Interrupts, ending_signals_cancel, with_late
from peercrypt.errors import CommandError, ResultCode
from peercrypt.wire.local_messages import SendResult


class Client:
    """What Interrupts asks of the control client: is it only waiting."""

    waiting = False


def _result(code: str) -> SendResult:
    return SendResult(request=1, code=code, reason="", size=0, digest=b"", stored_as="")


def test_a_signal_is_held_only_while_a_reply_is_taken() -> None:
    client = Client()
    interrupts = Interrupts(client)  # type: ignore[arg-type]
    # Elsewhere (a bar drawn, a line written to a pipe that may block): at once.
    with pytest.raises(KeyboardInterrupt):
        interrupts.on_signal(signal.SIGINT, None)
    interrupts.ended_with()  # (the next are held until then: below)
    with interrupts.taking():
        interrupts.on_signal(signal.SIGINT, None)  # held: a reply is being read
        client.waiting = True  # the poll: nothing of a reply read yet
        with pytest.raises(Ended):
            interrupts.on_signal(signal.SIGTERM, None)
        client.waiting = False
        interrupts.on_signal(signal.SIGHUP, None)  # a kill outranks the Ctrl-C held
        interrupts.on_signal(signal.SIGINT, None)  # and stays
    with pytest.raises(Ended) as raised:
        interrupts.check()
    assert raised.value.signum == signal.SIGHUP
    interrupts.ended_with()  # raised once
    interrupts.result_in_hand = True  # from the result on, held wherever
    interrupts.on_signal(signal.SIGINT, None)
    assert isinstance(interrupts.held, KeyboardInterrupt)


def test_from_one_signal_raised_the_next_are_held_until_it_is_dealt_with() -> None:
    """A second Ctrl-C just after the first (before the command sent the
    cancel the first asks for) is held, so the cancel goes; raised, it
    stopped the cancel, and the command said the transfer was told to."""
    interrupts = Interrupts(Client())  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        interrupts.on_signal(signal.SIGINT, None)
    interrupts.on_signal(signal.SIGINT, None)  # held: the first is being dealt with
    interrupts.on_signal(signal.SIGTERM, None)  # (a kill outranks it)
    with pytest.raises(Ended) as raised:
        interrupts.ended_with()  # the cancel sent: the one held, now
    assert raised.value.signum == signal.SIGTERM
    interrupts.on_signal(signal.SIGHUP, None)  # held: that one is dealt with in turn
    with pytest.raises(Ended):
        interrupts.ended_with()
    interrupts.ended_with()  # (nothing held: nothing raised)
    with pytest.raises(KeyboardInterrupt):
        interrupts.on_signal(signal.SIGINT, None)  # raised at once again
    held = Interrupts(Client())  # type: ignore[arg-type]
    held.result_in_hand = True
    held.on_signal(signal.SIGINT, None)
    held.result_in_hand = False
    with pytest.raises(KeyboardInterrupt):
        held.check()  # one held, raised: the same hold after it
    held.on_signal(signal.SIGINT, None)
    assert isinstance(held.held, KeyboardInterrupt)


def test_a_signal_as_the_handlers_go_in_leaves_none_of_them_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C just as SIGINT's handler went in: the handlers go back.
    Raised before the context's try, it left that handler in, its hold on,
    and every later signal was held (Ctrl-C stopped nothing more in a
    shell). One left in anyway raises as the default once its context is
    over."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    real, fired = signal.signal, []

    def ctrl_c_once_in(signum: int, handler: Any) -> Any:
        old = real(signum, handler)
        if signum == signal.SIGINT and not fired and handler is not before[signal.SIGINT]:
            fired.append(signum)
            os.kill(os.getpid(), signal.SIGINT)  # (handled before os.kill returns)
        return old

    monkeypatch.setattr(signal, "signal", ctrl_c_once_in)
    with pytest.raises(KeyboardInterrupt), ending_signals_cancel(Client()):  # type: ignore[arg-type]
        raise AssertionError("the body ran: the Ctrl-C did not come as the handler went in")
    monkeypatch.undo()
    assert fired and {s: signal.getsignal(s) for s in before} == before
    left = Interrupts(Client())  # type: ignore[arg-type]
    left.active = False  # (its context over)
    left.result_in_hand = True
    with pytest.raises(KeyboardInterrupt):
        left.on_signal(signal.SIGINT, None)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_as_the_result_came_is_kept_and_the_handlers_are_back(signum: int) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with ending_signals_cancel(Client()) as interrupts:  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGTERM) == interrupts.on_signal
        interrupts.result_in_hand = True  # (as _await_result sets it with the result)
        os.kill(os.getpid(), signum)  # (handled before os.kill returns: held)
    assert {s: signal.getsignal(s) for s in before} == before
    late = interrupts.late
    assert isinstance(late, KeyboardInterrupt)
    assert isinstance(late, Ended) == (signum == signal.SIGTERM)


def test_what_a_late_signal_does_to_the_result() -> None:
    """A Ctrl-C as the verdict came: the verdict (it was a 130 "cancelled" of
    a verified file); with a failed result: that result, the node's words;
    with "multicast-default" (no end: the command would send by multicast):
    the Ctrl-C. A SIGTERM: the command ends as killed, saying how it ended."""
    ok, refused = _result(ResultCode.OK), _result("refused")
    assert with_late(ok, KeyboardInterrupt()) is ok
    assert with_late(refused, KeyboardInterrupt()) is refused
    assert with_late(ok, None) is ok
    with pytest.raises(KeyboardInterrupt):
        with_late(_result(ResultCode.MULTICAST_DEFAULT), KeyboardInterrupt())
    with pytest.raises(CommandError) as ended:
        with_late(ok, Ended(signal.SIGTERM))
    assert (str(ended.value), ended.value.exit_code) == (
        "SIGTERM: it came as the transfer ended (verified)",
        143,
    )
    with pytest.raises(CommandError) as hung_up:
        with_late(refused, Ended(signal.SIGHUP))
    assert (str(hung_up.value), hung_up.value.exit_code) == (
        "SIGHUP: it came as the transfer ended (refused)",
        129,
    )


def test_a_kill_outranks_a_ctrl_c_in_how_the_command_ends() -> None:
    """Ctrl-C, then SIGTERM as the cancel was waited for: exit 143, which
    ends a shell too (it said 130 and the shell went on)."""
    from peercrypt.cli.follow import killed, stronger

    ctrl_c, term = KeyboardInterrupt(), Ended(signal.SIGTERM)
    assert stronger(ctrl_c, term) is term and stronger(term, ctrl_c) is term
    assert stronger(ctrl_c, KeyboardInterrupt()) is ctrl_c
    interrupts = Interrupts(None)
    cancelled = CommandError("interrupted; the transfer was cancelled", 130)
    assert killed(cancelled, interrupts) is cancelled
    interrupts.late = term
    ended = killed(cancelled, interrupts)
    assert (str(ended), ended.exit_code) == (
        "SIGTERM: interrupted; the transfer was cancelled",
        143,
    )
    already = CommandError("SIGTERM: the transfer was cancelled", 143)
    assert killed(already, interrupts) is already
