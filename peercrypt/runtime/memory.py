"""Keep the process's memory bounded by what it uses, not by how many threads
once allocated chunk buffers.

glibc gives each thread that allocates its own malloc arena; 1 MiB chunk
buffers freed in one arena are not reused by another, so a node with actor,
writer and lane threads would hold several copies of its working set.
Capping the arenas at two (``M_ARENA_MAX``) keeps peak RSS close to the
credit window's worth of buffers.

glibc also serves blocks above a *dynamic* threshold with mmap, so whether a
1 MiB chunk buffer costs 256 page faults (and zeroing) depends on the
allocation history: measured here, it doubled the receiver's CPU per GiB in
some runs and not in others. Fixing the mmap and trim thresholds at 32 MiB
keeps chunk buffers on the heap, reused without faults; what is kept is
bounded by the threshold. A no-op where glibc's mallopt is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys
import threading
import time
from collections.abc import Callable

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
THRESHOLD = 32 * 1024 * 1024


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Call before starting threads. Returns True if the settings were applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return all(
        bool(mallopt(option, value))
        for option, value in (
            (M_ARENA_MAX, arenas),
            (M_MMAP_THRESHOLD, THRESHOLD),
            (M_TRIM_THRESHOLD, THRESHOLD),
        )
    )


# Seconds a sender or receiver stays without transfers before it trims.
TRIM_AFTER = 1.0
# Seconds between trims while transfers run (a process's unicast and
# multicast senders and receivers together: :class:`TrimClock`). A load's
# chunks pass through the heap (ZeroMQ's received messages, chunks sealed
# beyond the sender's pool, chunks read from the source); a burst of them,
# freed, stayed resident beside the decrypt buffers until the load ended:
# with 64 sends of 128 MiB at once in 4 MiB chunks the heap had 30-56 MiB
# free of 53-68 at each node's peak. Trimmed every second, the busiest
# node's peak came down a little (medians 163 against 166 MiB in 4 MiB
# chunks, 126 against 130 in 1 MiB; the runs' ranges overlap), no CPU cost
# seen; every 0.25 s cost CPU and lowered no peak more (docs/benchmarks.md,
# "The heap trimmed while loaded").
TRIM_EVERY = 1.0
_libc: ctypes.CDLL | None = None


class TrimClock:
    """When a trim while loaded is due: at most one per ``every`` s however
    many actors ask (the heap is the process's, and a process's sender and
    receiver both ask while their transfers run). Its own clock (real time:
    the heap is real, whatever clock an actor runs on); either thread may ask."""

    def __init__(self, every: float = TRIM_EVERY, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self._clock = clock
        self._last = -math.inf
        self._lock = threading.Lock()

    def due(self) -> bool:
        """Whether to trim now; True takes the turn."""
        with self._lock:
            now = self._clock()
            if now - self._last < self.every:
                return False
            self._last = now
            return True


# The process's: every actor's trims while loaded take turns on it.
busy_trims = TrimClock()


def trim() -> bool:
    """Give the heap's free pages back to the system (glibc ``malloc_trim``):
    the pages of freed chunk buffers that other allocations pin in place stay
    resident otherwise, and a node's idle memory creeps up with every load it
    served. Returns True if anything was released; False where glibc is
    missing."""
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        malloc_trim = _libc.malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    return bool(malloc_trim(0))
