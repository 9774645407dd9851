"""The mutual authentication of two nodes (peercrypt.crypto.handshake)."""

from __future__ import annotations

import hashlib
import hmac
import math
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from peercrypt.crypto.handshake import (
    HELLO_MEMORY,
    IMPOSTOR,
    PROVEN,
    STALE,
    HelloChallenge,
    HelloRound,
    Initiator,
    ProofError,
    SessionSecrets,
    open_details,
    prove_hello,
    respond,
)
from peercrypt.crypto.identity import KeyPair
from peercrypt.crypto.transfer import OpenError, TransferKeys


def node() -> KeyPair:
    return KeyPair.from_seed(os.urandom(32))


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_both_sides_derive_the_same_keys_and_the_proof_verifies() -> None:
    sender, receiver, tid = node(), node(), os.urandom(16)
    init = Initiator(sender)
    answer = respond(tid, receiver, sender.public, init.public)
    assert answer.static_pub == receiver.public
    secrets = init.finish(tid, answer.static_pub, answer.eph_pub, answer.proof)
    assert secrets == answer.secrets
    assert secrets.to_responder != secrets.to_initiator
    s, r = TransferKeys.for_sender(tid, secrets), TransferKeys.for_receiver(tid, answer.secrets)
    nonce, sealed = s.seal_chunk(0, True, b"chunk")
    assert r.open_chunk(0, True, nonce, sealed) == b"chunk"
    nonce, sealed = r.seal_message(b"ack")
    assert s.open_message(nonce, sealed) == b"ack"
    assert "to_" not in repr(secrets)  # never prints a key


def _dh(secret: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(secret).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def test_keys_match_a_plain_x25519_hkdf_computation_on_both_sides() -> None:
    """Derive the schedule by hand from the documented formula, from each
    side's own secrets, with no code from the module under test."""
    s_i, s_r, tid = node(), node(), os.urandom(16)
    init = Initiator(s_i)
    assert init._secret is not None
    e_i_secret = init._secret.secret
    e_r = KeyPair.generate()
    answer = respond(tid, s_r, s_i.public, init.public, ephemeral=e_r)
    secrets = init.finish(tid, s_r.public, answer.eph_pub, answer.proof)

    def transcript() -> bytes:
        h = hashlib.sha256(b"peercrypt mutual-auth v1")
        for part in (tid, s_i.public, s_r.public, init.public, answer.eph_pub):
            h.update(len(part).to_bytes(2, "big") + part)
        return h.digest()

    h = transcript()
    # Initiator's view: its ephemeral and static secrets with the responder's publics.
    ikm_i = (
        _dh(e_i_secret, answer.eph_pub)
        + _dh(e_i_secret, s_r.public)
        + _dh(s_i.secret, answer.eph_pub)
    )
    # Responder's view: the same three values from the other secrets; the
    # middle one needs the responder's static secret.
    ikm_r = (
        _dh(e_r.secret, init.public) + _dh(s_r.secret, init.public) + _dh(e_r.secret, s_i.public)
    )
    assert ikm_r == ikm_i
    okm = HKDF(hashes.SHA256(), 96, tid, b"peercrypt mutual-auth v1" + h).derive(ikm_i)
    assert okm[:32] == secrets.to_responder == answer.secrets.to_responder
    assert okm[32:64] == secrets.to_initiator
    proof = hmac.new(okm[64:], b"responder proof" + h, hashlib.sha256).digest()
    assert proof == answer.proof


def test_an_impostor_naming_the_receivers_key_cannot_prove_it() -> None:
    sender, receiver, eve, tid = node(), node(), node(), os.urandom(16)
    init = Initiator(sender)
    # Eve answers with her own secrets but names the real receiver's key.
    forged = respond(tid, eve, sender.public, init.public)
    with pytest.raises(ProofError):
        init.finish(tid, receiver.public, forged.eph_pub, forged.proof)


def test_an_impostor_naming_her_own_key_proves_only_her_own() -> None:
    sender, eve, tid = node(), node(), os.urandom(16)
    init = Initiator(sender)
    answer = respond(tid, eve, sender.public, init.public)
    init.finish(tid, answer.static_pub, answer.eph_pub, answer.proof)
    assert answer.static_pub == eve.public  # so trust is decided on her fingerprint


def test_a_responder_misled_about_the_sender_derives_other_keys() -> None:
    sender, other, receiver, tid = node(), node(), node(), os.urandom(16)
    init = Initiator(sender)
    answer = respond(tid, receiver, other.public, init.public)  # not the CURVE-proven key
    with pytest.raises(ProofError):
        init.finish(tid, answer.static_pub, answer.eph_pub, answer.proof)


def test_a_proof_for_one_transfer_is_worthless_for_another() -> None:
    sender, receiver = node(), node()
    init = Initiator(sender)
    answer = respond(b"A" * 16, receiver, sender.public, init.public)
    with pytest.raises(ProofError):
        init.finish(b"B" * 16, answer.static_pub, answer.eph_pub, answer.proof)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["proof", "eph", "static"]), st.integers(0, 255))
