"""Real PeerCrypt nodes as subprocesses, for end-to-end tests and benchmarks.

:class:`NodeProcess` runs ``python -m peercrypt --data-dir D node ...`` on
loopback with ``--port 0``, waits (bounded) until the node's control socket
reports its public and data ports, and offers the few operations a test
needs: ``send`` through the node's data dir, ``status``, ``stop`` (SIGTERM,
bounded, exit code), ``kill`` and the node's log.

Every wait here has a timeout; nothing sleeps a fixed time except the short
pause between two polls of a condition. Traffic stays on 127.0.0.1.

With ``netns=NS`` (see :mod:`peercrypt.testing.netns`) the node runs under
``ip netns exec NS`` and ``host`` should be the namespace's address. Its
control socket then listens on 127.0.0.1 *inside* the namespace, which this
process cannot reach: status, readiness and every CLI command run as
``ip netns exec NS python -m peercrypt ...`` instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import blake3

from peercrypt import config, config_sources
from peercrypt.client import ControlClient, NodeUnavailable
from peercrypt.crypto.identity import (
    load_or_create_identity,
    network_server_keys,
    new_network_key,
)
from peercrypt.settings import NodeSettings
from peercrypt.sizes import parse_size

__all__ = [
    "SEND_MODE_ARGS",
    "ActorProcess",
    "BackgroundSend",
    "CliResult",
    "NodeError",
    "NodeProcess",
    "NodeStartError",
    "NodeStopError",
    "WaitTimeout",
    "assert_sent",
    "assert_stored",
    "blake3_file",
    "cli_env",
    "dead_port",
    "free_port",
    "loopback_settings",
    "multicast_targets",
    "nice_by_thread",
    "parse_size",
    "random_file",
    "run_cli",
    "start_cli",
    "wait_until",
]

START_TIMEOUT = 30.0  # under load 20 (other suites, benchmarks) a start was seen to take over 15 s
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 120.0
POLL_INTERVAL = 0.05
LOCALHOST = "127.0.0.1"
# Extra seconds for a status query through the CLI in a namespace (start-up of Python).
NETNS_CLI_OVERHEAD = 5.0
# What a node prints once it listens (peercrypt/cli/node.py, run_node).
ANNOUNCEMENT = b" listening on "
# Environment variables of the CLI that must not leak from the caller's shell.
_CLI_ENV_VARS = (*config.VARIABLES, config_sources.DATA_DIR_ENV, config_sources.CONFIG_ENV)

T = TypeVar("T")

# `send` options that pick each transfer mode (one example each), for tests
# that run a transfer in every mode.
SEND_MODE_ARGS: dict[str, list[str]] = {
    "normal": ["--mode", "normal"],
    "token-bucket": ["-r", str(64 << 20)],
    "aimd": ["--mode", "aimd"],
    "qos": ["--mode", "qos", "-p", "highest"],
    "parallel": ["--mode", "parallel", "-t", "2"],
}


class NodeError(RuntimeError):
    """A node process misbehaved; the message includes the tail of its log."""


class NodeStartError(NodeError):
    """The node exited or did not become ready in time."""


class NodeStopError(NodeError):
    """The node did not exit in time after a signal (it was killed)."""


class WaitTimeout(AssertionError):
    """:func:`wait_until` gave up."""


def nice_by_thread(pid: int) -> dict[str, list[int]]:
    """Each thread name of process ``pid`` (its ``comm``: ``pc-writer``...)
    -> the nice values its threads run at, sorted (Linux, ``/proc``)."""
    found: dict[str, list[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended meanwhile
        found.setdefault(name, []).append(int(fields[16]))  # stat(5) field 19: nice
    return {name: sorted(values) for name, values in found.items()}


def held_open(pid: int, folder: Path, inotify: bool = False) -> list[str]:
    """What process ``pid`` holds open of ``folder``'s files (``inotify``:
    and its inotify instances, the receiver's watches on new parts)."""
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            what = os.readlink(fd)
        except FileNotFoundError:  # (closed meanwhile)
            continue
        if what.startswith(str(folder)) or (inotify and "inotify" in what):
            held.append(what)
    return held


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = POLL_INTERVAL,
) -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value.

    Raises :class:`WaitTimeout` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def dead_port(host: str = LOCALHOST) -> Iterator[int]:
    """A TCP port that refuses connections for as long as the block lasts.

    The port stays bound (never listening), so no other process, such as a
    node another test starts meanwhile, can take it: a connection to it is
    refused every time (a port merely released could be a live node's by
    the time it is dialled)."""
    with socket.socket() as s:
        s.bind((host, 0))
        yield s.getsockname()[1]


