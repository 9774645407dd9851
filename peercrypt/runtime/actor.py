"""The actor: one thread, its own ZeroMQ sockets, a Poller loop, timers.

Modelled on czmq's zactor. The supervisor makes a PAIR pipe and starts the
thread; the actor creates every socket it uses *inside its own thread*, binds
its mailbox (a PULL socket at its address), runs :meth:`Actor.setup`, and
only then says ``READY`` on the pipe. ``$TERM`` on the pipe makes it leave its
loop. Whatever happens (a clean stop or an exception), the shim closes all the
actor's sockets with LINGER 0 and reports ``STOPPED`` or ``CRASHED`` on the
pipe, so the supervisor can always join it and the context can always be
terminated; an actor that stops to be started again on purpose
(:meth:`Actor.restart`) reports ``RESTART:<why>`` instead, which the
supervisor logs as the news it is, not as a failure.

Actors share no state: they talk only in encoded messages, through
:meth:`Actor.tell` to another actor's mailbox, or over their network sockets.

Containment: every handler call (one readable socket, one mail, one timer) is
contained. An exception while handling one inbound message is counted
(``handler-errors``), logged once per place and exception type, and the actor
keeps running: every other transfer it serves continues. Only
:class:`ActorFault` (the actor knows its own state is broken) leaves the loop,
and the supervisor restarts the actor.

Logging about peers is rate-limited by count (a token bucket per actor, see
:meth:`Actor.log_limited`), never by a table keyed on what peers send, and
peer text in those lines is escaped (:func:`peercrypt.wire.text.printable`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import heapq
import ipaddress
import itertools
import logging
import math
import os
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import zmq

from peercrypt.core.address import is_ipv6, join_host_port, url_is_ipv6
from peercrypt.core.mail_credit import inbound_cost
from peercrypt.core.token_bucket import TokenBucket
from peercrypt.runtime import memory
from peercrypt.wire import codec
from peercrypt.wire.actor_messages import ActorRestarted
from peercrypt.wire.messages import Announce, Inbound, InboundTaken
from peercrypt.wire.text import printable

log = logging.getLogger("peercrypt.actor")
decisions = logging.getLogger("peercrypt.decisions")

READY = b"READY"
# Setup failed for a reason the user can fix (a port in use): FAILED:<text>.
FAILED = b"FAILED:"
TERM = b"$TERM"
# Supervisor -> actors: actor NAME was restarted, reconnect to its mailbox.
RESTARTED = b"$RESTARTED:"
# Supervisor -> actors when the node stops, answered with the same word: mail
# to an actor that has stopped is now expected to be lost (its loss is
# counted, not warned of: the scheduler's last word to a sender that ended).
STOPPING = b"$STOPPING"
STOPPED = b"STOPPED"
CRASHED = b"CRASHED"
# Stopped on purpose to be started again (Actor.restart): RESTART:<why>.
RESTART = b"RESTART:"
# Cancelled timers an actor's heap may hold before it is rebuilt (when they
# are also more than half of it: Actor._timer_cancelled).
TIMERS_COMPACT_MIN = 64

# ZeroMQ I/O threads of a node's context (``ZMQ_AFFINITY`` bitmasks): bulk
# data sockets get the second, everything else the first, so a control
# message (a status, a health probe, an offer) never waits behind MiBs of
# chunks being copied through the same I/O thread. A context with one I/O
# thread (an embedding that did not ask for two) leaves affinity alone.
IO_THREADS = 2
CONTROL_AFFINITY = 1
DATA_AFFINITY = 2
# ZeroMQ sockets of a node's context at most (libzmq's default: 1023). Each
# link to another node is three (its DEALER and its monitor's two PAIRs, read
# by its port guard: actors/peer_link.py), and health and discovery each keep
# one to every member (max_members, 256): 1536, besides the ~65 of an idle
# node and what sends and multicast sessions open.
MAX_SOCKETS = 4096


def node_context() -> zmq.Context[Any]:
    """A node's (or attached actor's) ZeroMQ context: :data:`IO_THREADS`
    I/O threads, room for :data:`MAX_SOCKETS` sockets, and the process's
    soft limit of open files raised to match (each socket holds a descriptor
    for its mailbox, each connection one more), within the hard limit."""
    context: zmq.Context[Any] = zmq.Context(io_threads=IO_THREADS)
    context.set(zmq.MAX_SOCKETS, MAX_SOCKETS)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * MAX_SOCKETS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, top), hard))
    return context


def close_all(sockets: list[zmq.Socket[Any]]) -> None:
    """Close ``sockets`` (an actor's, at its end) with LINGER 0, every
    socket's monitor stopped first. A monitored socket and the PAIR that
    reads its monitor closed in one go left libzmq's I/O thread to tell the
    socket's last events (a listener's EVENT_CLOSED) to a monitor whose
    reader was gone: a blocking send, so that I/O thread, every connection
    of the node's control plane, stood still until the context ended. A
    node stopping told its members nothing ("left" went out on no link)
    once its multicast receiver, stopped before discovery, closed its
    repair port so (libzmq 4.3.5)."""
    for sock in sockets:
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()  # (none: a no-op)
    for sock in sockets:
        sock.close(linger=0)


# The receive queue of a socket that reads another node's ZMTP: never full,
# so libzmq never stops reading a connection. libzmq 4.3.5 (the one pyzmq
# bundles, up to 27.3; its master is no different) aborts the process when a
# connection whose reading was stopped by a full queue (RCVHWM) is reset by
# its peer with bytes still in the engine's read buffer: the reset marks the
# connection failed, and once the application drains the queue the engine
# decodes the rest of that buffer, where a heartbeat PING makes it write its
# PONG on the failed connection (``Assertion failed: !_io_error
# (src/stream_engine_base.cpp:310)``). Any ZMTP peer can send PINGs,
# whatever the socket's own heartbeat options, so only a queue that never
# fills closes it. Each protocol's credit bounds what honest peers queue
# there; what a hostile one queues is bounded on the receiver's data port
# and the gateway's public port (core/port_guard.py), not yet on the
# connections a node makes (docs/security.md, "Not (yet) held").
PEER_RCVHWM = 0
# Threads that move bulk data run this much nicer than the rest of the
# node, so a thread answering a status or a health probe gets a core at
# once however busy the data plane keeps both (the control plane's latency
# under load; scripts/bench_many.py).
DATA_NICE = 5
# Bulk workers that spend most of their CPU outside the interpreter lock
# (the writer's decrypting, hashing and writing, the final check's read-back
# hash, the lanes' sealing) run this much nicer again. On a saturated
# machine they otherwise take the cores from the node's sender and receiver,
# which hold the lock while they wait for one, so a control-plane thread
# that wakes waits for the lock behind a thread that is not running
# (docs/benchmarks.md, "The interpreter lock on a check's path").
BULK_NICE = 5


_PR_SET_NAME = 15  # prctl(2)


def name_native_thread() -> None:
    """Give the calling thread's name (``pc-receiver``, ``pc-writer``...) to
    the operating system too, so that per-thread tools (``top -H``, ``ps
    -L``, ``/proc/PID/task/*/comm``, ``scripts/bench.py``'s CPU per thread)
    tell the node's threads apart. Linux only (15 bytes at most); elsewhere,
    or if refused, nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        name = threading.current_thread().name.encode("utf-8", "replace")[:15]
        _libc().prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


@functools.cache
def _libc() -> Any:
    """The C library, loaded once, not for every thread started (a final
    check starts two)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def yield_to_control_plane(bulk: bool = False) -> None:
    """Make the calling thread (one that moves bulk data) DATA_NICE nicer than
    the node's main thread, and a ``bulk`` worker (one that works mostly
    outside the interpreter lock) BULK_NICE nicer again, whatever the thread
    that started it ran at (a thread inherits its starter's nice value: the
    writer and its hash workers, started by the already nicer receiver
    thread, would otherwise add it twice). Linux sets the nice value per
    thread; elsewhere, or if refused, nothing happens."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        base = os.getpriority(os.PRIO_PROCESS, os.getpid())  # the main thread's
        wanted = min(19, base + DATA_NICE + (BULK_NICE if bulk else 0))
        if os.getpriority(os.PRIO_PROCESS, tid) != wanted:
            os.setpriority(os.PRIO_PROCESS, tid, wanted)


# How many messages one readable socket may deliver before the loop looks at
# the others (fairness between a bulk socket and the pipe/mailbox).
DRAIN_BATCH = 64
# Warnings about peers an actor may log: LOG_BURST at once, then LOG_RATE/s;
# the rest are only counted (``log-suppressed``).
LOG_RATE = 5.0
LOG_BURST = 20
# Distinct (place, exception type) pairs whose first failure is logged.
MAX_FAULT_KINDS = 256


@dataclass
class ActorEnv:
    """What an actor gets from its node: the shared context, addresses and
    the clock (monotonic seconds; a test may pass a fake one)."""

    context: zmq.Context[Any]
    node_uid: str
    addresses: dict[str, str] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    # Whether actors report the peers' messages they took to the gateway
    # (core/mail_credit.py): not in an attached actor's process, whose node
    # counts them at the proxy that hands them on to the link.
    reports_inbound: bool = True

    def address(self, name: str) -> str:
        """The mailbox URL of actor ``name`` (inproc:// unless configured)."""
        return self.addresses.get(name, f"inproc://pc-{self.node_uid}/{name}")


@dataclass(order=True)
class Timer:
    due: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)
    # The actor whose heap holds it, until it is taken out: a cancel is counted
    # there (see Actor._timer_cancelled).
    owner: Actor | None = field(default=None, compare=False, repr=False)

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        if self.owner is not None:
            self.owner._timer_cancelled()


_ABSENT = object()


class Watched(dict[str, Any]):
    """An actor's facts or counters: a dict that notes when an item is set to
    a new value or deleted (``changed``), so the actor reports only what
    changed. Setting an item to the value it has is no change: actors set
    their facts again at each round, and each report wakes the actor and
    its owner (an idle node's discovery reported every 5 s for it)."""

    changed = False

    def __setitem__(self, key: str, value: Any) -> None:
        old = self.get(key, _ABSENT)
        if old is _ABSENT or old != value:
            self.changed = True
            super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.changed = True
        super().__delitem__(key)


class Repeat:
    """A repetition that runs only while there is work (see
    :meth:`Actor.call_every_while`): armed while ``active()`` holds, it fires
    every ``interval`` s and once more after the work ended; idle, no timer.
    ``leading``: work after a quiet spell runs at once, not ``interval`` later
    (still at most once per ``interval``)."""

    def __init__(
        self,
        actor: Actor,
        interval: float,
        callback: Callable[[], None],
        active: Callable[[], bool],
        leading: bool = False,
    ) -> None:
        self.actor = actor
        self.interval = interval
        self.callback = callback
        self.active = active
        self.leading = leading
        self.last_run = -math.inf
        self.timer: Timer | None = None

    def arm(self) -> None:
        """Schedule the next run unless one is scheduled or there is no work."""
        if self.timer is None and self.active():
            delay = self.interval
            if self.leading:
                delay = max(0.0, self.last_run + self.interval - self.actor.now())
            self.timer = self.actor.call_later(delay, self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.last_run = self.actor.now()
        try:
            self.callback()
        finally:  # a failing run must not end the repetition
            self.arm()


# As plain ints: a flag enum's ``&`` builds an enum object each time.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message waits on ``sock`` (a receive would not block).
    Asked after each message of a batch, it ends the batch without the
    refused ``recv(NOBLOCK)`` whose :class:`zmq.Again` cost the data path
    an exception (and pyzmq an import) at every wake-up."""
    return bool(int(sock.getsockopt(_EVENTS)) & _POLLIN)


def dial(sock: zmq.Socket[Any], url: str) -> None:
    """``sock.connect(url)``, with the socket's ``IPV6`` option set first when
    the url names an IPv6 host (libzmq dials one only then)."""
    if url_is_ipv6(url):
        sock.ipv6 = True
    sock.connect(url)


def bound_endpoint(sock: zmq.Socket[Any]) -> str:
    """The endpoint a socket actually bound (port 0 resolved)."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def bound_port(sock: zmq.Socket[Any]) -> int:
    return int(bound_endpoint(sock).rsplit(":", 1)[1])


def _not_here(host: str, code: int) -> str:
    """Why nothing can listen on ``host`` when it is the host that ZeroMQ's
    bind refused with error ``code`` ("": not the host; its "No such
    device" said nothing of a name that does not resolve)."""
    if code not in (errno.ENODEV, errno.EADDRNOTAVAIL):
        return ""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        return "not an address of this host"
    try:  # (ENODEV: no address, no interface, and no name that resolves)
        socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return "the name does not resolve (nor is it an address or a network interface here)"
    return "the name resolves to no address of this host"


class SetupError(Exception):
    """An actor cannot start for a reason to tell the user in one line
    (e.g. "cannot listen on 0.0.0.0:7400: Address already in use")."""


def _shown(value: object) -> str:
    return printable(value if isinstance(value, str | bytes) else str(value))


class ActorFault(Exception):
    """Raised by a handler whose actor can no longer trust its own state:
    the one exception containment lets through (the supervisor restarts
    the actor)."""


class Actor:
    """Base class. Subclasses set ``name`` and override the hooks."""

    name: ClassVar[str] = "actor"
    # Actors that publish facts/counters for ``status`` send them here.
    REPORT_TO: ClassVar[str | None] = "control"
    REPORT_INTERVAL: ClassVar[float] = 0.5
    # Facts and counters are reported at most every REPORT_INTERVAL while they
    # change, and again after REPORT_REFRESH when they do not: for a report
    # lost on the way (a full mailbox). A status owner that restarted is told
    # at once (RESTARTED below; for attached actors, by actors/attach.py), and
    # an attached actor's link resends its last reports on every attach. Each
    # refresh wakes the actor and its owner: at
    # 10 s, 2.6 of an idle node's ~8 wake-ups a second (its 13 actors).
    REPORT_REFRESH: ClassVar[float] = 60.0
    # It moves bulk data: its thread yields the CPU to the control plane's.
    data_plane: ClassVar[bool] = False

    def __init__(self, env: ActorEnv) -> None:
        self.env = env
        self._sockets: list[zmq.Socket[Any]] = []
        self._handlers: dict[Any, Callable[[Any], None]] = {}
        self._poller = zmq.Poller()
        self._timers: list[Timer] = []
        self._timers_cancelled = 0  # cancelled ones still in the heap
        self._seq = itertools.count()
        self._outboxes: dict[str, zmq.Socket[Any]] = {}
        self._node_stopping = False  # told STOPPING by the supervisor
        self._repeats: list[Repeat] = []
        self._running = False
        self._restart_why = ""  # set by restart(): the stop is on purpose
        self.crashed = False  # the loop ended by an exception (teardown's word)
        # Change them by item (``[k] = v``, ``del``): that is what marks them changed.
        self.counters: Watched = Watched()
        self._log_bucket = TokenBucket(LOG_RATE, LOG_BURST, time.monotonic())
        self._faults_logged: set[tuple[str, str]] = set()
        self._trim: Timer | None = None  # a heap trim due once idle (trim_when_idle)
        self._inbound_taken = 0  # bytes of peers' messages taken (Inbound payloads)
        self._on_exit: list[Callable[[], None]] = []  # after teardown (on_exit)
        self.facts: Watched = Watched()

    # -- hooks ------------------------------------------------------------------

    def setup(self) -> None:
        """Create sockets and timers. Runs in the actor's thread before READY."""

    def teardown(self) -> None:
        """Release non-socket resources. Runs in the actor's thread, always."""

    def on_actor_restarted(self, name: str) -> None:
        """Actor ``name`` crashed and was restarted: its state is gone."""

    def on_mail(self, msg: codec.Message) -> None:
        """A message arrived in the mailbox."""
        log.warning("%s: unexpected mail %s", self.name, msg.TYPE)

    # -- services for subclasses -------------------------------------------------

    def now(self) -> float:
        """The actor's clock (``ActorEnv.clock``): timers and every ``now``
        passed to the core come from here."""
        return self.env.clock()

    def bind(self, sock: zmq.Socket[Any], host: str, port: int, what: str = "") -> None:
        """Bind ``tcp://host:port`` (``IPV6`` set for an IPv6 host); a failure
        is a :class:`SetupError` naming the address as the user gives it
        and ``what`` port it is ("the data port"; port 0: any free port)."""
        if is_ipv6(host):
            sock.ipv6 = True
        try:
            sock.bind(f"tcp://{join_host_port(host, port)}")
        except zmq.ZMQError as exc:
            if why := _not_here(host, exc.errno or 0):  # (whatever the port)
                raise SetupError(f"cannot listen on {host}: {why}") from None
            where = join_host_port(host, port) if port else host
            notes = [what] if what else []
            notes += [] if port else ["any free port"]
            which = f" ({', '.join(notes)})" if notes else ""
            # zmq.strerror: pyzmq's own text adds the libzmq url (port 0)
            reason = zmq.strerror(exc.errno or 0)
            raise SetupError(f"cannot listen on {where}{which}: {reason}") from None

    def socket(self, kind: int, data_plane: bool = False) -> zmq.Socket[Any]:
        """A socket owned by this actor (closed with LINGER 0 when it stops);
        ``data_plane``: it carries bulk chunks (its own I/O thread)."""
        sock: zmq.Socket[Any] = self.env.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)  # by number: a send opens several sockets
        if self.env.context.get(zmq.IO_THREADS) >= IO_THREADS:
            sock.setsockopt(zmq.AFFINITY, DATA_AFFINITY if data_plane else CONTROL_AFFINITY)
        self._sockets.append(sock)
        return sock

    def watch(self, sock: zmq.Socket[Any] | int, handler: Callable[[Any], None]) -> None:
        """Call ``handler(sock)`` whenever ``sock`` (a socket, or a file
        descriptor such as a pipe's read end) is readable."""
        self._handlers[sock] = handler
        self._poller.register(sock, zmq.POLLIN)

    def unwatch(self, sock: zmq.Socket[Any] | int) -> None:
        if sock in self._handlers:
            self._poller.unregister(sock)
            del self._handlers[sock]

    def on_exit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the loop ends, after :meth:`teardown`, in
        the actor's thread (to release what a helper of the actor holds that
        is not one of its sockets, e.g. a descriptor it watches)."""
        self._on_exit.append(callback)

    def close_socket(self, sock: zmq.Socket[Any], linger: int = 0) -> None:
        """Close ``sock``; ``linger``: ms the context's end waits to deliver
        what it still queues."""
        if sock in self._handlers:
            self._poller.unregister(sock)
            del self._handlers[sock]
        if sock in self._sockets:
            self._sockets.remove(sock)
        sock.close(linger=linger)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self.now() + max(0.0, delay), next(self._seq), callback, owner=self)
        heapq.heappush(self._timers, timer)
        return timer

    def _timer_cancelled(self) -> None:
        """A timer in the heap was cancelled. It stays there until it comes
        to the top (a 30 s one for 30 s), so an actor that arms and cancels
        many (a kept connection's, at every send) would grow its heap without
        bound: once more than half of it (and more than
        :data:`TIMERS_COMPACT_MIN`) is cancelled, the heap is rebuilt from
        the live ones (as asyncio does)."""
        self._timers_cancelled += 1
        cancelled = self._timers_cancelled
        if cancelled <= TIMERS_COMPACT_MIN or 2 * cancelled <= len(self._timers):
            return
        live = []
        for timer in self._timers:
            if timer.cancelled:
                timer.owner = None
            else:
                live.append(timer)
        heapq.heapify(live)
        self._timers[:] = live  # in place: the loop may be iterating over it
        self._timers_cancelled = 0

    def _pop_timer(self) -> Timer:
        timer = heapq.heappop(self._timers)
        timer.owner = None
        if timer.cancelled:
            self._timers_cancelled -= 1
        return timer

    def call_every(self, interval: float, callback: Callable[[], None]) -> Timer:
        """Repeat ``callback`` every ``interval`` s; cancel the returned timer
        to stop (the handle stays the same across repetitions)."""
        handle = Timer(0.0, -1, callback)

        def tick() -> None:
            if handle.cancelled:
                return
            try:
                callback()
            finally:  # a failing run must not end the repetition
                if not handle.cancelled:
                    self.call_later(interval, tick)

        self.call_later(interval, tick)
        return handle

    def call_every_while(
        self,
        interval: float,
        callback: Callable[[], None],
        active: Callable[[], bool],
        leading: bool = False,
    ) -> Repeat:
        """Repeat ``callback`` every ``interval`` s while ``active()`` (e.g.
        "a transfer runs") and once after it stopped holding. The loop re-arms
        it after every event it handles, so an idle actor has no timer for it
        (an idle node sleeps in poll instead of waking to find nothing to do)."""
        repeat = Repeat(self, interval, callback, active, leading)
        self._repeats.append(repeat)
        repeat.arm()
        return repeat

    def tell(self, actor: str, msg: codec.Message) -> None:
        """Send ``msg`` to another actor's mailbox (never blocks)."""
        out = self._outboxes.get(actor)
        if out is None:
            out = self.socket(zmq.PUSH)
            out.sndhwm = 100_000
            out.connect(self.env.address(actor))
            self._outboxes[actor] = out
        try:
            out.send(codec.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            self.count("mail-dropped")
            if not self._node_stopping:
                self.log_limited("%s: mailbox of %s is full", self.name, actor)

    def report(self) -> None:
        """Publish facts and counters to the status owner (see REPORT_TO) if
        they changed since the last report."""
        owner = self.REPORT_TO
        if owner is not None and self.report_due():
            self.facts.changed = self.counters.changed = False
            self.tell(
                owner,
                Announce(actor=self.name, facts=dict(self.facts), counters=dict(self.counters)),
            )

    def _reports(self) -> bool:
        return bool(self.REPORT_TO) and self.name != self.REPORT_TO

    def report_due(self) -> bool:
        """Whether :meth:`report` has news (checked after every event)."""
        return self._reports() and (self.facts.changed or self.counters.changed)

    def _refresh_report(self) -> None:
        self.facts.changed = True  # a status owner that lost it learns it again
        self.report()

    def _forget_outbox(self, actor: str) -> None:
        out = self._outboxes.pop(actor, None)
        if out is not None:
            self.close_socket(out)

    def count(self, key: str, n: int = 1) -> None:
        """Count an event; every counted decision is also a debug log line
        (``--debug``), so the log tells what each actor decided."""
        self.counters[key] = self.counters.get(key, 0) + n
        if decisions.isEnabledFor(logging.DEBUG):
            decisions.debug("%s: %s%s", self.name, key, f" +{n}" if n != 1 else "")

    def trim_when_idle(self, idle: Callable[[], bool]) -> None:
        """The last of this actor's transfers ended: if ``idle()`` still holds
        :data:`~peercrypt.runtime.memory.TRIM_AFTER` s later, the heap's free
        pages go back to the system (:func:`~peercrypt.runtime.memory.trim`;
        counted ``heap-trimmed``), not between sends that follow each other."""
        if self._trim is not None:
            return

        def due() -> None:
            self._trim = None
            if idle() and memory.trim():
                self.count("heap-trimmed")

        self._trim = self.call_later(memory.TRIM_AFTER, due)

    def trim_while_busy(
        self, busy: Callable[[], bool], turns: memory.TrimClock | None = None
    ) -> Repeat:
        """While ``busy()`` (transfers run), the heap's free pages go back
        every :data:`~peercrypt.runtime.memory.TRIM_EVERY` s, once in the
        process whichever actor's turn it is (``turns``: the process's
        :data:`~peercrypt.runtime.memory.busy_trims`; counted
        ``heap-trims-busy``, and ``heap-trimmed-busy`` when pages went back);
        idle, no timer."""
        clock = memory.busy_trims if turns is None else turns

        def due() -> None:
            if busy() and clock.due():
                self.count("heap-trims-busy")
                if memory.trim():
                    self.count("heap-trimmed-busy")

        return self.call_every_while(memory.TRIM_EVERY, due, busy)

    def log_limited(self, fmt: str, *args: object, level: int = logging.WARNING) -> None:
        """Log a warning unless this actor has logged too many lately (a token
        bucket: LOG_BURST, then LOG_RATE per second); suppressed lines are
        counted. Every argument but a number is escaped: pass peer text as
        arguments, never inside ``fmt``."""
        if self._log_bucket.consume(1, self.now()):
            shown = (a if isinstance(a, int | float) else _shown(a) for a in args)
            logging.getLogger(f"peercrypt.{self.name}").log(level, fmt, *shown)
        else:
            self.count("log-suppressed")

    def contain(self, where: str, call: Callable[..., None], *args: Any) -> None:
        """Run one handler call; an exception is counted and logged (once per
        place and exception type) and the actor goes on. :class:`ActorFault`
        is let through."""
        try:
            call(*args)
        except ActorFault:
            raise
        except Exception as exc:
            self.count("handler-errors")
            key = (where, type(exc).__name__)
            if key not in self._faults_logged and len(self._faults_logged) < MAX_FAULT_KINDS:
                self._faults_logged.add(key)
                log.error(
                    "%s: %s failed on one message (%s: %s); the actor goes on",
                    self.name,
                    where,
                    type(exc).__name__,
                    printable(str(exc)),
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )

    def stop(self) -> None:
        """Leave the loop after the current step (from inside the actor)."""
        self._running = False

    def restart(self, why: str) -> None:
        """Leave the loop to be started again, on purpose (from inside the
        actor): the supervisor restarts it and tells every actor, as after
        a crash, and logs ``why`` (``now runs attached from ...``) as news,
        not the warning of an actor that stopped unexpectedly."""
        self._restart_why = why
        self.stop()

    # -- the loop (runs in the actor's thread) ----------------------------------

    def _on_mailbox(self, sock: zmq.Socket[Any]) -> None:
        self.drain_mail(sock, self._on_mailbox_mail)

    def _on_mailbox_mail(self, msg: codec.Message) -> None:
        # An actor of the node restarted, told across processes (an attached
        # actor's link hands it on): the same hook as the supervisor's word.
        if type(msg) is ActorRestarted:
            self.on_actor_restarted(msg.actor)
        else:
            self.on_mail(msg)

    def drain_mail(self, sock: zmq.Socket[Any], handler: Callable[[codec.Message], None]) -> None:
        """Decode up to DRAIN_BATCH messages waiting on a mailbox-like PULL
        socket and hand each to ``handler`` (contained); bad mail is counted.
        Peers' messages taken (``Inbound``) are reported to the gateway
        (``InboundTaken``: core/mail_credit.py)."""
        taken = 0
        try:
            for _ in range(DRAIN_BATCH):
                try:
                    data = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    return
                try:
                    msg = codec.decode(data)
                except codec.DecodeError as exc:
                    self.count(f"mail-decode-{exc.kind}")
                    self.log_limited("%s: bad mail: %s", self.name, str(exc))
                    continue
                if type(msg) is Inbound:
                    taken += inbound_cost(msg.payload, msg.route)
                self.contain("mail", handler, msg)
        finally:
            if taken and self.env.reports_inbound:  # the gateway's bound (mail_credit)
                self._inbound_taken += taken
                self.tell("gateway", InboundTaken(actor=self.name, taken=self._inbound_taken))

    def _run_timers(self) -> None:
        now = self.now()
        while self._timers and self._timers[0].due <= now:
            timer = self._pop_timer()
            if not timer.cancelled:
                self.contain(getattr(timer.callback, "__name__", "timer"), timer.callback)

    def _poll_timeout_ms(self) -> int | None:
        """Until the first timer (None: no timer, wait for a socket). On the
        monotonic clock nothing else can make a timer due sooner; any other
        clock (a test's fake one) may be advanced from outside, so the loop
        looks again every second."""
        while self._timers and self._timers[0].cancelled:
            self._pop_timer()
        cap = None if self.env.clock is time.monotonic else 1000
        if not self._timers:
            return cap
        wait = max(0, math.ceil((self._timers[0].due - self.now()) * 1000))
        return wait if cap is None else min(cap, wait)

    def run(self, pipe_address: str) -> None:
        """Thread body. Never raises; always reports on the pipe."""
        name_native_thread()
        ctx = self.env.context
        if self.data_plane:
            yield_to_control_plane()
        pipe: zmq.Socket[Any] = ctx.socket(zmq.PAIR)
        pipe.linger = 0
        status = STOPPED
        try:
            pipe.connect(pipe_address)
            mailbox = self.socket(zmq.PULL)
            mailbox.rcvhwm = 100_000
            mailbox.bind(self.env.address(self.name))
            self.watch(mailbox, self._on_mailbox)
            self._poller.register(pipe, zmq.POLLIN)
            try:
                self.setup()
            except SetupError as exc:
                status = FAILED + str(exc).encode()
                log.debug("actor %s cannot start: %s", self.name, exc)
                return
            self.report()
            if self._reports():  # the status owner (control) and proxies report to no one
                self.call_every_while(
                    self.REPORT_INTERVAL, self.report, self.report_due, leading=True
                )
                self.call_every(self.REPORT_REFRESH, self._refresh_report)
            pipe.send(READY)
            self._running = True
            while self._running:
                events = dict(self._poller.poll(self._poll_timeout_ms()))
                if pipe in events:
                    command = pipe.recv()
                    if command == TERM:
                        self._on_mailbox(mailbox)  # mail already sent to us is handled
                        break
                    if command.startswith(RESTARTED):
                        other = command[len(RESTARTED) :].decode()
                        self._forget_outbox(other)
                        if other == self.REPORT_TO:
                            self.facts.changed = True  # it lost what we told it
                        if other == "gateway":  # its count of what it handed us starts at 0
                            self._inbound_taken = 0
                        self.on_actor_restarted(other)
                    elif command == STOPPING:
                        self._node_stopping = True
                        pipe.send(STOPPING, zmq.NOBLOCK)
                for sock in list(events):
                    handler = self._handlers.get(sock)
                    if handler is not None:
                        self.contain(getattr(handler, "__name__", "socket"), handler, sock)
                self._run_timers()
                for repeat in self._repeats:
                    repeat.arm()
        except Exception as exc:
            status = CRASHED
            self.crashed = True
            log.error("actor %s crashed: %s", self.name, exc, exc_info=log.isEnabledFor(10))
        finally:
            try:
                self.teardown()
            except Exception:
                log.exception("actor %s: teardown failed", self.name)
            for callback in self._on_exit:
                try:
                    callback()
                except Exception:
                    log.exception("actor %s: release failed", self.name)
            self._on_exit.clear()
            close_all(self._sockets)
            self._sockets.clear()
            if status == STOPPED and self._restart_why:
                status = RESTART + self._restart_why.encode()
            with contextlib.suppress(zmq.ZMQError):
                pipe.send(status, zmq.NOBLOCK)
            pipe.close(linger=0)
