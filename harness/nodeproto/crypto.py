"""Image encryption, the per-node key exchange, and the START / STATUS MACs.

The image is broadcast once, encrypted with AES-128-CTR under a random image key.
After the transfer each node gets that key wrapped for it, ECIES-style as MCUboot's
encrypted images (ephemeral X25519 against the node's birth-certificate key,
HKDF-SHA256, RFC 3394 AES key wrap). The same exchange yields the node's MAC key,
which authenticates START and the node's STATUS reports. See docs/security.md.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

IMAGE_KEY_SIZE = 16
NONCE_SIZE = 16
KEY_SIZE = 32
WRAPPED_SIZE = IMAGE_KEY_SIZE + 8
ENVELOPE_SIZE = KEY_SIZE + WRAPPED_SIZE
MAC_KEY_SIZE = 32
MAC_SIZE = 16
#: HKDF info prefix; followed by ephemeral public, node public and the caller's context.
WRAP_INFO = b"ota-hil key wrap v1"
START_PREFIX = b"ota-hil start v1"
STATUS_PREFIX = b"ota-hil status v1"


class KeyExchangeError(Exception):
    """An envelope that cannot be read or does not unwrap with this node's key and context."""


def _bytes(name: str, value: bytes, size: int | None = None) -> bytes:
    """``value`` as bytes; TypeError for anything but a bytes-like, ValueError for a bad size."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if size is not None and len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, not {len(value)}")
    return value


def encrypt_image(plaintext: bytes, key: bytes, nonce: bytes) -> bytes:
    """AES-128-CTR; ``nonce`` is the 16-byte initial counter block (big-endian increment)."""
    key = _bytes("image key", key, IMAGE_KEY_SIZE)
    nonce = _bytes("nonce", nonce, NONCE_SIZE)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
    return encryptor.update(plaintext) + encryptor.finalize()


def decrypt_image(ciphertext: bytes, key: bytes, nonce: bytes) -> bytes:
    """The inverse of :func:`encrypt_image` (CTR is its own inverse)."""
    return encrypt_image(ciphertext, key, nonce)


@dataclass(frozen=True)
class WrappedKey:
    """The image key for one node: the gateway's ephemeral X25519 public key and the wrap."""

    ephemeral_public: bytes
    wrapped: bytes

    def __post_init__(self) -> None:
        for name, value, size in (
            ("ephemeral public key", self.ephemeral_public, KEY_SIZE),
            ("wrapped key", self.wrapped, WRAPPED_SIZE),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise KeyExchangeError(f"key envelope: {name} must be {size} bytes")

    def encode(self) -> bytes:
        return self.ephemeral_public + self.wrapped

    @classmethod
    def decode(cls, blob: bytes) -> WrappedKey:
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise KeyExchangeError(f"key envelope must be bytes, not {type(blob).__name__}")
        blob = bytes(blob)
        if len(blob) != ENVELOPE_SIZE:
            raise KeyExchangeError(f"key envelope is {len(blob)} bytes, expected {ENVELOPE_SIZE}")
        return cls(blob[:KEY_SIZE], blob[KEY_SIZE:])


def _derive(shared: bytes, ephemeral_public: bytes, node_public: bytes, context: bytes) -> bytes:
    # Both public keys go into the info (as HPKE's kem_context): X25519 ignores the top
    # bit of a public key and any low-order component, so without them an altered
    # ephemeral key could still unwrap.
    info = WRAP_INFO + ephemeral_public + node_public + _bytes("context", context)
    return HKDF(
        algorithm=hashes.SHA256(), length=IMAGE_KEY_SIZE + MAC_KEY_SIZE, salt=None, info=info
    ).derive(shared)


def wrap_image_key(
    image_key: bytes,
    node_public_key: bytes,
    context: bytes,
    ephemeral_private: bytes | None = None,
) -> tuple[WrappedKey, bytes]:
    """Wrap ``image_key`` for one node; return the envelope and the node's 32-byte MAC key.

    ``context`` binds the exchange to one session (session id and image digest).
    ``ephemeral_private`` (32 bytes) makes the envelope deterministic, for simulations;
    otherwise a fresh ephemeral key is drawn. Never reuse one across nodes in a real run.
    """
    image_key = _bytes("image key", image_key, IMAGE_KEY_SIZE)
    node_public = _bytes("node public key", node_public_key, KEY_SIZE)
    if ephemeral_private is None:
        ephemeral = X25519PrivateKey.generate()
    else:
        ephemeral = X25519PrivateKey.from_private_bytes(
            _bytes("ephemeral private key", ephemeral_private, KEY_SIZE)
        )
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(node_public))
    except ValueError:
        raise KeyExchangeError("node public key is a low-order point; no shared key") from None
    okm = _derive(shared, ephemeral_public, node_public, context)
    wrapped = aes_key_wrap(okm[:IMAGE_KEY_SIZE], image_key)
    return WrappedKey(ephemeral_public, wrapped), okm[IMAGE_KEY_SIZE:]


