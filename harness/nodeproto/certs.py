"""Birth certificates: a node's id and X25519 public key, signed by the manufacturer CA.

A node leaves the factory holding its X25519 private key and a certificate::

    offset  size  field
    0       1     version, 1
    1       1     n = length of the node id in bytes, 1..64
    2       n     node id, UTF-8
    2+n     32    node X25519 public key, raw
    34+n    64    Ed25519 signature by the CA over SIGNED_PREFIX + bytes [0, 34+n)

The gateway trusts exactly one thing: the CA's Ed25519 public key. See docs/security.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
#: Domain separation: a CA signature over a certificate can mean nothing else.
SIGNED_PREFIX = b"ota-hil birth certificate v1"
MAX_NODE_ID_BYTES = 64
KEY_SIZE = 32
SIGNATURE_SIZE = 64
#: HKDF info labels for a seeded CA: its own Ed25519 key, then each node's X25519 key.
_CA_KEY_INFO = b"ota-hil ca key v1"
_NODE_KEY_INFO = b"ota-hil node key v1"


class CertificateError(Exception):
    """A birth certificate that cannot be read or is not to be trusted; says why."""


def _node_id_bytes(node_id: str) -> bytes:
    if not isinstance(node_id, str):
        raise CertificateError(f"node id must be a str, not {type(node_id).__name__}")
    try:
        raw = node_id.encode()
    except UnicodeEncodeError:
        raise CertificateError(f"node id {node_id!r} is not valid UTF-8 text") from None
    if not 1 <= len(raw) <= MAX_NODE_ID_BYTES:
        raise CertificateError(
            f"node id {node_id!r} is {len(raw)} bytes of UTF-8; must be 1..{MAX_NODE_ID_BYTES}"
        )
    return raw


def _body(raw_node_id: bytes, public_key: bytes) -> bytes:
    return bytes((VERSION, len(raw_node_id))) + raw_node_id + public_key


@dataclass(frozen=True)
class BirthCertificate:
    node_id: str
    public_key: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _node_id_bytes(self.node_id)
        for name, value, size in (
            ("public key", self.public_key, KEY_SIZE),
            ("signature", self.signature, SIGNATURE_SIZE),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise CertificateError(
                    f"birth certificate of {self.node_id!r}: {name} must be {size} bytes"
                )

    def signed_bytes(self) -> bytes:
        """What the CA signs: the domain prefix, then everything before the signature."""
        return SIGNED_PREFIX + _body(self.node_id.encode(), self.public_key)

    def encode(self) -> bytes:
        return _body(self.node_id.encode(), self.public_key) + self.signature

    @classmethod
    def decode(cls, data: bytes) -> BirthCertificate:
        """Parse an encoded certificate; any malformed input raises :class:`CertificateError`.

        Decoding checks the layout only; :func:`verify_certificate` checks the signature.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CertificateError(f"birth certificate must be bytes, not {type(data).__name__}")
        data = bytes(data)
        if len(data) < 2:
            raise CertificateError(f"birth certificate truncated: {len(data)} bytes")
        if data[0] != VERSION:
            raise CertificateError(
                f"birth certificate version {data[0]} is not supported (expected {VERSION})"
            )
        n = data[1]
        if not 1 <= n <= MAX_NODE_ID_BYTES:
            raise CertificateError(f"birth certificate node id length {n} is not 1..64")
        expected = 2 + n + KEY_SIZE + SIGNATURE_SIZE
        if len(data) < expected:
            raise CertificateError(
                f"birth certificate truncated: {len(data)} bytes, expected {expected}"
            )
        if len(data) > expected:
            raise CertificateError(
                f"birth certificate has {len(data) - expected} trailing bytes "
                f"(expected {expected} bytes)"
            )
        try:
            node_id = data[2 : 2 + n].decode()
        except UnicodeDecodeError:
            raise CertificateError("birth certificate node id is not valid UTF-8") from None
        return cls(
            node_id=node_id,
            public_key=data[2 + n : 2 + n + KEY_SIZE],
            signature=data[2 + n + KEY_SIZE :],
        )


@dataclass(frozen=True)
class NodeIdentity:
    """What a node holds from the factory: its certificate and its X25519 private key."""

    node_id: str
    certificate: BirthCertificate
    private_key: bytes = field(repr=False)


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)


class ManufacturerCA:
    """The manufacturer's Ed25519 signing key, which issues birth certificates.

    A CA made by :meth:`from_seed` issues the same node keys for the same node ids
    (reproducible simulated fleets); any other CA gives each node a random key.
    """

    def __init__(self, private_key: Ed25519PrivateKey, seed: bytes | None = None) -> None:
        self._key = private_key
        self._seed = seed
        self.public_key: bytes = private_key.public_key().public_bytes_raw()

    def __repr__(self) -> str:
        kind = "seeded" if self._seed is not None else "random"
        return f"<ManufacturerCA {kind} public_key={self.public_key.hex()}>"

    @classmethod
    def generate(cls) -> ManufacturerCA:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> ManufacturerCA:
        """The CA for ``seed``: same seed, same CA key and same node keys."""
        if not isinstance(seed, bytes):
            raise TypeError(f"seed must be bytes, not {type(seed).__name__}")
        return cls(Ed25519PrivateKey.from_private_bytes(_hkdf(seed, _CA_KEY_INFO)), seed)

    @classmethod
    def from_private_bytes(cls, data: bytes) -> ManufacturerCA:
        """The CA for a raw 32-byte Ed25519 private key; its node keys are random."""
        if len(data) != KEY_SIZE:
            raise ValueError(f"CA private key must be {KEY_SIZE} bytes, not {len(data)}")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(data)))

    def private_bytes(self) -> bytes:
        return self._key.private_bytes_raw()

    def issue(self, node_id: str) -> NodeIdentity:
        """A new node identity and its certificate signed by this CA."""
        raw_id = _node_id_bytes(node_id)
        if self._seed is None:
            node_key = X25519PrivateKey.generate()
            private = node_key.private_bytes_raw()
        else:
            private = _hkdf(self._seed, _NODE_KEY_INFO + raw_id)
            node_key = X25519PrivateKey.from_private_bytes(private)
        public = node_key.public_key().public_bytes_raw()
        signature = self._key.sign(SIGNED_PREFIX + _body(raw_id, public))
        return NodeIdentity(node_id, BirthCertificate(node_id, public, signature), private)


@functools.lru_cache(maxsize=64)
def _ca_key(ca_public_key: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(ca_public_key)


def verify_certificate(
    cert: BirthCertificate, ca_public_key: bytes, node_id: str | None = None
) -> None:
    """Raise :class:`CertificateError` unless ``cert`` was signed by the CA ``ca_public_key``.

    With ``node_id``, the certificate must also be that node's. A trusted key that is not
    32 bytes is the caller's mistake and raises ValueError.
    """
    if len(ca_public_key) != KEY_SIZE:
        raise ValueError(
            f"trusted CA public key must be {KEY_SIZE} bytes, not {len(ca_public_key)}"
        )
    if node_id is not None and cert.node_id != node_id:
        raise CertificateError(f"birth certificate is for node {cert.node_id!r}, not {node_id!r}")
    try:
        _ca_key(bytes(ca_public_key)).verify(cert.signature, cert.signed_bytes())
    except InvalidSignature:
        raise CertificateError(
            f"birth certificate of {cert.node_id!r} is not signed by the trusted CA"
        ) from None
