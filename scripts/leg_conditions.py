"""The same starting conditions before every leg of a throughput benchmark,
and the counters around each leg that say which class it fell in.

Why: this VM gives freed memory back to its host (virtio free page
reporting, ``/sys/module/page_reporting``: ``reported_kib`` counts what was
given back since boot), and the first touch of a page the host took back
faults in the host. Writing 1 GiB into the page cache then costs the
writing thread 1-2.5 CPU s more than writing it into pages the guest freed
moments ago and the reporter has not given back yet (docs/benchmarks.md,
"As the user times it"). Back to back, each leg inherits the pages the
previous leg's deleted file freed, or not, depending on how fast the
reporter was: its cost then depends on its place in the order. So every
leg starts from the same step, ``prepare``:

1. ``sync``, then wait (at most 30 s) until the kernel's dirty and
   writeback pages are below 64 MiB: no leg pays for an earlier one's
   writeback;
2. ``settle`` (the default): wait until the reporter's counters have not
   moved for 1.5 s (at most 10 s), so the memory the earlier legs freed has
   been given back before any leg starts, as it has been when a user sends
   a file after a pause. ``warm`` instead touches and releases the leg's
   size plus a quarter of anonymous memory just before it (tried: the
   reporter gives that memory back within seconds, the touch costs 1.0-2.4
   CPU s per GiB itself, and it made no leg cheaper); ``none`` does only
   step 1.

``Counters`` reads the reporter's and the kernel's counters around a leg;
``classify`` splits the legs of one kind into the cheap and the expensive
class by the CPU their writing side spent per GiB.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from pathlib import Path

MiB = 2**20
PAGE = mmap.PAGESIZE
REPORTING = Path("/sys/module/page_reporting/parameters")
PREPARATIONS = ("settle", "warm", "none")
# A leg is in the expensive class when its writing side spent this much CPU
# per GiB more than the cheapest leg of its kind in the run: the host's
# faults add 1-2.5 s per GiB, the noise of a loaded machine well under this.
EXPENSIVE_MARGIN = 0.6


def vmstat() -> dict[str, int]:
    out = {}
    for line in Path("/proc/vmstat").read_text().splitlines():
        name, value = line.split()
        out[name] = int(value)
    return out


def reporting() -> dict[str, int]:
    """The page reporter's counters (reported_kib, passes, walked) where this
    kernel has them; empty where it has none."""
    out = {}
    for name in ("reported_kib", "passes", "walked"):
        with contextlib.suppress(OSError, ValueError):
            out[name] = int((REPORTING / name).read_text())
    return out


def wait_written_back(limit: float = 30.0) -> None:
    os.sync()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        v = vmstat()
        if (v.get("nr_dirty", 0) + v.get("nr_writeback", 0)) * PAGE < 64 * MiB:
            return
        time.sleep(0.05)


def warm(size: int) -> None:
    """Touch and release ``size`` bytes of anonymous memory."""
    m = mmap.mmap(-1, size)
    try:
        for offset in range(0, size, PAGE):
            m[offset] = 1
    finally:
        m.close()


def settle(quiet: float = 1.5, limit: float = 10.0) -> None:
    """Until the reporter's counters stay still for ``quiet`` seconds."""
    last, since = reporting(), time.monotonic()
    deadline = since + limit
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = reporting()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def prepare(how: str, size: int) -> None:
    """The step before every leg (the module's docstring)."""
    wait_written_back()
    if how == "warm":
        warm(size + size // 4)
    elif how == "settle":
        settle()


class Counters:
    """The counters that change with the pages a leg gets, read at its start;
    ``since()`` gives their changes by its end."""

    NAMES = ("nr_free_pages", "pgfault", "pgalloc_normal", "pgfree")

    def __init__(self) -> None:
        self.start = self._read()

    @classmethod
    def _read(cls) -> dict[str, int]:
        v = vmstat()
        return {**{n: v.get(n, 0) for n in cls.NAMES}, **reporting()}

    def since(self) -> dict[str, float]:
        end = self._read()
        out: dict[str, float] = {f"vm:{n}": end[n] - self.start[n] for n in end}
        out["vm:free_mib_at_start"] = self.start["nr_free_pages"] * PAGE / MiB
        if "reported_kib" in end:
            out["vm:reported_mib"] = (end["reported_kib"] - self.start["reported_kib"]) / 1024
        return out


def classify(values: list[float]) -> list[str]:
    """ "cheap" or "expensive" for each leg of one kind, by its writing side's
    CPU per GiB against the cheapest leg of that kind."""
    if not values:
        return []
    floor = min(values)
    return ["expensive" if v > floor + EXPENSIVE_MARGIN else "cheap" for v in values]
