"""Values both ends of a session derive the same way, so they never travel."""

from __future__ import annotations

import hashlib


def key_context(session_id: int, digest: bytes) -> bytes:
    """Binds a wrapped image key to one session and one image."""
    return session_id.to_bytes(2, "big") + digest


def image_nonce(session_id: int, digest: bytes) -> bytes:
    """The AES-CTR initial counter block of a session's image. Unique per image key (each
    session draws a fresh key), so deriving it costs nothing in safety and saves 16 bytes
    in every announce."""
    return hashlib.sha256(b"ota-hil ctr nonce" + key_context(session_id, digest)).digest()[:16]
