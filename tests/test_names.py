"""Tests for peercrypt.core.names: untrusted file names made safe for the inbox."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.core.names import (
    MAX_NAME_BYTES,
    UnsafeName,
    candidate_names,
    sanitise,
    shortened,
)


def assert_safe(name: str) -> None:
    assert name not in ("", ".", "..")
    assert "/" not in name
    assert "\\" not in name
    assert "\0" not in name
    assert not any(unicodedata.category(c)[0] == "C" for c in name)
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES


hostile_text = st.text(
    alphabet=st.sampled_from(
        [
            "/",
            "\\",
            ".",
            "\0",
            "\n",
            "\t",
            " ",
            "\u202e",
            "\u200b",
            "\x7f",
            "\ud800",
            "a",
            "é",
            "文",
            "😀",
            ":",
        ]
    )
    | st.characters(),
    max_size=400,
)


def last_component(name: str) -> str:
    return name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def has_word_character(text: str) -> bool:
    return any(unicodedata.category(c)[0] in "LN" for c in text)


@settings(max_examples=300, deadline=None)
@given(hostile_text)
def test_sanitise_returns_a_safe_name_or_refuses(name: str) -> None:
    try:
        safe = sanitise(name)
    except UnsafeName:
        # Refused only when the last component has nothing usable in it.
        assert not has_word_character(last_component(name)), name
        return
    assert_safe(safe)
    assert sanitise(safe) == safe  # idempotent


@settings(max_examples=150, deadline=None)
@given(hostile_text.map(lambda t: t + "x"))
def test_a_name_with_a_usable_last_component_is_never_refused(name: str) -> None:
    assert_safe(sanitise(name))


word = st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(word, st.integers(20, 120), st.text(st.characters(categories=["L", "N"]), max_size=20))
def test_long_names_are_capped_at_200_utf8_bytes(unit: str, times: int, tail: str) -> None:
    name = unit * times + tail
    safe = sanitise(name)  # a name of letters and digits is never refused
    assert_safe(safe)
    encoded = name.encode("utf-8")
    if len(encoded) <= MAX_NAME_BYTES:
        assert safe == name
    else:
        assert len(safe.encode("utf-8")) > MAX_NAME_BYTES - 4  # cut at the cap, not far below
        assert name.startswith(safe) or "." in name


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\x\\..\\y", "y"),
        ("/abs", "abs"),
        ("/etc/", "etc"),
        ("..\\..\\Windows\\system32\\evil.dll", "evil.dll"),
        ("dir/sub/file.txt", "file.txt"),
        ("  spaced.txt  ", "spaced.txt"),
        ("a\0b\nc\x1b.txt", "abc.txt"),
        ("evil\u202etxt.exe", "eviltxt.exe"),  # right-to-left override removed
        ("report.pdf", "report.pdf"),
        ("..hidden", "..hidden"),
        (".bashrc", ".bashrc"),
    ],
)
def test_sanitise_examples(offered: str, expected: str) -> None:
    assert sanitise(offered) == expected


@pytest.mark.parametrize(
    "offered", ["", ".", "..", "/", "//", "a/..", "a/.", "\\", "\0", "\n\t", "x/ .. ", " ", "../"]
)
def test_sanitise_refuses_unusable_names(offered: str) -> None:
    with pytest.raises(UnsafeName):
        sanitise(offered)


def test_long_name_keeps_a_short_extension() -> None:
    safe = sanitise("a" * 500 + ".tar.gz")
    assert safe.endswith(".gz")
    assert len(safe.encode()) == MAX_NAME_BYTES
    multibyte = sanitise("é" * 300 + ".txt")
    assert multibyte.endswith(".txt")
    assert len(multibyte.encode()) <= MAX_NAME_BYTES
    multibyte.encode("utf-8")  # no split character


def test_long_extension_is_not_kept() -> None:
    safe = sanitise("a" * 10 + "." + "b" * 300)
    assert len(safe.encode()) == MAX_NAME_BYTES
    assert safe.startswith("a" * 10)


def test_candidate_names_sequence() -> None:
    names = candidate_names("photo.jpg")
    assert [next(names) for _ in range(4)] == [
        "photo.jpg",
        "photo.1.jpg",
        "photo.2.jpg",
        "photo.3.jpg",
    ]
    assert list(candidate_names("README", limit=3)) == ["README", "README.1", "README.2"]
    assert list(candidate_names(".bashrc", limit=2)) == [".bashrc", ".bashrc.1"]


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=30).filter(lambda s: s not in (".", "..")))
def test_candidate_names_are_distinct(name: str) -> None:
    names = list(candidate_names(name, limit=200))
    assert len(names) == len(set(names)) == 200
    assert names[0] == name


def test_candidate_names_of_sanitised_names_stay_in_the_inbox() -> None:
    base = sanitise("../../" + "n" * 300 + ".txt")
    chosen = list(candidate_names(base, limit=13))[12]
    assert "/" not in chosen
    assert chosen.endswith(".12.txt")
    assert len(chosen.encode()) <= 255  # fits any common file system


@given(name=st.text(min_size=0, max_size=120), limit=st.integers(2, 80))
def test_a_shortened_name_keeps_its_start_and_end_within_the_limit(name: str, limit: int) -> None:
    shown = shortened(name, limit)
    if len(name) <= limit:
        assert shown == name
        return
    assert len(shown) == limit and shown.count("…") >= 1
    head, _, tail = shown.partition("…")
    assert name.startswith(head) and name.endswith(tail) and len(head) + len(tail) == limit - 1
    assert abs(len(head) - len(tail)) <= 1
