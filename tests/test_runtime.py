"""The actor runtime: start handshake, mail over inproc:// and tcp://,
timers, crash -> restart with backoff, stop that cannot hang."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from actors.receiver import ReceiverActor
from actors.sender import SenderActor
from peercrypt.runtime.actor import (
    CONTROL_AFFINITY,
    DATA_AFFINITY,
    DATA_NICE,
    IO_THREADS,
    LOG_BURST,
    TIMERS_COMPACT_MIN,
    Actor,
    ActorEnv,
    ActorFault,
    yield_to_control_plane,
)
from peercrypt.runtime.memory import TrimClock
from peercrypt.runtime.supervisor import StartError, Supervisor
from peercrypt.testing.clock import FakeClock
from peercrypt.testing.nodes import free_port, wait_until
from peercrypt.wire import codec
from peercrypt.wire.messages import Announce, Ping, Pong

DEADLINE = 10.0

# An assert inside an actor's thread would only restart the actor; actors
# record what they did not expect here and the test thread checks it.
UNEXPECTED: list[object] = []
TORN_DOWN: list[bool] = []  # each Recorder's `crashed` as it was torn down


@pytest.fixture(autouse=True)
def _no_unexpected_mail() -> Iterator[None]:
    UNEXPECTED.clear()
    yield
    assert not UNEXPECTED, f"an actor got mail it did not expect: {UNEXPECTED}"


class Recorder(Actor):
    """Answers Ping with Pong to ``reply_to``; gives up its state on
    Ping(seq=666) (ActorFault), trips over a bug on Ping(seq=667) and stops
    to be restarted on purpose on Ping(seq=665)."""

    name = "recorder"
    REPORT_TO = None

    def __init__(self, env: ActorEnv, reply_to: str, log: list[int]) -> None:
        super().__init__(env)
        self.reply_to = reply_to
        self.log = log

    def on_mail(self, msg: codec.Message) -> None:
        if not isinstance(msg, Ping):
            UNEXPECTED.append(msg)
            return
        if msg.seq == 666:
            raise ActorFault("asked to crash")
        if msg.seq == 667:
            raise RuntimeError("a bug met by one message")
        if msg.seq == 665:
            self.restart("was asked to start afresh")
            return
        self.log.append(msg.seq)
        self.tell(self.reply_to, Pong(seq=msg.seq))

    def teardown(self) -> None:
        TORN_DOWN.append(self.crashed)


class Pinger(Actor):
    """Sends Ping(seq) to ``target`` on a timer and collects Pongs."""

    name = "pinger"
    REPORT_TO = None

    def __init__(self, env: ActorEnv, target: str, seqs: list[int], got: list[int]) -> None:
        super().__init__(env)
        self.target, self.seqs, self.got = target, seqs, got

    def setup(self) -> None:
        self.call_later(0.01, self._fire)

    def _fire(self) -> None:
        for seq in self.seqs:
            self.tell(self.target, Ping(seq=seq))

    def on_mail(self, msg: codec.Message) -> None:
        if not isinstance(msg, Pong):
            UNEXPECTED.append(msg)
            return
        self.got.append(msg.seq)


class NeverReady(Actor):
    name = "never"
    REPORT_TO = None

    def setup(self) -> None:
        raise OSError("cannot bind")


def wait_for(predicate: Any, timeout: float = DEADLINE) -> None:
    wait_until(lambda: predicate() or None, timeout, "the condition")


def make_env(**addresses: str) -> ActorEnv:
    return ActorEnv(context=zmq.Context(), node_uid=f"t{time.monotonic_ns()}", addresses=addresses)


def stop(sup: Supervisor) -> None:
    assert sup.stop() is True
    sup.env.context.term()


def ping_pair(env: ActorEnv, values: list[int], got: list[int], seen: list[int]) -> Supervisor:
    """A recorder and a pinger sending it ``values`` (not started)."""
    return Supervisor(
        env,
        [
            ("recorder", lambda e: Recorder(e, "pinger", seen)),
            ("pinger", lambda e: Pinger(e, "recorder", values, got)),
        ],
    )


def test_mail_round_trip_inproc() -> None:
    env = make_env()
    got: list[int] = []
    seen: list[int] = []
    sup = ping_pair(env, [1, 2, 3], got, seen)
    sup.start()
    try:
        wait_for(lambda: len(got) == 3)
        assert got == [1, 2, 3] and seen == [1, 2, 3]
    finally:
        stop(sup)


def test_mail_between_separate_contexts_over_tcp() -> None:
    """The same actors, each under its own supervisor and context (as if in two
    processes), addressed by tcp:// URLs."""
    rec_url = f"tcp://127.0.0.1:{free_port()}"
    ping_url = f"tcp://127.0.0.1:{free_port()}"
    got: list[int] = []
    seen: list[int] = []
    env_a = make_env(recorder=rec_url, pinger=ping_url)
    env_b = make_env(recorder=rec_url, pinger=ping_url)
    sup_a = Supervisor(env_a, [("recorder", lambda e: Recorder(e, "pinger", seen))])
    sup_b = Supervisor(env_b, [("pinger", lambda e: Pinger(e, "recorder", [7, 8], got))])
    sup_a.start()
    sup_b.start()
    try:
        wait_for(lambda: sorted(got) == [7, 8])
        assert sorted(seen) == [7, 8]
    finally:
        stop(sup_b)
        stop(sup_a)


