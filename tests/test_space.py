"""The inbox space ledger: reservations, quotas, which kept parts give way."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from peercrypt.core.space import Quotas, SpaceLedger

A, B = b"a" * 32, b"b" * 32
MB = 1_000_000


def test_two_offers_that_fit_only_one_at_a_time() -> None:
    ledger = SpaceLedger(Quotas())
    free = 100 * MB
    first = ledger.admit(A, 60 * MB, free)
    assert first.ok
    ledger.start(b"1", A, 60 * MB, 0, "p1")
    second = ledger.admit(B, 60 * MB, free)  # the disk has not changed yet
    assert not second.ok and second.code == "no-space"
    assert "40000000 bytes free" in second.reason
    # As the first transfer writes, free space and its reservation shrink together.
    ledger.written(b"1", 50 * MB)
    assert not ledger.admit(B, 60 * MB, free - 50 * MB).ok
    ledger.stop(b"1", keep=False, updated=0.0)
    assert ledger.admit(B, 60 * MB, free - 50 * MB).ok is False  # 50 MB used by a file now
    assert ledger.admit(B, 40 * MB, free - 50 * MB).ok


def test_a_folder_reserves_its_tree_beside_its_part_until_it_stops() -> None:
    ledger = SpaceLedger(Quotas())
    free = 100 * MB
    assert ledger.admit(A, 60 * MB, free).ok  # a file: once
    assert not ledger.admit(A, 60 * MB, free, extra=60 * MB).ok  # a folder: part and tree
    assert ledger.admit(A, 40 * MB, free, extra=40 * MB).ok
    ledger.start(b"1", A, 40 * MB, 0, "p1", extra=40 * MB)
    ledger.written(b"1", 40 * MB)  # the whole part is on disk; its tree is still to come
    assert ledger.promised == 40 * MB
    assert ledger.pending(peer=A) == 0  # nothing more comes over the wire
    assert not ledger.admit(B, 30 * MB, free - 40 * MB).ok
    ledger.stop(b"1", keep=False, updated=0.0)
    assert ledger.promised == 0


def test_kept_parts_give_way_oldest_first_for_disk() -> None:
    ledger = SpaceLedger(Quotas(reserve=1 * MB))
    ledger.keep("old", A, 50 * MB, 30 * MB, updated=1.0)
    ledger.keep("new", B, 50 * MB, 30 * MB, updated=2.0)
    verdict = ledger.admit(A, 40 * MB, free=20 * MB)
    assert verdict.ok and verdict.evict == ("old",)
    verdict = ledger.admit(A, 70 * MB, free=20 * MB)
    assert verdict.ok and verdict.evict == ("old", "new")
    refused = ledger.admit(A, 90 * MB, free=20 * MB)
    assert not refused.ok and refused.code == "no-space" and refused.evict == ()


def test_a_resumed_part_needs_only_its_missing_bytes_and_never_gives_way() -> None:
    ledger = SpaceLedger(Quotas())
    ledger.keep("half", A, 100 * MB, 50 * MB, updated=1.0)
    verdict = ledger.admit(A, 100 * MB, free=60 * MB, resume="half")
    assert verdict.ok and verdict.evict == ()
    ledger.start(b"t", A, 100 * MB, 50 * MB, "half")
    assert ledger.kept == [] and ledger.promised == 50 * MB
    ledger.stop(b"t", keep=True, updated=5.0)
    assert ledger.kept == ["half"] and ledger.promised == 0


def test_per_peer_quota_evicts_the_senders_own_parts_first() -> None:
    ledger = SpaceLedger(Quotas(per_peer=100 * MB))
    ledger.keep("a-old", A, 60 * MB, 60 * MB, updated=1.0)
    ledger.keep("b-old", B, 60 * MB, 60 * MB, updated=0.0)
    verdict = ledger.admit(A, 50 * MB, free=10**12)
    assert verdict.ok and verdict.evict == ("a-old",)
    ledger.start(b"1", A, 90 * MB, 0, "run")
    refused = ledger.admit(A, 20 * MB, free=10**12)
    assert not refused.ok and refused.code == "quota" and "your quota" in refused.reason
    assert ledger.admit(B, 40 * MB, free=10**12).ok  # another sender's quota is its own


def test_total_quota_counts_everyone() -> None:
    ledger = SpaceLedger(Quotas(total=100 * MB))
    ledger.start(b"1", A, 70 * MB, 0, "pa")
    ledger.keep("b-kept", B, 20 * MB, 20 * MB, updated=0.0)
    verdict = ledger.admit(B, 30 * MB, free=10**12)
    assert verdict.ok and verdict.evict == ("b-kept",)
    refused = ledger.admit(B, 31 * MB, free=10**12)
    assert not refused.ok and refused.code == "quota" and refused.evict == ()


offers = st.lists(
    st.tuples(st.sampled_from([A, B]), st.integers(1, 60), st.booleans(), st.integers(0, 60)),
    max_size=25,
)


@settings(deadline=None)
@given(offers, st.integers(0, 200), st.integers(0, 120), st.integers(0, 150))
def test_promises_never_exceed_the_disk_and_quotas_hold(
    steps: list[tuple[bytes, int, bool, int]], free: int, per_peer: int, total: int
) -> None:
    """Offers, some transfers ending (kept or not): whatever the order, the
    accepted transfers' reservations fit the free space, the quotas hold, and
    only kept parts are ever evicted."""
    ledger = SpaceLedger(Quotas(total=total, per_peer=per_peer))
    disk_free = free  # bytes, as statvfs would report them
    running: dict[bytes, tuple[bytes, int, str]] = {}
    for n, (peer, size, end_one, written) in enumerate(steps):
        verdict = ledger.admit(peer, size, disk_free)
        if verdict.ok:
            for name in verdict.evict:
                assert name in ledger.kept and all(r[2] != name for r in running.values())
                disk_free += ledger.allocated(name)
                ledger.forget(name)
            tid = n.to_bytes(4, "big")
            ledger.start(tid, peer, size, 0, f"p{n}")
            running[tid] = (peer, size, f"p{n}")
            assert ledger.promised <= disk_free
            if per_peer:
                assert ledger.charged(peer) <= per_peer
            if total:
                assert ledger.charged() <= total
        else:
            assert verdict.evict == () and verdict.code in ("quota", "no-space")
        if end_one and running:
            tid, (_, s, _) = next(iter(running.items()))
            nbytes = min(s, written)
            ledger.written(tid, nbytes)
            disk_free -= nbytes
            ledger.stop(tid, keep=bool(written % 2), updated=float(n))
            if not written % 2:
                disk_free += nbytes  # the part was deleted
            del running[tid]


def test_pending_bytes_are_bounded_per_identity_and_per_address() -> None:
    ledger = SpaceLedger(Quotas())
    ledger.start(b"t1", b"a", 100, 30, ".x.t1.part", "10.0.0.1")  # 70 still to write
    assert ledger.over_pending(b"a", "10.0.0.1", 10**9, 0) == ""  # no quota
    assert ledger.over_pending(b"a", "10.0.0.2", 30, 100) == ""
    assert ledger.over_pending(b"a", "10.0.0.2", 31, 100) == (
        "too many bytes still to come from you (max 100)"
    )
    assert ledger.over_pending(b"b", "10.0.0.1", 31, 100) == (
        "too many bytes still to come from 10.0.0.1 (max 100)"
    )
    ledger.written(b"t1", 100)
    assert ledger.over_pending(b"b", "10.0.0.1", 100, 100) == ""


# -- one ledger for both receivers (reserve, release, rebuild) -----------------

OWNERS = ("receiver", "mreceiver")

steps_of_two = st.lists(
    st.tuples(
        st.sampled_from(OWNERS),
        st.sampled_from([A, B]),
        st.integers(1, 60),  # size
        st.sampled_from([0, 0, 1, 2, 3]),  # 0: reserve, 1: write, 2: stop (kept), 3: stop
        st.integers(0, 60),  # bytes written, or which transfer
    ),
    max_size=40,
)


@settings(deadline=None)
@given(steps_of_two, st.integers(0, 150), st.sampled_from([0, 50, 100]), st.sampled_from([0, 40]))
@example([("receiver", A, 60, 0, 0), ("mreceiver", B, 60, 0, 0)], 100, 0, 0)
def test_one_ledger_never_over_commits_whoever_asks(
    steps: list[tuple[str, bytes, int, int, int]], capacity: int, per_peer: int, pending: int
) -> None:
    """Unicast offers and multicast sessions interleaved on one ledger: the
    bytes still to come of every running transfer, plus everything already on
    disk, never exceed the disk; quotas hold across both kinds."""
    ledger = SpaceLedger(Quotas(per_peer=per_peer))
    on_disk: dict[str, int] = {}  # part -> bytes it occupies
    running: dict[bytes, tuple[str, bytes, int, int]] = {}  # tid -> owner, peer, size, written
    for n, (owner, peer, size, op, arg) in enumerate(steps):
        tid = n.to_bytes(4, "big")
        if op == 0 or not running:
            free = capacity - sum(on_disk.values()) - sum(r[3] for r in running.values())
            verdict = ledger.reserve(
                tid, peer, size, free, host=owner, pending_limit=pending, owner=owner
            )
            if verdict.ok:
                for name in verdict.evict:
                    del on_disk[name]  # only kept parts give way
                running[tid] = (owner, peer, size, 0)
                # Every running transfer's whole file, and every kept part, fit.
                assert sum(r[2] for r in running.values()) + sum(on_disk.values()) <= capacity
                if per_peer:
                    assert ledger.charged(peer) <= per_peer
                if pending:
                    assert ledger.pending(peer=peer) <= pending
            else:
                assert verdict.code in ("quota", "no-space") and verdict.evict == ()
                assert not ledger.is_running(tid)
            continue
        victim = list(running)[arg % len(running)]
        o, p, s, w = running[victim]
        if op == 1:
            w = min(s, w + arg)
            running[victim] = (o, p, s, w)
            ledger.written(victim, w)
            continue
        del running[victim]
        assert ledger.stop(victim, keep=op == 2, updated=float(n), part=f"p{victim.hex()}")
        if op == 2:
            on_disk[f"p{victim.hex()}"] = w
        assert not ledger.stop(victim, keep=True, updated=float(n))  # released once only
    assert sorted(ledger.kept) == sorted(on_disk)
    assert ledger.promised == sum(r[2] - r[3] for r in running.values())


@settings(deadline=None)
@given(steps_of_two, st.lists(st.binary(min_size=4, max_size=4), max_size=10))
def test_every_release_matches_a_reservation(
    steps: list[tuple[str, bytes, int, int, int]], strangers: list[bytes]
) -> None:
    """Releasing what was never reserved (or twice) changes nothing; when
    every reservation is released, nothing is promised and only parts that
    were kept remain."""
    ledger = SpaceLedger(Quotas())
    reserved: list[bytes] = []
    for n, (owner, peer, size, _, _) in enumerate(steps):
        tid = b"r" + n.to_bytes(3, "big")
        if ledger.reserve(tid, peer, size, 10**9, owner=owner).ok:
            reserved.append(tid)
    before = (ledger.promised, ledger.charged(), ledger.kept)
    for tid in strangers:
        if tid not in reserved:
            assert not ledger.stop(tid, keep=True, updated=0.0, part="stranger")
    assert (ledger.promised, ledger.charged(), ledger.kept) == before
    for i, tid in enumerate(reserved):
        assert ledger.stop(tid, keep=bool(i % 2), updated=0.0, part=f"k{i}")
        assert not ledger.stop(tid, keep=bool(i % 2), updated=0.0, part=f"again{i}")
    assert ledger.promised == 0
    assert sorted(ledger.kept) == sorted(f"k{i}" for i in range(len(reserved)) if i % 2)


@settings(deadline=None)
@given(steps_of_two, st.sampled_from(OWNERS))
def test_a_restarted_owner_rebuilds_the_same_ledger(
    steps: list[tuple[str, bytes, int, int, int]], restarted: str
) -> None:
    """A receiver that restarts drops what it held and reports again its kept
    parts (from the disk) and running transfers: the ledger is as before,
    and the other receiver's entries were never touched."""
    ledger = SpaceLedger(Quotas())
    running: dict[bytes, tuple[str, bytes, int, int]] = {}
    kept: dict[str, tuple[str, bytes, int, int, float]] = {}
    for n, (owner, peer, size, op, arg) in enumerate(steps):
        tid = n.to_bytes(4, "big")
        if op != 2 or not running:
            if ledger.reserve(tid, peer, size, 10**9, owner=owner).ok:
                ledger.written(tid, min(size, arg))
                running[tid] = (owner, peer, size, min(size, arg))
            continue
        victim = list(running)[arg % len(running)]
        o, p, s, w = running.pop(victim)
        ledger.stop(victim, keep=True, updated=float(n), part=f"p{n}")
        kept[f"p{n}"] = (o, p, s, w, float(n))

    def shape(lg: SpaceLedger) -> tuple[int, int, int, list[str], list[int]]:
        return (
            lg.promised,
            lg.charged(A),
            lg.charged(B),
            sorted(lg.kept),
            sorted(lg.allocated(k) for k in lg.kept),
        )

    before = shape(ledger)
    ledger.reset(restarted)
    for part, (o, p, s, w, updated) in kept.items():
        if o == restarted:
            ledger.keep(part, p, s, w, updated, owner=o)
    for tid, (o, p, s, w) in running.items():
        if o == restarted:
            ledger.start(tid, p, s, w, "", owner=o)
    assert shape(ledger) == before


