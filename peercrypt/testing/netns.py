"""Network namespaces as a small test network: hosts, switches, partitions, shaping.

:class:`TestNetwork` builds, as root, a throw-away network out of Linux network
namespaces, veth pairs and bridges::

    host ns (eth0 10.200.G.N/16) --veth--> hK  [brG in the switch ns]  tG-H --trunk-- tH-G [brH]

- One *switch* namespace holds one bridge ``brG`` per group ``G``.
- With two or more groups, every pair of group bridges is joined by its own
  veth *trunk*. Trunk ports are *isolated* bridge ports (a frame that came in
  on a trunk is only delivered to hosts, never to another trunk), so the full
  mesh has no loop (no STP needed) and :meth:`TestNetwork.cut` of one trunk
  separates exactly those two groups while both still reach the others.
- Every host is a namespace with ``lo`` up and ``eth0`` at ``10.200.G.N/16``:
  one flat subnet, so a cut trunk is a real partition (no router to go around
  it), and packets are silently dropped (a connect times out, it is not
  refused).
- :meth:`TestNetwork.shape` puts a ``tbf`` qdisc on a host's egress (its
  ``eth0``) and/or on its ingress (the switch-side veth ``hK``, whose egress is
  what the host receives): a bottleneck for data sent *to* a receiver.

No interface is ever created in the root namespace: veth pairs are created
straight between the switch namespace and a host namespace, so names only
have to be unique inside those. Namespace names are
``PREFIX-PID-RAND-sw`` / ``PREFIX-PID-RAND-hN``, unique per run; everything is
deleted on exit, even after errors, and namespaces left by a killed run (its
PID is gone) are removed when the next network with the same prefix starts.

Every command has a timeout; a failing one raises :class:`NetnsError` with the
command line and its stderr. Example::

    with TestNetwork(groups=2) as net:
        a, b = net.add_host("a", 0), net.add_host("b", 1)
        net.cut(0, 1)      # a and b cannot reach each other
        net.heal(0, 1)
        net.shape(b, "40mbit", direction="ingress")
        b.run(["python", "-c", "print(1)"], timeout=10)
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DEFAULT_PREFIX",
    "Direction",
    "Host",
    "NetnsError",
    "TestNetwork",
    "available",
    "cleanup_stale",
    "list_namespaces",
    "parse_rate",
    "unavailable_reason",
]

DEFAULT_PREFIX = "pcnet"
SUBNET = "10.200"  # hosts are 10.200.G.N/16
PREFIX_LEN = 16
CMD_TIMEOUT = 10.0
KILL_TIMEOUT = 5.0
MAX_GROUPS = 32
MAX_HOSTS_PER_GROUP = 254
HOST_IFACE = "eth0"
DEFAULT_LATENCY = "50ms"
MIN_BURST = 64 * 1024  # bytes

Direction = Literal["egress", "ingress", "both"]

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.]{1,32}$")
_RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
# tc's rate units, in bits per second ("bps" and friends are *bytes* per second).
_RATE_UNITS: dict[str, float] = {
    "": 1,
    "bit": 1,
    "kbit": 1e3,
    "mbit": 1e6,
    "gbit": 1e9,
    "tbit": 1e12,
    "kibit": 2**10,
    "mibit": 2**20,
    "gibit": 2**30,
    "tibit": 2**40,
    "bps": 8,
    "kbps": 8e3,
    "mbps": 8e6,
    "gbps": 8e9,
    "tbps": 8e12,
    "kibps": 8 * 2**10,
    "mibps": 8 * 2**20,
    "gibps": 8 * 2**30,
    "tibps": 8 * 2**40,
}


class NetnsError(RuntimeError):
    """A namespace, link or qdisc command failed (the message has the command
    line and its stderr)."""

    def __init__(self, message: str, argv: Sequence[str] = (), stderr: str = "") -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.stderr = stderr


def _run(
    argv: Sequence[str], timeout: float = CMD_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell, no stdin), capture text output, bounded by ``timeout``.

    Raises :class:`NetnsError` if it cannot start, times out, or (``check``)
    exits non-zero.
    """
    cmd = " ".join(argv)
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise NetnsError(
            f"command timed out after {timeout:.1f} s: {cmd}\n{stderr}".rstrip(), argv, stderr
        ) from None
    except OSError as exc:
        raise NetnsError(f"cannot run {cmd}: {exc}", argv) from None
    if check and proc.returncode != 0:
        raise NetnsError(
            f"command failed with exit {proc.returncode}: {cmd}\n{proc.stderr.strip()}",
            argv,
            proc.stderr,
        )
    return proc