def crashing_pair(env: ActorEnv, got: list[int], seen: list[int]) -> Supervisor:
    """A recorder and a pinger whose second ping (666) crashes the recorder."""
    return Supervisor(
        env,
        [
            ("recorder", lambda e: Recorder(e, "pinger", seen)),
            ("pinger", lambda e: Pinger(e, "recorder", [1, 666], got)),
        ],
    )


def polled_until_restarted(sup: Supervisor, got: list[int]) -> None:
    """After the first Pong, poll ``sup`` until it restarted the recorder."""
    wait_for(lambda: got == [1])
    deadline = time.monotonic() + DEADLINE
    while sup.restarts["recorder"] == 0:
        assert time.monotonic() < deadline, "recorder was not restarted"
        sup.poll(0.05)


def test_crashed_actor_is_restarted_and_node_keeps_serving() -> None:
    env = make_env()
    got: list[int] = []
    seen: list[int] = []
    sup = crashing_pair(env, got, seen)
    sup.start()
    try:
        # The recorder crashes on 666; the supervisor restarts it after backoff.
        polled_until_restarted(sup, got)
        # The restarted recorder serves new mail (sent from a fresh socket).
        ctx = env.context
        push = ctx.socket(zmq.PUSH)
        push.linger = 0
        push.connect(env.address("recorder"))
        push.send(codec.encode(Ping(seq=5)))
        deadline = time.monotonic() + DEADLINE
        while 5 not in got:
            assert time.monotonic() < deadline, "restarted actor does not answer"
            sup.poll(0.05)
        push.close()
        assert seen == [1, 5]
    finally:
        stop(sup)


@pytest.mark.parametrize(("seq", "level", "line"), [
    (665, logging.INFO, "actor recorder was asked to start afresh; restarting it in 0.1 s"),
    (666, logging.WARNING, "actor recorder crashed; restarting in 0.1 s"),
])  # fmt: skip
def test_a_restart_on_purpose_is_news_and_a_crash_a_warning(
    caplog: pytest.LogCaptureFixture, seq: int, level: int, line: str
) -> None:
    """An actor that stops to be started again (a proxy whose actor now runs
    attached) is restarted as a crashed one is, logged at INFO with its
    reason: only a crash (or an unexpected stop) is a warning."""
    env = make_env()
    got: list[int] = []
    seen: list[int] = []
    sup = ping_pair(env, [1, seq], got, seen)
    TORN_DOWN.clear()
    caplog.set_level(logging.INFO, logger="peercrypt.supervisor")
    sup.start()
    try:
        polled_until_restarted(sup, got)
    finally:
        stop(sup)
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "peercrypt.supervisor"]
    assert said == [(level, line)], said
    # What its teardown knew (control tells its clients their sends go on).
    assert TORN_DOWN[:1] == [seq == 666], TORN_DOWN


class Second(Recorder):
    name = "second"


def test_a_restart_told_to_an_actor_that_ended_meanwhile_does_not_block() -> None:
    """Two actors restart one just after the other (both of a node's
    data-plane processes attach at once): when the first is started again,
    the second has ended but its status is not read yet. Telling it that
    the first restarted must not wait for it (a PAIR without its peer would
    block the supervisor, and with it every restart, for good)."""
    env = make_env()
    seen: list[int] = []
    sup = Supervisor(
        env,
        [
            ("recorder", lambda e: Recorder(e, "nobody", seen)),
            ("second", lambda e: Second(e, "nobody", seen)),
        ],
    )
    sup.start()
    first, second = sup._slots
    push = env.context.socket(zmq.PUSH)
    push.linger = 0
    push.connect(env.address("recorder"))
    push.send(codec.encode(Ping(seq=665)))  # restart on purpose
    deadline = time.monotonic() + DEADLINE
    while first.restart_at is None:
        assert time.monotonic() < deadline, "the first restart was not asked for"
        sup.poll(0.01)
    push.close()
    push = env.context.socket(zmq.PUSH)
    push.linger = 0
    push.connect(env.address("second"))
    push.send(codec.encode(Ping(seq=665)))
    assert second.thread is not None
    second.thread.join(DEADLINE)  # ended; the supervisor has not read its status
    assert not second.thread.is_alive()
    push.close()
    due = first.restart_at
    wait_for(lambda: time.monotonic() >= due)
    polled = threading.Thread(target=sup.poll, args=(0,), daemon=True)
    polled.start()
    polled.join(DEADLINE)
    if polled.is_alive():  # (its sockets are not ours to close: left as they are)
        pytest.fail("the supervisor blocked telling an ended actor of a restart")
    try:
        assert sup.restarts["recorder"] == 1
        while sup.restarts["second"] == 0:
            assert time.monotonic() < deadline + DEADLINE, "the second was not restarted"
            sup.poll(0.05)
    finally:
        stop(sup)


