"""The node's sender and receiver as processes of their own (``--isolate-data-plane``).

A node's actors are threads of one Python process, and so share its
interpreter lock. Under a saturated data plane the threads that move bytes
hold it most of the time, and a control-plane thread (control, health, the
gateway) that has a request to answer waits for it: a health check's p99
under 64 transfers at once was 55-90 ms on 2 cores (docs/benchmarks.md,
"The interpreter lock on a check's path"). With ``--isolate-data-plane`` the
node runs the sender and the receiver each as a child process: an attached
actor (docs/architecture.md, "Attached actors") with the node's own identity
and settings, so to its peers the node is the same node. Its control plane
then has its process's lock to itself.

- The child is ``python -P -m peercrypt.data_plane KIND PARENT LEVEL``
  (``-P``: no module of the working directory is imported), in a process
  group of its own; the node's settings (its X25519 identity and network
  key, not the seed that signs) come pickled on its stdin, never in argv.
- It attaches on the node's private endpoint (:func:`private_endpoint`:
  ``DATA_DIR/ipc/attach.sock``, in the folder only the node's user may
  enter), not on the node's public port: its mail to the node's actors crosses no CURVE,
  no TCP and no gateway. The node's public port refuses these actors to
  everyone, the node's own identity too (``isolated_actors``,
  actors/attach.py), whatever ``--attach-allow`` lists.
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
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from peercrypt import errors, local_ipc
from peercrypt.crypto.identity import KeyPair
from peercrypt.runtime.stop_flag import StopFlag
from peercrypt.settings import NodeSettings

log = logging.getLogger("peercrypt.data_plane")

KINDS = ("sender", "receiver")
# Seconds before starting a child that ended again: the n-th restart in a
# row waits the n-th (the last from then on); one that ran for
# ``STEADY`` s starts the row again.
RESTART_DELAYS = (0.2, 1.0, 5.0, 30.0)
STEADY = 60.0
# A child's own shutdown, then SIGKILL: its actors' 5 s, its supervisor's
# notice before them (2 s) and its link's linger (2 s: actors/link.py).
STOP_TIMEOUT = 10.0
LINE_MAX = 4096  # a child's log line relayed, at most (a longer one: in pieces)
ATTACH_TIMEOUT = 30.0  # the node's start waits this long for its children to attach
SETTINGS_MAX = 1 << 20  # the pickled settings a child reads, at most
PR_SET_PDEATHSIG = 1


def isolated_kinds(settings: NodeSettings) -> tuple[str, ...]:
    """The data-plane actors the node runs as its own child processes."""
    if not settings.isolate_data_plane or settings.port is None:
        return ()
    return tuple(k for k in KINDS if k not in settings.remote_actors)


def with_isolation(settings: NodeSettings) -> NodeSettings:
    """The node's settings with its isolated actors remote, attachable on
    its private endpoint alone (actors/attach.py; the node makes the endpoint
    when it starts: :func:`private_endpoint`)."""
    kinds = isolated_kinds(settings)
    if not kinds:
        return settings
    return dataclasses.replace(
        settings, remote_actors=(*settings.remote_actors, *kinds), isolated_actors=kinds
    )


def private_endpoint(data_dir: Path) -> str:
    """The ``ipc://`` endpoint where the node of ``data_dir`` attaches its
    isolated actors: ``DATA_DIR/ipc/attach.sock``, its folder made this
    user's alone (0700; a socket left there by a node that was killed is
    replaced). Whoever can put a socket there or connect to it runs as the
    node's user (or root), and so could read the node's keys anyway.
    ValueError (the user's words) when it cannot be."""
    path = local_ipc.socket_path(data_dir, local_ipc.ATTACH_NAME)
    if path is None:
        raise ValueError(
            f"--isolate-data-plane: the data dir's path is too long for the node's private "
            f"socket (ipc/{local_ipc.ATTACH_NAME} in it, {local_ipc.MAX_PATH} bytes at most); "
            "choose a shorter --data-dir"
        )
    if local_ipc.answers(str(path)):  # (binding there would take it from a live node)
        raise ValueError(f"a node is already running for {data_dir} (its {path} answers)")
    if not local_ipc.prepare(path) or not local_ipc.private_folder(str(path)):
        raise ValueError(
            f"--isolate-data-plane: {path.parent} is not a folder of this user's alone, "
            "reached through folders no other user may change (the node's private socket "
            "goes there)"
        )
    return f"ipc://{path}"


@dataclasses.dataclass
class _Child:
    kind: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0  # restarts in a row so far


class DataPlaneProcesses:
    """Starts, restarts and stops the node's isolated actors (see the module).

    Each child has a thread of its own that starts it, relays its log lines,
    waits for it and starts it again: the kernel's parent-death signal is
    tied to the thread that started the process, and these threads live
    until :meth:`stop` has ended their children."""

    def __init__(
        self,
        settings: NodeSettings,
        kinds: tuple[str, ...],
        level: int,
        on_ended: Callable[[str], None] | None = None,
    ) -> None:
        """``on_ended(kind)``: called in its watcher thread when a child
        ended on its own (not at the stop)."""
        # The sender and receiver use the X25519 identity only; the Ed25519
        # seed that signs the node's gossip and multicast chunks stays here.
        identity = KeyPair(secret=settings.identity.secret, public=settings.identity.public)
        self.payload = pickle.dumps(dataclasses.replace(settings, identity=identity))
        self.level = level
        self.children = [_Child(kind) for kind in kinds]
        self.on_ended = on_ended
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watchers: list[threading.Thread] = []
        self._relays: list[threading.Thread] = []  # (ended ones too: a few per restart)

    def start(self) -> DataPlaneProcesses:
        for child in self.children:
            watcher = threading.Thread(
                target=self._watch, args=(child,), name=f"pc-{child.kind}-process", daemon=True
            )
            watcher.start()
            self._watchers.append(watcher)
        return self

    def ended(self) -> list[str]:
        """The children that ended (or could not be started) since their last
        steady run: being started again."""
        return [c.kind for c in self.children if c.restarts]

    def _spawn(self, child: _Child) -> bool:
        """Start ``child``'s process (in its watcher thread); False if it
        could not be (the node is stopping, or the system refused)."""
        argv = [
            sys.executable,
            "-P",  # not the working directory first on sys.path: code there is no module of ours
            "-m",
            "peercrypt.data_plane",
            child.kind,
            str(os.getpid()),
            str(self.level),
        ]
        with self._lock:
            if self._stopping.is_set():
                return False
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    close_fds=True,
                    # A process group of its own: a Ctrl-C at the node's
                    # terminal (or at `start`'s prompt, for a command) is the
                    # node's to handle. Not a session of its own: the kernel
                    # shares the cores by session (autogroup), so the node's
                    # control plane would get no more than each child's share
                    # instead of its threads' priority over the bulk workers.
                    process_group=0,
                )
            except OSError as exc:
                log.error("cannot start the node's %s process: %s", child.kind, exc.strerror)
                return False
            child.proc = proc
            child.started = time.monotonic()
        assert proc.stdin is not None and proc.stderr is not None
        relay = threading.Thread(
            target=_relay, args=(proc.stderr,), name=f"pc-{child.kind}-log", daemon=True
        )
        relay.start()
        with self._lock:  # (stop() joins them: those of children that ended are done)
            self._relays = [r for r in self._relays if r.is_alive()] + [relay]
        try:
            with proc.stdin:
                proc.stdin.write(self.payload)
        except OSError:
            pass  # it ended at once: its watcher says so and starts it again
        return True

    def _watch(self, child: _Child) -> None:
        while not self._stopping.is_set():
            try:
                started = self._spawn(child)
                code = child.proc.wait() if started and child.proc is not None else None
            except Exception:  # (never leave the child without its watcher)
                log.exception("watching the node's %s process", child.kind)
                code = None
            if self._stopping.is_set():
                return
            if code is not None and self.on_ended is not None:
                try:
                    self.on_ended(child.kind)
                except Exception:  # (the restart below matters more)
                    log.exception("telling the node that its %s process ended", child.kind)
            ran = time.monotonic() - child.started if code is not None else 0.0
            if ran >= STEADY:
                child.restarts = 0
            delay = RESTART_DELAYS[min(child.restarts, len(RESTART_DELAYS) - 1)]
            child.restarts += 1
            if code is not None:
                log.warning(
                    "the node's %s process ended (%s) after %.1f s; starting it again in %.1f s",
                    child.kind,
                    _exit_text(code),
                    ran,
                    delay,
                )
            if self._stopping.wait(delay):
                return

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
            watcher.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            relays = list(self._relays)
        for relay in relays:  # the children's last lines, before the node's own
            relay.join(max(0.1, deadline - time.monotonic()))


