"""Proxies for the data plane: faults and per-connection caps, for tests and benchmarks.

:class:`CappingProxy` (at the end) is a plain TCP proxy that caps every
connection's rate on its own, as a per-flow shaper would (parallel lanes
are measured through it: ``scripts/bench_parallel.py``). :class:`GateProxy`,
built on it, holds every connection until the test opens it (a node held
back from one peer while others reach it first). :class:`DelayProxy`, built
on it too, delays every byte stream by a fixed time each way through a
bounded buffer, optionally at a capped rate shared by its connections (a
:class:`WanLink`): a long path, which this kernel cannot emulate (no
``netem``; ``scripts/bench_wan.py``).

:class:`FaultProxy` sits between senders and a receiver's data port::

    sender DEALER --> [ROUTER  FaultProxy  DEALER per client] --> receiver ROUTER

It binds a ROUTER on ``127.0.0.1`` (port 0: :attr:`FaultProxy.port` tells which),
connects one DEALER per client routing id to the real receiver endpoint, under
the client's own routing id when it chose one (so the receiver sees each
client as itself and replies find their way back), and
forwards multipart messages both ways in its own thread. A seeded
:class:`FaultPlan` decides, per message and per direction, whether to

- **drop** it,
- **flip** one random bit of one random (non-empty) frame,
- **duplicate** it (the copy is sent right after the original, or held like a
  delayed message when the plan delays it too),
- **delay** it: hold it for up to ``max_delay`` seconds, so later messages
  overtake it (reordering).

What it did is counted in :attr:`FaultProxy.counts`. Starting and stopping
cannot hang: every socket has LINGER 0, the thread polls a stop flag at least
every 50 ms and is joined with a timeout, and the context is terminated only
after the thread closed its sockets.

Example::

    plan = FaultPlan.both(drop=0.05, delay=0.05, seed=7)
    with FaultProxy("tcp://127.0.0.1:5555", plan) as proxy:
        ...  # point senders at proxy.port
    print(proxy.counts.upstream.dropped)
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import zmq

log = logging.getLogger("peercrypt.testing.faults")

Direction = Literal["upstream", "downstream"]
# Called in the proxy thread with each message as received, before any fault.
Observer = Callable[[Direction, list[bytes]], None]
# Called in the proxy thread with each message and the client it comes from
# or goes to, after the observer: True drops it (a fault chosen by the test,
# counted as dropped), whatever the plan.
DropIf = Callable[[Direction, bytes, list[bytes]], bool]

_POLL_MS = 50


@dataclass(frozen=True)
class DirectionFaults:
    """Independent per-message probabilities of each fault in one direction."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    flip: float = 0.0
    max_delay: float = 0.05  # seconds a delayed message is held at most

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "delay", "flip"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} probability must be in [0, 1], not {value}")
        if self.max_delay < 0:
            raise ValueError("max_delay must be >= 0")


@dataclass(frozen=True)
class FaultPlan:
    """Faults for both directions and the seed that makes a run repeatable.

    ``upstream`` is client (sender) to server (receiver); ``downstream`` the
    replies (acks, verified, failed).
    """

    upstream: DirectionFaults = field(default_factory=DirectionFaults)
    downstream: DirectionFaults = field(default_factory=DirectionFaults)
    seed: int = 0

    @classmethod
    def both(
        cls,
        *,
        drop: float = 0.0,
        duplicate: float = 0.0,
        delay: float = 0.0,
        flip: float = 0.0,
        max_delay: float = 0.05,
        seed: int = 0,
    ) -> FaultPlan:
        """The same faults in both directions."""
        faults = DirectionFaults(drop, duplicate, delay, flip, max_delay)
        return cls(upstream=faults, downstream=faults, seed=seed)

    @classmethod
    def clean(cls) -> FaultPlan:
        """Forward everything untouched."""
        return cls()

    def for_direction(self, direction: Direction) -> DirectionFaults:
        return self.upstream if direction == "upstream" else self.downstream