def unwrap_image_key(
    envelope: WrappedKey, node_private_key: bytes, context: bytes
) -> tuple[bytes, bytes]:
    """The node's side: (image key, MAC key), or :class:`KeyExchangeError`.

    A wrong node key, a wrong context or an altered envelope all fail the key wrap's
    integrity check and raise KeyExchangeError; nothing else is raised.
    """
    try:
        node = X25519PrivateKey.from_private_bytes(
            _bytes("node private key", node_private_key, KEY_SIZE)
        )
        node_public = node.public_key().public_bytes_raw()
        shared = node.exchange(X25519PublicKey.from_public_bytes(envelope.ephemeral_public))
        okm = _derive(shared, envelope.ephemeral_public, node_public, context)
        image_key = aes_key_unwrap(okm[:IMAGE_KEY_SIZE], envelope.wrapped)
    except InvalidUnwrap:
        raise KeyExchangeError(
            "image key does not unwrap: wrong node key, wrong context or altered envelope"
        ) from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise KeyExchangeError(f"cannot unwrap image key: {exc}") from None
    return image_key, okm[IMAGE_KEY_SIZE:]


def _text(name: str, value: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return _blob(name, value.encode())


def _blob(name: str, raw: bytes) -> bytes:
    """``raw`` with a u16 big-endian length in front."""
    raw = _bytes(name, raw)
    if len(raw) > 0xFFFF:
        raise ValueError(f"{name} is longer than 65535 bytes")
    return struct.pack(">H", len(raw)) + raw


def _mac(mac_key: bytes, message: bytes) -> bytes:
    key = _bytes("MAC key", mac_key, MAC_KEY_SIZE)
    return hmac.digest(key, message, "sha256")[:MAC_SIZE]


def start_mac(
    mac_key: bytes,
    node_id: str,
    digest: bytes,
    version: str,
    counter: int,
    allow_downgrade: bool,
) -> bytes:
    """HMAC-SHA256/128 over START's fields; the layout is in docs/security.md."""
    if not 0 <= counter <= 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError(f"counter {counter} does not fit in 64 bits")
    message = b"".join(
        (
            START_PREFIX,
            _text("node id", node_id),
            _blob("digest", digest),
            _text("version", version),
            struct.pack(">QB", counter, 1 if allow_downgrade else 0),
        )
    )
    return _mac(mac_key, message)


def status_mac(
    mac_key: bytes, node_id: str, state: int, error: int, counter: int, version: str
) -> bytes:
    """HMAC-SHA256/128 over a STATUS report's fields; the layout is in docs/security.md."""
    for name, value, limit in (
        ("state", state, 0xFFFF_FFFF),
        ("error", error, 0xFFFF_FFFF),
        ("counter", counter, 0xFFFF_FFFF_FFFF_FFFF),
    ):
        if not 0 <= value <= limit:
            raise ValueError(f"{name} {value} is out of range 0..{limit}")
    message = b"".join(
        (
            STATUS_PREFIX,
            _text("node id", node_id),
            struct.pack(">IIQ", state, error, counter),
            _text("version", version),
        )
    )
    return _mac(mac_key, message)


def macs_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison (for equal lengths)."""
    return hmac.compare_digest(_bytes("MAC", a), _bytes("MAC", b))
