"""Transfer modes and their parameters: parse, validate, resolve defaults.

A *policy* says how one transfer may use the network:

- ``normal``: as fast as the receiver's credit allows.
- ``token-bucket``: at most ``rate`` bytes/s with bursts of at most ``burst``
  bytes (chunks are cut to at most ``burst`` so no single chunk exceeds it;
  the default bucket is small, :func:`default_burst`).
- ``aimd``: a congestion window (KB) grows additively per acknowledged window
  and halves on congestion (timeout and/or duplicate acks).
- ``qos``: shares the node's capped uplink with other transfers in
  proportion to ``priority`` (1:2:3).
- ``parallel``: ``lanes`` connections and crypto workers for one file.
- ``multicast``: one-to-many, targets given per send (docs/multicast.md); as
  a node default it only makes ``send`` take the multicast path.

The node has defaults (``--mode``, ``DEFAULT_MODE``, the ``AIMD_*`` and
``PARALLEL_THREADS`` variables, live ``set-mode``/``congestion`` commands);
a ``send`` overrides any of them. Pure: no clock, no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from peercrypt.chunking import MIN_CHUNK
from peercrypt.sizes import checked

MODES = ("normal", "token-bucket", "aimd", "qos", "parallel")  # unicast
ALL_MODES = (*MODES, "multicast")
PRIORITIES = {"normal": 1, "high": 2, "highest": 3}

# AIMD defaults, in KB (1024 bytes). 16 MiB fills a loopback or LAN path at
# these chunk sizes; 256 KB keeps a lossy path moving.
AIMD_WINDOW_KB = 4096
AIMD_MIN_WINDOW_KB = 256
AIMD_MAX_WINDOW_KB = 16384
ACK_THRESHOLD = 3
MAX_ACK_THRESHOLD = 1024  # duplicate acks: more is no loss signal at all
PARALLEL_LANES = 4
MAX_LANES = 64
MAX_WINDOW_KB = 1024 * 1024  # 1 GiB: beyond any path's bandwidth-delay product
# The highest node rate cap (--max-rate, `max-rate`): 1 TiB/s, about 8.8 Tbit/s,
# above any one host's links (800 Gbit/s is 93 GiB/s); a cap above it caps
# nothing and is more likely a typo (a T for a G) than a wish.
MAX_RATE = 1 << 40
# The token bucket when -b is not given: 50 ms at the rate, at least one
# smallest chunk. Small, so that a capped send's rate holds over any second
# of it, not just on average (the scheduler's 5 ms ticks drain it in time).
BURST_SECONDS = 0.05
MIN_BURST = 4096
# A receiver drops an incoming transfer that brought no new chunk for this
# long (its ``idle_timeout``). A flow's own rate must bring one chunk within
# PACED_CHUNK_SHARE of the shorter of this and the send's --timeout: chunks
# are cut to fit (down to the 4 KiB minimum chunk), and a rate too low for
# even the smallest chunk is refused before the offer (Policy.check_pace).
RECEIVER_IDLE = 30.0
PACED_CHUNK_SHARE = 0.5
MODE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "token-bucket": ("rate", "burst"),
    "aimd": (
        "window_kb",
        "min_window_kb",
        "max_window_kb",
        "ack_threshold",
        "timeout_detect",
        "dupack_detect",
    ),
    "qos": ("priority",),
    "parallel": ("lanes",),
}


class PolicyError(ValueError):
    """A mode parameter the user must fix; the message names it."""


# The AIMD windows (initial, minimum, maximum) as a command calls them: its
# errors name what the user typed. ``send``'s flags, ``congestion``'s keys.
WindowNames = tuple[str, str, str]
SEND_WINDOWS: WindowNames = ("-w", "-min-w", "-max-w")
CONGESTION_WINDOWS: WindowNames = ("window", "min-window", "max-window")


def check_window_order(window: int, low: int, high: int, names: WindowNames) -> None:
    """PolicyError unless 0 < low <= window <= high (KB)."""
    if not 0 < low <= window <= high:
        w, lo, hi = names
        raise PolicyError(
            f"AIMD windows must satisfy 0 < {lo} <= {w} <= {hi} "
            f"(got {low} <= {window} <= {high} KB)"
        )


def check_window_limit(
    given: tuple[int | None, int | None, int | None],
    derived: tuple[int, int, int],
    names: WindowNames,
) -> None:
    """PolicyError if the largest window (``derived``'s maximum) is above
    MAX_WINDOW_KB, naming the largest of the ``given`` windows (None: not
    given), which the maximum followed."""
    if derived[2] <= MAX_WINDOW_KB:
        return
    shown = [(v, n) for v, n in zip(given, names, strict=True) if v is not None]
    value, name = max(shown, key=lambda pair: pair[0]) if shown else (derived[2], names[2])
    raise PolicyError(
        f"AIMD windows must be at most {MAX_WINDOW_KB} KB (1 GiB; got {name} {value})"
    )


@dataclass(frozen=True)
class Policy:
    mode: str = "normal"
    rate: int = 0  # token-bucket: bytes/s
    burst: int = 0  # token-bucket: bytes (0: default_burst(rate))
    window_kb: int = AIMD_WINDOW_KB
    min_window_kb: int = AIMD_MIN_WINDOW_KB
    max_window_kb: int = AIMD_MAX_WINDOW_KB
    ack_threshold: int = ACK_THRESHOLD
    timeout_detect: bool = True
    dupack_detect: bool = True
    priority: int = 1
    lanes: int = PARALLEL_LANES

    def validated(self, defaults: bool = False, names: WindowNames = SEND_WINDOWS) -> Policy:
        """Return self, or raise PolicyError naming the bad parameter.
        ``defaults``: a node's default policy, whose token-bucket mode may
        have no rate (each send in it gives its own: ``-r``). ``names``: the
        windows as the command that set them calls them."""
        if self.mode not in ALL_MODES:
            raise PolicyError(f"unknown mode {self.mode!r}; choose one of {', '.join(ALL_MODES)}")
        if self.mode == "token-bucket" and self.rate <= 0 and not defaults:
            raise PolicyError("token-bucket mode needs -r BYTES_PER_SEC > 0")
        if self.rate < 0 or self.burst < 0:
            raise PolicyError("rate and bucket size must be >= 0 bytes")
        check_rate_range(self.rate, "-r")
        window = (self.window_kb, self.min_window_kb, self.max_window_kb)
        check_window_order(*window, names)
        check_window_limit(window, window, names)
        if not 1 <= self.ack_threshold <= MAX_ACK_THRESHOLD:
            raise PolicyError(f"-ack-threshold must be 1..{MAX_ACK_THRESHOLD}")
        if self.priority not in (1, 2, 3):
            raise PolicyError("priority must be normal, high, highest or 1-3")
        if not 1 <= self.lanes <= MAX_LANES:
            raise PolicyError(f"-t must be 1..{MAX_LANES}")
        return self

    def burst_for(self, chunk_size: int) -> int:
        """The token-bucket size in bytes: as given, else :func:`default_burst`
        of the rate (what ``send --help`` promises). Grants add up in the
        sender, so a bucket smaller than a chunk delays that chunk but never
        blocks it."""
        if self.burst:
            return self.burst
        return default_burst(self.rate) if self.rate else chunk_size

    def parameters(self) -> dict[str, str]:
        """The parameters that shape this policy's mode, as text (what the
        statistics history records beside the mode)."""
        names = MODE_PARAMETERS.get(self.mode, ())
        return {n: str(getattr(self, n)) for n in names}

    def chunk_size_for(self, chunk_size: int, timeout: float | None = None) -> int:
        """Chunks never exceed the bucket (token-bucket: no burst above it),
        nor (with the send's ``timeout``) what the rate moves in
        :func:`paced_chunk_seconds`, down to the 4 KiB minimum chunk."""
        if self.mode != "token-bucket":
            return chunk_size
        size = min(chunk_size, self.burst_for(chunk_size))
        limit = paced_chunk_seconds(timeout) if timeout is not None else 0.0
        if limit > 0 and self.rate > 0:
            size = min(size, int(self.rate * limit))
        return max(MIN_CHUNK, size)

    def check_pace(self, size: int, timeout: float) -> None:
        """Raise PolicyError (one line naming the rate to use) when the flow's
        own rate cannot move the smallest chunk of a ``size``-byte send (the
        4 KiB minimum chunk, or the whole file if smaller) within
        :func:`paced_chunk_seconds` of ``timeout``: the receiver would drop
        the transfer as idle, or the user would wait longer than ``--timeout``
        for a sign of progress. Chunks cut by :meth:`chunk_size_for` then all
        move within that time."""
        if self.mode != "token-bucket" or self.rate <= 0:
            return
        smallest = min(MIN_CHUNK, size)
        limit = paced_chunk_seconds(timeout)
        if not limit > 0:  # also NaN
            raise PolicyError(f"--timeout must be a number of seconds > 0, got {timeout!r}")
        if smallest <= self.rate * limit:
            return
        need = lowest_rate(smallest, limit)
        longer = (
            f", or a longer --timeout (up to {RECEIVER_IDLE:g} s counts)"
            if timeout < RECEIVER_IDLE
            else ""
        )
        raise PolicyError(
            f"-r {self.rate} is too low for this send: its smallest chunk ({smallest} bytes) "
            f"takes {smallest / self.rate:.0f} s at {self.rate} B/s, and a paced chunk must move "
            f"within {limit:g} s (half of --timeout {timeout:g} s or of the receiver's "
            f"{RECEIVER_IDLE:g} s idle limit, whichever is shorter); use -r {need} or more{longer}"
        )


def lowest_rate(size: int, seconds: float) -> int:
    """The lowest whole rate (bytes/s) that moves ``size`` bytes within
    ``seconds``, whatever the float rounding."""
    need = math.ceil(size / seconds)
    while size > need * seconds:
        need += 1
    while need > 1 and size <= (need - 1) * seconds:
        need -= 1
    return need


# The lowest node cap (``--max-rate``, live ``max-rate``) and live flow rate
# (``rate``): the smallest chunk within a paced chunk's time of the
# receiver's idle limit. Below it every send would be dropped as idle.
MIN_PACED_RATE = lowest_rate(MIN_CHUNK, PACED_CHUNK_SHARE * RECEIVER_IDLE)


def check_rate_range(rate: int, what: str) -> None:
    """Raise PolicyError, in the CLI's words, for a rate (``rate``, ``send
    -r``, ``max-rate``) past :data:`MAX_RATE` or below 0: the node checks
    what comes on its control socket too (a local client may bypass the
    CLI), e.g. ``max-rate 2199023255552: out of range (2TiB/s); expected a
    rate in 0B/s..1TiB/s``."""
    try:
        checked(rate, 0, MAX_RATE, rate=True)
    except ValueError as exc:
        raise PolicyError(f"{what} {rate}: {exc}") from None


def check_paced_rate(rate: int, what: str) -> None:
    """Raise PolicyError (one line naming the lowest rate that works) when
    ``rate`` (a node cap or a live flow rate; 0: none) cannot move even the
    smallest chunk within :func:`paced_chunk_seconds` of the receiver's
    idle limit: a receiver would drop every send under it as idle."""
    if rate <= 0 or rate >= MIN_PACED_RATE:
        return
    limit = paced_chunk_seconds(RECEIVER_IDLE)
    raise PolicyError(
        f"{what} {rate} is too low: the smallest chunk ({MIN_CHUNK} bytes) takes "
        f"{MIN_CHUNK / rate:.0f} s at {rate} B/s, and a paced chunk must move within "
        f"{limit:g} s (half of the receiver's {RECEIVER_IDLE:g} s idle limit); "
        f"use {MIN_PACED_RATE} or more (0: no limit)"
    )


def capped_chunk_size(
    chunk_size: int, timeout: float, node_rate: int, priority: int, running: Sequence[int]
) -> int:
    """The chunk size of a send paced by the node's cap of ``node_rate``
    bytes/s, which it shares with the paced sends running (their
    ``running`` priorities) in proportion to its ``priority``
    (:mod:`peercrypt.core.grants`): cut so that one chunk moves within
    :func:`paced_chunk_seconds` of its ``timeout`` at that share, down to
    the 4 KiB minimum chunk. PolicyError (one line naming the cap to use)
    when even that one would take longer than a paced chunk's time of the
    receiver's idle limit: the receiver would drop the send as idle."""
    weights = priority + sum(running)
    share = node_rate * priority / weights
    idle = paced_chunk_seconds(RECEIVER_IDLE)
    if share * idle < MIN_CHUNK:
        need = math.ceil(MIN_PACED_RATE * weights / priority)
        others = f"shared with {len(running)} running send(s) " if running else ""
        raise PolicyError(
            f"the node's rate cap of {node_rate} B/s {others}leaves this send {share:.0f} B/s: "
            f"its smallest chunk ({MIN_CHUNK} bytes) would take {MIN_CHUNK / share:.0f} s, and "
            f"a paced chunk must move within {idle:g} s (half of the receiver's "
            f"{RECEIVER_IDLE:g} s idle limit); use max-rate {need} or more"
            + (", or send when fewer run" if running else "")
        )
    limit = paced_chunk_seconds(timeout)
    fits = int(share * limit) if limit > 0 else chunk_size  # (a NaN timeout: not cut here)
    return max(MIN_CHUNK, min(chunk_size, fits))


