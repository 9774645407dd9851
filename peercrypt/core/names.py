"""File names from the network, made safe for the inbox.

A received name is untrusted. The rules: keep only the last path component
(both ``/`` and ``\\`` separate), drop control characters, refuse what is
empty, ``.`` or ``..`` after that, and cap the name at 200 UTF-8 bytes
(leaving room for a ``.N`` suffix and the ``.part`` marker). Nothing chosen
here can point outside the inbox. The node's own bookkeeping names in the
inbox (hidden ``.NAME.ID.part``, ``.mc.part``, ``.part.manifest``,
``.part.manifest.tmp`` and ``.tree``) are reserved: :func:`inbox_name`
renames a received name that has their shape (``_`` in front), so a peer
cannot plant or take one; :func:`candidate_names` lists the names to
try, each with an exclusive create or link, so an existing name is never reused.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

MAX_NAME_BYTES = 200


# Endings of hidden names the node keeps in its inbox (actors/inbox.py,
# actors/multicast_receiver.py, actors/tree_store.py); ".mc.part" ends in ".part".
RESERVED_SUFFIXES = (".part", ".part.manifest", ".part.manifest.tmp", ".tree")


class UnsafeName(ValueError):
    """The offered name cannot be made into a file name."""


def sanitise(name: str) -> str:
    """Return a safe single-component file name for ``name``. Raises UnsafeName."""
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C")
    base = base.strip()
    if base in ("", ".", ".."):
        raise UnsafeName(f"unusable file name {name[:80]!r}")
    encoded = base.encode("utf-8")
    if len(encoded) > MAX_NAME_BYTES:
        stem, dot, ext = base.rpartition(".")
        keep_ext = dot + ext if dot and stem and len(ext) <= 16 else ""
        room = MAX_NAME_BYTES - len(keep_ext.encode("utf-8"))
        head = base[: len(base) - len(keep_ext)].encode("utf-8")[:room]
        base = head.decode("utf-8", "ignore") + keep_ext
    return base


def reserved(name: str) -> bool:
    """Whether ``name``, at the top of an inbox, has the shape of the node's own files."""
    return name.startswith(".") and name.endswith(RESERVED_SUFFIXES)


def inbox_name(name: str) -> str:
    """:func:`sanitise`, and a reserved name moved out of the node's namespace."""
    safe = sanitise(name)
    return "_" + safe if reserved(safe) else safe


def candidate_names(name: str, limit: int = 10_000) -> Iterator[str]:
    """``name``, then ``stem.1.ext``, ``stem.2.ext``... (``name`` sanitised).
    Callers try each with an exclusive create/link, so a race cannot overwrite."""
    yield name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    for n in range(1, limit):
        yield f"{stem}.{n}.{ext}" if ext else f"{stem}.{n}"


# Characters of an incoming transfer's name in a node's status facts (what
# `status`, `receive`, the shell and `top` show of it).
INCOMING_NAME = 48


def shortened(name: str, limit: int) -> str:
    """``name`` within ``limit`` characters for a line or a column, cut in
    its middle ("…"): its start and its end (a number, an extension) are
    what tell names apart; "a_really_long_name_" for four files told none."""
    if len(name) <= limit:
        return name
    if limit < 2:
        return name[:limit]
    head = (limit - 1) // 2
    return f"{name[:head]}…{name[len(name) - (limit - 1 - head) :]}"
