"""Byte counts and byte rates as people write them: ``512``, ``64K``,
``1.5M``, ``2GiB``, ``10MB``, ``100M/s``.

rsync's convention: ``K``, ``M``, ``G``, ``T`` (and ``KiB``, ``MiB``...,
``Ki``, ``Mi``...) are powers of 1024; ``KB``, ``MB``, ``GB``, ``TB`` powers
of 1000; a plain number is bytes. The prefix letters and the ``i`` may be of
either case; the ``B`` may not: a lowercase ``b`` is bits in ``Mb/s``, so it
is refused rather than read as bytes. A rate may end in ``/s``. A fraction
with a unit is rounded down to a whole byte (``1.1K`` is 1126); without a
unit it is refused.

One parser for every place a user gives one: the click options
(:class:`peercrypt.cli.common.ByteSize`), the configuration layers
(:mod:`peercrypt.config`), the fast path of ``send`` and the benchmarks.
Standard library only: the fast path imports it.
"""

from __future__ import annotations

import re

_NUMBER = re.compile(
    r"(?P<number>[0-9]+(?:_[0-9]+)*(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<unit>[A-Za-z]*)(?P<per>/[sS])?",
    re.ASCII,
)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}
UNITS_HINT = "K, M, G, T, KiB, MiB, GiB, TiB: 1024; KB, MB, GB, TB: 1000"
# Longest text looked at: more digits than any count of bytes has.
_LONGEST = 64


def _factor(unit: str) -> int:
    """Bytes per ``unit``; ValueError naming what is wrong with it."""
    if unit in ("", "B"):
        return 1
    if unit.endswith("b"):
        prefix = unit[0].upper() if unit[0].lower() in _POWERS else ""
        like = f" ({prefix}B, {prefix}iB)" if prefix else ""
        raise ValueError(f"{unit!r}: b is bits, bytes are B{like}")
    power = _POWERS.get(unit[0].lower())
    rest = unit[1:]
    if power is None or rest.lower() not in ("", "i", "ib", "b"):
        raise ValueError(f"unknown unit {unit!r} ({UNITS_HINT})")
    return int(1000**power if rest == "B" else 1024**power)


def parse_size(text: str | int, *, rate: bool = False) -> int:
    """The bytes (bytes per second if ``rate``) ``text`` names, >= 0.

    ValueError, its message without the value (``negative``, ``unknown
    unit 'X' (...)``), for anything else: empty, negative, junk, a unit
    that is not one, a fraction of a byte, ``/s`` on a size, more than
    64 characters (``too long``: the regular expression never sees it).
    """
    if isinstance(text, bool):
        raise ValueError("not a number")
    if isinstance(text, int):
        if text < 0:
            raise ValueError("negative")
        return text
    stripped = str(text).strip()
    if not stripped:
        raise ValueError("empty")
    if stripped.startswith("-"):
        raise ValueError("negative")
    if len(stripped) > _LONGEST:
        raise ValueError(f"too long ({len(stripped)} characters, at most {_LONGEST})")
    match = _NUMBER.fullmatch(stripped.removeprefix("+"))
    if match is None:
        raise ValueError("not a number of bytes (e.g. 512, 64K, 1.5M, 2GiB)")
    if match["per"] and not rate:
        raise ValueError("a rate (/s), not a size")
    factor = _factor(match["unit"])
    whole, _, fraction = match["number"].replace("_", "").partition(".")
    if factor == 1 and fraction.strip("0"):
        raise ValueError("a fraction of a byte")
    scale = int(10 ** len(fraction))  # exact: 0.1K is 102 bytes, not 102.40000000000001
    return (int(whole or 0) * scale + int(fraction or 0)) * factor // scale


def human(n: int, *, rate: bool = False) -> str:
    """``n`` bytes in the largest unit that divides it (4MiB, 200KB, 540B),
    as :func:`parse_size` reads it back; ``/s`` for a rate."""
    text = f"{n}B"
    if n:
        for letter, power in reversed(_POWERS.items()):
            if n % 1024**power == 0:
                text = f"{n // 1024**power}{letter.upper()}iB"
                break
            if n % 1000**power == 0:
                text = f"{n // 1000**power}{letter.upper()}B"
                break
    return text + ("/s" if rate else "")


def shown(value: object) -> str:
    """``value`` quoted for an error line; a text too long to be a size (the
    error says how long) by its start only, so the line stays readable."""
    text = str(value)
    return repr(text) if len(text) <= _LONGEST else f"{text[:16]!r}..."


def readable(n: float, *, rate: bool = False) -> str:
    """``n`` bytes (bytes/s if ``rate``) to read at a glance, to one decimal
    in the largest binary unit under 1024 of it: ``512 B``, ``16.0 MiB``,
    ``1.5 GiB/s``. What the CLI prints back; :func:`human` is the exact form
    a user can type again (``1536MiB/s``)."""
    per = "/s" if rate else ""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} B{per}" if unit == "B" else f"{n:.1f} {unit}{per}"
        n /= 1024
    raise AssertionError("unreachable")


def accepted(low: float | None, high: float | None, *, rate: bool = False) -> str:
    """The range in human units: ``a size in 4MiB..1GiB``, ``a rate >= 1B/s``."""
    noun = "a rate" if rate else "a size"
    least = human(int(low or 0), rate=rate)
    if high is None:
        return f"{noun} >= {least}"
    return f"{noun} in {least}..{human(int(high), rate=rate)}"


def checked(text: str | int, low: float | None, high: float | None, *, rate: bool = False) -> int:
    """:func:`parse_size` within [low, high]; ValueError ``<why>; expected
    <accepted>`` (``negative; expected a size in 4MiB..1GiB``: the caller
    names the option and the value)."""
    try:
        n = parse_size(text, rate=rate)
    except ValueError as exc:
        raise ValueError(f"{exc}; expected {accepted(low, high, rate=rate)}") from None
    if (low is not None and n < low) or (high is not None and n > high):
        why = "zero" if n == 0 else f"out of range ({human(n, rate=rate)})"
        raise ValueError(f"{why}; expected {accepted(low, high, rate=rate)}")
    return n
