"""How a command following its send takes Ctrl-C, SIGTERM and SIGHUP
(peercrypt/cli/follow.py, ``Interrupts``): raised at once but while a reply
is taken off the control socket, held there and raised right after; one
held as the result came is delivered again once the handlers are back (a
Ctrl-C of a verified send excepted: the verdict is said)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from peercrypt.cli.follow import Ended, Interrupts, ending_signals_cancel


class Client:
    """What Interrupts asks of the control client: is it only waiting."""

    waiting = False


def test_a_signal_is_held_only_while_a_reply_is_taken() -> None:
    client = Client()
    interrupts = Interrupts(client)  # type: ignore[arg-type]
    # Elsewhere (a bar drawn, a line written to a pipe that may block): at once.
    with pytest.raises(KeyboardInterrupt):
        interrupts.on_signal(signal.SIGINT, None)
    with interrupts.taking():
        interrupts.on_signal(signal.SIGINT, None)  # held: a reply is being read
        interrupts.on_signal(signal.SIGTERM, None)  # the first one held stays
        client.waiting = True  # the poll: nothing of a reply read yet
        with pytest.raises(Ended):
            interrupts.on_signal(signal.SIGTERM, None)
        client.waiting = False
    with pytest.raises(KeyboardInterrupt) as raised:
        interrupts.check()
    assert not isinstance(raised.value, Ended)
    interrupts.check()  # raised once


@pytest.mark.parametrize(
    ("verified", "ending", "raised"),
    [(False, False, True), (True, False, False), (False, True, False)],
)
def test_a_ctrl_c_held_as_the_result_came_is_delivered_unless_the_send_was_verified(
    verified: bool, ending: bool, raised: bool
) -> None:
    """Not lost: a held Ctrl-C with a failed result (or the fast path's
    "multicast-default") still interrupts the command; one with the verdict
    is dropped (the file is there, and said so), as is one of a command
    already ending by an error of its own."""
    caught = None
    try:
        with ending_signals_cancel(Client()) as interrupts:  # type: ignore[arg-type]
            with interrupts.taking():
                os.kill(os.getpid(), signal.SIGINT)  # (handled before os.kill returns)
            interrupts.verified = verified
            assert interrupts.held is not None
            if ending:
                raise RuntimeError("the command's own end")
    except KeyboardInterrupt as exc:
        caught = exc
    except RuntimeError:
        pass
    assert (caught is not None) == raised
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigterm_held_as_a_verified_result_came_ends_the_process_as_killed() -> None:
    """A kill is not dropped with the verdict (a shell following a send
    went on running): delivered again under the handler put back (here the
    default: the process ends by the signal)."""
    script = textwrap.dedent(
        """
        import os, signal
        from peercrypt.cli.follow import ending_signals_cancel

        class Client:
            waiting = False

        with ending_signals_cancel(Client()) as interrupts:
            with interrupts.taking():
                os.kill(os.getpid(), signal.SIGTERM)
            interrupts.verified = True
            print("held", flush=True)
        print("not reached", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (-signal.SIGTERM, "held\n"), done
