"""Tests for birth certificates, the image-key exchange, the START/STATUS MACs and `certs`."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import stat
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from hypothesis import given
from hypothesis import strategies as st

from harness.cli.certs import certs_command
from harness.nodeproto.certs import (
    BirthCertificate,
    CertificateError,
    ManufacturerCA,
    verify_certificate,
)
from harness.nodeproto.crypto import (
    IMAGE_KEY_SIZE,
    KeyExchangeError,
    WrappedKey,
    decrypt_image,
    encrypt_image,
    macs_equal,
    start_mac,
    status_mac,
    unwrap_image_key,
    wrap_image_key,
)

CA = ManufacturerCA.from_seed(b"test fleet")
NODE = CA.issue("node-0001")
DIGEST = hashlib.sha256(b"firmware 1.2.0").digest()
CONTEXT = b"session-1" + DIGEST
IMAGE_KEY = bytes(range(IMAGE_KEY_SIZE))


# --- birth certificates ---------------------------------------------------------------


def test_certificate_round_trip_and_layout() -> None:
    cert = NODE.certificate
    data = cert.encode()
    assert data[0] == 1
    assert data[1] == len(b"node-0001")
    assert data[2:11] == b"node-0001"
    assert data[11:43] == cert.public_key
    assert data[43:] == cert.signature
    assert len(data) == 2 + 9 + 32 + 64
    assert BirthCertificate.decode(data) == cert
    assert cert.signed_bytes() == b"ota-hil birth certificate v1" + data[:43]
    # The node's key matches the certificate.
    public = X25519PrivateKey.from_private_bytes(NODE.private_key).public_key()
    assert public.public_bytes_raw() == cert.public_key


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"\x01", "truncated"),
        (b"\x02" + NODE.certificate.encode()[1:], "version 2"),
        (b"\x01\x00" + bytes(96), "length 0"),
        (b"\x01\x41" + bytes(65 + 96), "length 65"),
        (NODE.certificate.encode()[:-1], "truncated"),
        (NODE.certificate.encode() + b"\x00", "trailing"),
        (b"\x01\x02\xff\xfe" + bytes(96), "UTF-8"),
    ],
)
def test_decode_refuses_malformed(data: bytes, message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        BirthCertificate.decode(data)


def test_decode_refuses_every_truncation() -> None:
    data = NODE.certificate.encode()
    for n in range(len(data)):
        with pytest.raises(CertificateError):
            BirthCertificate.decode(data[:n])


@given(st.binary(max_size=200))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    try:
        cert = BirthCertificate.decode(data)
    except CertificateError:
        return
    assert cert.encode() == data


@given(st.binary(max_size=70), st.binary(min_size=95, max_size=97))
def test_decode_near_valid_bytes(node_id: bytes, rest: bytes) -> None:
    # Consistent length bytes reach the node id, UTF-8 and size checks.
    data = bytes((1, len(node_id))) + node_id + rest
    try:
        cert = BirthCertificate.decode(data)
    except CertificateError:
        return
    assert cert.encode() == data


def test_verify_accepts_a_ca_issued_certificate() -> None:
    verify_certificate(NODE.certificate, CA.public_key)
    verify_certificate(NODE.certificate, CA.public_key, node_id="node-0001")


def test_verify_refuses_a_certificate_from_another_ca() -> None:
    forged = ManufacturerCA.generate().issue("node-0001")
    with pytest.raises(CertificateError, match="'node-0001' is not signed by the trusted CA"):
        verify_certificate(forged.certificate, CA.public_key)
    # The forger's certificate with the genuine public key: still refused.
    spliced = dataclasses.replace(forged.certificate, public_key=NODE.certificate.public_key)
    with pytest.raises(CertificateError, match="not signed by the trusted CA"):
        verify_certificate(spliced, CA.public_key)


@pytest.mark.parametrize(
    "change",
    [
        {"node_id": "node-0002"},
        {"public_key": CA.issue("node-0002").certificate.public_key},
        {"signature": bytes([NODE.certificate.signature[0] ^ 1]) + NODE.certificate.signature[1:]},
    ],
    ids=["node_id", "public_key", "signature"],
)
def test_verify_refuses_a_changed_certificate(change: dict[str, object]) -> None:
    changed = dataclasses.replace(NODE.certificate, **change)
    with pytest.raises(CertificateError, match="not signed by the trusted CA"):
        verify_certificate(changed, CA.public_key)


def test_verify_refuses_another_nodes_certificate() -> None:
    with pytest.raises(CertificateError, match="for node 'node-0001', not 'node-0002'"):
        verify_certificate(NODE.certificate, CA.public_key, node_id="node-0002")


def test_seeded_ca_is_deterministic() -> None:
    again = ManufacturerCA.from_seed(b"test fleet")
    assert again.public_key == CA.public_key
    assert again.private_bytes() == CA.private_bytes()
    assert again.issue("node-0001") == NODE
    other = ManufacturerCA.from_seed(b"test fleet 2")
    assert other.public_key != CA.public_key
    assert other.issue("node-0001").private_key != NODE.private_key
    assert CA.issue("node-0002").private_key != NODE.private_key


def test_unseeded_ca_is_random_and_round_trips() -> None:
    ca = ManufacturerCA.generate()
    assert ca.public_key != ManufacturerCA.generate().public_key
    assert ca.issue("n").private_key != ca.issue("n").private_key
    loaded = ManufacturerCA.from_private_bytes(ca.private_bytes())
    assert loaded.public_key == ca.public_key
    verify_certificate(loaded.issue("n").certificate, ca.public_key)
    assert ca.private_bytes().hex() not in repr(ca)
    assert NODE.private_key.hex() not in repr(NODE)


@pytest.mark.parametrize("node_id", ["", "x" * 65, "\ud800"])
def test_issue_refuses_bad_node_ids(node_id: str) -> None:
    with pytest.raises(CertificateError):
        CA.issue(node_id)


# --- image encryption -----------------------------------------------------------------


def test_image_encryption_round_trip() -> None:
    plaintext = bytes(range(256)) * 40 + b"tail"
    nonce = bytes(16)
    ciphertext = encrypt_image(plaintext, IMAGE_KEY, nonce)
    assert len(ciphertext) == len(plaintext)
    assert ciphertext != plaintext
    assert decrypt_image(ciphertext, IMAGE_KEY, nonce) == plaintext
    assert decrypt_image(ciphertext, bytes(16), nonce) != plaintext
    assert encrypt_image(plaintext, IMAGE_KEY, b"\x01" + bytes(15)) != ciphertext


def test_image_encryption_is_aes128_ctr() -> None:
    # NIST SP 800-38A, F.5.1 CTR-AES128.Encrypt, blocks 1-2.
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    counter = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    plaintext = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
    expected = "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
    assert encrypt_image(plaintext, key, counter).hex() == expected


def test_image_encryption_refuses_other_key_sizes() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        encrypt_image(b"x", bytes(32), bytes(16))
    with pytest.raises(ValueError, match="16 bytes"):
        encrypt_image(b"x", bytes(16), bytes(12))


# --- key exchange ---------------------------------------------------------------------


def test_wrap_unwrap_round_trip() -> None:
    envelope, gateway_mac = wrap_image_key(IMAGE_KEY, NODE.certificate.public_key, CONTEXT)
    assert len(envelope.encode()) == 56
    assert WrappedKey.decode(envelope.encode()) == envelope
    image_key, node_mac = unwrap_image_key(envelope, NODE.private_key, CONTEXT)
    assert image_key == IMAGE_KEY
    assert node_mac == gateway_mac
    assert len(gateway_mac) == 32
    # A fresh ephemeral key each time: envelopes and MAC keys differ per wrap.
    again, other_mac = wrap_image_key(IMAGE_KEY, NODE.certificate.public_key, CONTEXT)
    assert again != envelope
    assert other_mac != gateway_mac


def test_wrap_matches_the_documented_derivation() -> None:
    """Recomputed here from docs/security.md, independently of the code under test."""
    node = X25519PrivateKey.from_private_bytes(bytes(range(32)))
    ephemeral = X25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    node_pub = node.public_key().public_bytes_raw()
    eph_pub = ephemeral.public_key().public_bytes_raw()
    context = b"session-1" + hashlib.sha256(b"").digest()
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=48,
        salt=None,
        info=b"ota-hil key wrap v1" + eph_pub + node_pub + context,
    ).derive(ephemeral.exchange(X25519PublicKey.from_public_bytes(node_pub)))
    envelope, mac_key = wrap_image_key(
        IMAGE_KEY, node_pub, context, ephemeral_private=bytes(range(32, 64))
    )
    assert envelope.ephemeral_public == eph_pub
    assert envelope.wrapped == aes_key_wrap(okm[:16], IMAGE_KEY)
    assert mac_key == okm[16:]
    # The test vector printed in docs/security.md.
    assert envelope.encode().hex() == (
        "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254"
        "02f70b4108fcc8c56c537b6852375c453b4b17e5b2c1f1ee"
    )


def test_unwrap_refuses_the_wrong_node_key_or_context() -> None:
    envelope, _ = wrap_image_key(IMAGE_KEY, NODE.certificate.public_key, CONTEXT)
    with pytest.raises(KeyExchangeError, match="does not unwrap"):
        unwrap_image_key(envelope, CA.issue("node-0002").private_key, CONTEXT)
    with pytest.raises(KeyExchangeError, match="does not unwrap"):
        unwrap_image_key(envelope, NODE.private_key, b"session-2" + DIGEST)


def test_unwrap_refuses_any_tampered_bit() -> None:
    envelope, _ = wrap_image_key(IMAGE_KEY, NODE.certificate.public_key, CONTEXT)
    blob = envelope.encode()
    for i in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[i] ^= 1 << bit
            with pytest.raises(KeyExchangeError):
                unwrap_image_key(WrappedKey.decode(bytes(tampered)), NODE.private_key, CONTEXT)


@pytest.mark.parametrize("blob", [b"", bytes(55), bytes(57), "not bytes", 56])
def test_envelope_decode_refuses_malformed(blob: object) -> None:
    with pytest.raises(KeyExchangeError):
        WrappedKey.decode(blob)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("envelope", "private", "context"),
    [
        (b"raw bytes", NODE.private_key, CONTEXT),
        (WrappedKey(bytes(32), bytes(24)), NODE.private_key, CONTEXT),  # low-order point
        (WrappedKey(bytes([9]) + bytes(31), bytes(24)), bytes(31), CONTEXT),
        (WrappedKey(bytes([9]) + bytes(31), bytes(24)), NODE.private_key, "text"),
    ],
)
def test_unwrap_raises_only_key_exchange_error(
    envelope: object, private: bytes, context: bytes
) -> None:
    with pytest.raises(KeyExchangeError):
        unwrap_image_key(envelope, private, context)  # type: ignore[arg-type]


def test_wrap_refuses_a_low_order_node_key() -> None:
    with pytest.raises(KeyExchangeError, match="low-order"):
        wrap_image_key(IMAGE_KEY, bytes(32), CONTEXT)


def test_wrap_with_a_given_ephemeral_key_is_deterministic() -> None:
    eph = bytes(range(100, 132))
    first = wrap_image_key(IMAGE_KEY, NODE.certificate.public_key, CONTEXT, eph)
    assert wrap_image_key(IMAGE_KEY, NODE.certificate.public_key, CONTEXT, eph) == first


# --- START and STATUS MACs ------------------------------------------------------------

MAC_KEY = bytes(range(32))
START = {
    "node_id": "node-0001",
    "digest": DIGEST,
    "version": "1.2.0",
    "counter": 7,
    "allow_downgrade": False,
}


def test_start_mac_matches_the_documented_layout() -> None:
    message = (
        b"ota-hil start v1"
        + b"\x00\x09node-0001"
        + b"\x00\x20"
        + DIGEST
        + b"\x00\x051.2.0"
        + struct.pack(">QB", 7, 0)
    )
    expected = hmac.new(MAC_KEY, message, "sha256").digest()[:16]
    assert start_mac(MAC_KEY, **START) == expected


@pytest.mark.parametrize(
    "change",
    [
        {"node_id": "node-0002"},
        {"digest": hashlib.sha256(b"other").digest()},
        {"version": "1.2.1"},
        {"counter": 8},
        {"allow_downgrade": True},
        # Moving bytes between fields must change the MAC too.
        {"node_id": "node-00011.2.0", "version": ""},
    ],
)
def test_start_mac_covers_every_field(change: dict[str, object]) -> None:
    base = start_mac(MAC_KEY, **START)
    assert len(base) == 16
    assert start_mac(MAC_KEY, **{**START, **change}) != base  # type: ignore[arg-type]
    assert start_mac(bytes(32), **START) != base


def test_status_mac_matches_the_documented_layout_and_covers_every_field() -> None:
    message = b"ota-hil status v1" + b"\x00\x09node-0001" + struct.pack(">IIQ", 3, 0, 7)
    message += b"\x00\x051.2.0"
    base = status_mac(MAC_KEY, "node-0001", 3, 0, 7, "1.2.0")
    assert base == hmac.new(MAC_KEY, message, "sha256").digest()[:16]
    for args in [
        ("node-0002", 3, 0, 7, "1.2.0"),
        ("node-0001", 4, 0, 7, "1.2.0"),
        ("node-0001", 3, 1, 7, "1.2.0"),
        ("node-0001", 3, 0, 8, "1.2.0"),
        ("node-0001", 3, 0, 7, "1.1.0"),
    ]:
        assert status_mac(MAC_KEY, *args) != base
    # Same key, same-looking fields: a STATUS MAC never passes for a START MAC.
    assert base != start_mac(MAC_KEY, **START)


def test_macs_refuse_out_of_range_fields() -> None:
    with pytest.raises(ValueError, match="64 bits"):
        start_mac(MAC_KEY, **{**START, "counter": -1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="state"):
        status_mac(MAC_KEY, "n", 2**32, 0, 0, "1")
    with pytest.raises(ValueError, match="32 bytes"):
        start_mac(bytes(16), **START)  # type: ignore[arg-type]


def test_macs_equal() -> None:
    mac = start_mac(MAC_KEY, **START)
    assert macs_equal(mac, bytes(mac))
    assert not macs_equal(mac, bytes([mac[0] ^ 1]) + mac[1:])
    assert not macs_equal(mac, mac[:15])


# --- ota-hil certs ----------------------------------------------------------------------


def test_certs_cli_end_to_end(tmp_path: Path) -> None:
    runner = CliRunner()
    pki = tmp_path / "pki"

    def run(*args: str | Path, code: int = 0) -> str:
        result = runner.invoke(certs_command, [str(a) for a in args])
        assert result.exit_code == code, result.output
        return result.output

    out = run("ca", "--out", pki)
    pub = (pki / "ca.pub").read_text().strip()
    assert f"CA public key: {pub}" in out
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600
    ca = ManufacturerCA.from_private_bytes(bytes.fromhex((pki / "ca.key").read_text()))
    assert ca.public_key.hex() == pub

    run("issue", "--ca", pki / "ca.key", "--out", pki, "--count", "3")
    for name in ("node-0001", "node-0002", "node-0003"):
        cert = BirthCertificate.decode((pki / f"{name}.cert").read_bytes())
        verify_certificate(cert, ca.public_key, node_id=name)
        key = bytes.fromhex((pki / f"{name}.key").read_text())
        assert X25519PrivateKey.from_private_bytes(key).public_key().public_bytes_raw() == (
            cert.public_key
        )
        assert stat.S_IMODE((pki / f"{name}.key").stat().st_mode) == 0o600

    out = run("show", pki / "node-0002.cert", "--ca", pki / "ca.pub")
    assert "node id: node-0002" in out
    assert "signed by the trusted CA: yes" in out

    run("ca", "--out", tmp_path / "other")
    out = run("show", pki / "node-0002.cert", "--ca", tmp_path / "other" / "ca.pub", code=1)
    assert "signed by the trusted CA: no" in out

    out = run("ca", "--out", pki, code=1)
    assert "refusing to overwrite" in out
    assert (pki / "ca.pub").read_text().strip() == pub
    out = run("issue", "--ca", pki / "ca.key", "--out", pki, "node-0001", code=1)
    assert "refusing to overwrite" in out
    run("ca", "--out", pki, "--force")
    assert (pki / "ca.pub").read_text().strip() != pub


def test_certs_cli_seed_and_errors(tmp_path: Path) -> None:
    runner = CliRunner()

    def run(*args: str | Path) -> str:
        result = runner.invoke(certs_command, [str(a) for a in args])
        assert result.exit_code == 1, result.output
        return result.output

    seeded = runner.invoke(certs_command, ["ca", "--out", str(tmp_path / "a"), "--seed", "x"])
    assert ManufacturerCA.from_seed(b"x").public_key.hex() in seeded.output
    (tmp_path / "bad.key").write_text("zz\n")
    (tmp_path / "junk.cert").write_bytes(b"\x01\x05abc")
    assert "cannot read" in run("issue", "--ca", tmp_path / "none.key", "--out", tmp_path, "n")
    assert "not hex" in run("issue", "--ca", tmp_path / "bad.key", "--out", tmp_path, "n")
    assert "ca.key" in run("issue", "--ca", tmp_path / "a" / "ca.pub", "--out", tmp_path, "n")
    assert "cannot name a file" in run(
        "issue", "--ca", tmp_path / "a" / "ca.key", "--out", tmp_path, "../evil"
    )
    assert "truncated" in run("show", tmp_path / "junk.cert")
    assert "no node ids" in run("issue", "--ca", tmp_path / "a" / "ca.key", "--out", tmp_path)