def check_node_share(
    node_rate: int, flows: Sequence[tuple[int, int, int]], what: str, more: str = ""
) -> None:
    """Raise PolicyError (one line naming the cap that would do) when a node
    cap of ``node_rate`` bytes/s (0: none), shared by the paced ``flows``
    (request, priority, chunk size; 0: not known) in proportion to their
    priorities, leaves one of them too little to move one of its chunks
    within :func:`paced_chunk_seconds` of the receiver's idle limit: its
    receiver would drop it as idle. A running send's chunks were cut for
    the share it had when it started; ``what`` (a new send, a lower cap)
    must not take that away."""
    if node_rate <= 0:
        return
    weights = sum(priority for _, priority, _ in flows)
    limit = paced_chunk_seconds(RECEIVER_IDLE)
    worst, cap = None, 0  # the flow that needs the highest cap, and that cap
    for request, priority, chunk in flows:
        need = lowest_rate(chunk, limit) if chunk > 0 else 0
        if node_rate * priority < need * weights and need * weights > cap * priority:
            worst, cap = (request, priority, chunk, need), math.ceil(need * weights / priority)
    if worst is not None:
        request, priority, chunk, need = worst
        raise PolicyError(
            f"{what} leaves transfer {request} {node_rate * priority / weights:.0f} B/s: "
            f"its chunks ({chunk} bytes) need {need} B/s to move within {limit:g} s (half "
            f"of the receiver's {RECEIVER_IDLE:g} s idle limit); use max-rate {cap} or more" + more
        )