def test_a_transfer_id_already_reserved_is_refused_whoever_asks() -> None:
    """Transfer ids and multicast session ids are chosen by peers and share
    the ledger: an offer reusing the id of a running transfer (of the other
    receiver, or its own) is refused and cannot replace that reservation,
    which stays whole until its own release (once)."""
    ledger = SpaceLedger(Quotas())
    assert ledger.reserve(b"same", A, 70, 100, owner="mreceiver").ok
    for owner in ("receiver", "mreceiver"):
        again = ledger.reserve(b"same", B, 10, 100, owner=owner)
        assert (again.ok, again.code) == (False, "duplicate"), again
        assert ledger.promised == 70
    assert not ledger.reserve(b"other", B, 40, 100, owner="receiver").ok  # 70 + 40 > 100
    assert ledger.stop(b"same", keep=False, updated=0.0)
    assert not ledger.stop(b"same", keep=False, updated=0.0)
    assert ledger.promised == 0


def test_a_cancelled_ask_frees_its_id_and_keeps_its_part_and_spares_the_retry() -> None:
    """An ask its receiver stopped waiting for is cancelled by its number:
    its reservation goes (the retry of the same id is admitted, not refused
    "duplicate"), the kept part it would have continued is kept again, as it
    was, and a second, late cancel of it never takes the retry's reservation."""
    ledger = SpaceLedger(Quotas(total=100))
    ledger.keep("kept.part", A, 60, 40, updated=5.0, owner="receiver")
    first = ledger.reserve(b"tid", A, 60, 100, resume="kept.part", held=40, request=1)
    assert first.ok and ledger.kept == [] and ledger.promised == 20
    assert not ledger.cancel(b"tid", 2)  # another ask's number: nothing changes
    assert not ledger.cancel(b"other", 1)
    assert ledger.is_running(b"tid")
    assert ledger.cancel(b"tid", 1)
    assert (ledger.kept, ledger.allocated("kept.part"), ledger.promised) == (["kept.part"], 40, 0)
    assert ledger.charged(A) == 60  # charged once, as a kept part again
    retry = ledger.reserve(b"tid", A, 60, 100, resume="kept.part", held=40, request=2)
    assert retry.ok, retry
    assert not ledger.cancel(b"tid", 1)  # the late cancel of the first ask
    assert ledger.is_running(b"tid") and ledger.promised == 20
    assert ledger.stop(b"tid", keep=False, updated=6.0)
    assert not ledger.cancel(b"tid", 2)  # released: nothing left to cancel
    assert (ledger.promised, ledger.charged(), ledger.kept) == (0, 0, [])


