"""The messages between the CLI and its node's control socket: a send and
its progress and result, status, and the error answer (the other messages,
between nodes and between actors, are in :mod:`peercrypt.wire.messages`,
which re-exports these).

Their own module so that ``peercrypt send`` and ``status`` build these few
dataclasses, not the seventy of the node (a tenth of such a command's CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peercrypt.wire.codec import Message, bounded, message
from peercrypt.wire.columns import column
from peercrypt.wire.fields import code, counter, port, reason

HASH_BYTES = 32
MAX_NAME = 1024  # characters of a file name as offered; sanitised on receipt
MAX_STATUS_COUNTERS = 1000  # every actor's counters in one status reply (~40 KB at most)


@message
@dataclass(frozen=True, kw_only=True)
class ErrorReply(Message):
    """Answer to a control message the node could not take."""

    TYPE = "error"
    code: str = code()
    reason: str = reason()


@message
@dataclass(frozen=True, kw_only=True)
class SendRequest(Message):
    """Ask the node to send a file (CLI -> control -> sender)."""

    TYPE = "send-request"
    request: int = counter()
    path: str = field(metadata=bounded(4096, 1))
    # More files or folders sent with ``path`` as one transfer (a folder
    # ``path`` alone is one too); each travels under its own name.
    more: list[str] = field(default_factory=list, metadata=bounded(4096))
    host: str = field(metadata=bounded(255, 1))
    port: int = port()
    chunk_size: int = field(metadata=bounded(64 * 1024 * 1024, 4096))
    # The smallest chunk the receiver may choose instead (0: ``chunk_size``
    # only, as ``send --chunk-size`` asks): OfferDetails.min_chunk.
    min_chunk: int = field(default=0, metadata=bounded(64 * 1024 * 1024))
    timeout: float = 10.0
    # The transfer's policy (see peercrypt.core.modes); None: the node's default.
    mode: str | None = field(default=None, metadata=bounded(32))
    rate: int | None = field(default=None, metadata=bounded(2**62))
    burst: int | None = field(default=None, metadata=bounded(2**62))
    window_kb: int | None = field(default=None, metadata=bounded(2**40))
    min_window_kb: int | None = field(default=None, metadata=bounded(2**40))
    max_window_kb: int | None = field(default=None, metadata=bounded(2**40))
    ack_threshold: int | None = field(default=None, metadata=bounded(1 << 20))
    timeout_detect: bool | None = None
    dupack_detect: bool | None = None
    priority: int | None = field(default=None, metadata=bounded(3))
    lanes: int | None = field(default=None, metadata=bounded(64))
    # --force: the pre-send check (the sender's hello) refusing says so without
    # the hint at --force (and counts sender.forced-sends).
    force: bool = False
    # Set by the scheduler: whether the node's rate cap (live max-rate) paces
    # this send from its first byte (None: the cap it started with).
    node_capped: bool | None = None
    # The receiver's fingerprint the user pinned (--expect); "": known peers.
    expect: str = field(default="", metadata=bounded(64))
    # Fingerprints members' own signed records list at HOST:PORT (the control
    # actor asks health; crypto/known_peers.py decides with them).
    members: list[str] = field(default_factory=list, metadata=bounded(16))
    # Its client shows no progress (--json, --no-progress, no terminal): the
    # node relays a Progress only with a new note, or every few seconds as a
    # sign that it is alive (actors/control.py, QUIET_BEAT), not every tick.
    quiet: bool = False


@message
@dataclass(frozen=True, kw_only=True)
class CancelRequest(Message):
    """Stop a send in progress (the CLI was interrupted)."""

    TYPE = "cancel-request"
    request: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class Progress(Message):
    """How far a send is, every 0.1 s while it runs. ``phase`` is what it
    waits for (:data:`PHASES`): ``checking`` the peer (the pre-send hello),
    ``waiting`` for a free sending slot, ``offering`` until the receiver accepts,
    ``retrying`` (a pause before offering again after a network failure),
    ``sending`` (``done_bytes``: written by the receiver), ``hashing`` (the
    sender reads back what the receiver already held, for the whole-file
    hash: ``done_bytes`` hashed), ``verifying`` (the receiver checks the
    hash; ``done_bytes`` = ``total_bytes``). ``note``: what it is doing
    about a problem (e.g. the receiver's port closed; retrying), shown once
    to the user. ``transfer``: the send's id in the node (the one
    ``transfers``, ``top`` and ``cancel ID`` use; the client's own request id
    is another), set by the control actor on its way to the client; 0 in the
    one control sends as it takes a send (the node's checks may still refuse
    it), set from the first of the actor that took it on."""

    TYPE = "progress"
    request: int = counter()
    done_bytes: int = counter()
    total_bytes: int = counter()
    note: str = reason(default="")
    done_files: int = counter(default=0)  # a folder or several files: files fully acked
    total_files: int = counter(default=0)
    phase: str = field(default="sending", metadata=bounded(16))
    transfer: int = counter(default=0)


@message
@dataclass(frozen=True, kw_only=True)
class Progresses(Message):
    """The sender's :class:`Progress` of each of its sends, one message to
    the control actor per progress tick instead of one per send
    (:mod:`peercrypt.wire.columns`); control relays each to its client as
    a ``Progress``, as before."""

    TYPE = "progresses"
    request: list[int] = column(Progress, "request")
    done_bytes: list[int] = column(Progress, "done_bytes")
    total_bytes: list[int] = column(Progress, "total_bytes")
    note: list[str] = column(Progress, "note")
    done_files: list[int] = column(Progress, "done_files")
    total_files: list[int] = column(Progress, "total_files")
    phase: list[str] = column(Progress, "phase")
    # (no ``transfer``: control sets it on each Progress it relays)


PHASES = (
    "checking",
    "walking",  # a folder or several files: reading and hashing them for the manifest
    "waiting",
    "offering",
    "retrying",
    "sending",
    "hashing",
    "verifying",
)


@message
@dataclass(frozen=True, kw_only=True)
class McTargetProgress(Message):
    """One receiver's progress in a multicast send, every 0.1 s while the
    session runs (beside the send's Progress): its
    ``state`` (``joining``, ``multicast``, ``unicast``, ``lost``...) and the
    bytes it acknowledged."""

    TYPE = "mc-target-progress"
    request: int = counter()
    target: str = field(metadata=bounded(300))
    state: str = field(metadata=bounded(16))
    done_bytes: int = counter()
    total_bytes: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class SendResult(Message):
    """Outcome of a send. ``code`` is "ok" or a failure code (see
    :mod:`peercrypt.errors`); ``digest`` is the verified BLAKE3 hash."""

    TYPE = "send-result"
    request: int = counter()
    code: str = code()
    reason: str = reason()
    size: int = counter()
    digest: bytes = field(metadata=bounded(HASH_BYTES))
    stored_as: str = field(metadata=bounded(MAX_NAME))
    seconds: float = 0.0
    retransmits: int = counter(default=0)
    mode: str = field(default="", metadata=bounded(32))
    # Congestion and flow statistics (srtt, rto, timeouts, fast retransmits,
    # window decreases...) and the window over time as [ms, bytes, ...].
    stats: dict[str, float] = field(default_factory=dict, metadata=bounded(32))
    window_history: list[int] = field(default_factory=list, metadata=bounded(2048))


@message
@dataclass(frozen=True, kw_only=True)
class StatusRequest(Message):
    TYPE = "status-request"
    request: int = counter()


@message
@dataclass(frozen=True, kw_only=True)
class StatusWait(Message):
    """A status once the node has news (the shell's watcher): answered at
    once if the node's ``changes`` (a StatusReply's) are no longer ``after``,
    else when they change, or after ``wait`` seconds (the node bounds it)."""

    TYPE = "status-wait"
    request: int = counter()
    after: int = counter()
    wait: float = 30.0


@message
@dataclass(frozen=True, kw_only=True)
class StatusReply(Message):
    """The node's status as a flat map of counters and facts (msgpack-able).
    ``changes`` counts the node's news (facts reported, sends taken, their
    progress and ends): what a StatusWait waits on (0 from a release
    without it)."""

    TYPE = "status-reply"
    request: int = counter()
    changes: int = counter(0)
    node: dict[str, str] = field(metadata=bounded(64))
    counters: dict[str, int] = field(metadata=bounded(MAX_STATUS_COUNTERS))