def list_namespaces(timeout: float = CMD_TIMEOUT) -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    out = _run(["ip", "netns", "list"], timeout).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _delete_namespace(name: str) -> None:
    _run(["ip", "netns", "delete", name])


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete namespaces ``PREFIX-PID-...`` whose creating process is gone.

    Best effort (errors are ignored); returns the names deleted. Processes a
    killed run left inside them are not touched: the namespace then lives on,
    unnamed, until they exit.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}-([0-9]+)-[0-9a-f]+-")
    deleted: list[str] = []
    try:
        names = list_namespaces()
    except NetnsError:
        return deleted
    # Hosts before switches: a host's veth dies with it, so nothing dangles.
    for name in sorted(names, key=lambda n: n.endswith("-sw")):
        match = pattern.match(name)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        with contextlib.suppress(NetnsError):
            _delete_namespace(name)
            deleted.append(name)
    return deleted


@functools.cache
def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None if they can (cached).

    Checks root, the ``ip`` and ``tc`` commands, and creates (and deletes) a
    probe namespace with a bridge and a veth pair in it.
    """
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command (iproute2) is not installed"
    probe = f"{DEFAULT_PREFIX}-{os.getpid()}-{secrets.token_hex(3)}-probe"
    try:
        _run(["ip", "netns", "add", probe])
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _run(["ip", "-n", probe, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
    except NetnsError as exc:
        return f"cannot create a bridge or veth pair in a namespace: {exc}"
    finally:
        with contextlib.suppress(NetnsError):
            _delete_namespace(probe)
    return None


def available() -> bool:
    """True if this process can build a :class:`TestNetwork` (root, iproute2, netns)."""
    return unavailable_reason() is None


_BITS_PER_BYTE = 8


def parse_rate(rate: str) -> float:
    """A tc rate (``"40mbit"``, ``"1gbit"``, ``"10mbps"`` = bytes/s) in bits per second.

    Raises ValueError for what tc would not understand.
    """
    match = _RATE_RE.match(rate)
    if match is None or match.group(2).lower() not in _RATE_UNITS:
        raise ValueError(f"not a tc rate: {rate!r} (e.g. '100mbit', '1gbit', '10mbps')")
    bits = float(match.group(1)) * _RATE_UNITS[match.group(2).lower()]
    if bits <= 0:
        raise ValueError(f"rate must be positive: {rate!r}")
    return bits


@dataclass
class Host:
    """One host of a :class:`TestNetwork`: a namespace with ``eth0`` at :attr:`ip`."""

    name: str
    ns: str
    ip: str
    group: int
    switch_port: str  # the veth end on the group bridge, in the switch namespace
    iface: str = HOST_IFACE
    procs: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False)

    def argv_prefix(self) -> list[str]:
        """``["ip", "netns", "exec", ns]``: put in front of a command to run it here."""
        return ["ip", "netns", "exec", self.ns]

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 60.0,
        check: bool = False,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in this namespace; capture text output; bounded by ``timeout``.

        Raises ``subprocess.TimeoutExpired`` (after killing it) past ``timeout``
        and, with ``check``, ``subprocess.CalledProcessError`` on a non-zero exit.
        """
        return subprocess.run(
            [*self.argv_prefix(), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=check,
            env=env,
        )

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in this namespace (``Popen`` keywords pass through).

        The caller bounds its waits; whatever still runs when the network
        closes is killed.
        """
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen([*self.argv_prefix(), *argv], **kw)
        self.procs.append(proc)
        return proc

    def __str__(self) -> str:
        return f"{self.name}({self.ip} in {self.ns})"


class TestNetwork:
    """A throw-away network of namespaces (see the module docstring).

    ``groups``: how many bridges (1..32); all groups reach each other until
    :meth:`cut`. ``prefix``: the start of every namespace name (lowercase
    letters and digits, at most 12; default ``pcnet``). Use as a context
    manager; :meth:`close` deletes everything and may be called more than once.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, groups: int = 1, prefix: str | None = None) -> None:
        if not 1 <= groups <= MAX_GROUPS:
            raise ValueError(f"groups must be within 1..{MAX_GROUPS}, not {groups}")
        prefix = DEFAULT_PREFIX if prefix is None else prefix
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"prefix must be 1-12 lowercase letters/digits, not {prefix!r}")
        self.groups = groups
        self.prefix = prefix
        self.tag = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.switch_ns = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []  # created, in order
        self._next_index = [1] * groups
        self._ports = 0
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> TestNetwork:
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # After an error in the with-block, do not hide it behind a cleanup error.
        self.close(raise_errors=exc_type is None)

    def start(self) -> TestNetwork:
        """Create the switch namespace, its bridges and trunks (idempotent)."""
        if self._closed:
            raise NetnsError(f"network {self.tag} is closed")
        if self._started:
            return self
        self._started = True
        cleanup_stale(self.prefix)
        try:
            self._add_namespace(self.switch_ns)
            for g in range(self.groups):
                self._ip(self.switch_ns, "link", "add", self._bridge(g), "type", "bridge")
                self._ip(self.switch_ns, "link", "set", self._bridge(g), "up")
            for a in range(self.groups):
                for b in range(a + 1, self.groups):
                    self._add_trunk(a, b)
        except BaseException:
            self.close(raise_errors=False)
            raise
        return self

    def close(self, raise_errors: bool = True) -> None:
        """Kill what runs in the hosts, delete every namespace this network made.

        Keeps going past failures; raises :class:`NetnsError` listing them at
        the end if ``raise_errors``.
        """
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        hosts = list(self.hosts.values())
        for host in hosts:
            for proc in host.procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
        for host in hosts:
            for proc in host.procs:
                try:
                    proc.wait(KILL_TIMEOUT)
                except subprocess.TimeoutExpired:
                    problems.append(f"process {proc.pid} in {host.ns} did not die")
        # Anything else started in our hosts (e.g. through argv_prefix()) belongs
        # to this test: end it, so the namespaces really go away.
        for ns in self._namespaces:
            try:
                self._kill_namespace_pids(ns)
            except NetnsError as exc:
                problems.append(str(exc))
        for ns in sorted(self._namespaces, key=lambda n: n == self.switch_ns):
            try:
                _delete_namespace(ns)
            except NetnsError as exc:
                problems.append(str(exc))
        try:
            left = set(list_namespaces()) & set(self._namespaces)
        except NetnsError as exc:
            problems.append(str(exc))
        else:
            if left:
                problems.append(f"namespaces still present: {sorted(left)}")
        if problems and raise_errors:
            raise NetnsError(f"cleanup of network {self.tag} failed:\n" + "\n".join(problems))

    def _kill_namespace_pids(self, ns: str) -> None:
        pids = self._namespace_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_TIMEOUT
        while self._namespace_pids(ns):
            if time.monotonic() >= deadline:
                raise NetnsError(f"processes {pids} in {ns} did not die")
            time.sleep(0.05)

    @staticmethod
    def _namespace_pids(ns: str) -> list[int]:
        proc = _run(["ip", "netns", "pids", ns], check=False)
        if proc.returncode != 0:
            return []  # the namespace is already gone
        return [int(word) for word in proc.stdout.split() if word.isdigit()]

    # -- building ----------------------------------------------------------------

    @staticmethod
    def _bridge(group: int) -> str:
        return f"br{group}"

    @staticmethod
    def _trunk(a: int, b: int) -> str:
        """The trunk end on ``a``'s bridge (``b``'s end is ``_trunk(b, a)``)."""
        return f"t{a}-{b}"

    def _ip(self, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "-n", ns, *args])

    def _tc(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["tc", "-n", ns, *args], check=check)

    def _add_namespace(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self._ip(ns, "link", "set", "lo", "up")

    def _add_trunk(self, a: int, b: int) -> None:
        ns, here, there = self.switch_ns, self._trunk(a, b), self._trunk(b, a)
        self._ip(ns, "link", "add", here, "type", "veth", "peer", "name", there)
        for end, group in ((here, a), (there, b)):
            self._ip(ns, "link", "set", end, "master", self._bridge(group))
            # Isolated ports never forward to each other: no loops in the mesh.
            self._ip(ns, "link", "set", end, "type", "bridge_slave", "isolated", "on")
            self._ip(ns, "link", "set", end, "up")

    def _check_started(self) -> None:
        if self._closed:
            raise NetnsError(f"network {self.tag} is closed")
        if not self._started:
            raise NetnsError(f"network {self.tag} is not started (use it in a with block)")

    def _check_group(self, group: int) -> None:
        if not 0 <= group < self.groups:
            raise ValueError(f"group {group} is not within 0..{self.groups - 1}")

    def add_host(self, name: str, group: int = 0) -> Host:
        """A new host namespace on ``group``'s bridge at ``10.200.GROUP.N/16``.

        ``name``: letters, digits, ``_`` or ``.``, unique in this network.
        """
        self._check_started()
        self._check_group(group)
        if not _NAME_RE.match(name):
            raise ValueError(f"host name must be 1-32 of [A-Za-z0-9_.], not {name!r}")
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")
        index = self._next_index[group]
        if index > MAX_HOSTS_PER_GROUP:
            raise ValueError(f"group {group} is full ({MAX_HOSTS_PER_GROUP} hosts)")
        self._next_index[group] += 1
        self._ports += 1
        host = Host(
            name=name,
            ns=f"{self.tag}-h{self._ports}",
            ip=f"{SUBNET}.{group}.{index}",
            group=group,
            switch_port=f"h{self._ports}",
        )
        self._add_namespace(host.ns)
        self.hosts[name] = host
        sw = self.switch_ns
        self._ip(
            sw, "link", "add", host.switch_port, "type", "veth",
            "peer", "name", host.iface, "netns", host.ns,
        )  # fmt: skip
        self._ip(sw, "link", "set", host.switch_port, "master", self._bridge(group))
        self._ip(sw, "link", "set", host.switch_port, "up")
        self._ip(host.ns, "addr", "add", f"{host.ip}/{PREFIX_LEN}", "dev", host.iface)
        self._ip(host.ns, "link", "set", host.iface, "up")
        return host

    def host(self, name: str) -> Host:
        """The host called ``name``."""
        return self.hosts[name]

    # -- faults --------------------------------------------------------------------

    def _set_trunk(self, a: int, b: int, state: str) -> None:
        self._check_started()
        self._check_group(a)
        self._check_group(b)
        if a == b:
            raise ValueError(f"a group has no trunk to itself ({a})")
        for end in (self._trunk(a, b), self._trunk(b, a)):
            self._ip(self.switch_ns, "link", "set", end, state)

    def cut(self, group_a: int, group_b: int) -> None:
        """Partition: take the trunk between two groups down (traffic is dropped)."""
        self._set_trunk(group_a, group_b, "down")

    def heal(self, group_a: int, group_b: int) -> None:
        """Bring the trunk between two groups back up."""
        self._set_trunk(group_a, group_b, "up")

    def isolate(self, host: Host) -> None:
        """Unplug ``host`` at the switch: its packets are dropped (its own link
        loses carrier, its address and routes stay)."""
        self._check_started()
        self._ip(self.switch_ns, "link", "set", host.switch_port, "down")

    def rejoin(self, host: Host) -> None:
        """Plug an isolated host back in."""
        self._check_started()
        self._ip(self.switch_ns, "link", "set", host.switch_port, "up")

    # -- shaping -------------------------------------------------------------------

    def _shaped_links(self, host: Host, direction: Direction) -> Iterable[tuple[str, str]]:
        if direction not in ("egress", "ingress", "both"):
            raise ValueError(f"direction must be egress, ingress or both, not {direction!r}")
        if direction in ("egress", "both"):
            yield host.ns, host.iface
        if direction in ("ingress", "both"):
            yield self.switch_ns, host.switch_port

    def shape(
        self,
        host: Host,
        rate: str,
        burst: str | None = None,
        latency: str = DEFAULT_LATENCY,
        direction: Direction = "egress",
    ) -> None:
        """Limit ``host``'s traffic to ``rate`` (tc syntax: ``"100mbit"``) with ``tbf``.

        ``direction``: ``"egress"`` (what the host sends, qdisc on its ``eth0``),
        ``"ingress"`` (what it receives: qdisc on the switch-side veth) or
        ``"both"``. ``burst`` defaults to 10 ms at ``rate`` but at least 64 KiB;
        ``latency`` bounds the queue. Replaces an earlier shape.
        """
        self._check_started()
        if burst is None:
            burst = f"{max(MIN_BURST, int(parse_rate(rate) / _BITS_PER_BYTE / 100))}b"
        else:
            parse_rate(rate)  # a clear error before tc's
        for ns, dev in self._shaped_links(host, direction):
            self._tc(
                ns, "qdisc", "replace", "dev", dev, "root",
                "tbf", "rate", rate, "burst", burst, "latency", latency,
            )  # fmt: skip

    def unshape(self, host: Host, direction: Direction = "both") -> None:
        """Remove the shaping of :meth:`shape` (no error if there is none)."""
        self._check_started()
        for ns, dev in self._shaped_links(host, direction):
            if "tbf" in self.qdisc(host, ns=ns, dev=dev):
                self._tc(ns, "qdisc", "del", "dev", dev, "root")

    def qdisc(self, host: Host, ns: str | None = None, dev: str | None = None) -> str:
        """``tc qdisc show`` of a host's ``eth0`` (or of ``dev`` in ``ns``)."""
        self._check_started()
        ns = host.ns if ns is None else ns
        dev = host.iface if dev is None else dev
        return self._tc(ns, "qdisc", "show", "dev", dev).stdout

    def __repr__(self) -> str:
        state = "closed" if self._closed else "started" if self._started else "new"
        return f"TestNetwork({self.tag}, groups={self.groups}, hosts={len(self.hosts)}, {state})"