def test_run_until_sleeps_until_news_restarts_when_due_and_ends_on_wake() -> None:
    """The main loop has no poll interval: it must wake for the crash, again
    when the restart falls due (nothing else would wake it), and on wake()."""
    env = make_env()
    got: list[int] = []
    seen: list[int] = []
    sup = crashing_pair(env, got, seen)
    sup.start()
    done = threading.Event()
    loop = threading.Thread(target=sup.run_until, args=(done.is_set,), daemon=True)
    loop.start()
    try:
        wait_for(lambda: sup.restarts["recorder"] == 1)
        done.set()
        sup.wake()
        loop.join(DEADLINE)
        assert not loop.is_alive(), "run_until did not return after wake()"
    finally:
        done.set()
        sup.wake()
        loop.join(DEADLINE)
        stop(sup)


def test_run_in_background_restarts_crashed_actors_and_ends_with_stop() -> None:
    """The interactive shell's prompt holds the main thread: its node's actors
    are supervised from a thread of their own, which stop() ends first."""
    env = make_env()
    got: list[int] = []
    seen: list[int] = []
    sup = crashing_pair(env, got, seen)
    sup.start()
    try:
        sup.run_in_background()
        # Nothing in this test polls: only the background loop can restart it.
        wait_for(lambda: sup.restarts["recorder"] == 1)
    finally:
        stop(sup)
    assert not any(t.name == "supervisor" for t in threading.enumerate())