def check_flow_rate(rate: int, request: int, chunk: int) -> None:
    """Raise PolicyError (one line naming the rate that would do) when a
    live ``rate`` (0: none) cannot move one chunk of ``chunk`` bytes (0: not
    known) of the running send ``request`` within
    :func:`paced_chunk_seconds` of the receiver's idle limit."""
    limit = paced_chunk_seconds(RECEIVER_IDLE)
    need = lowest_rate(chunk, limit) if chunk > 0 else 0
    if 0 < rate < need:
        raise PolicyError(
            f"rate {rate} is too low for transfer {request}: its chunks ({chunk} bytes) need "
            f"{need} B/s to move within {limit:g} s (half of the receiver's {RECEIVER_IDLE:g} s "
            f"idle limit); use {need} or more"
        )


def paced_chunk_seconds(timeout: float) -> float:
    """The longest one chunk of a flow with its own rate may take at that
    rate: ``PACED_CHUNK_SHARE`` of the shorter of the send's ``timeout`` and
    the receiver's idle limit (``RECEIVER_IDLE``)."""
    return PACED_CHUNK_SHARE * min(timeout, RECEIVER_IDLE)


def default_burst(rate: int) -> int:
    """The token-bucket size for ``rate`` bytes/s when none is given:
    ``BURST_SECONDS`` at the rate, at least ``MIN_BURST`` bytes."""
    return max(MIN_BURST, int(rate * BURST_SECONDS))


