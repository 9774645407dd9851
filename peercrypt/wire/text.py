"""Peer text made safe to show: the one place control characters are escaped.

Anything a peer chose (a file name, a refusal reason, a URL from a gossip
record, a decode error's detail) goes through :func:`printable` before it
reaches a terminal or a log line, so it cannot move the cursor, rewrite a line,
reorder text (bidirectional overrides) or forge a log entry (newlines).
"""

from __future__ import annotations

import unicodedata

# Unicode categories shown escaped: controls (C0, C1, DEL), format characters
# (bidi overrides, zero-width), surrogates, private use, unassigned, and line
# or paragraph separators.
_ESCAPED = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
DEFAULT_LIMIT = 256


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: str | bytes, limit: int = DEFAULT_LIMIT) -> str:
    """``value`` with every control, format, separator, private-use,
    unassigned or surrogate character escaped (``\\x1b``, ``\\u202e``) and a
    backslash doubled, cut to ``limit`` characters of input (``...`` marks the
    cut). Bytes are shown as hex. Never raises."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        shown = raw[: limit // 2].hex()
        return shown + ("..." if len(raw) > limit // 2 else "")
    text = str(value)
    cut = len(text) > limit
    out = []
    for ch in text[:limit]:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in _ESCAPED:
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out) + ("..." if cut else "")