def test_a_reported_transfer_cannot_be_cancelled() -> None:
    """A transfer reported running (after the space actor restarted) was
    reserved by no ask: no cancel, whatever its number, releases it."""
    ledger = SpaceLedger(Quotas())
    ledger.start(b"tid", A, 50, 10, "p", owner="receiver")
    assert not ledger.cancel(b"tid", 0)
    assert ledger.is_running(b"tid") and ledger.promised == 40


def test_an_ask_to_continue_a_part_that_gave_way_is_a_fresh_transfer() -> None:
    """A receiver chose a kept part to continue; before its ask was heard,
    another ask made that part give way. The ask is admitted (or not) as a
    new transfer: the verdict says ``fresh``, the whole file is promised and
    charged, and nothing is counted as held."""
    ledger = SpaceLedger(Quotas(total=110))
    ledger.keep("chosen.part", A, 100, 60, updated=1.0, owner="receiver")
    other = ledger.reserve(b"m", B, 20, 10**9, owner="mreceiver", request=1)
    assert other.ok and other.evict == ("chosen.part",) and not other.fresh
    resumed = ledger.reserve(b"u", A, 100, 10**9, resume="chosen.part", held=60, request=1)
    assert (resumed.ok, resumed.code, resumed.fresh) == (False, "quota", False)
    assert ledger.cancel(b"m", 1)  # that session was given up: room again
    resumed = ledger.reserve(b"u", A, 100, 10**9, resume="chosen.part", held=60, request=2)
    assert (resumed.ok, resumed.fresh, resumed.evict) == (True, True, ())
    assert (ledger.promised, ledger.charged(A), ledger.kept) == (100, 100, [])
    # A part the ledger never heard of did not give way: a resume as asked.
    unknown = ledger.reserve(b"w", B, 5, 10**9, resume="unknown.part", held=2, request=4)
    assert (unknown.ok, unknown.fresh, ledger.promised) == (True, False, 103)
    assert ledger.stop(b"w", keep=False, updated=3.0)
    ledger.keep("still.kept", A, 10, 5, updated=2.0)
    kept = ledger.reserve(b"v", A, 10, 10**9, resume="still.kept", held=5, request=3)
    assert (kept.ok, kept.fresh, ledger.promised) == (True, False, 105)