# Ports free_port() picks from: below the kernel's ephemeral range, which
# every connect() without a bind draws its local port from.
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
FREE_PORTS = 8192


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started that have not been reaped (a node's
    ``--isolate-data-plane`` sender and receiver): ``/proc/PID/task/*/children``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
    return found


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port with nothing bound to it now, for a node the test starts
    next. Picked at random below the kernel's ephemeral range: a port bound
    and released by ``bind(0)`` is an ephemeral one, and any outgoing
    connection of any process (the suite's nodes make many) could take it
    before the node binds it ("Address already in use"); below the range
    only another explicit bind can, as another test's pick (1 in thousands)."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(64):
        port = rng.randrange(max(1024, low - FREE_PORTS), low)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue  # taken: another
            return port
    with socket.socket() as s:  # (the range below is full: as before)
        s.bind((host, 0))
        found: int = s.getsockname()[1]
    return found


def blake3_file(path: Path | str, block: int = 1 << 20) -> str:
    """Hex BLAKE3 digest of a file's content, read in blocks."""
    hasher = blake3.blake3()
    with open(path, "rb") as f:
        while data := f.read(block):
            hasher.update(data)
    digest: str = hasher.hexdigest()
    return digest


def compile_tree(tree: Path | str) -> None:
    """Byte-compile a source tree's ``peercrypt`` and ``actors`` and build
    the compiled methods of its dataclasses (peercrypt/dataclass_cache.py),
    as an installed package has them, before a benchmark runs processes from
    it: under ``PYTHONDONTWRITEBYTECODE`` nothing else writes them, and every
    command would compile what it imports again (an export of older code for
    an A/B run has none at all). A tree without the cache builds no cache."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", f"{tree}/peercrypt", f"{tree}/actors"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [sys.executable, "-c", "from peercrypt.dataclass_cache import build; build()"],
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=tree,
        capture_output=True,
        check=False,
    )


def random_file(path: Path, size: int) -> Path:
    """Write ``size`` bytes of random content to ``path`` in 1 MiB blocks
    (benchmarks: one random block repeated, then a random tail)."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for offset in range(0, size, len(block)):
            n = min(len(block), size - offset)
            f.write(block if n == len(block) else os.urandom(n))
    return path


def multicast_targets(*receivers: NodeProcess) -> list[str]:
    """``send -m`` arguments naming more receivers: ``--to HOST:PORT`` each."""
    out: list[str] = []
    for r in receivers:
        out += ["--to", f"{r.host}:{r.port}"]
    return out


def assert_stored(receiver: NodeProcess, result: dict[str, Any], digest: str) -> None:
    """``receiver``'s row of a multicast ``--json`` result says it verified
    and stored the file, and the stored file has ``digest`` (BLAKE3 hex)."""
    where = f"{receiver.host}:{receiver.port}"
    row = next(r for r in result["receivers"] if r["target"] == where)
    assert row["code"] == "ok", row
    assert blake3_file(receiver.inbox / row["stored_as"]) == digest


def loopback_settings(data_dir: Path, network_key: str | None, **overrides: Any) -> NodeSettings:
    """Settings of an in-process node on 127.0.0.1 with any free ports (its
    identity created in ``data_dir``), changed by ``overrides``."""
    settings = NodeSettings(
        data_dir=data_dir,
        inbox=data_dir / "inbox",
        identity=load_or_create_identity(data_dir),
        server_keys=network_server_keys(network_key),
        host="127.0.0.1",
        port=0,
        data_port=0,
    )
    return dataclasses.replace(settings, **overrides)


def assert_sent(receiver: NodeProcess, done: tuple[int, dict[str, Any]], path: Path) -> None:
    """A unicast ``send --json`` (exit code, result) verified, and the file
    ``receiver`` stored has ``path``'s BLAKE3 hash."""
    code, result = done
    assert code == 0, result
    assert blake3_file(receiver.inbox / result["stored_as"]) == blake3_file(path)


class BackgroundSend:
    """``sender.send_to(path, receiver, *extra)`` on a thread; :meth:`join`
    waits for it with a deadline."""

    def __init__(self, sender: NodeProcess, path: Path, receiver: NodeProcess, *extra: str):
        self.result: tuple[int, dict[str, Any]] | None = None
        self._thread = threading.Thread(
            target=lambda: setattr(self, "result", sender.send_to(path, receiver, *extra)),
            daemon=True,
        )
        self._thread.start()

    def join(self, timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
        self._thread.join(timeout)
        assert self.result is not None, "the background send did not finish in time"
        return self.result


_TERMINAL_SIZE = frozenset({"COLUMNS", "LINES"})


def cli_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: this process's environment minus
    the settings' variables that would change the command and every other
    ``PEERCRYPT_*``, plus ``env``.
    ``COLUMNS``/``LINES`` go too (a test runner's worker sets them to 80x24):
    a command in a pseudo-terminal must see the terminal's own size."""
    result = {
        k: v
        for k, v in os.environ.items()
        # (any other PEERCRYPT_* would add a warning line to the command's stderr)
        if k not in _CLI_ENV_VARS
        and k not in _TERMINAL_SIZE
        and not k.startswith(config_sources.PREFIX)
    }
    result["PYTHONUNBUFFERED"] = "1"
    if env:
        result.update(env)
    return result


def neutral_cwd(data_dir: Path | None) -> Path:
    """A working directory for a CLI subprocess without the caller's ``.env``:
    the data dir's parent (a test's own directory), else the temp directory."""
    if data_dir is not None and Path(data_dir).parent.is_dir():
        return Path(data_dir).parent
    return Path(tempfile.gettempdir())


@dataclass(frozen=True)
class CliResult:
    """What one ``peercrypt`` command did."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def json(self) -> dict[str, Any]:
        """The last stdout line parsed as a JSON object ({} if there is none)."""
        for line in reversed(self.stdout.splitlines()):
            line = line.strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
        return {}

    @property
    def stderr_lines(self) -> list[str]:
        """Non-empty stderr lines."""
        return [line for line in self.stderr.splitlines() if line.strip()]

    def describe(self) -> str:
        """A readable summary for assertion messages."""
        return (
            f"$ peercrypt {' '.join(self.args)}\n-> exit {self.returncode} in "
            f"{self.seconds:.2f} s\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


def run_cli(
    *args: str | os.PathLike[str],
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = CLI_TIMEOUT,
    cwd: Path | None = None,
    netns: str | None = None,
) -> CliResult:
    """Run ``python -m peercrypt [--data-dir D] ARGS...`` and capture its output.

    ``env`` adds to a clean environment (see :func:`cli_env`). Raises
    ``subprocess.TimeoutExpired`` (after killing the command) past ``timeout``.
    ``netns``: run it inside that network namespace (``ip netns exec NS ...``).
    """
    argv: list[str] = []
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    argv += [os.fspath(a) for a in args]
    started = time.monotonic()
    prefix = ["ip", "netns", "exec", netns] if netns is not None else []
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "peercrypt", *argv],
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=timeout,
        cwd=cwd if cwd is not None else neutral_cwd(data_dir),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return CliResult(
        args=tuple(argv),
        returncode=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
        seconds=time.monotonic() - started,
    )


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: restore it so Ctrl-C tests work in any CI job.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(
    *args: str | os.PathLike[str],
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``python -m peercrypt [--data-dir D] ARGS...`` without waiting.

    stdout and stderr are pipes (text); SIGINT acts as Ctrl-C. The caller
    must bound its wait (``communicate(timeout=...)``) and kill the process.
    """
    argv: list[str] = []
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    argv += [os.fspath(a) for a in args]
    return subprocess.Popen(
        [sys.executable, "-m", "peercrypt", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env),
        cwd=neutral_cwd(data_dir),
        preexec_fn=_default_sigint,
    )


def tcp_connected_to(port: int) -> bool:
    """Whether a TCP connection to 127.0.0.1:``port`` is established (from
    this host's connection table: e.g. a command that connected to a node
    whose process is stopped, which the kernel accepts for it)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == f"0100007F:{port:04X}" and fields[3] == "01":  # (01: established)
            return True
    return False


@contextlib.contextmanager
def cli_running(
    *args: str | os.PathLike[str],
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """:func:`start_cli` for a ``with`` block: the process is killed (and
    reaped) if it still runs when the block ends, however it ends."""
    proc = start_cli(*args, data_dir=data_dir, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def json_success(
    proc: subprocess.Popen[str], node: NodeProcess, timeout: float = 60.0
) -> dict[str, Any]:
    """Wait (bounded) for a ``--json`` command to end; assert it exited 0
    (else fail with its output and ``node``'s log) and return its result."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (out, err, node.log_tail())
    result: dict[str, Any] = json.loads(out)
    return result


@dataclass
class NodeProcess:
    """One ``peercrypt node`` subprocess on 127.0.0.1 with ``--port 0``.

    ``network_key=None`` and ``open_network=False`` passes no admission flag
    (then ``extra_args`` or ``env`` must provide one). Use as a context
    manager, or call :meth:`start` and :meth:`stop` (or :meth:`kill`).
    ``netns``: run in that network namespace (pass its address as ``host``);
    status and commands then go through the CLI inside it.
    """

    data_dir: Path
    network_key: str | None = None
    open_network: bool = False
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] | None = None
    start_timeout: float = START_TIMEOUT
    host: str = LOCALHOST
    netns: str | None = None
    # A command the node runs under (e.g. ``setpriv`` without the capability
    # to override file permissions: root's node then meets them as a user's).
    prefix: Sequence[str] = ()
    # Status facts that say the node is ready (a node whose receiver is
    # attached from elsewhere has no data port until it attaches).
    ready_facts: Sequence[str] = ("port", "data_port")
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    facts: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    killed: bool = field(default=False, init=False)
    _signalled: int | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)
    _log_start: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()

    # -- lifecycle ---------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        """stdout and stderr of the node (appended across restarts)."""
        return self.data_dir / "node.log"

    @property
    def key_file(self) -> Path:
        """Where the node's network key is handed over (mode 0600)."""
        return self.data_dir / "network.key"

    @property
    def argv(self) -> list[str]:
        """The full command line of the node."""
        argv = [
            sys.executable,
            "-m",
            "peercrypt",
            "--data-dir",
            str(self.data_dir),
            "node",
            "--host",
            self.host,
            "--port",
            "0",
        ]
        if self.network_key is not None:  # a file, never argv (start() writes it)
            argv += ["--network-key-file", str(self.key_file)]
        if self.open_network:
            argv.append("--open")
        argv = [*self.prefix, *argv]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv + list(self.extra_args)

    def start(self) -> NodeProcess:
        """Start the node; return once its status shows ``port`` and ``data_port``.

        Raises :class:`NodeStartError` (with the log) if it exits first or is
        not ready within ``start_timeout`` seconds (then it is killed).
        """
        if self.running:
            raise NodeError(f"node in {self.data_dir} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.killed = False
        self._signalled = None
        self.facts = {}
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop/kill)
        self._log_start = self._log.tell()
        if self.network_key is not None:
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.network_key + "\n")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=cli_env(self.env),
            cwd=self.data_dir,  # no .env of the caller's working directory
        )
        try:
            self.facts = wait_until(self._ready_status, self.start_timeout, "the node to start")
        except WaitTimeout:
            self._force_kill()
            raise NodeStartError(
                f"node in {self.data_dir} not ready within {self.start_timeout:.0f} s\n"
                f"{self.log_tail()}"
            ) from None
        except NodeStartError:
            self._force_kill()
            raise
        return self

    def _ready_status(self) -> dict[str, Any] | None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            self._close_log()
            raise NodeStartError(
                f"node in {self.data_dir} exited with {code} while starting\n{self.log_tail()}"
            )
        if self.netns is not None and not self._announced():
            return None  # each status query in a namespace is a Python process: ask once it can be
        try:
            status = self._query_status(timeout=1.0)
        except NodeUnavailable:
            return None
        # The control file could belong to another node on this data dir.
        if status.get("pid") != str(self.proc.pid):
            return None
        if all(fact in status for fact in self.ready_facts):
            return status
        return None

    def _announced(self) -> bool:
        """The node printed its "listening on" line since this start (after
        its control socket answered with its ports, or gave up waiting)."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return ANNOUNCEMENT in log.read()

    def _query_status(self, timeout: float) -> dict[str, Any]:
        if self.netns is not None:
            return self._query_status_in_netns(timeout)
        with ControlClient.for_data_dir(self.data_dir) as client:
            reply = client.status(timeout=timeout)
        return {"running": True, **reply.node, "counters": dict(reply.counters)}

    def _query_status_in_netns(self, timeout: float) -> dict[str, Any]:
        # The control socket is on 127.0.0.1 inside the namespace: ask the CLI there.
        try:
            result = self.cli("status", "--json", timeout=timeout + NETNS_CLI_OVERHEAD)
        except subprocess.TimeoutExpired:
            raise NodeUnavailable(
                f"status of the node in {self.data_dir} (netns {self.netns}) timed out"
            ) from None
        status = result.json
        if result.returncode != 0 or not status.get("running"):
            reason = status.get("reason") or result.stderr.strip() or f"exit {result.returncode}"
            raise NodeUnavailable(f"node in {self.data_dir} (netns {self.netns}): {reason}")
        # The facts as the node reports them (text), as on loopback: the CLI
        # gives numbers, lists and maps as themselves.
        return {
            key: value
            if key in ("running", "counters") or isinstance(value, str)
            else json.dumps(value, ensure_ascii=False)
            for key, value in status.items()
        }

    @property
    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The node's process id."""
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        """Exit code once the process ended (negative: killed by that signal)."""
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = STOP_TIMEOUT, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM) and wait up to ``timeout`` s; return the exit code.

        If the node does not exit in time it is killed with SIGKILL and
        :class:`NodeStopError` is raised. Stopping a node that already ended
        returns its exit code.
        """
        proc = self._started()
        if proc.poll() is None:
            if self._signalled != sig:
                self.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._force_kill()
                raise NodeStopError(
                    f"node in {self.data_dir} ignored signal {sig} for {timeout:.0f} s "
                    f"and was killed\n{self.log_tail()}"
                ) from None
        self._close_log()
        return proc.returncode

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` if the node still runs, without waiting; a later
        :meth:`stop` with the same signal only waits. Stopping many nodes:
        signal them all first, then ``stop()`` each."""
        proc = self._started()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            self._signalled = sig

    def kill(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGKILL the node (no clean shutdown) and return its exit code."""
        self.killed = True
        return self._force_kill(timeout)

    def _force_kill(self, timeout: float = STOP_TIMEOUT) -> int:
        proc = self._started()
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout)
        self._close_log()
        return proc.returncode

    def _started(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise NodeError(f"node in {self.data_dir} was never started")
        return self.proc

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> NodeProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.running:
            self.stop()
        self._close_log()

    # -- facts -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The node's public (control-plane) port."""
        return int(self._fact("port"))

    @property
    def data_port(self) -> int:
        """The node's data-plane port."""
        return int(self._fact("data_port"))

    @property
    def fingerprint(self) -> str:
        """The node's identity fingerprint."""
        return str(self._fact("fingerprint"))

    @property
    def inbox(self) -> Path:
        """Where the node stores received files."""
        return Path(self._fact("inbox"))

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to send to."""
        return self.host, self.port

    def _fact(self, key: str) -> Any:
        if key not in self.facts:
            raise NodeError(f"node in {self.data_dir} has not reported {key!r} (not started?)")
        return self.facts[key]

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """The node's facts as it reports them (text: ``status --json`` gives
        numbers, lists and maps as themselves), ``running`` and ``counters``.

        Raises ``peercrypt.client.NodeUnavailable`` if the node does not answer.
        """
        return self._query_status(timeout)

    def counters(self, timeout: float = 5.0) -> dict[str, int]:
        """The node's counters (actors report them at most every 0.5 s: see
        :meth:`counters_when`)."""
        counters: dict[str, int] = self.status(timeout)["counters"]
        return counters

    def wait_for_attached(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until every actor this node runs elsewhere is attached (its
        status has the data port as soon as an attached receiver's first
        report arrives, before the node is done taking it on: ``attaching``);
        its status then."""

        def attached() -> dict[str, Any] | None:
            status = self.status()
            remote = [v for k, v in status.items() if k.startswith("remote_")]
            return status if all(str(v).startswith("attached ") for v in remote) else None

        return wait_until(attached, timeout, f"the remote actors of {self.data_dir} to attach")

    def wait_for_counter(self, name: str, at_least: int, timeout: float = 10.0) -> int:
        """Wait until counter ``name`` reaches ``at_least``; return its value."""
        return self.counters_when(name, at_least, timeout)[name]

    def counters_when(self, name: str, at_least: int, timeout: float = 10.0) -> dict[str, int]:
        """Wait until counter ``name`` reaches ``at_least``; return all the
        counters as the node showed them then.

        Each actor reports its counters at most every 0.5 s, all of them in
        one message: once ``name`` shows an event, every counter of the same
        actor (the same prefix, ``receiver.``...) shows what that actor
        counted up to that event. Wait on one that an action must move (a
        file received, a send ended) before asserting another moved by so
        much, or did not move at all: read at once, the node may still show
        the counts from before the action, and such a check passes whatever
        the action did."""

        def reached() -> dict[str, int] | None:
            counters = self.counters()
            return counters if counters.get(name, 0) >= at_least else None

        return wait_until(reached, timeout, f"counter {name} >= {at_least}")

    # -- commands ------------------------------------------------------------------

    def cli(self, *args: str | os.PathLike[str], timeout: float = CLI_TIMEOUT) -> CliResult:
        """Run a ``peercrypt`` command on this node's data dir."""
        return run_cli(
            *args, data_dir=self.data_dir, env=self.env, timeout=timeout, netns=self.netns
        )

    def send_result(
        self, path: Path | str, host: str, port: int, *extra: str, timeout: float = CLI_TIMEOUT
    ) -> CliResult:
        """``peercrypt send PATH HOST PORT --json EXTRA...`` through this node."""
        return self.cli("send", os.fspath(path), host, str(port), "--json", *extra, timeout=timeout)

    def send(
        self, path: Path | str, host: str, port: int, *extra: str, timeout: float = CLI_TIMEOUT
    ) -> tuple[int, dict[str, Any]]:
        """Send a file through this node; return (exit code, the JSON result)."""
        result = self.send_result(path, host, port, *extra, timeout=timeout)
        return result.returncode, result.json

    def send_to(
        self, path: Path | str, receiver: NodeProcess, *extra: str, timeout: float = CLI_TIMEOUT
    ) -> tuple[int, dict[str, Any]]:
        """Send a file to another :class:`NodeProcess`."""
        return self.send(path, receiver.host, receiver.port, *extra, timeout=timeout)

    # -- logs ----------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the node wrote to stdout/stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, framed for error messages."""
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"--- log of node in {self.data_dir}\n{tail}\n---"


@contextlib.contextmanager
def running(*nodes: NodeProcess) -> Iterator[tuple[NodeProcess, ...]]:
    """Start ``nodes`` (for a module's tests to share); at the end stop every
    one that started, each of which must exit 0."""
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        started = [n for n in nodes if n.proc is not None]
        for n in started:
            n.send_signal()
        codes = [n.stop() for n in started]
        assert codes == [0] * len(started), [n.log_tail() for n in started]


@contextlib.contextmanager
def one_host_trio(
    base: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[NodeProcess, NodeProcess, NodeProcess, str]]:
    """(sender, receiver, receiver with ``PEERCRYPT_NO_LOCAL_IPC=true``, their
    network key), running under ``base`` with ``env``: two nodes of one host,
    and one that takes chunks over TCP only (docs/architecture.md)."""
    key = new_network_key()
    env = env or {}
    with running(
        NodeProcess(base / "s", network_key=key, env=env),
        NodeProcess(base / "r", network_key=key, env=env),
        NodeProcess(base / "off", network_key=key, env={**env, "PEERCRYPT_NO_LOCAL_IPC": "true"}),
    ) as (sender, receiver, off):
        yield sender, receiver, off, key


@contextlib.contextmanager
def node_pair(base: Path, *sender_args: str) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """A sender node (started with ``sender_args``) and a receiver node on
    one fresh network key, their data directories under ``base``: for a
    module's tests to share. Both must exit 0 when stopped at the end."""
    key = new_network_key()
    sender = NodeProcess(base / "sender", network_key=key, extra_args=sender_args).start()
    try:
        receiver = NodeProcess(base / "receiver", network_key=key).start()
    except BaseException:
        sender.stop()
        raise
    try:
        yield sender, receiver
    finally:
        try:
            sender_code = sender.stop()
        finally:
            receiver_code = receiver.stop()
    assert [sender_code, receiver_code] == [0, 0], [sender_code, receiver_code]


@dataclass
class ActorProcess:
    """``peercrypt actor KIND --attach HOST:PORT ...`` as a subprocess (see
    docs/architecture.md, "Attached actors"). :meth:`fingerprint` works before
    :meth:`start` (the identity is made on first use), so the node can be
    started with ``--attach-allow`` first."""

    data_dir: Path
    kind: str
    attach: Sequence[str]  # HOST:PORT of each node
    network_key: str
    extra_args: Sequence[str] = ()
    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # more variables for the process
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "actor.log"

    def fingerprint(self) -> str:
        """This process's identity, as ``--attach-allow`` wants it."""
        result = run_cli("status", "--json", data_dir=self.data_dir)
        value: str = result.json["fingerprint"]
        return value

    def start(self) -> ActorProcess:
        argv = [sys.executable, "-m", "peercrypt", "--data-dir", str(self.data_dir), "actor"]
        argv += [self.kind, *(a for where in self.attach for a in ("--attach", where))]
        argv += list(self.extra_args)
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=cli_env({"PEERCRYPT_NETWORK_KEY": self.network_key, **self.env}),
        )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Signal it and wait (bounded); killed past ``timeout`` (then None)."""
        if self.proc is None:
            return None
        code: int | None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
            code = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
