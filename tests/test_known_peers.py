"""Whom a sender trusts at an address (peercrypt.crypto.known_peers)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peercrypt.crypto.identity import KeyPair, fingerprint
from peercrypt.crypto.known_peers import (
    RACY_NS,
    KnownPeersFile,
    UnreadablePins,
    Verdict,
    decide,
    dumps,
    explain,
    normalise_address,
    parse,
    pin_of,
)


def fp() -> str:
    return fingerprint(KeyPair.generate().public)


A = "127.0.0.1:9000"


def test_first_contact_is_new_then_known_then_a_change_is_refused() -> None:
    one, two = fp(), fp()
    assert decide({}, A, one).verdict is Verdict.NEW
    assert decide({A: one}, A, one).verdict is Verdict.KNOWN
    changed = decide({A: one}, A, two)
    assert changed.verdict is Verdict.CHANGED and not changed.trusted
    line = explain(changed, "localhost", 9000)
    assert one in line and two in line
    # Quoted as a command (the shell names it as typed at its prompt: `trust ...`).
    assert line.endswith(f"If the change is expected, run: `peercrypt trust localhost 9000 {two}`")


def test_expect_pins_whatever_the_file_says() -> None:
    one, two = fp(), fp()
    assert decide({A: one}, A, two, expect=two).verdict is Verdict.PINNED
    mismatch = decide({A: one}, A, one, expect=two)
    assert mismatch.verdict is Verdict.MISMATCH and not mismatch.trusted
    assert one in explain(mismatch, "h", 1) and two in explain(mismatch, "h", 1)


def test_signed_member_records_count_as_known() -> None:
    member, stranger = fp(), fp()
    assert decide({}, A, member, members_here=[member]).verdict is Verdict.KNOWN
    claimed = decide({}, A, stranger, members_here=[member])
    assert claimed.verdict is Verdict.CLAIMED and claimed.expected == member
    # The file has the last word over records.
    assert decide({A: stranger}, A, stranger, members_here=[member]).verdict is Verdict.KNOWN


def test_a_multicast_receiver_must_prove_one_of_the_pins() -> None:
    one, two, other = fp(), fp(), fp()
    assert pin_of([], other) == ""  # no pins: the file and records decide
    assert decide({}, A, two, pin_of([one, two], two)).verdict is Verdict.PINNED
    refused = decide({A: other}, A, other, pin_of([one, two], other))
    assert refused.verdict is Verdict.MISMATCH  # a pin overrides the file
    assert one in explain(refused, "127.0.0.1", 1) and two in explain(refused, "127.0.0.1", 1)


def test_addresses_are_normalised() -> None:
    assert normalise_address("LocalHost", 1) == "127.0.0.1:1"
    assert normalise_address("::1", 1) == "127.0.0.1:1"
    assert normalise_address("[fe80::1]", 2) == "[fe80::1]:2"
    assert normalise_address("10.0.0.1", 3) == "10.0.0.1:3"


@given(
    st.dictionaries(
        st.from_regex(r"[a-z0-9.]{1,20}:[0-9]{1,5}", fullmatch=True),
        st.builds(lambda b: fingerprint(b), st.binary(min_size=32, max_size=32)),
        max_size=20,
    )
)
def test_the_file_format_round_trips(entries: dict[str, str]) -> None:
    assert parse(dumps(entries)) == entries


def test_parse_skips_what_it_cannot_read() -> None:
    good = fp()
    text = f"# comment\n{A} {good}  # note\ngarbage\nx:1 not-a-fingerprint\n\0\xff\n"
    assert parse(text) == {A: good}


def test_the_file_records_first_contact_and_refuses_a_change(tmp_path: Path) -> None:
    store = KnownPeersFile(tmp_path)
    one, two = fp(), fp()
    assert store.check("localhost", 9000, one).verdict is Verdict.NEW
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert store.load() == {A: one}
    assert store.check("127.0.0.1", 9000, two).verdict is Verdict.CHANGED
    assert store.load() == {A: one}  # a refused key is never recorded
    assert store.set(A, two, replace=True)
    assert store.check("127.0.0.1", 9000, two).verdict is Verdict.KNOWN
    # A pinned send does not record anything.
    assert store.check("10.0.0.1", 1, one, expect=one).verdict is Verdict.PINNED
    assert "10.0.0.1:1" not in store.load()


def test_a_key_members_vouch_for_is_recorded_at_first_contact(tmp_path: Path) -> None:
    """Known from members' signed records only, the key goes into the file
    (the check skips writing only a key the file already has there)."""
    store = KnownPeersFile(tmp_path)
    one = fp()
    assert store.check("localhost", 9000, one, members_here=[one]).verdict is Verdict.KNOWN
    assert store.load() == {A: one}
    assert store.check("localhost", 9000, one).verdict is Verdict.KNOWN  # now from the file
    assert store.load() == {A: one}


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    stores = [KnownPeersFile(tmp_path) for _ in range(4)]
    keys = {f"10.0.0.{i}:{j}": fp() for i in range(4) for j in range(25)}

    def write(i: int) -> None:
        for address, key in keys.items():
            if address.startswith(f"10.0.0.{i}:"):
                stores[i].set(address, key, replace=False)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert KnownPeersFile(tmp_path).load() == keys
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_a_check_sees_the_file_as_changed_since_the_last(tmp_path: Path) -> None:
    """The file is read again only when it changed: a change by another
    writer (``peercrypt trust``: a new file replaces it) and an edit in
    place of the same size are both seen by the next check."""
    store = KnownPeersFile(tmp_path)
    one, two, three = fp(), fp(), fp()
    assert store.check("127.0.0.1", 9000, one).verdict is Verdict.NEW
    assert store.check("127.0.0.1", 9000, two).verdict is Verdict.CHANGED
    assert KnownPeersFile(tmp_path).set(A, two, replace=True)
    assert store.check("127.0.0.1", 9000, two).verdict is Verdict.KNOWN
    text = store.path.read_text()
    with open(store.path, "r+", encoding="utf-8") as f:  # the same inode, the same size
        f.write(text.replace(two, three))
    assert store.load() == {A: three}
    assert store.check("127.0.0.1", 9000, three).verdict is Verdict.KNOWN
    store.path.unlink()
    assert store.load() == {}


class CountingReads(KnownPeersFile):
    """The file, counting its reads (what a check costs)."""

    reads = 0

    def _read(self) -> dict[str, str]:
        self.reads += 1
        return super()._read()


def test_a_file_is_read_again_only_when_it_changed_or_changed_lately(tmp_path: Path) -> None:
    """Unchanged, the file is read once (here with no "lately": a change
    counts as old at once); an edit in place of the same size whose time is
    set back (`touch -d`) is seen, by its change time; and with the default
    rule a file changed in the last RACY_NS is read at every check."""
    one, two = fp(), fp()
    assert KnownPeersFile(tmp_path).check("127.0.0.1", 9000, one).verdict is Verdict.NEW
    store = CountingReads(tmp_path, racy_ns=0)
    for _ in range(3):
        assert store.load() == {A: one}
    assert store.reads == 1
    before = store.path.stat()
    text = store.path.read_text()
    with open(store.path, "r+", encoding="utf-8") as f:  # the same inode and size
        f.write(text.replace(one, two))
    os.utime(store.path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert store.load() == {A: two} and store.reads == 2
    lately = CountingReads(tmp_path)  # the change above was just now
    assert lately.load() == lately.load() == {A: two}
    assert lately.reads == 2
    assert RACY_NS == 2_000_000_000


@pytest.mark.timeout(10)  # (a FIFO opened to read waits for a writer: no hang)
def test_a_file_that_cannot_be_read_is_an_error_naming_it_not_a_wait(tmp_path: Path) -> None:
    """A directory, a FIFO (whose open would wait for a writer: the actor
    would hang), a file without read permission: each one a clear error,
    at a check and at a write (``trust``), never "nothing known"."""
    one = fp()
    store = KnownPeersFile(tmp_path)
    store.path.mkdir()
    with pytest.raises(UnreadablePins, match="known_peers: it is a directory, not a readable"):
        store.check("127.0.0.1", 1, one)
    store.path.rmdir()
    os.mkfifo(store.path)
    for call in (store.load, lambda: store.set(A, one, replace=True)):
        with pytest.raises(UnreadablePins, match="known_peers: it is a FIFO, not a readable file"):
            call()
    store.path.unlink()
    store.path.symlink_to(store.path.name)  # (a loop: its stat fails)
    with pytest.raises(UnreadablePins, match=r"not a readable file \(Too many levels"):
        store.load()
