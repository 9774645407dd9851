"""A CURVE connection from an actor to a peer's public port.

Used by every actor that talks to other nodes' control plane (the sender's
offers, the msender's announces and a session's control traffic, the health
monitor's probes and checks, discovery's gossip). A socket
monitor, when asked for, turns ZeroMQ's connection events into one clear
failure: cannot connect (and why), a failed CURVE handshake (wrong network
key, or not a PeerCrypt node), or a ZAP denial (not on the peer's allow-list).

What the peer makes libzmq read ahead on a link (never capped:
``PEER_RCVHWM``) is bounded as the gateway bounds members: every link of an
actor is watched by one :class:`~actors.port_watch.PortWatch` (its bound
``--control-port-memory``; counters ``link-closed-unread`` ...). A link the
watch closed is disconnected, not left to libzmq's immediate reconnect, and
connects again after a pause that doubles while the peer keeps flooding
(:class:`~peercrypt.core.redial.Redial`).

ZeroMQ reports a failed connect only as "retried", without the reason, so a
monitored link that fails to connect makes one plain non-blocking TCP connect
of its own to the same address and names what the kernel answers (see
:func:`connect_cause`): refused (nothing listens on the port), network
unreachable (no route from this host), no route to host (nothing answers on
its network), or timed out (nothing came back: a host down, a firewall that
drops, a cut link). The probe is closed as soon as it has an answer; if it
connects after all, ZeroMQ's own retry will too, and nothing is reported -
also when the peer accepts and never speaks (nothing to read): a probe
whose connect completed is dropped after :data:`PROBE_LIMIT`, so the next
failed connect is diagnosed again.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import socket
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import zmq

from actors.port_watch import DIAL_EVENTS, PUBLIC_PORT_SAMPLING, PortWatch, recv_monitor_message
from peercrypt.core.address import is_ipv6, split_host_port
from peercrypt.core.port_guard import CURVE_HANDSHAKE, GuardLimits, curve_framed_size
from peercrypt.core.redial import Redial
from peercrypt.errors import ResultCode
from peercrypt.runtime.actor import PEER_RCVHWM, Actor, dial
from peercrypt.settings import NodeSettings
from peercrypt.wire import codec

MONITOR_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_link_ids = itertools.count()
# Each actor's links and the one watch over them (see the module docs).
_WATCHES: weakref.WeakKeyDictionary[Actor, PortWatch] = weakref.WeakKeyDictionary()
# Seconds between checks of a running connect probe: one whose TCP connect
# completed but that never became readable (the peer accepted and is silent)
# is dropped, so the link can be diagnosed again; one still connecting is
# left to the kernel's own connect timeout.
PROBE_LIMIT = 1.0


_CAUSES = {
    errno.ECONNREFUSED: "connection refused: nothing listens on that port",
    errno.ENETUNREACH: "network unreachable: no route to it from this host",
    errno.EHOSTUNREACH: "no route to host: nothing answers at that address",
    errno.ETIMEDOUT: "timed out: no answer (host down, a firewall, or a cut link)",
    errno.ECONNRESET: "connection reset by the peer",
    errno.EADDRNOTAVAIL: "address not available on this host",
    errno.EACCES: "not permitted by the local firewall",
    errno.EPERM: "not permitted by the local firewall",
}
TIMED_OUT = _CAUSES[errno.ETIMEDOUT]


def connect_cause(code: int) -> str:
    """What a failed TCP connect's ``errno`` means, in words for the user."""
    return _CAUSES.get(code, os.strerror(code).lower() if code else "unknown error")


def address_towards(target: str) -> str | None:
    """This host's address on the route to ``target``, found with an
    unconnected UDP socket (no packet is sent); None if there is no route.
    An IPv6 ``target`` is probed over IPv6 (an IPv4 socket has no route to it)."""
    family = socket.AF_INET6 if is_ipv6(target) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target, 9))
            host: str = probe.getsockname()[0]
            return host
    except OSError:
        return None


def queue(sock: zmq.Socket[Any], msg: codec.Message) -> int:
    """Queue ``msg`` on ``sock`` without waiting: the bytes, 0 if it could not be."""
    data = codec.encode(msg)
    try:
        sock.send(data, zmq.NOBLOCK)
    except zmq.ZMQError:
        return 0
    return len(data)


