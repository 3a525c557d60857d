"""Everything a distribution session needs to know before it starts."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from ...nodeproto.certs import BirthCertificate
from ...nodeproto.context import image_nonce, key_context
from ...nodeproto.crypto import IMAGE_KEY_SIZE, encrypt_image


@dataclass(frozen=True)
class SessionPlan:
    """One image to a set of nodes over one medium.

    The image is broadcast encrypted (``ciphertext``); ``digest`` is the sha256 of the
    plaintext, which each node checks after unwrapping the key.
    """

    session_id: int
    version: str
    digest: bytes
    ciphertext: bytes = field(repr=False)
    image_key: bytes = field(repr=False)
    nonce: bytes
    nodes: tuple[str, ...]
    max_frame: int
    #: How long to wait for a node's answer to a unicast frame.
    response_timeout: float
    ca_public_key: bytes
    #: Monotonic start counter; a node refuses a start whose counter it has seen.
    counter: int
    allow_downgrade: bool = False
    #: Tries of a unicast step in a row; a node that never answers is tried again after
    #: the others, ``passes`` times in all, before it fails (a fade passes meanwhile).
    retries: int = 6
    passes: int = 3
    #: Seconds between two passes over silent nodes (at least): time to reboot or to come
    #: out of a fade.
    pass_interval: float = 2.0
    #: Bitmap rounds before nodes still missing blocks are given up.
    max_rounds: int = 40
    #: Share of a round's candidate blocks it may re-broadcast needlessly to stop polling
    #: early (0 polls until the union is exact).
    repair_waste: float = 0.002
    announce_repeats: int = 2
    #: Seconds a node needs from START to answering from its new image.
    apply_time: float = 2.0
    #: Birth certificates already read and checked (skips the certificate request).
    certificates: Mapping[str, BirthCertificate] = field(default_factory=dict)
    #: Seed for the per-node ephemeral keys; None draws them at random. A seed makes a
    #: simulated session repeat exactly.
    key_seed: bytes | None = None

    @classmethod
    def create(
        cls,
        image: bytes,
        version: str,
        nodes: tuple[str, ...] | list[str],
        *,
        session_id: int,
        max_frame: int,
        response_timeout: float,
        ca_public_key: bytes,
        counter: int,
        seed: bytes | None = None,
        **options: object,
    ) -> SessionPlan:
        """Encrypt ``image`` with a fresh key (derived from ``seed`` when given)."""
        if seed is None:
            image_key = secrets.token_bytes(IMAGE_KEY_SIZE)
        else:
            image_key = hashlib.sha256(b"ota-hil session key" + seed).digest()[:IMAGE_KEY_SIZE]
        digest = hashlib.sha256(image).digest()
        nonce = image_nonce(session_id, digest)
        return cls(
            session_id=session_id,
            version=version,
            digest=digest,
            ciphertext=encrypt_image(image, image_key, nonce),
            image_key=image_key,
            nonce=nonce,
            nodes=tuple(nodes),
            max_frame=max_frame,
            response_timeout=response_timeout,
            ca_public_key=ca_public_key,
            counter=counter,
            key_seed=seed,
            **options,  # type: ignore[arg-type]
        )

    @property
    def key_context(self) -> bytes:
        """Binds each wrapped key to this session and image."""
        return key_context(self.session_id, self.digest)