def test_any_flipped_bit_of_the_answer_is_refused(which: str, bit: int) -> None:
    sender, receiver, tid = node(), node(), os.urandom(16)
    init = Initiator(sender)
    a = respond(tid, receiver, sender.public, init.public)
    static, eph, proof = a.static_pub, a.eph_pub, a.proof
    if which == "proof":
        proof = flip(proof, bit)
    elif which == "eph":
        eph = flip(eph, bit)
    else:
        static = flip(static, bit)
    with pytest.raises((ProofError, ValueError)):
        init.finish(tid, static, eph, proof)


def test_initiator_ephemeral_is_single_use() -> None:
    sender, receiver, tid = node(), node(), os.urandom(16)
    init = Initiator(sender)
    a = respond(tid, receiver, sender.public, init.public)
    init.finish(tid, a.static_pub, a.eph_pub, a.proof)
    with pytest.raises(RuntimeError):
        init.finish(tid, a.static_pub, a.eph_pub, a.proof)


LOW_ORDER = [bytes(32), (1).to_bytes(32, "little")]


@pytest.mark.parametrize("point", LOW_ORDER)
def test_degenerate_keys_are_refused_on_both_sides(point: bytes) -> None:
    sender, receiver = node(), node()
    with pytest.raises(ValueError):
        respond(b"t" * 16, receiver, sender.public, point)
    with pytest.raises(ValueError):
        respond(b"t" * 16, receiver, point, Initiator(sender).public)
    good = respond(b"t" * 16, receiver, sender.public, Initiator(sender).public)
    with pytest.raises(ValueError):
        Initiator(sender).finish(b"t" * 16, point, good.eph_pub, good.proof)


@pytest.mark.parametrize("bad", [b"", b"\x01" * 31, b"\x01" * 33])
def test_wrong_length_keys_are_refused(bad: bytes) -> None:
    with pytest.raises(ValueError):
        respond(b"t" * 16, node(), node().public, bad)


def test_sessions_are_fresh_each_time() -> None:
    sender, receiver, tid = node(), node(), os.urandom(16)
    seen: set[bytes] = set()
    for _ in range(5):
        init = Initiator(sender)
        a = respond(tid, receiver, sender.public, init.public)
        keys = init.finish(tid, a.static_pub, a.eph_pub, a.proof)
        seen.add(keys.to_responder)
    assert len(seen) == 5  # ephemeral keys: forward secrecy per exchange


def test_keys_from_an_impostor_exchange_do_not_open_the_real_traffic() -> None:
    sender, receiver, eve, tid = node(), node(), node(), os.urandom(16)
    init = Initiator(sender)
    real = respond(tid, receiver, sender.public, init.public)
    secrets = init.finish(tid, real.static_pub, real.eph_pub, real.proof)
    # Eve saw the offer (init.public) and answers with her own exchange.
    stolen = respond(tid, eve, sender.public, init.public).secrets
    nonce, sealed = TransferKeys.for_sender(tid, secrets).seal_chunk(0, True, b"secret")
    with pytest.raises(OpenError):
        TransferKeys.for_receiver(tid, stolen).open_chunk(0, True, nonce, sealed)


def test_secrets_are_opaque_values() -> None:
    a = SessionSecrets(b"a" * 32, b"b" * 32)
    assert repr(a) == "SessionSecrets(...)"


# -- details sealed to the responder's key -------------------------------------------