def _relay(stream: IO[bytes]) -> None:
    """A child's log lines, written where the node's go (the shell of
    `peercrypt start` points its handlers above its prompt meanwhile)."""
    with stream:
        for raw in iter(lambda: stream.readline(LINE_MAX), b""):
            line = raw.decode(errors="replace")
            if not line.endswith("\n"):
                line += "\n"
            handler = next(
                (h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)),
                None,
            )
            if handler is None:
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.write(line)
                continue
            handler.acquire()
            try:
                handler.stream.write(line)
                handler.flush()
            except (OSError, ValueError):
                pass  # (the node's stderr is gone: nothing to tell)
            finally:
                handler.release()


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
    done = -1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        done = libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if done != 0:
        log.warning("this process will not end with its node if the node is killed")
    if os.getppid() != parent:
        sys.exit(0)


def main(argv: list[str]) -> int:
    kind, parent, level = argv
    logging.basicConfig(
        level=int(level),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("peercrypt").setLevel(int(level))
    _die_with(int(parent))
    stop = StopFlag()  # no lock in a signal handler (peercrypt/runtime/stop_flag.py)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the node's terminal closing is the node's
    data = sys.stdin.buffer.read(SETTINGS_MAX + 1)
    settings: Any = None
    if len(data) <= SETTINGS_MAX:
        with contextlib.suppress(Exception):  # (a node that died while writing them)
            settings = pickle.loads(data)  # from the node that started us, through a pipe
    if not isinstance(settings, NodeSettings) or not settings.isolated_endpoint:
        print(f"peercrypt: error: the node's {kind} process got no settings", file=sys.stderr)
        return errors.FAILED
    if not local_ipc.private_folder(settings.isolated_endpoint.removeprefix("ipc://")):
        # (the node made it so before it started us: changed since, by whom?)
        print(
            f"peercrypt: error: the node's {kind} process: the folder of "
            f"{settings.isolated_endpoint} is not this user's alone",
            file=sys.stderr,
        )
        return errors.FAILED
    from peercrypt.attached import AttachedActor
    from peercrypt.cli.common import UserError, start_node

    # No space ledger of its own: the inbox is the node's, and so is its ledger.
    process = AttachedActor(kind, settings, [], companions=(), endpoint=settings.isolated_endpoint)
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
        return errors.NOT_ADMITTED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