def parse_priority(text: str) -> int:
    """'normal'|'high'|'highest'|'1'|'2'|'3' -> 1..3. Raises PolicyError."""
    value = text.strip().lower()
    if value in PRIORITIES:
        return PRIORITIES[value]
    if value in ("1", "2", "3"):
        return int(value)
    raise PolicyError(f"invalid priority {text!r}: use normal, high, highest or 1-3")


def with_overrides(
    defaults: Policy,
    *,
    as_defaults: bool = False,
    names: WindowNames = SEND_WINDOWS,
    **overrides: object,
) -> Policy:
    """``defaults`` with the given non-None fields replaced, validated (as a
    node's defaults with ``as_defaults``: :meth:`Policy.validated`). AIMD
    window bounds not given follow the ones given (:func:`derive_windows`);
    an error names a window as ``names`` does."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(Policy)}
    if unknown:
        raise PolicyError(f"unknown policy parameter(s): {', '.join(sorted(unknown))}")
    windows = ("window_kb", "min_window_kb", "max_window_kb")
    if any(name in given for name in windows):
        w, lo, hi = (given.get(name) for name in windows)
        typed = (
            w if isinstance(w, int) else None,
            lo if isinstance(lo, int) else None,
            hi if isinstance(hi, int) else None,
        )
        current = (defaults.window_kb, defaults.min_window_kb, defaults.max_window_kb)
        derived = derive_windows(*typed, current, names=names)
        check_window_limit(typed, derived, names)
        given["window_kb"], given["min_window_kb"], given["max_window_kb"] = derived
    replaced = dataclasses.replace(defaults, **given)  # type: ignore[arg-type]
    return replaced.validated(as_defaults, names)


def derive_windows(
    window: int | None,
    low: int | None,
    high: int | None,
    defaults: tuple[int, int, int],
    names: WindowNames = SEND_WINDOWS,
) -> tuple[int, int, int]:
    """AIMD (window, min, max) in KB from the ones given (None: not given).

    A bound not given moves just enough to admit the given values, so
    ``-w 32`` alone is valid: the minimum drops to 32 if it was above. The
    maximum alone, below the default window, is the one exception: the
    window and the minimum keep their default shares of it (``-max-w 128``:
    32 and 2), not both pushed up against it (a fixed window of 128, no
    room to decrease: the old tool's ``AIMD_MAX_WINDOW=128``).
    Raises PolicyError only when the given values contradict each other.
    """
    w, lo, hi = defaults
    if high is not None and window is None and low is None and high < w:
        # (the shares of the built-in defaults: ``defaults`` may hold the given maximum)
        w = max(1, high * AIMD_WINDOW_KB // AIMD_MAX_WINDOW_KB)
        return w, max(1, min(lo, w * AIMD_MIN_WINDOW_KB // AIMD_WINDOW_KB)), high
    if window is not None:
        w = window
    if low is not None:
        lo = low
    if high is not None:
        hi = high
    if window is None:
        if low is not None:
            w = max(w, low)
        if high is not None:
            w = min(w, high)
    if low is None:
        lo = min(lo, w)
    if high is None:
        hi = max(hi, w)
    check_window_order(w, lo, hi, names)
    return w, lo, hi


# ``congestion KEY VALUE``: KEY -> Policy field, and whether VALUE is on/off.
CONGESTION_KEYS: dict[str, tuple[str, bool]] = {
    "window": ("window_kb", False),
    "min-window": ("min_window_kb", False),
    "max-window": ("max_window_kb", False),
    "threshold": ("ack_threshold", False),
    "timeout": ("timeout_detect", True),
    "dupack": ("dupack_detect", True),
}
_ON = ("on", "true", "yes", "1")
_OFF = ("off", "false", "no", "0")


def apply_congestion(policy: Policy, pairs: list[tuple[str, ...]]) -> Policy:
    """``policy`` with the AIMD settings of ``congestion KEY VALUE [KEY VALUE ...]``.

    Keys may come in any order; window bounds not given follow the ones that
    are (see :func:`derive_windows`). Raises PolicyError naming the bad key or
    value; then nothing changes.
    """
    if not pairs:
        raise PolicyError("congestion needs KEY VALUE pairs")
    changes: dict[str, object] = {}
    for pair in pairs:
        if len(pair) != 2:
            raise PolicyError(f"expected KEY VALUE, got {' '.join(pair)!r}")
        key, value = pair[0].strip().lower(), pair[1].strip().lower()
        if key not in CONGESTION_KEYS:
            raise PolicyError(
                f"unknown congestion setting {key!r}; use {', '.join(CONGESTION_KEYS)}"
            )
        field_name, on_off = CONGESTION_KEYS[key]
        if on_off:
            if value not in _ON + _OFF:
                raise PolicyError(f"expected on or off, got {value!r}")
            changes[field_name] = value in _ON
        else:
            if not value.isdigit() or int(value) <= 0:
                raise PolicyError(f"congestion {key} must be a whole number > 0, got {value!r}")
            changes[field_name] = int(value)
    # Window bounds not given follow the given ones (with_overrides).
    return with_overrides(policy, as_defaults=True, names=CONGESTION_WINDOWS, **changes)


def describe_congestion(policy: Policy) -> str:
    """The AIMD defaults in the words of the ``congestion`` command."""
    return (
        f"window {policy.window_kb} KB, min-window {policy.min_window_kb} KB, "
        f"max-window {policy.max_window_kb} KB, threshold {policy.ack_threshold}, "
        f"timeout {'on' if policy.timeout_detect else 'off'}, "
        f"dupack {'on' if policy.dupack_detect else 'off'}"
    )