def test_details_sealed_to_a_key_open_only_for_its_holder() -> None:
    sender, receiver, eve, tid = node(), node(), node(), os.urandom(16)
    init = Initiator(sender)
    sealed = init.seal_details(tid, receiver.public, b"name=secret.bin size=300")
    assert b"secret" not in sealed
    assert open_details(tid, receiver, sender.public, init.public, sealed).startswith(b"name=")
    with pytest.raises(ProofError):  # a member answering at the address
        open_details(tid, eve, sender.public, init.public, sealed)
    with pytest.raises(ProofError):  # told another sender: other keys
        open_details(tid, receiver, eve.public, init.public, sealed)
    with pytest.raises(ProofError):  # another transfer's context
        open_details(os.urandom(16), receiver, sender.public, init.public, sealed)
    with pytest.raises(ProofError):
        open_details(tid, receiver, sender.public, init.public, flip(sealed, 3))
    # The exchange still completes afterwards (the ephemeral is spent by finish only).
    answer = respond(tid, receiver, sender.public, init.public)
    assert init.finish(tid, answer.static_pub, answer.eph_pub, answer.proof) == answer.secrets
    with pytest.raises(RuntimeError):
        init.seal_details(tid, receiver.public, b"again")
    with pytest.raises(ValueError):
        Initiator(sender).seal_details(tid, bytes(32), b"x")


def test_details_sealed_to_one_key_then_answered_by_another_derive_the_answerers_keys() -> None:
    """The initiator keeps the exchange of its details' seal for the same
    key only: details sealed to an offer key, the answer from the node's own
    key (an attached receiver) still verifies and matches that answer; the
    kept exchanges of long-term keys give the same keys every time, and a
    degenerate key is refused every time (a refusal is never kept)."""
    sender, offer_key, receiver, tid = node(), node(), node(), os.urandom(16)
    for _ in range(2):
        init = Initiator(sender)
        init.seal_details(tid, offer_key.public, b"details")
        answer = respond(tid, receiver, sender.public, init.public)
        assert init.finish(tid, answer.static_pub, answer.eph_pub, answer.proof) == answer.secrets
    for _ in range(2):
        with pytest.raises(ValueError):
            open_details(tid, receiver, LOW_ORDER[1], Initiator(sender).public, b"x" * 32)


# -- hello ---------------------------------------------------------------------------


def test_hello_proof_verifies_for_the_key_holder() -> None:
    me = node()
    challenge = HelloChallenge()
    proof = prove_hello(me, challenge.public, "1.0")
    challenge.verify(me.public, "1.0", proof)


def test_a_forged_hello_claiming_anothers_key_is_refused() -> None:
    real, eve = node(), node()
    challenge = HelloChallenge()
    forged = prove_hello(eve, challenge.public, "1.0")
    with pytest.raises(ProofError):
        challenge.verify(real.public, "1.0", forged)  # claims real's key, proves eve's


def test_a_replayed_hello_proof_fails_a_new_challenge() -> None:
    me = node()
    old = HelloChallenge()
    proof = prove_hello(me, old.public, "1.0")
    with pytest.raises(ProofError):
        HelloChallenge().verify(me.public, "1.0", proof)


def test_hello_proof_vouches_for_the_offer_key_it_names() -> None:
    me, attached, eve = node(), node(), node()
    challenge = HelloChallenge()
    proof = prove_hello(me, challenge.public, "1.0", attached.public)
    challenge.verify(me.public, "1.0", proof, attached.public)
    with pytest.raises(ProofError):  # a man in the middle swapping the offer key
        challenge.verify(me.public, "1.0", proof, eve.public)
    with pytest.raises(ProofError):
        challenge.verify(me.public, "1.0", proof)


def test_hello_proof_binds_the_version_and_rejects_bad_keys() -> None:
    me = node()
    challenge = HelloChallenge()
    proof = prove_hello(me, challenge.public, "1.0")
    with pytest.raises(ProofError):
        challenge.verify(me.public, "2.0", proof)
    with pytest.raises(ProofError):
        challenge.verify(bytes(32), "1.0", proof)
    with pytest.raises(ValueError):
        prove_hello(me, bytes(32), "1.0")


# -- a round of hellos to one peer (a challenge asked again before its answer) ---------


def test_an_answer_to_an_earlier_challenge_is_stale_not_an_impostor() -> None:
    me = node()
    hellos = HelloRound()
    first = hellos.ask(0.0)
    second = hellos.ask(0.5)  # asked again (a new connection) before the answer came
    late = prove_hello(me, first, "1.0")
    assert hellos.check(me.public, "1.0", late) == STALE
    assert hellos.pending  # still waiting for the answer to the current one
    assert hellos.check(me.public, "1.0", prove_hello(me, second, "1.0")) == PROVEN
    assert not hellos.pending
    assert hellos.check(me.public, "1.0", late) == STALE  # again, or after the proof
    assert hellos.check(me.public, "1.0", prove_hello(me, second, "1.0")) == STALE


