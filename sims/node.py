"""A radio node's firmware, as the gateway sees it from the air: frames in, frames out.

Two image slots (the running one and the one being received), a bitmap of received
blocks that survives a reboot, a birth certificate and its key, a check of the image
after the key exchange, an authenticated start that applies the image with a reboot
and a self-test (a failing self-test boots the old slot again), and status reports.

The node is sans-IO and keeps no clock: every call carries the current time, and
timed transitions (the end of a power cut, the end of an apply) happen lazily on the
next call. Where the blocks live is the store's business (:class:`BlockStore`): real
bytes for a node on its own, rows of fleet-wide arrays for a big simulated fleet.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from harness.nodeproto.certs import NodeIdentity
from harness.nodeproto.context import image_nonce, key_context
from harness.nodeproto.crypto import (
    KeyExchangeError,
    WrappedKey,
    decrypt_image,
    macs_equal,
    start_mac,
    status_mac,
    unwrap_image_key,
)
from harness.nodeproto.frames import (
    START_DIGEST_SIZE,
    Abort,
    Announce,
    BitmapQuery,
    BitmapReport,
    Block,
    Cert,
    CertRequest,
    FrameKind,
    Key,
    KeyAck,
    KeyStatus,
    Message,
    NodeError,
    NodeState,
    Reassembler,
    Rejected,
    Resend,
    Start,
    Status,
    StatusQuery,
    encode,
)
from harness.nodeproto.missing import MissingBlocks

from .fleetfile import FaultSpec

NO_MAC = bytes(16)


class BlockStore(Protocol):
    """Where a node keeps the blocks of the image it receives (flash: survives reboots)."""

    block_count: int

    def reset(self, block_count: int, block_size: int, session: int) -> None:
        """Start receiving a new image: nothing held yet."""
        ...

    def drop(self) -> None:
        """Forget the transfer (the session was aborted)."""
        ...

    def write(self, index: int, data: bytes, corrupt: bool) -> bool:
        """Store a block; False if it was already there."""
        ...

    def received(self) -> int: ...

    def missing(self) -> MissingBlocks: ...

    def image_digest(self, key: bytes, nonce: bytes, size: int) -> bytes:
        """sha256 of the decrypted image as stored (corruption included)."""
        ...


class ByteStore:
    """Blocks as bytes, for a node simulated on its own (a virtual board's nodes)."""

    def __init__(self) -> None:
        self.block_count = 0
        self._blocks: list[bytes | None] = []
        self._held = 0

    def reset(self, block_count: int, block_size: int, session: int) -> None:
        self.block_count = block_count
        self._blocks = [None] * block_count
        self._held = 0

    def drop(self) -> None:
        self.reset(0, 0, -1)

    def write(self, index: int, data: bytes, corrupt: bool) -> bool:
        if self._blocks[index] is not None:
            return False
        self._blocks[index] = bytes([data[0] ^ 0xFF]) + data[1:] if corrupt and data else data
        self._held += 1
        return True

    def received(self) -> int:
        return self._held

    def missing(self) -> MissingBlocks:
        return MissingBlocks.from_indices(
            self.block_count, (i for i, b in enumerate(self._blocks) if b is None)
        )

    def image_digest(self, key: bytes, nonce: bytes, size: int) -> bytes:
        ciphertext = b"".join(b or b"" for b in self._blocks)[:size]
        return hashlib.sha256(decrypt_image(ciphertext, key, nonce)).digest()


class Power(Protocol):
    """The node's supply: cut for a while, or on."""

    def is_off(self, now: float) -> bool: ...

    def cut(self, now: float, duration: float) -> None: ...

    @property
    def cuts(self) -> int: ...


class Battery:
    """Power for a node simulated on its own."""

    def __init__(self) -> None:
        self._off_until = -np.inf
        self._cuts = 0

    def is_off(self, now: float) -> bool:
        return now < self._off_until

    def cut(self, now: float, duration: float) -> None:
        self._off_until = now + duration
        self._cuts += 1

    @property
    def cuts(self) -> int:
        return self._cuts


@dataclass
class NodeTiming:
    """How long things take on the node (virtual seconds)."""

    #: START to answering from the new (or, after a rollback, the old) image.
    apply_time: float = 1.0
    #: How long the supply stays off after a simulated power loss.
    power_off_time: float = 3.0


class NodeFirmware:
    """One node. ``receive`` takes a radio frame and returns the frames it answers with."""

    def __init__(
        self,
        identity: NodeIdentity,
        version: str,
        max_frame: int,
        *,
        store: BlockStore | None = None,
        power: Power | None = None,
        faults: FaultSpec | None = None,
        timing: NodeTiming | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self.max_frame = max_frame
        self.store: BlockStore = store if store is not None else ByteStore()
        self.power: Power = power if power is not None else Battery()
        self.faults = faults or FaultSpec()
        self.timing = timing or NodeTiming()
        self.rng = rng or np.random.default_rng(0)
        # Persisted (flash): survives power cuts.
        self.running_version = version
        self.session: Announce | None = None
        self.last_counter = 0
        self.state = NodeState.IDLE
        self.error = NodeError.NONE
        self._pending: tuple[str, bytes] | None = None  # (version, MAC key) of an applied start
        self._apply_done_at: float | None = None
        self._power_loss_fired = False
        # Volatile (RAM): lost on a power cut.
        self._mac_key: bytes | None = None
        self._image_ok = False
        self._reassembler = Reassembler()
        self._seen_cuts = 0
        #: The frames of the last answer of each kind, for a RESEND.
        self._answers: dict[FrameKind, tuple[int, list[bytes]]] = {}
        #: Frames this node refused, with the reason (for tests and traces).
        self.rejected: list[str] = []
        #: Blocks held at each restart after a power cut (the bitmap survives in flash).
        self.boots: list[int] = []

    # -- the air interface -----------------------------------------------------------------

    def receive(self, now: float, raw: bytes) -> list[bytes]:
        """A frame heard at ``now``; the frames to answer with (empty if none, or if off)."""
        if not self.awake(now):
            return []
        message = self._reassembler.feed(raw)
        if message is None:
            return []
        if isinstance(message, Rejected):
            self.rejected.append(message.reason)
            return []
        try:
            return self.handle(now, message)
        except ValueError as exc:
            # An answer the codec cannot carry (a radio too small for this image's report):
            # the node stays silent rather than crash.
            self.rejected.append(f"cannot answer {message.kind.name}: {exc}")
            return []

    def awake(self, now: float) -> bool:
        """Bring the node up to ``now``; False while it is powered off or applying."""
        if self.faults.offline:
            return False
        if self.power.is_off(now):
            return False
        if self.power.cuts != self._seen_cuts:
            self._seen_cuts = self.power.cuts
            self._reboot()
        if self._apply_done_at is not None:
            if now < self._apply_done_at:
                return False
            self._finish_apply()
        return True

    def handle(self, now: float, message: Message) -> list[bytes]:
        match message:
            case Announce():
                self._on_announce(message)
            case Block():
                if self._knows(message.session):
                    self.write_block(now, message.index, message.data)
            case BitmapQuery():
                return self._on_query(message)
            case CertRequest():
                return self._send(Cert(message.session, self.identity.certificate.encode()))
            case Key():
                return self._send(KeyAck(message.session, self._on_key(message)))
            case Start():
                self._on_start(now, message)  # not answered: the status query reads it
            case StatusQuery():
                return self._send(self._status(message.session))
            case Resend():
                session, frames = self._answers.get(message.answer, (-1, []))
                if session != message.session:
                    return []
                return [f for i, f in enumerate(frames) if message.fragments >> i & 1]
            case Abort():
                if self._knows(message.session):
                    self._abort()
        return []

    # -- receiving the image ---------------------------------------------------------------

    def _knows(self, session: int) -> bool:
        return self.session is not None and self.session.session == session

    def _on_announce(self, announce: Announce) -> None:
        if self.session == announce:
            return  # a repeat, or the same session after a reboot: resume from the bitmap
        self.session = announce
        self.store.reset(announce.block_count, announce.block_size, announce.session)
        self.state = NodeState.RECEIVING
        self.error = NodeError.NONE
        self._image_ok = False
        self._mac_key = None
        self._power_loss_fired = False

    def write_block(self, now: float, index: int, data: bytes) -> None:
        """One received block (the per-node path; a fleet writes many nodes at once)."""
        if index >= self.store.block_count:
            self.rejected.append(f"block {index} beyond the announced {self.store.block_count}")
            return
        corrupt = (
            bool(self.faults.corrupt_writes) and self.rng.random() < self.faults.corrupt_writes
        )
        if self.store.write(index, data, corrupt):
            self.after_write(now, self.store.received())

    def after_write(self, now: float, received: int) -> None:
        """The power-loss-at-block fault, checked after each newly stored block."""
        at = self.faults.power_loss_at_block
        if at is not None and not self._power_loss_fired and received >= at:
            self._power_loss_fired = True
            self.power.cut(now, self.timing.power_off_time)

    def _on_query(self, query: BitmapQuery) -> list[bytes]:
        if not self._knows(query.session):
            return self._send(self._status(query.session, NodeError.NO_IMAGE))
        missing = self.store.missing()
        frames = self._send(BitmapReport(query.session, missing))
        if query.want_cert and missing.complete:
            frames += self._send(Cert(query.session, self.identity.certificate.encode()))
        return frames

    # -- key exchange, start, apply --------------------------------------------------------

    def _on_key(self, key: Key) -> KeyStatus:
        if not self._knows(key.session) or self.session is None:
            return KeyStatus.INCOMPLETE
        if self.faults.refuse_key_exchange:
            return KeyStatus.REFUSED
        if self.store.received() < self.store.block_count:
            return KeyStatus.INCOMPLETE
        announce = self.session
        context = key_context(announce.session, announce.digest)
        try:
            image_key, mac_key = unwrap_image_key(
                WrappedKey.decode(key.blob), self.identity.private_key, context
            )
        except KeyExchangeError:
            return KeyStatus.BAD_KEY
        nonce = image_nonce(announce.session, announce.digest)
        if self.store.image_digest(image_key, nonce, announce.image_size) != announce.digest:
            self.state = NodeState.ERROR
            return KeyStatus.IMAGE_CHECK_FAILED
        self._mac_key = mac_key
        self._image_ok = True
        self.state = NodeState.READY
        return KeyStatus.OK

    def _on_start(self, now: float, start: Start) -> None:
        """Apply, or keep the refusal in ``error`` for the next status to tell."""

        def refuse(error: NodeError) -> None:
            self.error = error

        if not self._knows(start.session) or self._mac_key is None:
            return refuse(NodeError.NO_IMAGE)
        assert self.session is not None
        expected = start_mac(
            self._mac_key,
            self.node_id,
            self.session.digest,
            start.version,
            start.counter,
            start.allow_downgrade,
        )
        if start.digest != self.session.digest[:START_DIGEST_SIZE]:
            return refuse(NodeError.DIGEST_MISMATCH)
        if not macs_equal(expected, start.mac):
            return refuse(NodeError.BAD_MAC)
        if start.counter == self.last_counter and not self._image_ok:
            return None  # this start again: already applied or applying
        if start.counter <= self.last_counter:
            return refuse(NodeError.REPLAYED)
        if not self._image_ok:
            return refuse(NodeError.NO_IMAGE)
        if _older(start.version, self.running_version) and not start.allow_downgrade:
            return refuse(NodeError.DOWNGRADE)
        self.last_counter = start.counter
        self._pending = (start.version, self._mac_key)
        self.state = NodeState.APPLYING
        self.error = NodeError.NONE
        self._apply_done_at = now + self.timing.apply_time
        if self.faults.power_loss_during_apply:
            # The supply fails half way through: off for a while, then the old slot boots.
            outage = self.timing.apply_time / 2 + self.timing.power_off_time
            self.power.cut(now, outage)
            self._apply_done_at = now + outage
        return None

    def _finish_apply(self) -> None:
        assert self._pending is not None
        version, mac_key = self._pending
        self._apply_done_at = None
        self._mac_key = mac_key  # kept with the pending image: the report after reboot is signed
        if self.faults.power_loss_during_apply:
            self.state, self.error = NodeState.ROLLED_BACK, NodeError.POWER_LOSS
        elif self.faults.fail_self_test:
            self.state, self.error = NodeState.ROLLED_BACK, NodeError.SELF_TEST_FAILED
        else:
            self.running_version = version
            self.state, self.error = NodeState.RUNNING_NEW, NodeError.NONE
        self._pending = None
        self._image_ok = False

    def _reboot(self) -> None:
        """RAM is gone; flash (bitmap, session, counters, a pending image) stays."""
        self.boots.append(self.store.received())
        self._reassembler = Reassembler()
        self._answers.clear()
        if self._pending is None:
            self._mac_key = None
            self._image_ok = False
            if self.state is NodeState.READY:
                self.state = NodeState.RECEIVING

    def _abort(self) -> None:
        self.session = None
        self.store.drop()
        self._image_ok = False
        self._mac_key = None
        self.state = NodeState.IDLE

    # -- answers ---------------------------------------------------------------------------

    def _status(self, session: int, error: NodeError | None = None) -> Status:
        error = self.error if error is None else error
        mac = (
            status_mac(
                self._mac_key,
                self.node_id,
                int(self.state),
                int(error),
                self.last_counter,
                self.running_version,
            )
            if self._mac_key is not None
            else NO_MAC
        )
        return Status(session, self.state, error, self.last_counter, self.running_version, mac)

    def _send(self, message: Message) -> list[bytes]:
        frames = encode(message, self.max_frame)
        self._answers[message.kind] = (message.session, frames)
        return frames

    @property
    def reply_delay(self) -> float:
        """Extra seconds before this node answers (the slow-answer fault)."""
        return self.faults.slow_answer


def _older(candidate: str, current: str) -> bool:
    """Whether ``candidate`` is an older version than ``current`` (numeric dot parts first)."""

    def key(version: str) -> tuple[tuple[int, str], ...]:
        return tuple(
            (int(p), "") if p.isascii() and p.isdigit() else (-1, p) for p in version.split(".")
        )

    return key(candidate) < key(current)
