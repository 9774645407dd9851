"""Keep the process's memory bounded by what it uses, not by how many threads
once allocated chunk buffers.

glibc gives each thread that allocates its own malloc arena; 1 MiB chunk
buffers freed in one arena are not reused by another, so a node with actor,
writer and lane threads would hold several copies of its working set.
Capping the arenas at two (``M_ARENA_MAX``) keeps peak RSS close to the
credit window's worth of buffers. A no-op where glibc's mallopt is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Call before starting threads. Returns True if the limit was applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_ARENA_MAX, arenas))
