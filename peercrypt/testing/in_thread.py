"""An actor run in a test's own thread: its environment on a context of
its own, a fake clock, and the mailboxes of the actors it tells bound in
the test (what it tells them arrives there, in order)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import zmq

from peercrypt.runtime.actor import ActorEnv
from peercrypt.testing.clock import FakeClock


@contextlib.contextmanager
def actor_env(
    told: Iterable[str],
) -> Iterator[tuple[ActorEnv, FakeClock, dict[str, zmq.Socket[Any]]]]:
    """The environment for an actor under test, its fake clock, and a PULL
    socket bound as the mailbox of each actor named in ``told``. On exit
    every socket of the context (the actor's too) is closed."""
    ctx: zmq.Context[Any] = zmq.Context()
    clock = FakeClock()
    env = ActorEnv(context=ctx, node_uid=f"t{time.monotonic_ns()}", clock=clock)
    mailboxes: dict[str, zmq.Socket[Any]] = {}
    try:
        for name in told:
            sock = ctx.socket(zmq.PULL)
            sock.linger = 0
            sock.bind(env.address(name))
            mailboxes[name] = sock
        yield env, clock, mailboxes
    finally:
        ctx.destroy(linger=0)
