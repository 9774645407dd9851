"""Tests for per-transfer key agreement and AES-GCM sealing (peercrypt.crypto.transfer)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.crypto.handshake import Initiator, respond
from peercrypt.crypto.identity import KeyPair
from peercrypt.crypto.transfer import TAG_BYTES, OpenError, TransferKeys


def pair(tid: bytes | None = None) -> tuple[TransferKeys, TransferKeys]:
    """(sender keys, receiver keys) of one fresh transfer."""
    tid = tid if tid is not None else os.urandom(16)
    a, b = KeyPair.from_seed(os.urandom(32)), KeyPair.from_seed(os.urandom(32))
    init = Initiator(a)
    answer = respond(tid, b, a.public, init.public)
    secrets = init.finish(tid, answer.static_pub, answer.eph_pub, answer.proof)
    return TransferKeys.for_sender(tid, secrets), TransferKeys.for_receiver(tid, answer.secrets)


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_both_sides_open_each_others_chunks_and_messages() -> None:
    s, r = pair()
    nonce, sealed = s.seal_chunk(0, False, b"hello chunk")
    assert len(nonce) == 12
    assert len(sealed) == len(b"hello chunk") + TAG_BYTES
    assert b"hello chunk" not in sealed
    assert r.open_chunk(0, False, nonce, sealed) == b"hello chunk"
    nonce, sealed = r.seal_message(b"ack from receiver")
    assert s.open_message(nonce, sealed) == b"ack from receiver"
    nonce, sealed = s.seal_message(b"done from sender")
    assert r.open_message(nonce, memoryview(sealed)) == b"done from sender"
    nonce, sealed = r.seal_chunk(7, True, b"")
    assert s.open_chunk(7, True, nonce, sealed) == b""


def test_directions_use_different_keys() -> None:
    s, r = pair()
    nonce, sealed = s.seal_message(b"to the receiver")
    with pytest.raises(OpenError):
        s.open_message(nonce, sealed)  # the sender cannot open its own direction
    nonce, sealed = r.seal_chunk(1, False, b"to the sender")
    with pytest.raises(OpenError):
        r.open_chunk(1, False, nonce, sealed)


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.data())
def test_any_single_flipped_bit_fails_a_chunk(plaintext: bytes, data: st.DataObject) -> None:
    s, r = pair()
    nonce, sealed = s.seal_chunk(3, False, plaintext)
    assert r.open_chunk(3, False, nonce, sealed) == plaintext
    where = data.draw(st.sampled_from(["nonce", "sealed"]))
    if where == "nonce":
        bad_nonce, bad_sealed = flip(nonce, data.draw(st.integers(0, len(nonce) * 8 - 1))), sealed
    else:
        bad_nonce, bad_sealed = nonce, flip(sealed, data.draw(st.integers(0, len(sealed) * 8 - 1)))
    with pytest.raises(OpenError):
        r.open_chunk(3, False, bad_nonce, bad_sealed)


def test_every_bit_of_a_sealed_message_matters() -> None:
    s, r = pair()
    nonce, sealed = s.seal_message(b"verified!")
    for bit in range(len(sealed) * 8):  # ciphertext and tag
        with pytest.raises(OpenError):
            r.open_message(nonce, flip(sealed, bit))
    for bit in range(len(nonce) * 8):
        with pytest.raises(OpenError):
            r.open_message(flip(nonce, bit), sealed)
    assert r.open_message(nonce, sealed) == b"verified!"


def test_truncated_or_extended_frames_fail() -> None:
    s, r = pair()
    nonce, sealed = s.seal_chunk(0, True, b"abc")
    for bad in (sealed[:-1], sealed + b"\0", b"", sealed[: TAG_BYTES - 1]):
        with pytest.raises(OpenError):
            r.open_chunk(0, True, nonce, bad)
    for bad_nonce in (b"", nonce[:-1], nonce + b"\0"):
        with pytest.raises(OpenError):
            r.open_chunk(0, True, bad_nonce, sealed)


def test_chunk_aad_binds_index_last_flag_and_transfer() -> None:
    tid = os.urandom(16)
    s, r = pair(tid)
    nonce, sealed = s.seal_chunk(5, False, b"payload")
    with pytest.raises(OpenError):
        r.open_chunk(6, False, nonce, sealed)  # moved to another index
    with pytest.raises(OpenError):
        r.open_chunk(5, True, nonce, sealed)  # presented as the last chunk
    with pytest.raises(OpenError):
        r.open_message(nonce, sealed)  # a chunk is not a control message
    # Same keys bound to another transfer id: fails.
    other = TransferKeys(os.urandom(16), send_key=b"\0" * 32, recv_key=b"\0" * 32)
    other_r = TransferKeys(other.tid, send_key=b"\0" * 32, recv_key=b"\0" * 32)
    n2, c2 = other.seal_chunk(5, False, b"payload")
    assert other_r.open_chunk(5, False, n2, c2) == b"payload"
    moved = TransferKeys(os.urandom(16), send_key=b"\0" * 32, recv_key=b"\0" * 32)
    with pytest.raises(OpenError):
        moved.open_chunk(5, False, n2, c2)
    assert r.open_chunk(5, False, nonce, sealed) == b"payload"


def test_message_is_not_a_chunk() -> None:
    s, r = pair()
    nonce, sealed = s.seal_message(b"m")
    with pytest.raises(OpenError):
        r.open_chunk(0, False, nonce, sealed)


def test_keys_of_another_transfer_do_not_open() -> None:
    s1, _ = pair()
    _, r2 = pair()
    nonce, sealed = s1.seal_chunk(0, False, b"x")
    with pytest.raises(OpenError):
        r2.open_chunk(0, False, nonce, sealed)
    nonce, sealed = s1.seal_message(b"m")
    with pytest.raises(OpenError):
        r2.open_message(nonce, sealed)


def test_nonces_never_repeat_even_when_resealing_the_same_chunk() -> None:
    s, r = pair()
    nonces: set[bytes] = set()
    ciphertexts: set[bytes] = set()
    for i in range(2000):
        if i % 3 == 0:
            nonce, sealed = s.seal_message(b"ctl")
        else:
            nonce, sealed = s.seal_chunk(0, False, b"same chunk every time")
        assert nonce not in nonces
        nonces.add(nonce)
        ciphertexts.add(sealed)
    assert len(ciphertexts) == 2000
    # The receiver's counter is independent (its own key), and also starts fresh.
    assert r.seal_message(b"x")[0] == s.seal_message(b"y")[0][:4] + (1).to_bytes(8, "big")


def test_nonce_layout_is_zero_prefix_and_counter() -> None:
    s, _ = pair()
    first, _ = s.seal_chunk(0, False, b"")
    second, _ = s.seal_message(b"")
    assert first == bytes(4) + (1).to_bytes(8, "big")
    assert second == bytes(4) + (2).to_bytes(8, "big")


def test_replayed_chunk_still_opens_so_dedup_is_the_windows_job() -> None:
    # Documented behaviour: AES-GCM has no replay protection; ReceiveWindow drops duplicates.
    s, r = pair()
    nonce, sealed = s.seal_chunk(2, False, b"x")
    assert r.open_chunk(2, False, nonce, sealed) == b"x"
    assert r.open_chunk(2, False, nonce, sealed) == b"x"


# Low-order X25519 points: the shared secret is all zeros.
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


def test_route_ids_are_the_transfers_own() -> None:
    s, r = pair()
    other_s, other_r = pair()
    ids = [s.route_id(lane) for lane in (0, 1, 64, 255)]
    assert len(set(ids)) == 4 and all(i[0] != 0 and len(i) == 16 for i in ids)
    assert all(r.owns_route(i) for i in ids)
    assert s.for_lane(3).route_id(3) == s.route_id(3)  # every lane's keys agree
    assert not other_r.owns_route(ids[0]) and not r.owns_route(other_s.route_id(0))
    for bad in (b"", os.urandom(16), ids[0][:-1], ids[0] + b"x", ids[0][:-4] + bytes([0, 0, 1, 0])):
        assert not r.owns_route(bad)
    with pytest.raises(ValueError):
        s.route_id(256)


def test_a_chunk_opens_into_a_buffer_of_its_exact_length_only() -> None:
    """The receiver decrypts into reused buffers: the plaintext lands in the
    buffer, a buffer of another length is refused, and a tampered chunk
    fails however the buffer is given."""
    s, r = pair()
    plaintext = os.urandom(1000)
    nonce, sealed = s.seal_chunk(2, False, plaintext)
    out = bytearray(b"x" * 1000)
    r.open_chunk_into(2, False, nonce, sealed, out)
    assert out == plaintext
    for wrong in (bytearray(999), bytearray(1001)):
        with pytest.raises(OpenError):
            r.open_chunk_into(2, False, nonce, sealed, wrong)
    with pytest.raises(OpenError):
        r.open_chunk_into(2, False, nonce, flip(sealed, 5), bytearray(1000))
    with pytest.raises(OpenError):
        r.open_chunk_into(3, False, nonce, sealed, bytearray(1000))  # another index


def test_a_chunk_sealed_into_a_reused_buffer_opens_as_a_sealed_one() -> None:
    s, r = pair()
    out = bytearray(b"\xaa" * (64 + TAG_BYTES))  # stale contents from an earlier chunk
    plaintext = os.urandom(64)
    nonce = s.seal_chunk_into(3, True, memoryview(plaintext), out)
    assert r.open_chunk(3, True, nonce, out) == plaintext
    with pytest.raises(OpenError):  # bound to its index like any chunk
        r.open_chunk(4, True, nonce, out)
    again, sealed = s.seal_chunk(3, True, plaintext)
    assert again != nonce  # the counter moves for either way of sealing
    assert r.open_chunk(3, True, again, sealed) == plaintext
