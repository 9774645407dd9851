"""Peer text is escaped before it reaches a terminal or a log."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from peercrypt.wire.text import printable


def test_controls_bidi_and_newlines_are_escaped() -> None:
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("x\nFORGED LINE") == "x\\x0aFORGED LINE"
    assert printable("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert printable("tab\there\x7f") == "tab\\x09here\\x7f"
    assert printable("back\\slash") == "back\\\\slash"
    assert printable("ünïcødé 文件 🙂") == "ünïcødé 文件 🙂"


def test_long_text_is_cut_and_bytes_shown_as_hex() -> None:
    assert printable("a" * 300, limit=10) == "a" * 10 + "..."
    assert printable(b"\x00\xff") == "00ff"
    assert printable(b"\x01" * 1000, limit=8) == "01" * 4 + "..."


@given(st.text())
def test_nothing_unsafe_survives(text: str) -> None:
    shown = printable(text, limit=10_000)
    assert all(
        unicodedata.category(ch) not in {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"} for ch in shown
    )
