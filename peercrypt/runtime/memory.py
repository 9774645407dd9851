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
import sys

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
_libc: ctypes.CDLL | None = None


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
