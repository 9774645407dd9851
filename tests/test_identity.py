"""Tests for peercrypt.crypto.identity: key pairs, fingerprints, identity file, network key."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import zmq.utils.z85

from peercrypt.crypto.identity import (
    IDENTITY_FILE,
    IdentityError,
    KeyPair,
    fingerprint,
    load_or_create_identity,
    network_salt_and_secret,
    network_server_keys,
    new_network_key,
    normalise_fingerprint,
)

FP_RE = re.compile(r"^[a-z2-7]{4}(-[a-z2-7]{4}){7}$")


def test_keypair_generate_and_from_secret_agree() -> None:
    pair = KeyPair.generate()
    assert len(pair.secret) == 32
    assert len(pair.public) == 32
    assert KeyPair.from_secret(pair.secret) == pair
    assert pair != KeyPair.generate()
    assert zmq.utils.z85.decode(pair.z85_public) == pair.public
    assert zmq.utils.z85.decode(pair.z85_secret) == pair.secret
    assert len(pair.z85_public) == 40


def test_repr_never_shows_the_secret() -> None:
    pair = KeyPair.generate()
    text = repr(pair)
    assert fingerprint(pair.public) in text
    assert pair.secret.hex() not in text
    assert pair.z85_secret.decode() not in text


def test_fingerprint_format() -> None:
    fp = fingerprint(b"\x01" * 32)
    assert FP_RE.match(fp), fp
    assert len(fp) == 39
    assert fingerprint(b"\x01" * 32) == fp
    assert fingerprint(b"\x02" * 32) != fp


@pytest.mark.parametrize(
    "transform",
    [
        lambda fp: fp,
        lambda fp: fp.replace("-", ""),
        lambda fp: fp.upper(),
        lambda fp: f"  {fp.upper()}  ",
        lambda fp: fp.replace("-", " "),
    ],
)
def test_normalise_fingerprint_accepts_common_spellings(transform: object) -> None:
    fp = fingerprint(KeyPair.generate().public)
    assert callable(transform)
    assert normalise_fingerprint(transform(fp)) == fp


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "abcd",
        "abcd-efgh-ijkl-mnop-qrst-uvwx-yz23-456",  # 31 characters
        "abcd-efgh-ijkl-mnop-qrst-uvwx-yz23-45677",  # 33 characters
        "abcd-efgh-ijkl-mnop-qrst-uvwx-yz23-4501",  # 0 and 1 are not base32
        "abcd-efgh-ijkl-mnop-qrst-uvwx-yz23-45é7",
        "abcd_efgh_ijkl_mnop_qrst_uvwx_yz23_4567",
    ],
)
def test_normalise_fingerprint_rejects_junk(junk: str) -> None:
    with pytest.raises(ValueError):
        normalise_fingerprint(junk)


def test_identity_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    first = load_or_create_identity(data_dir)
    path = data_dir / IDENTITY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == first.seed
    assert KeyPair.from_seed(first.seed) == first
    assert stat.S_IMODE(data_dir.stat().st_mode) & 0o077 == 0
    again = load_or_create_identity(data_dir)
    assert again == first


def test_identity_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    path = tmp_path / IDENTITY_FILE
    for mode in (0o644, 0o640, 0o604, 0o660):
        os.chmod(path, mode)
        with pytest.raises(IdentityError, match="chmod 600"):
            load_or_create_identity(tmp_path)
    os.chmod(path, 0o600)
    load_or_create_identity(tmp_path)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_identity_of_wrong_length_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / IDENTITY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"k" * size)
    os.close(fd)
    with pytest.raises(IdentityError):
        load_or_create_identity(tmp_path)
    assert path.read_bytes() == b"k" * size  # never overwritten


def test_network_server_keys_are_deterministic_per_key() -> None:
    a1 = network_server_keys("correct horse battery staple")
    a2 = network_server_keys("correct horse battery staple")
    b = network_server_keys("correct horse battery staplf")
    assert a1 == a2
    assert a1.public != b.public
    assert a1.secret != b.secret
    assert KeyPair.from_secret(a1.secret) == a1


def test_open_network_key_is_fixed_and_distinct() -> None:
    open_keys = network_server_keys(None)
    assert open_keys == network_server_keys(None)
    assert open_keys != network_server_keys(new_network_key())


def test_empty_network_key_is_refused() -> None:
    with pytest.raises(ValueError):
        network_server_keys("")


def test_new_network_key_is_random_urlsafe_text() -> None:
    k1, k2 = new_network_key(), new_network_key()
    assert k1 != k2
    assert len(k1) == 5 + 22 + 1 + 43
    assert re.fullmatch(r"pcn1\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}", k1)


def test_generated_keys_carry_their_own_salt() -> None:
    key = new_network_key()
    salt, secret = network_salt_and_secret(key)
    assert key.startswith("pcn1.") and len(secret) == 32 and len(salt) == 16 + 24
    # Same secret, other salt: another network (no precomputation serves both).
    prefix, _salt, secret_text = key.split(".")
    other = f"{prefix}.{new_network_key().split('.')[1]}.{secret_text}"
    assert network_salt_and_secret(other)[1] == secret
    assert network_server_keys(other) != network_server_keys(key)
    assert network_server_keys(key) == network_server_keys(key)


@pytest.mark.parametrize("short", ["x", "wrong-key", "a" * 19])
def test_short_passphrases_are_refused_without_echoing_them(short: str) -> None:
    with pytest.raises(ValueError, match="at least 20") as info:
        network_server_keys(short)
    assert short not in str(info.value)
    network_server_keys("a" * 20)  # the floor itself is accepted


@pytest.mark.parametrize(
    "damaged", ["pcn1.", "pcn1.abc", "pcn1.!!!.???", "pcn1." + "A" * 22 + "." + "B" * 10]
)
def test_damaged_generated_keys_are_refused(damaged: str) -> None:
    with pytest.raises(ValueError, match="damaged"):
        network_server_keys(damaged)