@dataclass
class DirectionCounts:
    """What the proxy did to the messages of one direction."""

    received: int = 0
    sent: int = 0  # copies handed to the next socket (duplicates count twice)
    dropped: int = 0
    duplicated: int = 0
    delayed: int = 0
    flipped: int = 0
    send_failed: int = 0


@dataclass
class FaultCounts:
    upstream: DirectionCounts = field(default_factory=DirectionCounts)
    downstream: DirectionCounts = field(default_factory=DirectionCounts)
    clients: int = 0

    def of(self, direction: Direction) -> DirectionCounts:
        return self.upstream if direction == "upstream" else self.downstream

    def total(self, name: str) -> int:
        """Sum of one counter over both directions."""
        return int(getattr(self.upstream, name)) + int(getattr(self.downstream, name))


@dataclass(order=True)
class _Held:
    due: float
    seq: int
    direction: Direction = field(compare=False)
    client: bytes = field(compare=False)
    frames: list[bytes] = field(compare=False)


class FaultProxy:
    """Forward a ZeroMQ data plane through seeded faults (see the module docs)."""

    def __init__(
        self,
        backend: str,
        plan: FaultPlan | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        observer: Observer | None = None,
        drop_if: DropIf | None = None,
    ) -> None:
        self.backend = backend
        self.plan = plan or FaultPlan.clean()
        self.host = host
        self._want_port = port
        self.observer = observer
        self.drop_if = drop_if
        self.port = 0
        self.counts = FaultCounts()
        self._lock = threading.Lock()
        self._rng = random.Random(self.plan.seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._context: zmq.Context[Any] | None = None
        self._frontend: zmq.Socket[Any] | None = None
        self._error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """Where clients connect (valid after :meth:`start`)."""
        return f"tcp://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        """Bind the front ROUTER and start forwarding. Raises zmq.ZMQError on bind."""
        if self._thread is not None:
            raise RuntimeError("the proxy was already started")
        self._context = zmq.Context()
        front: zmq.Socket[Any] = self._context.socket(zmq.ROUTER)
        front.linger = 0
        front.sndhwm = 0
        front.rcvhwm = 0
        try:
            front.bind(f"tcp://{self.host}:{self._want_port}")
        except zmq.ZMQError:
            front.close(linger=0)
            self._context.term()
            self._context = None
            raise
        endpoint = front.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(endpoint.rsplit(":", 1)[1])
        self._frontend = front
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop forwarding. Returns False if the thread did not end in ``timeout``
        (then the context is left open rather than risking a hang)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.error("fault proxy thread did not stop; leaving its context open")
            return False
        if self._context is not None:
            self._context.term()
            self._context = None
        return True

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_plan(self, plan: FaultPlan, reseed: bool = True) -> None:
        """Switch to another plan (applies from the next message); ``reseed``
        restarts the random sequence from ``plan.seed``."""
        with self._lock:
            self.plan = plan
            if reseed:
                self._rng = random.Random(plan.seed)

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the proxy thread, if any."""
        return self._error

    def snapshot(self) -> FaultCounts:
        """A consistent copy of the counters."""
        with self._lock:
            return FaultCounts(
                upstream=replace(self.counts.upstream),
                downstream=replace(self.counts.downstream),
                clients=self.counts.clients,
            )

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        assert self._context is not None and self._frontend is not None
        front = self._frontend
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        dealers: dict[bytes, zmq.Socket[Any]] = {}
        clients: dict[zmq.Socket[Any], bytes] = {}
        held: list[_Held] = []
        seq = itertools.count()

        def dealer_for(client: bytes) -> zmq.Socket[Any]:
            sock = dealers.get(client)
            if sock is None:
                assert self._context is not None
                sock = self._context.socket(zmq.DEALER)
                sock.linger = 0
                sock.sndhwm = 0
                sock.rcvhwm = 0
                if client[:1] != b"\x00":  # a name the client chose (a sender's route id)
                    sock.routing_id = client
                sock.connect(self.backend)
                dealers[client] = sock
                clients[sock] = client
                poller.register(sock, zmq.POLLIN)
                with self._lock:
                    self.counts.clients += 1
            return sock

        def deliver(direction: Direction, client: bytes, frames: list[bytes]) -> None:
            try:
                if direction == "upstream":
                    dealer_for(client).send_multipart(frames, zmq.NOBLOCK)
                else:
                    front.send_multipart([client, *frames], zmq.NOBLOCK)
            except zmq.Again:
                self._count(direction, "send_failed")
                return
            self._count(direction, "sent")

        def handle(direction: Direction, client: bytes, frames: list[bytes]) -> None:
            self._count(direction, "received")
            if self.observer is not None:
                self.observer(direction, list(frames))
            with self._lock:
                faults = self.plan.for_direction(direction)
                rng = self._rng
            chosen = self.drop_if is not None and self.drop_if(direction, client, frames)
            if chosen or rng.random() < faults.drop:
                self._count(direction, "dropped")
                return
            if rng.random() < faults.flip:
                frames, flipped = self._flip(frames)
                if flipped:
                    self._count(direction, "flipped")
            copies = 1
            if rng.random() < faults.duplicate:
                self._count(direction, "duplicated")
                copies = 2
            delayed = rng.random() < faults.delay
            for _ in range(copies):
                if delayed:
                    due = time.monotonic() + rng.uniform(0.0, faults.max_delay)
                    heapq.heappush(held, _Held(due, next(seq), direction, client, frames))
                else:
                    deliver(direction, client, frames)
            if delayed:
                self._count(direction, "delayed")

        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while held and held[0].due <= now:
                    h = heapq.heappop(held)
                    deliver(h.direction, h.client, h.frames)
                timeout = _POLL_MS
                if held:
                    timeout = max(0, min(_POLL_MS, int((held[0].due - now) * 1000) + 1))
                for sock, _ in poller.poll(timeout):
                    for _ in range(256):  # bounded batch, then check timers and stop
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        if sock is front:
                            if len(frames) < 2:
                                continue  # nothing to forward
                            handle("upstream", frames[0], frames[1:])
                        else:
                            handle("downstream", clients[sock], frames)
        except BaseException as exc:  # keep the error for the test, never hang
            self._error = exc
            log.exception("fault proxy failed")
        finally:
            for sock in [front, *dealers.values()]:
                sock.close(linger=0)

    def _count(self, direction: Direction, name: str) -> None:
        with self._lock:
            counts = self.counts.of(direction)
            setattr(counts, name, getattr(counts, name) + 1)

    def _flip(self, frames: list[bytes]) -> tuple[list[bytes], bool]:
        """Flip one random bit of one random non-empty frame (in a copy); False when
        every frame is empty and there is nothing to flip."""
        candidates = [i for i, f in enumerate(frames) if f]
        if not candidates:
            return frames, False
        which = self._rng.choice(candidates)
        frame = bytearray(frames[which])
        bit = self._rng.randrange(len(frame) * 8)
        frame[bit // 8] ^= 1 << (bit % 8)
        out = list(frames)
        out[which] = bytes(frame)
        return out, True


class CappingProxy:
    """A TCP proxy that caps each connection's rate on its own (a per-flow
    shaper, which this kernel's qdiscs cannot do: no ``fq``).

    Listens on ``host`` (port 0: :attr:`port` tells which); each accepted
    connection gets its own connection to ``backend`` (``(host, port)``) and
    two forwarding threads. Client-to-backend bytes of each connection are
    paced to ``rate`` bytes/s by a token bucket of ``burst`` bytes (default:
    50 ms worth, at least 64 KiB: late wake-ups of a loaded machine are
    made up for); backend-to-client bytes (acks) pass
    unpaced unless ``reply_rate`` is set. The proxy reads only as fast as it
    may forward, so TCP's own flow control pushes back on the sender, as a
    capped link would. Counted per connection in :attr:`forwarded`.

    Stopping closes every socket and joins the threads with a bound; it
    cannot hang.
    """

    def __init__(
        self,
        backend: tuple[str, int],
        rate: float,
        *,
        burst: int = 0,
        reply_rate: float = 0.0,
        host: str = "127.0.0.1",
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 bytes/s")
        self.backend = backend
        self.rate = rate
        self.reply_rate = reply_rate
        self.burst = burst or max(64 * 1024, int(rate * 0.05))
        self.host = host
        self.port = 0
        self.forwarded: list[int] = []  # client-to-backend bytes, per connection
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self.forwarded)

    def start(self) -> CappingProxy:
        listener = socket.create_server((self.host, 0), backlog=64)
        listener.settimeout(_POLL_MS / 1000)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._spawn(self._accept, "cap-accept")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for sock in sockets:
            sock.close()
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> CappingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._connect(client)

    def _connect(self, client: socket.socket) -> None:
        """Connect ``client`` to the backend and forward both ways."""
        try:
            server = socket.create_connection(self.backend, timeout=5.0)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        client.settimeout(None)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._sockets += [client, server]
            slot = len(self.forwarded)
            self.forwarded.append(0)
        self._spawn(self._pump, f"cap-up{slot}", client, server, self.rate, slot)
        self._spawn(self._pump, f"cap-down{slot}", server, client, self.reply_rate, -1)

    def _pump(self, src: socket.socket, dst: socket.socket, rate: float, slot: int) -> None:
        """Copy ``src`` to ``dst``, at most ``rate`` bytes/s (0: unpaced)."""
        buf = bytearray(min(self.burst, 256 * 1024) if rate else 256 * 1024)
        view = memoryview(buf)
        tokens = float(self.burst)
        last = time.monotonic()
        try:
            while not self._stop.is_set():
                if rate:
                    now = time.monotonic()
                    tokens = min(float(self.burst), tokens + (now - last) * rate)
                    last = now
                    if tokens < len(buf):  # wait for a full read's worth
                        time.sleep((len(buf) - tokens) / rate)
                        continue
                n = src.recv_into(buf)
                if n == 0:
                    break
                dst.sendall(view[:n])
                if rate:
                    tokens -= n
                if slot >= 0:
                    with self._lock:
                        self.forwarded[slot] += n
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


class GateProxy(CappingProxy):
    """A TCP proxy that holds every connection until :meth:`open`: a client
    connects at once, but nothing reaches ``backend`` (nor comes back)
    before the gate opens; then bytes pass both ways unpaced. For a test
    that holds one node back from another while others talk to it."""

    def __init__(self, backend: tuple[str, int], *, host: str = "127.0.0.1") -> None:
        super().__init__(backend, 1.0, host=host)
        self.rate = 0.0  # unpaced once open
        self._gate = threading.Event()

    def __enter__(self) -> GateProxy:
        self.start()
        return self

    def open(self) -> None:
        self._gate.set()

    def _connect(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.append(client)  # closed by stop() while held
        self._spawn(self._hold, "gate-held", client)

    def _hold(self, client: socket.socket) -> None:
        while not self._gate.wait(_POLL_MS / 1000):
            if self._stop.is_set():
                return
        super()._connect(client)


# The most a DelayProxy reads from a socket at once: what a delay line may
# hold beyond its bound (one read), and the granularity of its pacing.
DELAY_READ = 256 * 1024


class WanLink:
    """One emulated path for :class:`DelayProxy` instances: a one-way
    ``delay`` (seconds, each direction) and, when ``rate`` (bytes/s) is set,
    a capacity shared by every connection of every proxy on it, each
    direction on its own (a link, not a per-flow shaper: ``-t 4``'s four
    connections share it as four TCP flows on one path would).

    Bytes are serialized at ``rate`` one after the other (a virtual clock:
    the time the link is busy until), then travel ``delay``. A reader is
    held until the link is free but for ``slack`` seconds, so what queues
    for the link is about ``slack`` x ``rate`` (a router's small queue),
    not the proxy's whole buffer. ``delay`` may be changed between
    transfers (it applies to bytes read from then on)."""

    def __init__(self, delay: float, rate: float = 0.0, *, slack: float = 0.005) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0 seconds")
        if rate < 0:
            raise ValueError("rate must be >= 0 bytes/s (0: no cap)")
        self.delay = delay
        self.rate = rate
        self.slack = slack
        self._lock = threading.Lock()
        self._free = {"upstream": 0.0, "downstream": 0.0}

    def serialize(self, direction: Direction, n: int, now: float) -> float:
        """Take the link for ``n`` bytes read at ``now``: when they have
        left it (``now`` without a rate cap)."""
        if not self.rate:
            return now
        with self._lock:
            start = max(now, self._free[direction])
            self._free[direction] = done = start + n / self.rate
        return done

    def wait_free(self, direction: Direction) -> float:
        """Seconds a reader should wait before reading more (0: now)."""
        if not self.rate:
            return 0.0
        with self._lock:
            free = self._free[direction]
        return max(0.0, free - self.slack - time.monotonic())


class _DelayLine:
    """One direction of one connection: bytes read, each with the time it
    is due at the other side, at most ``bound`` bytes held (plus the read
    that reached it). ``None`` is the end of the stream."""

    def __init__(self, bound: int, stop: threading.Event) -> None:
        self.bound = bound
        self.held = 0
        self.peak = 0
        self.closed = False  # the writer gave up: the reader stops too
        self._stop = stop
        self._items: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self._cond = threading.Condition()

    def put(self, due: float, data: bytes | None) -> bool:
        """Queue ``data`` (None: the end) once the line holds less than its
        bound; False if the proxy stops or the writer gave up meanwhile."""
        with self._cond:
            while self.held >= self.bound and not (self.closed or self._stop.is_set()):
                self._cond.wait(_POLL_MS / 1000)
            if self.closed or self._stop.is_set():
                return False
            self._items.append((due, data))
            self.held += len(data or b"")
            self.peak = max(self.peak, self.held)
            self._cond.notify_all()
            return True

    def take(self) -> tuple[list[bytes], bool] | None:
        """Wait for what is due: (its pieces, whether the stream ended
        there); None when the proxy stops."""
        with self._cond:
            while not self._stop.is_set():
                if self._items:
                    wait = self._items[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(min(wait, _POLL_MS / 1000))
                else:
                    self._cond.wait(_POLL_MS / 1000)
            else:
                return None
            now = time.monotonic()
            pieces: list[bytes] = []
            while self._items and self._items[0][0] <= now:
                _, data = self._items.popleft()
                if data is None:
                    return pieces, True
                pieces.append(data)
            return pieces, False

    def release(self, n: int) -> None:
        """``n`` bytes taken were handed on: room for the reader."""
        with self._cond:
            self.held -= n
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class DelayProxy(CappingProxy):
    """A TCP proxy that delays each byte stream by ``link.delay`` seconds
    each way (a round trip of twice that), through a bounded buffer.

    Each accepted connection gets, per direction, a reader (the socket into
    a :class:`_DelayLine`, each read stamped with when it is due: read,
    serialized at the link's rate if it has one, plus the delay) and a
    writer (what is due, to the other socket). A line holds at most
    ``buffer`` bytes (and one read of at most :data:`DELAY_READ`): a full
    line stops its reader, and TCP's flow control pushes back on the
    sender, so a path of ``buffer`` bytes in flight each way at most
    (without a rate cap it carries ``buffer`` / ``delay`` bytes/s at most:
    size it above the rate times the delay). The connection to ``backend``
    is made 1.5 round trips after the client's (what a TCP handshake costs
    before the server sees a connection and the client's first bytes
    arrive); the client's bytes wait in their line meanwhile.

    Client-to-backend bytes are counted per connection in
    :attr:`forwarded` (as they are handed to the backend); each line's most
    held in :attr:`peak_held`. Stopping shuts every socket down, wakes
    every line and joins the threads with a bound; it cannot hang.
    """

    def __init__(
        self,
        backend: tuple[str, int],
        link: WanLink,
        *,
        buffer: int = 64 * 2**20,
        host: str = "127.0.0.1",
    ) -> None:
        if buffer < 1:
            raise ValueError("buffer must be >= 1 byte")
        super().__init__(backend, 1.0, host=host)
        self.rate = 0.0  # the link paces, not CappingProxy's per-connection bucket
        self.link = link
        self.buffer = buffer
        self._lines: list[_DelayLine] = []

    def start(self) -> DelayProxy:
        super().start()
        return self

    def __enter__(self) -> DelayProxy:
        return self.start()

    @property
    def peak_held(self) -> int:
        """The most any one line (a direction of a connection) held."""
        with self._lock:
            return max((line.peak for line in self._lines), default=0)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            lines = list(self._lines)
        for line in lines:
            line.close()
        super().stop(timeout)

    def _connect(self, client: socket.socket) -> None:
        accepted = time.monotonic()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up, down = _DelayLine(self.buffer, self._stop), _DelayLine(self.buffer, self._stop)
        with self._lock:
            self._sockets.append(client)
            self._lines += [up, down]
            slot = len(self.forwarded)
            self.forwarded.append(0)
        self._spawn(self._read, f"delay-in{slot}", client, up, "upstream")
        self._spawn(self._dial, f"delay-dial{slot}", client, up, down, accepted, slot)

    def _dial(
        self,
        client: socket.socket,
        up: _DelayLine,
        down: _DelayLine,
        accepted: float,
        slot: int,
    ) -> None:
        """Connect to the backend 1.5 round trips after the client did, then
        forward both ways."""
        if self._stop.wait(max(0.0, accepted + 3 * self.link.delay - time.monotonic())):
            return
        try:
            server = socket.create_connection(self.backend, timeout=5.0)
        except OSError:
            up.close()
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            return
        server.settimeout(None)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._sockets.append(server)
        if self._stop.is_set():  # stop() may have shut the others down before this one
            server.shutdown(socket.SHUT_RDWR)
            return
        self._spawn(self._read, f"delay-back{slot}", server, down, "downstream")
        self._spawn(self._write, f"delay-down{slot}", down, client, server, -1)
        self._write(up, server, client, slot)

    def _read(self, src: socket.socket, line: _DelayLine, direction: Direction) -> None:
        """``src`` into ``line``, each read stamped with when it is due."""
        buf = bytearray(DELAY_READ)
        try:
            while not self._stop.is_set():
                pause = self.link.wait_free(direction)
                if pause and self._stop.wait(pause):
                    break
                n = src.recv_into(buf)
                now = time.monotonic()
                if n == 0:
                    line.put(now + self.link.delay, None)
                    break
                due = self.link.serialize(direction, n, now) + self.link.delay
                if not line.put(due, bytes(buf[:n])):
                    break
        except OSError:
            line.put(time.monotonic() + self.link.delay, None)

    def _write(self, line: _DelayLine, dst: socket.socket, src: socket.socket, slot: int) -> None:
        """What is due in ``line`` to ``dst``; at the stream's end, ``dst``'s
        writing side is shut (a half close passes as one); if ``dst`` fails,
        both sockets are shut down (a reset)."""
        try:
            while (due := line.take()) is not None:
                pieces, ended = due
                for piece in pieces:
                    dst.sendall(piece)
                    line.release(len(piece))
                    if slot >= 0:
                        with self._lock:
                            self.forwarded[slot] += len(piece)
                if ended:
                    dst.shutdown(socket.SHUT_WR)
                    return
        except OSError:
            line.close()
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
