"""Start, watch, restart and stop a node's actors.

- :meth:`Supervisor.start` starts the actors in order and waits for each one's
  READY (bounded); a failure stops the ones already started and raises.
- :meth:`Supervisor.poll` (called from the node's main loop) notices a
  ``CRASHED`` actor and restarts it with exponential backoff (0.1 s doubling
  to 10 s; reset after 30 s of healthy running). The node stays up. An
  actor that stopped on purpose to be restarted (``RESTART:<why>``: a proxy
  whose actor now runs attached) is restarted the same way, logged at INFO
  with its reason instead of the warning.
- :meth:`Supervisor.run_until` is that loop. It sleeps until an actor's news,
  a restart falling due or :meth:`Supervisor.wake` (from any thread, or a
  signal through :func:`signal.set_wakeup_fd`): an idle node's main thread
  never wakes up just to look.
- :meth:`Supervisor.stop` first tells every actor ``$STOPPING`` and waits
  (bounded) for each to answer it (mail to an actor already stopped is then
  lost by design: counted, not warned of), then sends ``$TERM`` to one actor
  at a time, the last started first, joins the threads (bounded), and only
  then terminates the context: every socket is closed by its own thread
  first, so the node's ``term()`` cannot hang.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from peercrypt.core.backoff import Backoff
from peercrypt.runtime.actor import (
    CRASHED,
    FAILED,
    READY,
    RESTART,
    RESTARTED,
    STOPPING,
    TERM,
    Actor,
    ActorEnv,
)

log = logging.getLogger("peercrypt.supervisor")

START_TIMEOUT = 10.0
STOPPING_WAIT = 2.0  # for every actor to hear that the node stops
STOP_TIMEOUT = 5.0
LOOP_END_TIMEOUT = START_TIMEOUT + 2 * STOP_TIMEOUT
BACKOFF_MIN = 0.1
BACKOFF_MAX = 10.0
HEALTHY_AFTER = 30.0


class StartError(Exception):
    """An actor did not become ready. ``user_error``: the reason is the
    user's to fix (e.g. a port in use), and the message says it in one line."""

    def __init__(self, message: str, user_error: bool = False) -> None:
        super().__init__(message)
        self.user_error = user_error


ActorFactory = Callable[[ActorEnv], Actor]


@dataclass
class _Slot:
    name: str
    factory: ActorFactory
    generation: int = 0
    pipe: zmq.Socket[Any] | None = None
    thread: threading.Thread | None = None
    started_at: float = 0.0
    backoff: Backoff = field(
        default_factory=lambda: Backoff(
            BACKOFF_MIN, max_delay=BACKOFF_MAX, max_retries=None, rng=None
        )
    )
    restart_at: float | None = None
    restarts: int = 0


