"""The shell's pre-send health check (cli/shell.py for a unicast send,
cli/multicast.py for a multicast one): the node's one-shot check of each
target (``CheckRequest``, actors/health.py), all of them at once, and the
question whether to send anyway when one fails.

The one-shot ``send`` asks nothing: a unicast send refuses a peer its own
pre-send check cannot reach unless ``--force`` (actors/sender.py), a
multicast send reports such a target failed and goes on with the others.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import click

from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.core.address import split_host_port
from peercrypt.wire.local_messages import ErrorReply
from peercrypt.wire.network_messages import CheckRequest, CheckResult

BUSY = "busy"  # a check's code when health runs its most at once (actors/health.py)

# Seconds a check without a budget is waited for (its attempts and pauses
# are bounded by the node's max_retries and connect_timeout settings).
CHECK_WAIT = 120.0
# Seconds a check's answer may take beyond its budget (a loaded node).
ANSWER_SLACK = 5.0

# Set in the thread that runs a shell's line on a terminal (:func:`asking`):
# a multicast send checks its targets first and asks whether to go on
# without the ones it cannot reach. Thread-local: a background send of the
# shell (another thread) never asks.
_asking = threading.local()


@contextlib.contextmanager
def asking() -> Iterator[None]:
    """Meanwhile, a multicast send in this thread checks its targets and asks."""
    _asking.on = True
    try:
        yield
    finally:
        _asking.on = False


def asks() -> bool:
    """Whether a multicast send in this thread checks its targets and asks."""
    return bool(getattr(_asking, "on", False))


def check_targets(
    client: ControlClient, targets: list[str], budget: float = 0.0
) -> dict[str, CheckResult]:
    """Have the node check every ``HOST:PORT`` of ``targets`` at once, each
    within ``budget`` seconds (0: its retries only); their results by target.
    ``client`` is the check's own connection (control's refusal of a
    request names none: on a send's connection it would stand for the
    send's).

    A target whose result has not come within the budget (and
    :data:`ANSWER_SLACK`; :data:`CHECK_WAIT` without one) is left out: no
    verdict, the send's own check decides; so is one the node was too busy
    to check (health's own limit on checks at once, or control's on
    requests). Blocks until then; raises
    NodeUnavailable if the node's process ended meanwhile."""
    pending: dict[int, str] = {}
    for target in targets:
        host, port = split_host_port(target)
        request = client.next_id()
        client.send(CheckRequest(request=request, host=host, port=port, budget=budget))
        pending[request] = target
    results: dict[str, CheckResult] = {}
    refused = 0  # checks control took no more of (its refusal names none)
    deadline = time.monotonic() + (budget + ANSWER_SLACK if budget > 0 else CHECK_WAIT)
    while len(pending) > refused and (left := deadline - time.monotonic()) > 0:
        try:
            reply = client.receive(min(1.0, left))
        except NodeUnavailable:
            if not client.node_alive():
                raise
            continue
        if isinstance(reply, ErrorReply):  # one check refused: no verdict, nor an answer
            refused += 1
            continue
        if isinstance(reply, CheckResult) and reply.request in pending:
            target = pending.pop(reply.request)
            if reply.code != BUSY:  # (health ran too many checks: says nothing of the target)
                results[target] = reply
    return results


def proceed_or_abort(err: bool = False) -> bool:
    """Ask whether to send despite a failed check (on stderr if ``err``):
    True to proceed; abort is the default, and Ctrl-C or Ctrl-D answer it
    (the caller says "send aborted": Ctrl-C returned to the prompt without a
    word)."""
    try:
        answer = click.prompt(
            "proceed or abort?",
            type=click.Choice(["proceed", "abort", "p", "a"]),
            default="abort",
            show_choices=True,
            err=err,
        )
    except click.Abort:
        click.echo("", err=err)  # (the line the question was on)
        return False
    return answer in ("proceed", "p")