def address_of(url: str) -> str:
    """``tcp://host:port`` -> ``host:port``."""
    return url.removeprefix("tcp://")


class ConnectProbe:
    """One non-blocking TCP connect to ``host:port`` from ``actor``'s loop;
    ``on_result(errno)`` is called once (possibly before the constructor
    returns): 0 when it connected, else why not. A name that does not
    resolve raises ``OSError``. :meth:`close` abandons it silently."""

    def __init__(
        self, actor: Actor, host: str, port: int, on_result: Callable[[int], None]
    ) -> None:
        self.actor, self.on_result = actor, on_result
        self.sock: socket.socket | None = None
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        code = sock.connect_ex(addr)
        if code == errno.EINPROGRESS:
            self.sock = sock
            # Readable (POLLIN) on error; on success too, once the peer's
            # ZMTP greeting arrives.
            actor.watch(sock.fileno(), self._on_ready)
            return
        sock.close()
        on_result(code)

    def _on_ready(self, _fd: object = None) -> None:
        if self.sock is None:
            return
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.close()
        self.on_result(code)

    def close(self) -> None:
        if self.sock is not None:
            self.actor.unwatch(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def connected(self) -> bool:
        """The TCP connect completed (nothing readable yet: a peer that
        accepts and never speaks)."""
        if self.sock is None or self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return False
        try:
            self.sock.getpeername()
        except OSError:
            return False  # still connecting
        return True


def link_watch(actor: Actor, settings: NodeSettings) -> PortWatch:
    """The watch over ``actor``'s links (made at its first link)."""
    watch = _WATCHES.get(actor)
    if watch is None:
        limits = GuardLimits(
            held=settings.control_port_memory, connections=1 << 16, per_address=1 << 16
        )
        watch = _WATCHES[actor] = PortWatch(
            limits,
            actor.count,
            prefix="link-",
            framing=curve_framed_size,
            allowance=CURVE_HANDSHAKE,
            sampling=PUBLIC_PORT_SAMPLING,
            on_closed=_flooded,
        )
        watch.attach(actor)
    return watch


def _flooded(owner: Hashable) -> None:
    if isinstance(owner, Link):
        owner.flooded()


class Link:
    """A CURVE DEALER from ``actor`` to a peer's public port.

    Messages from the peer go to ``on_message``. With ``monitored`` a socket
    monitor classifies failures into :attr:`failure` ("unreachable",
    "handshake", "not-admitted") and calls ``on_failure``. Persistent member
    links are not monitored and do not queue to a peer that is not
    connected (``ZMQ_IMMEDIATE``): a probe to it simply goes unanswered.

    ``keep_trying`` (a multicast target, which may come up late or restart):
    a peer that cannot be reached is not a failure - ZeroMQ keeps
    reconnecting; :attr:`cause` says why it is not connected, :attr:`retries`
    counts failed connects since it last was - and nothing queues while it
    is not connected. ``on_state`` is called after every change of
    :attr:`connected` or :attr:`handshaken`.
    """

    def __init__(
        self,
        actor: Actor,
        settings: NodeSettings,
        url: str,
        on_message: Callable[[codec.Message], None],
        *,
        monitored: bool = False,
        on_failure: Callable[[], None] | None = None,
        keep_trying: bool = False,
        on_state: Callable[[], None] | None = None,
        sndhwm: int = 64,
    ) -> None:
        self.actor = actor
        self.url = url
        self.on_message = on_message
        self.on_failure = on_failure
        self.on_state = on_state
        self.keep_trying = keep_trying
        self.retries = 0
        self.failure = ""
        self.detail = ""
        self.connected = False
        self.handshaken = False  # once, ever (it stays so across reconnects)
        self.handshakes = 0  # completed, one per connection (a reconnect adds one)
        self.disconnects = 0  # connections that dropped (a monitored link's)
        self.connects = 0  # connections made (a reconnect adds one, a redial too)
        self.closed = False
        self.cause = ""  # why a connect failed, once the probe knows
        self.mismatch = 0  # the other protocol version the peer answered in, once logged
        self.probe: ConnectProbe | None = None
        self.created = actor.now()
        self.monitored = monitored
        self.watch = link_watch(actor, settings)
        self.redial = Redial()
        self.paused = False  # disconnected by the watch, until the redial
        sock = self.sock = actor.socket(zmq.DEALER)
        # Options set by number, keys raw (libzmq takes 32 bytes or Z85): a
        # send opens a link of its own, and the attribute names and Z85
        # encoding took ~100 us of its sender's CPU.
        option = sock.setsockopt
        option(zmq.CURVE_SERVERKEY, settings.server_keys.public)
        option(zmq.CURVE_PUBLICKEY, settings.identity.public)
        option(zmq.CURVE_SECRETKEY, settings.identity.secret)
        option(zmq.MAXMSGSIZE, 64 * 1024 + 1024)
        option(zmq.RECONNECT_IVL, 100)
        option(zmq.RECONNECT_IVL_MAX, 2000)
        option(zmq.SNDHWM, sndhwm)
        option(zmq.RCVHWM, PEER_RCVHWM)  # replies to our requests; a cap lets the peer abort us
        if not monitored or keep_trying:
            option(zmq.IMMEDIATE, 1)
        address = f"inproc://pc-{actor.env.node_uid}/{actor.name}-link/{next(_link_ids)}"
        sock.monitor(address, MONITOR_EVENTS if monitored else DIAL_EVENTS)
        self.monitor: zmq.Socket[Any] | None = actor.socket(zmq.PAIR)
        self.monitor.setsockopt(zmq.RCVHWM, 0)  # inproc: no event is ever dropped
        self.monitor.connect(address)
        actor.watch(self.monitor, self._on_monitor)
        actor.watch(sock, self._on_readable)
        try:
            dial(sock, url)
        except zmq.ZMQError as exc:
            self.failure = ResultCode.LOCAL
            self.detail = f"invalid address {address_of(url)}: {exc.strerror}"

    def send(self, msg: codec.Message) -> int:
        """Queue ``msg``; returns the bytes sent, 0 if it could not be queued."""
        if self.closed or self.failure:
            return 0
        return queue(self.sock, msg)

    def _on_readable(self, _sock: object = None) -> None:
        for _ in range(64):
            if self.closed:
                return
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.watch.delivered_to(self, (len(data),))
            try:
                msg = codec.decode(data)
            except codec.VersionMismatch as exc:  # it answered in its own version
                self._other_version(exc.theirs)
                continue
            except codec.DecodeError as exc:
                self.actor.count(f"reply-{exc.kind}")
                continue
            theirs = codec.mismatch_of(msg)
            if theirs is not None:  # it met ours and answered in our envelope
                self._other_version(theirs)
                continue
            self.on_message(msg)

    def _other_version(self, theirs: int) -> None:
        """The peer speaks another protocol version: logged once; a monitored
        link (a send's, a check's, a multicast target's) fails with that line
        (docs/security.md, "Protocol versions"). A member's persistent link
        goes on: the peer may be upgraded."""
        self.actor.count("reply-version")
        if self.mismatch == theirs:
            return
        self.mismatch = theirs
        text = codec.mismatch_text(address_of(self.url), theirs)
        self.actor.log_limited("%s", text)
        if self.monitored:
            self._fail(ResultCode.PROTOCOL, text)

    def _on_monitor(self, _sock: object = None) -> None:
        while not self.closed and self.monitor is not None:
            try:
                message = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            event = message["event"]
            if event in (zmq.EVENT_CONNECTED, zmq.EVENT_DISCONNECTED):
                self.watch.on_event(message, owner=self)
            if event == zmq.EVENT_DISCONNECTED:
                self.disconnects += 1
            if event == zmq.EVENT_CONNECTED:
                self.connects += 1
            if not self.monitored:
                continue
            peer = address_of(self.url)
            if event == zmq.EVENT_CONNECTED:
                self.connected = True
                if self.keep_trying:  # a later outage is diagnosed afresh
                    self.retries, self.cause = 0, ""
                self._changed()
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshaken = True
                self.handshakes += 1
                self._changed()
            elif event == zmq.EVENT_CONNECT_RETRIED and self.keep_trying:
                self.connected = False
                self.retries += 1
                self._diagnose()
                self._changed()
            elif event == zmq.EVENT_DISCONNECTED and (self.keep_trying or self.handshaken):
                # ZeroMQ reconnects (a restarted peer); until then an attempt
                # that gets no answer is told unreachable, and a failed
                # reconnect diagnosed (a kept send's link whose peer went away)
                self.connected = False
                self._changed()
            elif event == zmq.EVENT_CONNECT_RETRIED and not self.connected:
                self._diagnose()
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._fail(
                    ResultCode.NOT_ADMITTED,
                    f"{peer} did not admit this node (not on its allow-list)",
                )
            elif not self.handshaken and event in (
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                zmq.EVENT_DISCONNECTED,
            ):
                self._fail(
                    ResultCode.HANDSHAKE,
                    f"handshake with {peer} failed: wrong network key, or not a PeerCrypt node",
                )

    def generation(self) -> int:
        """Which connection this is: the connections made so far (the
        monitor's pending events taken first), so a reconnect is a new one
        (a redial after :meth:`flooded` too: it emits no drop)."""
        self._on_monitor()
        return self.connects

    def up(self) -> bool:
        """Connected now, handshaken, not failed, paused or closed. The
        monitor's pending events are taken first: a drop libzmq already saw
        counts, even if the loop has not read its event yet."""
        self._on_monitor()
        return (
            self.connected and self.handshaken and not (self.failure or self.paused or self.closed)
        )

    def flooded(self) -> None:
        """The watch closed the connection for what the peer made the node
        hold unread: disconnect (libzmq would connect again at once) and
        connect again after the redial's pause."""
        if self.closed or self.paused:
            return
        self.paused = True
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disconnect(self.url)
        self.actor.call_later(self.redial.closed(self.actor.now()), self._connect_again)

    def _connect_again(self) -> None:
        if self.closed or not self.paused:
            return
        self.paused = False
        self.redial.connected(self.actor.now())
        with contextlib.suppress(zmq.ZMQError):
            dial(self.sock, self.url)

    def _diagnose(self) -> None:
        """Find out why connecting fails: one non-blocking TCP connect."""
        if self.probe is not None or self.cause or self.failure:
            return
        try:
            host, port = split_host_port(address_of(self.url))
            probe = ConnectProbe(self.actor, host, port, self._on_probe)
        except (OSError, ValueError, IndexError) as exc:
            self._unreachable(str(exc))
            return
        self.probe = probe if probe.sock is not None else None
        if self.probe is not None:
            self.actor.call_later(PROBE_LIMIT, functools.partial(self._check_probe, probe))

    def _check_probe(self, probe: ConnectProbe) -> None:
        """Bound a probe that gets no answer (see :data:`PROBE_LIMIT`)."""
        if self.probe is not probe:
            return  # answered, or the link closed
        if probe.connected():
            self._close_probe()  # TCP works: what fails is above it (the monitor says)
        else:
            self.actor.call_later(PROBE_LIMIT, functools.partial(self._check_probe, probe))

    def _on_probe(self, code: int) -> None:
        self.probe = None
        if code:
            self._unreachable(connect_cause(code))

    def _close_probe(self) -> None:
        if self.probe is not None:
            self.probe.close()
            self.probe = None

    def _changed(self) -> None:
        if self.on_state is not None and not self.closed:
            self.on_state()

    def _unreachable(self, cause: str) -> None:
        self.cause = cause
        if self.keep_trying:
            return  # ZeroMQ reconnects; the owner decides when it is too late
        self._fail(ResultCode.UNREACHABLE, f"cannot connect to {address_of(self.url)}: {cause}")

    def dial_on(self) -> None:
        """Take a failure as passing: ZeroMQ dials on, and the link sends
        again (an attached actor's, whose node may be behind a proxy that
        drops each handshake while it is down)."""
        self.failure = ""

    def _fail(self, code: str, detail: str) -> None:
        if self.failure:
            return
        self.failure, self.detail = code, detail
        if self.on_failure is not None:
            self.on_failure()

    def timeout_reason(self, seconds: float) -> tuple[str, str]:
        """(code, reason) for an attempt that got no answer in time."""
        peer = address_of(self.url)
        if not self.connected:
            return ResultCode.UNREACHABLE, f"cannot connect to {peer}: {self.cause or TIMED_OUT}"
        if self.monitored and not self.handshaken:
            return (
                ResultCode.TIMEOUT,
                f"{peer} accepted the connection but did not complete the handshake",
            )
        return ResultCode.TIMEOUT, f"{peer} did not answer within {seconds:g} s"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._close_probe()
        self.watch.forget_owner(self)
        if self.monitor is not None:
            with contextlib.suppress(zmq.ZMQError):
                self.sock.disable_monitor()
            self.actor.close_socket(self.monitor)
        self.actor.close_socket(self.sock)