def test_stop_waits_for_a_restart_the_background_loop_is_making(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stop() while the background loop is inside a slow restart: the loop
    finishes it and spawns nothing after, and only then are the actors
    stopped from this thread (their sockets are never used by both)."""
    import peercrypt.runtime.supervisor as supervisor_module

    monkeypatch.setattr(supervisor_module, "STOP_TIMEOUT", 0.2)
    env = make_env()
    got: list[int] = []
    seen: list[int] = []
    entered = threading.Event()
    release = threading.Event()
    made = 0

    def slow_second_recorder(e: ActorEnv) -> Recorder:
        nonlocal made
        made += 1
        if made == 2:  # the restart after the crash on 666
            entered.set()
            release.wait(DEADLINE)
        return Recorder(e, "pinger", seen)

    sup = Supervisor(
        env,
        [
            ("recorder", slow_second_recorder),
            ("pinger", lambda e: Pinger(e, "recorder", [1, 666], got)),
        ],
    )
    sup.start()
    sup.run_in_background()
    wait_for(entered.is_set)
    releaser = threading.Timer(1.0, release.set)  # well past the patched STOP_TIMEOUT
    releaser.start()
    try:
        stop(sup)  # asserts that every actor thread ended
    finally:
        release.set()
        releaser.join(DEADLINE)
    assert made == 2
    left = [t.name for t in threading.enumerate() if t.name.startswith("pc-")]
    assert not left and not any(t.name == "supervisor" for t in threading.enumerate()), left


def test_an_exception_on_one_message_is_contained_and_counted() -> None:
    env = make_env()
    got: list[int] = []
    seen: list[int] = []
    recorders: list[Recorder] = []

    def make_recorder(e: ActorEnv) -> Recorder:
        recorders.append(Recorder(e, "pinger", seen))
        return recorders[-1]

    sup = Supervisor(
        env,
        [
            ("recorder", make_recorder),
            ("pinger", lambda e: Pinger(e, "recorder", [1, 667, 2, 667, 3], got)),
        ],
    )
    sup.start()
    try:
        wait_for(lambda: got == [1, 2, 3])
        sup.poll(0.05)
        assert sup.restarts["recorder"] == 0
        assert len(recorders) == 1 and recorders[0].counters["handler-errors"] == 2
    finally:
        stop(sup)


def test_actor_failing_setup_raises_start_error_and_cleans_up() -> None:
    env = make_env()
    # (the threads it started, not their count: one of an earlier test's in
    # this process may end meanwhile)
    before = set(threading.enumerate())
    sup = Supervisor(env, [("never", NeverReady)])
    with pytest.raises(StartError, match="never"):
        sup.start()
    env.context.term()  # would hang if a socket were left open
    assert set(threading.enumerate()) - before == set()


class BadConstructor(Actor):
    name = "bad"
    REPORT_TO = None

    def __init__(self, env: ActorEnv) -> None:
        raise ValueError("need 0 < min_probe_timeout <= max_probe_timeout")


def test_an_actor_whose_constructor_fails_fails_the_start_and_the_context_ends() -> None:
    """The error reaches the caller and the node's context can end (the
    start's pipe to that actor used to stay open: the node hung in its
    context's term, saying nothing, until it was killed)."""
    env = make_env()
    sup = Supervisor(env, [("recorder", lambda e: Recorder(e, "x", [])), ("bad", BadConstructor)])
    ended = threading.Event()
    try:
        sup.start()
    except StartError as exc:  # ended while the error is in hand, as the node does
        assert "actor bad: need 0 < min_probe_timeout" in str(exc)
        threading.Thread(target=lambda: (env.context.term(), ended.set()), daemon=True).start()
        assert ended.wait(DEADLINE), "the context did not end"
    else:
        raise AssertionError("the start did not fail")


class Fragile(Recorder):
    name = "fragile"


def test_a_restart_whose_constructor_fails_leaves_the_supervisor_restarting_others() -> None:
    """An actor that crashed and cannot be made again (its constructor
    raises) is retried later; the supervisor goes on (the error escaped its
    loop, and no actor was ever restarted again)."""
    env = make_env()
    made: list[int] = []

    def fragile(e: ActorEnv) -> Actor:
        made.append(1)
        if len(made) > 1:
            raise ValueError("a setting it cannot take")
        return Fragile(e, "recorder", [])

    sup = Supervisor(
        env, [("recorder", lambda e: Recorder(e, "fragile", [])), ("fragile", fragile)]
    )
    sup.start()
    push = env.context.socket(zmq.PUSH)
    push.linger = 0
    try:
        push.connect(env.address("fragile"))
        push.send(codec.encode(Ping(seq=666)))  # it crashes; its restart fails
        deadline = time.monotonic() + DEADLINE
        while len(made) < 2:
            assert time.monotonic() < deadline, "no restart was tried"
            sup.poll(0.05)
        push.close()
        push = env.context.socket(zmq.PUSH)
        push.linger = 0
        push.connect(env.address("recorder"))
        push.send(codec.encode(Ping(seq=666)))  # another crash: still restarted
        while sup.restarts["recorder"] < 1:
            assert time.monotonic() < deadline, "the supervisor restarts no other actor"
            sup.poll(0.05)
    finally:
        push.close()
        stop(sup)


class LastWord(Actor):
    """Tells ``target`` a Ping as it starts and one as it stops (a
    scheduler's last word to a sender stopped before it)."""

    name = "lastword"
    REPORT_TO = None

    def __init__(self, env: ActorEnv, target: str, dropped: list[int]) -> None:
        super().__init__(env)
        self.target, self.dropped = target, dropped

    def setup(self) -> None:
        self.tell(self.target, Ping(seq=1))  # its outbox, while the target runs

    def on_mail(self, msg: codec.Message) -> None:
        if not isinstance(msg, Pong):
            UNEXPECTED.append(msg)

    def teardown(self) -> None:
        # Until ZeroMQ has seen the target's mailbox close (mail sent before
        # that is lost without a word): then a send fails, and is counted.
        deadline = time.monotonic() + DEADLINE
        while not self.counters.get("mail-dropped") and time.monotonic() < deadline:
            self.tell(self.target, Ping(seq=2))
            time.sleep(0.001)
        self.dropped.append(self.counters.get("mail-dropped", 0))


def test_mail_to_an_actor_stopped_with_the_node_is_dropped_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Actors stop one at a time, the last started first: mail to one that
    has stopped is lost by design then, counted and not warned of (a user
    stopping a node mid-send saw "mailbox of sender is full")."""
    env = make_env()
    dropped: list[int] = []
    seen: list[int] = []
    sup = Supervisor(
        env,
        [
            ("lastword", lambda e: LastWord(e, "recorder", dropped)),
            ("recorder", lambda e: Recorder(e, "lastword", seen)),
        ],
    )
    sup.start()
    wait_for(lambda: seen == [1])
    with caplog.at_level(logging.DEBUG, logger="peercrypt"):
        stop(sup)
    assert dropped == [1]  # the recorder had stopped: the mail failed, and was counted
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warned == [], warned


def test_start_stop_many_times_leaves_no_threads() -> None:
    before = {t.ident for t in threading.enumerate()}
    for _ in range(20):
        env = make_env()
        sup = Supervisor(
            env,
            [
                ("recorder", lambda e: Recorder(e, "pinger", [])),
                ("pinger", lambda e: Pinger(e, "recorder", [1], [])),
            ],
        )
        sup.start()
        stop(sup)
    assert {t.ident for t in threading.enumerate() if t.is_alive()} <= before


class WatchedListener(Actor):
    """Listens on a port whose socket monitor it reads (as the gateway's
    public port and the multicast receiver's repair port are watched), and
    leaves both sockets to the end of its loop to close."""

    name = "listener"
    REPORT_TO = None

    def setup(self) -> None:
        sock = self.socket(zmq.PULL)
        address = f"inproc://{self.env.node_uid}-listener-monitor"
        sock.monitor(address, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)
        reader = self.socket(zmq.PAIR)
        reader.rcvhwm = 0
        reader.connect(address)
        self.watch(reader, lambda s: s.recv_multipart())
        sock.bind("tcp://127.0.0.1:0")


class LastWords(Actor):
    """Stopped after the listener; its teardown dials ``url`` and sends one
    message as soon as it is connected (as discovery sends "left"), and
    records how long that took (None: not within LAST_WORDS_WAIT)."""

    name = "last"
    REPORT_TO = None

    def __init__(self, env: ActorEnv, url: str, took: list[float | None]) -> None:
        super().__init__(env)
        self.url, self.took = url, took

    def teardown(self) -> None:
        sock = self.socket(zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # (as a member's link: no queue till connected)
        sock.connect(self.url)
        start = time.monotonic()
        # Writable once connected (IMMEDIATE): waited for, within the deadline.
        if sock.poll(int(LAST_WORDS_WAIT * 1000), zmq.POLLOUT):
            sock.send(b"left", zmq.NOBLOCK)
            self.took.append(time.monotonic() - start)
        else:
            self.took.append(None)


LAST_WORDS_WAIT = 1.0


def test_an_actor_stopped_after_one_with_a_watched_port_can_still_connect() -> None:
    """An actor's sockets are closed at its end with their monitors stopped
    first. A monitored listener and its monitor's reader closed in one go
    left libzmq's I/O thread blocked on the listener's last event, sent to
    a monitor no one read any more: until the context ended, no connection
    of the node moved, and the actors stopped after it (discovery, whose
    "left" then reached no member) could not connect (7 stops in 10)."""
    peer: zmq.Context[Any] = zmq.Context()
    router = peer.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    took: list[float | None] = []
    try:
        for _ in range(10):
            sup = Supervisor(
                make_env(),
                [  # (stopped in reverse order: the listener first)
                    ("last", lambda e: LastWords(e, f"tcp://127.0.0.1:{port}", took)),
                    ("listener", WatchedListener),
                ],
            )
            sup.start()
            stop(sup)
    finally:
        router.close()
        peer.term()
    assert len(took) == 10 and None not in took, took


def test_malloc_arena_cap_applies_on_linux() -> None:
    import sys

    from peercrypt.runtime.memory import limit_malloc_arenas

    assert limit_malloc_arenas() is sys.platform.startswith("linux")


# A fresh interpreter's heap as a node's is after a load: 1 MiB chunk buffers
# (on the heap, as limit_malloc_arenas keeps them) between small objects that
# stay; the buffers freed. Prints RssAnon in KiB: loaded, freed, trimmed.
_TRIMMED_HEAP = """
from pathlib import Path
from peercrypt.runtime.memory import limit_malloc_arenas, trim

def anon():
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(x.split()[1]) for x in status if x.startswith("RssAnon:"))

assert limit_malloc_arenas()
kept, buffers = [], []
for _ in range(160):
    buffer = bytearray(1 << 20)
    buffer[:: 1 << 12] = b"x" * 256  # every page touched: resident
    buffers.append(buffer)
    kept.append(bytes(1000))  # malloc's (pymalloc takes <= 512): pins the heap
loaded = anon()
del buffers, buffer
freed = anon()
print(loaded, freed, trim(), anon())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_gives_the_pages_of_freed_chunk_buffers_back() -> None:
    """Freed chunk buffers pinned behind small objects stay resident until
    trimmed; :func:`trim` returns their pages (a fresh process: this one's
    heap has holes of its own)."""
    run = subprocess.run(
        [sys.executable, "-c", _TRIMMED_HEAP], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    loaded, freed, released, trimmed = run.stdout.split()
    mib = 1024
    assert int(freed) > int(loaded) - 20 * mib, run.stdout  # free, yet resident
    assert released == "True" and int(trimmed) < int(freed) - 120 * mib, run.stdout


class Sleeper(Actor):
    """Arms a timer an hour ahead and records when (on its clock) it fired."""

    name = "sleeper"
    REPORT_TO = None

    def __init__(self, env: ActorEnv, fired: list[float]) -> None:
        super().__init__(env)
        self.fired = fired

    def setup(self) -> None:
        self.armed_at = self.now()
        self.call_later(3600.0, lambda: self.fired.append(self.now() - self.armed_at))


def test_actor_timers_follow_the_env_clock() -> None:
    clock = FakeClock()
    env = ActorEnv(context=zmq.Context(), node_uid=f"t{time.monotonic_ns()}", clock=clock)
    fired: list[float] = []
    sup = Supervisor(env, [("sleeper", lambda e: Sleeper(e, fired))])
    sup.start()
    try:
        clock.advance(3600.0)
        wait_for(lambda: fired)
        # An hour of its clock passed, seconds of real time: on the wall
        # clock the timer would still be an hour away.
        assert fired == [3600.0]
    finally:
        stop(sup)


def test_peer_warnings_are_rate_limited_by_count_and_escaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    actor = Recorder(make_env(), "nobody", [])
    with caplog.at_level("WARNING", logger="peercrypt"):
        for i in range(1000):
            actor.log_limited("junk %d from %s", i, "\x1b[2Jpeer\n")
    lines = [r.getMessage() for r in caplog.records]
    assert LOG_BURST <= len(lines) <= LOG_BURST + 5  # a burst, then LOG_RATE/s
    assert actor.counters["log-suppressed"] == 1000 - len(lines)
    assert all("\x1b" not in line and "\n" not in line for line in lines)
    assert "\\x1b[2Jpeer\\x0a" in lines[0]


class Worker(Actor):
    name = "worker"

    def __init__(self, env: ActorEnv) -> None:
        super().__init__(env)
        self.work = 0
        self.runs: list[float] = []
        self.repeat = self.call_every_while(0.1, lambda: self.runs.append(self.now()), self.busy)

    def busy(self) -> bool:
        return self.work > 0

    def step(self) -> None:
        """What the loop does after each event: due timers, then re-arm."""
        self._run_timers()
        for repeat in self._repeats:
            repeat.arm()


def test_a_repetition_while_work_runs_has_no_timer_when_idle() -> None:
    clock = FakeClock()
    actor = Worker(ActorEnv(context=zmq.Context(), node_uid="idle", clock=clock))
    for _ in range(50):  # idle: nothing armed, nothing runs
        clock.advance(0.1)
        actor.step()
    assert actor.runs == [] and actor._timers == []
    actor.work = 1  # a handler adds work; the loop arms after it
    actor.step()
    for _ in range(3):
        clock.advance(0.1)
        actor.step()
    assert actor.runs == pytest.approx([1005.1, 1005.2, 1005.3])
    actor.work = 0  # the work ends: one more run (to see it ended), then none
    for _ in range(5):
        clock.advance(0.1)
        actor.step()
    assert len(actor.runs) == 4
    assert [t for t in actor._timers if not t.cancelled] == []


class Reporter(Actor):
    name = "reporter"


def test_facts_and_counters_are_reported_when_they_change_or_on_refresh() -> None:
    env = ActorEnv(context=zmq.Context(), node_uid=f"r{time.monotonic_ns()}")
    inbox = env.context.socket(zmq.PULL)
    inbox.bind(env.address("control"))
    actor = Reporter(env)

    def received() -> list[tuple[dict[str, str], dict[str, int]]]:
        got = []
        while inbox.poll(200):
            msg: Any = codec.decode(inbox.recv())
            got.append((msg.facts, msg.counters))
        return got

    try:
        actor.facts["a"] = "1"
        assert actor.report_due()
        actor.report()
        actor.report()
        assert received() == [({"a": "1"}, {})]
        assert not actor.report_due()
        actor.facts["a"] = "1"  # set again as it was: no news, no report
        assert not actor.report_due()
        actor.count("x")
        actor.report()
        del actor.facts["a"]
        actor.report()
        assert received() == [({"a": "1"}, {"x": 1}), ({}, {"x": 1})]
        actor.report()
        assert received() == []
        actor._refresh_report()
        assert received() == [({}, {"x": 1})]
    finally:
        for sock in [inbox, *actor._sockets]:
            sock.close(linger=0)
        env.context.term()


def test_a_leading_repetition_runs_at_once_after_a_quiet_spell_then_at_its_pace() -> None:
    clock = FakeClock()
    actor = Worker(ActorEnv(context=zmq.Context(), node_uid="lead", clock=clock))
    runs: list[float] = []
    actor.call_every_while(0.5, lambda: runs.append(clock()), actor.busy, leading=True)
    actor.work = 1
    actor.step()  # armed with no delay: the next loop turn runs it
    actor.step()
    assert runs == [1000.0]
    clock.advance(0.2)
    actor.step()
    assert runs == [1000.0]  # at most once per interval
    clock.advance(0.3)
    actor.step()
    assert runs == pytest.approx([1000.0, 1000.5])


def test_data_sockets_get_their_own_io_thread_when_the_context_has_two() -> None:
    """Bulk chunks and control messages do not share a ZeroMQ I/O thread in
    a node (two I/O threads); a one-thread context leaves affinity alone
    (a socket bound to a missing I/O thread could not connect)."""
    two: zmq.Context[Any] = zmq.Context(io_threads=IO_THREADS)
    one: zmq.Context[Any] = zmq.Context()
    try:
        actor = Worker(ActorEnv(context=two, node_uid="io2"))
        data, control = actor.socket(zmq.DEALER, data_plane=True), actor.socket(zmq.DEALER)
        assert (data.affinity, control.affinity) == (DATA_AFFINITY, CONTROL_AFFINITY)
        assert DATA_AFFINITY != CONTROL_AFFINITY
        single = Worker(ActorEnv(context=one, node_uid="io1"))
        sock = single.socket(zmq.DEALER, data_plane=True)
        assert sock.affinity == 0
        sock.connect("tcp://127.0.0.1:9")  # connects (lazily) on the one thread
        for s in (data, control, sock):
            s.close(linger=0)
    finally:
        two.term()
        one.term()


def test_a_data_plane_thread_yields_the_cpu_to_the_control_plane() -> None:
    """The threads that move bulk data (sender, receiver, writer, lanes) run
    nicer than the rest of the node; the others keep the node's priority."""
    seen: dict[str, int] = {}

    def data() -> None:
        yield_to_control_plane()
        seen["data"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def control() -> None:
        seen["control"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def data_started_by_data() -> None:
        # The writer and its hash workers are started by the receiver's
        # thread, already nicer: they inherit its value and must not add
        # DATA_NICE a second time.
        yield_to_control_plane()
        inner = threading.Thread(target=nested)
        inner.start()
        inner.join(10)

    def nested() -> None:
        yield_to_control_plane()
        seen["nested"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    for body in (data, control, data_started_by_data):
        thread = threading.Thread(target=body)
        thread.start()
        thread.join(10)
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    nicer = min(19, base + DATA_NICE)
    assert seen == {"data": nicer, "control": base, "nested": nicer}
    assert DATA_NICE > 0
    assert SenderActor.data_plane and ReceiverActor.data_plane and not Worker.data_plane


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread names are Linux's")
def test_each_actor_thread_and_the_writer_carry_their_names_in_proc() -> None:
    """The node's threads are told apart from outside (top -H, ps -L, the
    CPU per thread scripts/bench.py prints): each actor's thread and the
    receiver's writer give their names to the kernel."""
    from actors.file_writer import FileWriter

    env = make_env()
    got: list[int] = []
    sup = ping_pair(env, [1], got, [])
    results = env.context.socket(zmq.PAIR)
    results.bind(f"inproc://names-{env.node_uid}")
    writer = FileWriter(env.context, f"inproc://names-{env.node_uid}", 4096)
    sup.start()
    writer.start()
    try:
        wait_for(lambda: len(got) == 1)

        def names() -> set[str]:
            found = set()
            for thread in threading.enumerate():
                if thread.native_id is not None:
                    with contextlib.suppress(OSError):
                        comm = Path(f"/proc/self/task/{thread.native_id}/comm")
                        found.add(comm.read_text().strip())
            return found

        wait_for(lambda: {"pc-recorder", "pc-pinger", "pc-writer"} <= names())
    finally:
        writer.stop()
        results.close(linger=0)
        stop(sup)


def test_cancelled_timers_do_not_pile_up_in_the_heap() -> None:
    """A kept connection arms a 30 s timer at every send and cancels it at
    the next: the cancelled ones must not stay in the heap until due."""
    clock = FakeClock()
    actor = Worker(ActorEnv(context=zmq.Context(), node_uid="heap", clock=clock))
    fired: list[int] = []
    live = [actor.call_later(1.0 + i, functools.partial(fired.append, i)) for i in range(10)]
    for _ in range(10_000):
        actor.call_later(30.0, lambda: fired.append(-1)).cancel()
        # Bounded: the live ones, and cancelled ones no more than the live
        # ones or TIMERS_COMPACT_MIN (+1: the one that triggers the rebuild).
        assert len(actor._timers) <= 2 * len(live) + TIMERS_COMPACT_MIN + 1
    live[3].cancel()  # a cancelled live one stays cancelled through a rebuild
    for _ in range(1000):
        actor.call_later(30.0, lambda: fired.append(-1)).cancel()
    for _ in range(40):
        clock.advance(1.0)
        actor.step()
    assert fired == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert actor._timers == [] and actor._timers_cancelled == 0


def test_a_trim_clock_gives_one_turn_per_interval_whoever_asks() -> None:
    clock = FakeClock()
    turns = TrimClock(every=1.0, clock=clock)
    assert turns.due()
    assert not turns.due()  # another actor, the same instant
    clock.advance(0.75)
    assert not turns.due()
    clock.advance(0.25)
    assert turns.due()
    clock.advance(0.5)
    assert not turns.due()
    clock.advance(20.0)
    assert turns.due()  # after a quiet spell, at once


class Trimmer(Worker):
    name = "trimmer"

    def __init__(self, env: ActorEnv, turns: TrimClock) -> None:
        super().__init__(env)
        self.trims = self.trim_while_busy(self.busy, turns)


def test_loaded_actors_trim_the_heap_once_a_second_between_them_and_never_idle() -> None:
    """A node's sender and receiver both trim while their transfers run: one
    trim a second in all (the heap is the process's), none while idle (an idle
    node has no timer for it)."""
    clock = FakeClock()
    turns = TrimClock(every=1.0, clock=clock)
    actors = [
        Trimmer(ActorEnv(context=zmq.Context(), node_uid=f"trim{i}", clock=clock), turns)
        for i in range(2)
    ]

    def run(seconds: float) -> None:
        for _ in range(round(seconds / 0.125)):  # (an exact step: no drift)
            clock.advance(0.125)
            for actor in actors:
                actor.step()

    run(5.0)  # idle
    assert all("heap-trims-busy" not in a.counters for a in actors)
    assert all(a.trims.timer is None for a in actors)
    for actor in actors:
        actor.work = 1
        actor.step()
    run(5.0)
    trims = [a.counters.get("heap-trims-busy", 0) for a in actors]
    assert sum(trims) == 5, trims
    for actor in actors:
        actor.work = 0
    run(5.0)  # one more run each to see the work ended, then no timer
    assert sum(a.counters.get("heap-trims-busy", 0) for a in actors) == 5
    assert all(a.trims.timer is None for a in actors)


class StatusOwner(Actor):
    """Records the facts each of its lives is told; starts afresh on any Ping."""

    name = "owner"
    REPORT_TO = None

    def __init__(self, env: ActorEnv, lives: list[list[dict[str, str]]]) -> None:
        super().__init__(env)
        self.told: list[dict[str, str]] = []
        lives.append(self.told)

    def on_mail(self, msg: codec.Message) -> None:
        if isinstance(msg, Announce):
            self.told.append(dict(msg.facts))
        elif isinstance(msg, Ping):
            self.restart("was asked to")


class Teller(Actor):
    """Reports one fact to the owner, then nothing changes."""

    name = "teller"
    REPORT_TO = "owner"

    def setup(self) -> None:
        self.facts["colour"] = "blue"


def test_a_restarted_status_owner_is_told_every_fact_again_at_once() -> None:
    """What keeps `status` whole after its owner (control) restarts is the
    restart's notice, not the refresh every REPORT_REFRESH s (a minute now:
    each cost an idle node 13 wake-ups and as many of control's)."""
    lives: list[list[dict[str, str]]] = []
    env = make_env()
    sup = Supervisor(
        env,
        [("owner", lambda e: StatusOwner(e, lives)), ("teller", lambda e: Teller(e))],
    )
    sup.start()
    push = env.context.socket(zmq.PUSH)
    push.linger = 0
    try:
        wait_for(lambda: lives and {"colour": "blue"} in lives[0])
        push.connect(env.address("owner"))
        push.send(codec.encode(Ping(seq=1)))
        deadline = time.monotonic() + DEADLINE
        while not (len(lives) > 1 and lives[1]):
            assert time.monotonic() < deadline, "the restarted owner was told nothing"
            sup.poll(0.05)
        assert lives[1] == [{"colour": "blue"}]
        assert Teller.REPORT_REFRESH > 2 * DEADLINE  # (not the refresh that told it)
    finally:
        push.close()
        stop(sup)
