"""The node's sender and receiver as processes of their own (``--isolate-data-plane``).

A node's actors are threads of one Python process, and so share its
interpreter lock. Under a saturated data plane the threads that move bytes
hold it most of the time, and a control-plane thread (control, health, the
gateway) that has a request to answer waits for it: a health check's p99
under 64 transfers at once was 55-90 ms on 2 cores (docs/benchmarks.md,
"The interpreter lock on a check's path"). With ``--isolate-data-plane`` the
node runs the sender and the receiver each as a child process: an attached
actor (docs/architecture.md, "Attached actors") on the node's own public
port over loopback, with the node's own identity and settings, so to its
peers the node is the same node. Its control plane then has its process's
lock to itself.

- The child is ``python -m peercrypt.data_plane KIND HOST PORT PARENT LEVEL``;
  the node's settings (with its identity and network key) come pickled on
  its stdin, never in argv or the environment.
- It ends with the node: SIGTERM from the node's stop, and the kernel's
  parent-death signal if the node dies without one.
- A child that ends on its own is started again after ``RESTART_DELAYS``
  (the sends it had fail as with a crashed actor; the receiver's parts are
  kept and resumed as after any restart).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from peercrypt.crypto.identity import fingerprint
from peercrypt.runtime.stop_flag import StopFlag
from peercrypt.settings import NodeSettings

log = logging.getLogger("peercrypt.data_plane")

KINDS = ("sender", "receiver")
# Seconds before starting a child that ended again: the n-th restart in a
# row waits the n-th (the last from then on); one that ran for
# ``STEADY`` s starts the row again.
RESTART_DELAYS = (0.2, 1.0, 5.0, 30.0)
STEADY = 60.0
STOP_TIMEOUT = 10.0  # a child's own shutdown, then SIGKILL
ATTACH_TIMEOUT = 30.0  # the node's start waits this long for its children to attach
SETTINGS_MAX = 1 << 20  # the pickled settings a child reads, at most
PR_SET_PDEATHSIG = 1


def isolated_kinds(settings: NodeSettings) -> tuple[str, ...]:
    """The data-plane actors the node runs as its own child processes."""
    if not settings.isolate_data_plane or settings.port is None:
        return ()
    return tuple(k for k in KINDS if k not in settings.remote_actors)


def with_isolation(settings: NodeSettings) -> NodeSettings:
    """The node's settings with its isolated actors remote, and its own
    identity allowed to attach them (only a holder of its secret key can)."""
    kinds = isolated_kinds(settings)
    if not kinds:
        return settings
    own = fingerprint(settings.identity.public)
    return dataclasses.replace(
        settings,
        remote_actors=(*settings.remote_actors, *kinds),
        attach_allow=settings.attach_allow | {own},
        allow=settings.allow | {own} if settings.allow else settings.allow,
    )


def attach_host(host: str) -> str:
    """Where a child reaches the node's public port bound on ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


@dataclasses.dataclass
class _Child:
    kind: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0  # restarts in a row so far


class DataPlaneProcesses:
    """Starts, restarts and stops the node's isolated actors (see the module)."""

    def __init__(
        self, settings: NodeSettings, kinds: tuple[str, ...], port: int, level: int
    ) -> None:
        self.settings = settings
        self.where = (attach_host(settings.host), port)
        self.level = level
        self.children = [_Child(kind) for kind in kinds]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watchers: list[threading.Thread] = []

    def start(self) -> DataPlaneProcesses:
        for child in self.children:
            self._spawn(child)
            watcher = threading.Thread(
                target=self._watch, args=(child,), name=f"pc-{child.kind}-process", daemon=True
            )
            watcher.start()
            self._watchers.append(watcher)
        return self

    def pids(self) -> dict[str, int]:
        """The running children's process ids, by actor."""
        with self._lock:
            return {
                c.kind: c.proc.pid
                for c in self.children
                if c.proc is not None and c.proc.poll() is None
            }

    def ended(self) -> list[str]:
        """The children that ended since their last steady run (being restarted)."""
        return [c.kind for c in self.children if c.restarts]

    def _spawn(self, child: _Child) -> None:
        host, port = self.where
        argv = [
            sys.executable,
            "-m",
            "peercrypt.data_plane",
            child.kind,
            host,
            str(port),
            str(os.getpid()),
            str(self.level),
        ]
        with self._lock:
            if self._stopping.is_set():
                return
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, close_fds=True)
            child.proc = proc
            child.started = time.monotonic()
        assert proc.stdin is not None
        try:
            with proc.stdin:
                proc.stdin.write(pickle.dumps(self.settings))
        except (BrokenPipeError, OSError):
            pass  # it ended at once: its watcher says so and starts it again

    def _watch(self, child: _Child) -> None:
        while True:
            proc = child.proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.is_set():
                return
            ran = time.monotonic() - child.started
            if ran >= STEADY:
                child.restarts = 0
            delay = RESTART_DELAYS[min(child.restarts, len(RESTART_DELAYS) - 1)]
            child.restarts += 1
            log.warning(
                "the node's %s process ended (%s) after %.1f s; starting it again in %.1f s",
                child.kind,
                _exit_text(code),
                ran,
                delay,
            )
            if self._stopping.wait(delay):
                return
            self._spawn(child)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every child, wait for each (bounded), SIGKILL what is left."""
        with self._lock:
            self._stopping.set()
            procs = [c.proc for c in self.children if c.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("the node's data-plane process %d ignored SIGTERM: killed", proc.pid)
                proc.kill()
                proc.wait()
        for watcher in self._watchers:
            watcher.join(timeout)


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit {code}"


# -- the child ---------------------------------------------------------------------


def _die_with(parent: int) -> None:
    """SIGTERM this process when the thread that started it ends (the node's
    process dies). A node already gone before this was set: end now."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(0)


def main(argv: list[str]) -> int:
    kind, host, port, parent, level = argv
    _die_with(int(parent))
    stop = StopFlag()  # no lock in a signal handler (peercrypt/runtime/stop_flag.py)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the node's terminal closing is the node's
    logging.basicConfig(
        level=int(level),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("peercrypt").setLevel(int(level))
    data = sys.stdin.buffer.read(SETTINGS_MAX + 1)
    settings: Any = pickle.loads(data)  # from the node that started us, through a pipe
    if len(data) > SETTINGS_MAX or not isinstance(settings, NodeSettings):
        print("peercrypt: error: the node's settings did not arrive", file=sys.stderr)
        return 1
    from peercrypt.attached import AttachedActor
    from peercrypt.cli.common import UserError, start_node

    # No space ledger of its own: the inbox is the node's, and so is its ledger.
    process = AttachedActor(kind, settings, [(host, int(port))], companions=())
    try:
        start_node(process, f"{settings.host} (the node's {kind} process)")
    except UserError as exc:
        print(f"peercrypt: error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    try:
        process.run_until(stop)
    finally:
        process.stop()
    if process.refused:
        print(f"peercrypt: error: the node's {kind} process: {process.refused}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