class Supervisor:
    def __init__(self, env: ActorEnv, factories: list[tuple[str, ActorFactory]]) -> None:
        """``factories``: (actor name, callable making the actor), in start order."""
        self.env = env
        self._slots = [_Slot(name, factory) for name, factory in factories]
        self._poller = zmq.Poller()
        self._stopped = False
        self._loop: tuple[threading.Thread, threading.Event] | None = None
        # wake(): a byte into this pair ends the poller's wait at once.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poller.register(self._wake_r, zmq.POLLIN)

    @property
    def restarts(self) -> dict[str, int]:
        return {slot.name: slot.restarts for slot in self._slots}

    def start(self) -> None:
        try:
            for slot in self._slots:
                self._spawn(slot)
        except Exception:
            self.stop()
            raise

    def _spawn(self, slot: _Slot) -> None:
        slot.generation += 1
        address = f"inproc://pc-{self.env.node_uid}/pipe/{slot.name}/{slot.generation}"
        pipe: zmq.Socket[Any] = self.env.context.socket(zmq.PAIR)
        pipe.linger = 0
        pipe.bind(address)
        try:
            actor = slot.factory(self.env)
        except BaseException as exc:  # (an open socket would hold the context's term for ever)
            pipe.close(linger=0)
            if isinstance(exc, Exception):  # a start error, at start or at a restart
                raise StartError(f"actor {slot.name}: {exc}", user_error=True) from exc
            raise
        thread = threading.Thread(
            target=actor.run, args=(address,), name=f"pc-{slot.name}", daemon=True
        )
        thread.start()
        slot.pipe, slot.thread, slot.started_at = pipe, thread, time.monotonic()
        if not pipe.poll(int(START_TIMEOUT * 1000)):
            raise StartError(f"actor {slot.name} did not start within {START_TIMEOUT:.0f} s")
        answer = pipe.recv()
        if answer != READY:
            thread.join(STOP_TIMEOUT)
            self._close_pipe(slot)
            if answer.startswith(FAILED):
                raise StartError(answer[len(FAILED) :].decode(errors="replace"), user_error=True)
            raise StartError(f"actor {slot.name} failed to start")
        self._poller.register(pipe, zmq.POLLIN)

    def _close_pipe(self, slot: _Slot) -> None:
        if slot.pipe is not None:
            with contextlib.suppress(KeyError):
                self._poller.unregister(slot.pipe)
            slot.pipe.close(linger=0)
            slot.pipe = None

    def wake(self) -> None:
        """End the current (or next) :meth:`poll` wait; safe from any thread."""
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wake is pending anyway
            self._wake_w.send(b"\0")

    def run_until(self, stopped: Callable[[], bool]) -> None:
        """Restart crashed actors until ``stopped()`` is true.

        Checked after each wake-up: whoever makes it true calls :meth:`wake`;
        a signal handled in the main thread wakes it through the signal
        module's wake-up fd, installed here for the loop's duration."""
        previous: int | None = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        try:
            while not stopped():
                self.poll(None)
        finally:
            if previous is not None:
                signal.set_wakeup_fd(previous)

    def run_in_background(self) -> None:
        """Run :meth:`run_until` in a thread of its own, for a process whose
        main thread is busy elsewhere (the interactive shell's prompt); ended
        by :meth:`stop` before it stops the actors."""
        if self._loop is not None:
            return
        done = threading.Event()
        thread = threading.Thread(
            target=self.run_until, args=(done.is_set,), name="supervisor", daemon=True
        )
        self._loop = (thread, done)
        thread.start()

    def _end_background_loop(self) -> bool:
        """End the loop of :meth:`run_in_background` (True: it ended, or there
        was none). ``_stopped`` is set first, so a loop that is restarting an
        actor right now spawns nothing more once that start returns."""
        self._stopped = True
        if self._loop is None:
            return True
        thread, done = self._loop
        done.set()
        self.wake()
        # Its longest step is one restart: a crashed actor's join, then a start.
        thread.join(LOOP_END_TIMEOUT)
        if thread.is_alive():
            log.error("the supervisor's loop did not end within %.0f s", LOOP_END_TIMEOUT)
            return False
        self._loop = None
        return True

    def _tell_stopping(self) -> None:
        """Tell every actor the node stops and wait (at most STOPPING_WAIT s)
        until each has heard it, so none warns of mail lost to an actor that
        is stopped before it. An actor that ends meanwhile is left to the
        joins of :meth:`stop`."""
        poller = zmq.Poller()
        pending: dict[zmq.Socket[Any], _Slot] = {}
        for slot in self._slots:
            if slot.pipe is None:
                continue
            try:
                slot.pipe.send(STOPPING, zmq.NOBLOCK)
            except zmq.ZMQError:
                continue
            poller.register(slot.pipe, zmq.POLLIN)
            pending[slot.pipe] = slot
        deadline = time.monotonic() + STOPPING_WAIT
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                late = ", ".join(slot.name for slot in pending.values())
                log.debug("stopping: %s did not answer", late)
                return
            for pipe in dict(poller.poll(math.ceil(left * 1000))):
                pipe.recv()  # the answer, or its end's status: either way it heard
                poller.unregister(pipe)
                del pending[pipe]

    def poll(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` s (None: no bound) for actor news or a wake;
        restart crashed actors. The wait ends early when a restart is due."""
        due = [s.restart_at for s in self._slots if s.restart_at is not None]
        if due:
            until_due = max(0.0, min(due) - time.monotonic())
            timeout = until_due if timeout is None else min(timeout, until_due)
        events = dict(self._poller.poll(None if timeout is None else math.ceil(timeout * 1000)))
        if self._wake_r in events:
            with contextlib.suppress(BlockingIOError, OSError):
                while self._wake_r.recv(4096):
                    pass
        now = time.monotonic()
        for slot in self._slots:
            if slot.pipe is not None and slot.pipe in events:
                status = slot.pipe.recv()
                if slot.thread is not None:
                    slot.thread.join(STOP_TIMEOUT)
                self._close_pipe(slot)
                if now - slot.started_at > HEALTHY_AFTER:
                    slot.backoff.reset()
                delay = slot.backoff.next_delay() or BACKOFF_MAX  # unlimited: never None
                slot.restart_at = now + delay
                if status.startswith(RESTART):  # on purpose (Actor.restart): news, not a fault
                    why = status[len(RESTART) :].decode(errors="replace")
                    log.info("actor %s %s; restarting it in %.1f s", slot.name, why, delay)
                else:
                    log.warning(
                        "actor %s %s; restarting in %.1f s",
                        slot.name,
                        "crashed" if status == CRASHED else "stopped unexpectedly",
                        delay,
                    )
            if slot.restart_at is not None and now >= slot.restart_at and not self._stopped:
                slot.restart_at = None
                slot.restarts += 1
                try:
                    self._spawn(slot)
                except StartError as exc:
                    log.error("%s", exc)
                    slot.restart_at = time.monotonic() + slot.backoff.ceiling()
                    continue
                for other in self._slots:
                    if other is not slot and other.pipe is not None:
                        # Not waiting: one that ended meanwhile (its status not
                        # read yet: a later slot of this loop) takes nothing,
                        # and its next start knows nothing to forget.
                        with contextlib.suppress(zmq.Again):
                            other.pipe.send(RESTARTED + slot.name.encode(), zmq.NOBLOCK)

    def stop(self) -> bool:
        """Stop every actor, one at a time in reverse start order (so the
        control actor, started first, still relays the others' last words).
        Returns True if all threads ended, so the context may be terminated."""
        if not self._end_background_loop():
            return False  # its sockets are not to be shared: leave them to it
        self._tell_stopping()
        clean = True
        deadline = time.monotonic() + STOP_TIMEOUT
        for slot in reversed(self._slots):
            if slot.pipe is not None:
                with contextlib.suppress(zmq.ZMQError):
                    slot.pipe.send(TERM, zmq.NOBLOCK)
            if slot.thread is not None:
                slot.thread.join(max(0.1, deadline - time.monotonic()))
                if slot.thread.is_alive():
                    clean = False
                    log.error("actor %s did not stop within %.0f s", slot.name, STOP_TIMEOUT)
            self._close_pipe(slot)
        with contextlib.suppress(KeyError):
            self._poller.unregister(self._wake_r)
        self._wake_r.close()
        self._wake_w.close()
        return clean