def test_an_impostor_is_refused_whatever_challenges_are_out() -> None:
    real, eve = node(), node()
    hellos = HelloRound()
    challenges = [hellos.ask(float(i)) for i in range(3)]
    for c in challenges:  # eve answers each, naming the real node's key
        assert hellos.check(real.public, "1.0", prove_hello(eve, c, "1.0")) == IMPOSTOR
    assert hellos.check(real.public, "1.0", os.urandom(32)) == IMPOSTOR
    # A proof made for another offer key or version proves nothing either.
    proof = prove_hello(real, challenges[0], "1.0")
    assert hellos.check(real.public, "2.0", proof) == IMPOSTOR
    assert hellos.check(real.public, "1.0", proof, eve.public) == IMPOSTOR


@pytest.mark.parametrize("rtt", [0.5, 7.0, 30.0])
def test_a_path_slower_than_the_hello_retry_is_still_proven(rtt: float) -> None:
    """Answers take ``rtt`` s to come back; the challenger asks again
    whenever :meth:`HelloRound.due` says so. Each unanswered retry doubles
    the wait, so the answer to the newest challenge comes back before the
    next one leaves: proven (before, every answer of a path slower than the
    5 s retry was stale, for ever), after few challenges."""
    me = node()
    hellos = HelloRound(retry=5.0)
    in_flight: list[tuple[float, bytes]] = []  # (arrives at, challenge)
    now, asked = 0.0, 0
    while now < 600.0:
        if hellos.due(now):
            in_flight.append((now + rtt, hellos.ask(now)))
            asked += 1
        for arrives, challenge in [m for m in in_flight if m[0] <= now]:
            in_flight.remove((arrives, challenge))
            if hellos.check(me.public, "1.0", prove_hello(me, challenge, "1.0")) == PROVEN:
                assert asked <= 2 + math.ceil(math.log2(max(1.0, rtt / 5.0))), asked
                assert not hellos.pending and hellos.due(now)  # and the wait starts over
                return
        now += 0.25
    raise AssertionError(f"never proven over a {rtt} s round trip ({asked} challenges)")


def test_a_hello_is_asked_again_only_when_none_is_out_or_it_went_unanswered() -> None:
    me = node()
    hellos = HelloRound(retry=5.0)
    assert hellos.due(0.0) and not hellos.pending
    challenge = hellos.ask(0.0)
    assert not hellos.due(4.9)  # its answer may be on its way: asking now makes it stale
    assert hellos.due(5.0)
    hellos.unsent()  # it never left: forget it, ask at the next chance
    assert hellos.due(0.1) and not hellos.pending
    assert hellos.check(me.public, "1.0", prove_hello(me, challenge, "1.0")) == STALE
    current = hellos.ask(1.0)
    assert hellos.check(me.public, "1.0", prove_hello(me, current, "1.0")) == PROVEN
    assert hellos.due(1.0)


def test_an_answer_to_a_forgotten_challenge_proves_nothing() -> None:
    me = node()
    hellos = HelloRound()
    oldest = hellos.ask(0.0)
    for i in range(HELLO_MEMORY):
        hellos.ask(float(i + 1))
    assert hellos.check(me.public, "1.0", prove_hello(me, oldest, "1.0")) == IMPOSTOR


@settings(max_examples=40, deadline=None)
@given(
    asks=st.integers(min_value=1, max_value=HELLO_MEMORY),
    order=st.permutations(range(HELLO_MEMORY)),
)
def test_a_key_holders_answers_in_any_order_never_fail_and_only_the_current_proves(
    asks: int, order: list[int]
) -> None:
    me = node()
    hellos = HelloRound()
    challenges = [hellos.ask(float(i)) for i in range(asks)]
    verdicts = {}
    for i in (i for i in order if i < asks):  # the answers in any order
        verdicts[i] = hellos.check(me.public, "1.0", prove_hello(me, challenges[i], "1.0"))
    assert IMPOSTOR not in verdicts.values()
    assert verdicts[asks - 1] == PROVEN
    assert all(v == STALE for i, v in verdicts.items() if i != asks - 1)
