"""Node frames: the messages the gateway and its radio nodes exchange, and their bytes.

Pure code, no I/O (as h11 keeps HTTP apart from sockets): :func:`encode` turns a message
into radio frames, a :class:`Reassembler` turns received frames back into messages and
never raises, whatever the radio delivers. The layout is in docs/node-protocol.md.

BLOCK frames are the bulk of all traffic (millions in a fleet benchmark), so both
directions have a fast path for them: one struct call and one C CRC per frame.
"""

from __future__ import annotations

import struct
from binascii import crc_hqx
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, NamedTuple

from ..wire import FieldReader
from .crc import CRC_INIT, crc16
from .missing import MissingBlocks

PROTOCOL_VERSION = 1
HEADER_SIZE = 6
CRC_SIZE = 2
FRAME_OVERHEAD = HEADER_SIZE + CRC_SIZE
#: The smallest max_frame encode accepts: room for a header, a CRC and a few bytes.
MIN_FRAME = 16
MAX_FRAGMENTS = 255
DIGEST_SIZE = 32
MAC_SIZE = 16
#: Bytes of the image digest a START carries (a prefix; the MAC binds the whole digest).
START_DIGEST_SIZE = 16
MAX_STR8 = 255

_HEAD = struct.Struct(">BBHBB")
#: Header + BLOCK index: a single-fragment BLOCK frame up to its data.
_BLOCK_HEAD = struct.Struct(">BBHBBH")
_BLOCK_OVERHEAD = FRAME_OVERHEAD + 2
#: A BLOCK frame's session and index, read from offset 2 (past version and kind).
_BLOCK_FIELDS = struct.Struct(">H2xH")
_BLOCK_DATA = _BLOCK_HEAD.size
#: FrameKind.BLOCK as a plain int: comparing with an enum member costs more than the CRC.
_BLOCK = 2


class FrameKind(IntEnum):
    ANNOUNCE = 1
    BLOCK = 2
    BITMAP_QUERY = 3
    BITMAP_REPORT = 4
    CERT_REQUEST = 5
    CERT = 6
    KEY = 7
    KEY_ACK = 8
    START = 9
    STATUS_QUERY = 10
    STATUS = 11
    ABORT = 12
    RESEND = 13


_KIND_VALUES = frozenset(FrameKind)


class KeyStatus(IntEnum):
    OK = 0
    REFUSED = 1
    IMAGE_CHECK_FAILED = 2
    INCOMPLETE = 3
    BAD_KEY = 4


class NodeState(IntEnum):
    IDLE = 0
    RECEIVING = 1
    #: The image is complete and its digest checked.
    READY = 2
    APPLYING = 3
    RUNNING_NEW = 4
    ROLLED_BACK = 5
    ERROR = 6


class NodeError(IntEnum):
    NONE = 0
    BAD_MAC = 1
    REPLAYED = 2
    DIGEST_MISMATCH = 3
    DOWNGRADE = 4
    SELF_TEST_FAILED = 5
    POWER_LOSS = 6
    NO_IMAGE = 7
    BUSY = 8


class AbortReason(IntEnum):
    CANCELED = 0
    TIMEOUT = 1
    ERROR = 2


def max_block_size(max_frame: int) -> int:
    """The most image bytes one BLOCK frame carries on a radio of ``max_frame`` bytes."""
    return _check_max_frame(max_frame) - _BLOCK_OVERHEAD


# -- messages -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Announce:
    """Gateway to all: an image is coming; what it is and how it is cut into blocks."""

    kind: ClassVar[FrameKind] = FrameKind.ANNOUNCE
    session: int
    image_size: int
    block_size: int
    block_count: int
    #: sha256 of the plaintext image.
    digest: bytes
    version: str
    encrypted: bool = True


@dataclass(frozen=True, slots=True)
class Block:
    """Gateway to all: one block of the (possibly encrypted) image; always one frame."""

    kind: ClassVar[FrameKind] = FrameKind.BLOCK
    session: int
    index: int
    data: bytes


_set_session, _set_index, _set_data = (
    Block.session.__set__,  # type: ignore[attr-defined]
    Block.index.__set__,  # type: ignore[attr-defined]
    Block.data.__set__,  # type: ignore[attr-defined]
)


def _new_block(session: int, index: int, data: bytes) -> Block:
    """``Block(session, index, data)`` for trusted values, at half the cost.

    A frozen dataclass sets each field through ``object.__setattr__``; writing the slots
    directly is what matters when a benchmark decodes millions of blocks.
    """
    block = object.__new__(Block)
    _set_session(block, session)
    _set_index(block, index)
    _set_data(block, data)
    return block


@dataclass(frozen=True, slots=True)
class BitmapQuery:
    """Gateway to a node: which blocks do you miss? (and your birth certificate, if asked)."""

    kind: ClassVar[FrameKind] = FrameKind.BITMAP_QUERY
    session: int
    want_cert: bool = False


@dataclass(frozen=True, slots=True)
class BitmapReport:
    kind: ClassVar[FrameKind] = FrameKind.BITMAP_REPORT
    session: int
    missing: MissingBlocks


@dataclass(frozen=True, slots=True)
class CertRequest:
    kind: ClassVar[FrameKind] = FrameKind.CERT_REQUEST
    session: int


@dataclass(frozen=True, slots=True)
class Cert:
    """Node to gateway: its birth certificate (opaque to the codec)."""

    kind: ClassVar[FrameKind] = FrameKind.CERT
    session: int
    certificate: bytes


@dataclass(frozen=True, slots=True)
class Key:
    """Gateway to a node: the image key wrapped for that node (opaque to the codec)."""

    kind: ClassVar[FrameKind] = FrameKind.KEY
    session: int
    blob: bytes


@dataclass(frozen=True, slots=True)
class KeyAck:
    kind: ClassVar[FrameKind] = FrameKind.KEY_ACK
    session: int
    status: KeyStatus


@dataclass(frozen=True, slots=True)
class Start:
    """Gateway to a node: apply the image; ``mac`` authenticates the command."""

    kind: ClassVar[FrameKind] = FrameKind.START
    session: int
    counter: int
    version: str
    #: First 16 bytes of the image's sha256 (the MAC covers all 32): a node refuses a start
    #: for an image it does not hold, and says so rather than "bad MAC".
    digest: bytes
    mac: bytes
    allow_downgrade: bool = False


@dataclass(frozen=True, slots=True)
class StatusQuery:
    kind: ClassVar[FrameKind] = FrameKind.STATUS_QUERY
    session: int


@dataclass(frozen=True, slots=True)
class Status:
    """Node to gateway: where it is; ``mac`` lets the gateway trust a claimed new version."""

    kind: ClassVar[FrameKind] = FrameKind.STATUS
    session: int
    state: NodeState
    error: NodeError
    counter: int
    version: str
    mac: bytes


@dataclass(frozen=True, slots=True)
class Abort:
    kind: ClassVar[FrameKind] = FrameKind.ABORT
    session: int
    reason: AbortReason


@dataclass(frozen=True, slots=True)
class Resend:
    """Gateway to a node: send again these fragments of your last answer of ``answer``.

    Lets a long answer (a big bitmap report, a certificate) survive a lossy link: only
    the lost fragments cross again. Bit i of ``fragments`` asks for fragment i (0..31)."""

    kind: ClassVar[FrameKind] = FrameKind.RESEND
    session: int
    answer: FrameKind
    fragments: int


Message = (
    Announce
    | Block
    | BitmapQuery
    | BitmapReport
    | CertRequest
    | Cert
    | Key
    | KeyAck
    | Start
    | StatusQuery
    | Status
    | Abort
    | Resend
)


# -- encoding -----------------------------------------------------------------------


def _check_max_frame(max_frame: int) -> int:
    if not isinstance(max_frame, int):
        raise TypeError(f"max_frame must be an int, got {type(max_frame).__name__}")
    if max_frame < MIN_FRAME:
        raise ValueError(f"max_frame {max_frame} is below the minimum {MIN_FRAME}")
    return max_frame


def _uint(name: str, value: int, size: int) -> bytes:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    top = (1 << (8 * size)) - 1
    if not 0 <= value <= top:
        raise ValueError(f"{name} {value} is outside 0..{top}")
    return value.to_bytes(size, "big")


def _enum(name: str, value: int, enum: type[IntEnum]) -> bytes:
    try:
        return bytes([enum(value)])
    except ValueError:
        raise ValueError(f"{name} {value!r}: not a valid {enum.__name__}") from None


def _bytes(name: str, value: bytes, size: int | None = None) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    value = bytes(value)
    if size is not None and len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
    return value


def _str8(name: str, value: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{name} cannot be encoded as UTF-8: {exc.reason}") from None
    if len(data) > MAX_STR8:
        raise ValueError(f"{name} is {len(data)} bytes in UTF-8, at most {MAX_STR8}")
    return bytes([len(data)]) + data


def _announce(m: Announce) -> bytes:
    return b"".join(
        (
            _uint("Announce.image_size", m.image_size, 4),
            _uint("Announce.block_size", m.block_size, 2),
            _uint("Announce.block_count", m.block_count, 2),
            _bytes("Announce.digest", m.digest, DIGEST_SIZE),
            bytes([1 if m.encrypted else 0]),
            _str8("Announce.version", m.version),
        )
    )


def _block(m: Block) -> bytes:
    return _uint("Block.index", m.index, 2) + _bytes("Block.data", m.data)


def _bitmap_report(m: BitmapReport) -> bytes:
    if not isinstance(m.missing, MissingBlocks):
        raise TypeError(f"BitmapReport.missing must be MissingBlocks, got {type(m.missing)}")
    return m.missing.encode()


def _start(m: Start) -> bytes:
    return b"".join(
        (
            _uint("Start.counter", m.counter, 4),
            bytes([1 if m.allow_downgrade else 0]),
            _bytes("Start.digest", m.digest, START_DIGEST_SIZE),
            _str8("Start.version", m.version),
            _bytes("Start.mac", m.mac, MAC_SIZE),
        )
    )


def _status(m: Status) -> bytes:
    return b"".join(
        (
            _enum("Status.state", m.state, NodeState),
            _enum("Status.error", m.error, NodeError),
            _uint("Status.counter", m.counter, 4),
            _str8("Status.version", m.version),
            _bytes("Status.mac", m.mac, MAC_SIZE),
        )
    )


_PAYLOAD_ENCODERS = {
    Announce: _announce,
    Block: _block,
    BitmapQuery: lambda m: bytes([1 if m.want_cert else 0]),
    BitmapReport: _bitmap_report,
    CertRequest: lambda m: b"",
    Cert: lambda m: _bytes("Cert.certificate", m.certificate),
    Key: lambda m: _bytes("Key.blob", m.blob),
    KeyAck: lambda m: _enum("KeyAck.status", m.status, KeyStatus),
    Start: _start,
    StatusQuery: lambda m: b"",
    Status: _status,
    Abort: lambda m: _enum("Abort.reason", m.reason, AbortReason),
    Resend: lambda m: (
        _enum("Resend.answer", m.answer, FrameKind) + _uint("Resend.fragments", m.fragments, 4)
    ),
}


def encode_payload(message: Message) -> bytes:
    """The logical payload of ``message``, before it is cut into frames."""
    encoder = _PAYLOAD_ENCODERS.get(type(message))
    if encoder is None:
        raise TypeError(f"not a node message: {type(message).__name__}")
    return encoder(message)


def encode(message: Message, max_frame: int) -> list[bytes]:
    """The radio frames, each at most ``max_frame`` bytes, that carry ``message``.

    Raises ValueError naming the field that is out of range, or when the message needs
    more than 255 fragments; a BLOCK whose data does not fit one frame is an error too.
    """
    if type(message) is Block:
        return [_encode_block(message, max_frame)]
    _check_max_frame(max_frame)
    payload = encode_payload(message)
    name = type(message).__name__
    session = _uint(f"{name}.session", message.session, 2)
    room = max_frame - FRAME_OVERHEAD
    count = max(1, -(-len(payload) // room))
    if count > MAX_FRAGMENTS:
        raise ValueError(
            f"{name} payload of {len(payload)} bytes needs {count} fragments of {room} bytes, "
            f"at most {MAX_FRAGMENTS}"
        )
    head = bytes([PROTOCOL_VERSION, message.kind]) + session
    frames = []
    for index in range(count):
        body = head + bytes([index, count]) + payload[index * room : (index + 1) * room]
        frames.append(body + crc16(body).to_bytes(CRC_SIZE, "big"))
    return frames


def _encode_block(block: Block, max_frame: int) -> bytes:
    session, index, data = block.session, block.index, block.data
    if (
        type(session) is not int
        or type(index) is not int
        or type(data) is not bytes
        or not 0 <= session <= 0xFFFF
        or not 0 <= index <= 0xFFFF
        or type(max_frame) is not int
        or max_frame < MIN_FRAME
    ):
        # Off the fast path: let the general checks say what is wrong.
        _check_max_frame(max_frame)
        _uint("Block.session", session, 2)
        data = _block(block)[2:]
    if len(data) > max_frame - _BLOCK_OVERHEAD:
        raise ValueError(
            f"Block.data of {len(data)} bytes does not fit one frame of {max_frame} bytes "
            f"(at most {max_frame - _BLOCK_OVERHEAD})"
        )
    body = _BLOCK_HEAD.pack(PROTOCOL_VERSION, _BLOCK, session, 0, 1, index) + data
    return body + crc_hqx(body, CRC_INIT).to_bytes(CRC_SIZE, "big")


# -- decoding -----------------------------------------------------------------------


class FrameError(Exception):
    """A frame or payload this side cannot accept; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RawFrame(NamedTuple):
    """One radio frame whose CRC and header checked out; ``payload`` is its fragment."""

    version: int
    kind: FrameKind
    session: int
    index: int
    count: int
    payload: bytes


def decode_frame(raw: bytes) -> RawFrame:
    """Check one radio frame's length, CRC and header; raise FrameError saying what is wrong."""
    raw = bytes(raw)
    if len(raw) < FRAME_OVERHEAD:
        raise FrameError(f"frame too short: {len(raw)} bytes, at least {FRAME_OVERHEAD}")
    if crc_hqx(raw, CRC_INIT):
        claimed = int.from_bytes(raw[-CRC_SIZE:], "big")
        raise FrameError(
            f"bad CRC: frame says 0x{claimed:04X}, its bytes give 0x{crc16(raw[:-CRC_SIZE]):04X}"
        )
    version, kind, session, index, count = _HEAD.unpack_from(raw)
    if version != PROTOCOL_VERSION:
        raise FrameError(
            f"unknown protocol version {version} (this side speaks {PROTOCOL_VERSION})"
        )
    if kind not in _KIND_VALUES:
        raise FrameError(f"unknown frame kind {kind}")
    if count == 0:
        raise FrameError("fragment count 0")
    if index >= count:
        raise FrameError(f"fragment index {index} >= count {count}")
    if kind == FrameKind.BLOCK and count != 1:
        raise FrameError(f"BLOCK split into {count} fragments; a block must fit one frame")
    return RawFrame(version, FrameKind(kind), session, index, count, raw[HEADER_SIZE:-CRC_SIZE])


def peek(raw: bytes) -> tuple[FrameKind, int, int | None] | None:
    """Kind, session and (for a BLOCK) block number of a frame, from its header alone: no
    CRC check, for describing frames one side built (traces, displays). None when the
    header is not one of this protocol's."""
    if len(raw) < FRAME_OVERHEAD:
        return None
    version, kind, session, _, _ = _HEAD.unpack_from(raw)
    if version != PROTOCOL_VERSION or kind not in _KIND_VALUES:
        return None
    block = None
    if kind == FrameKind.BLOCK and len(raw) >= HEADER_SIZE + 2 + CRC_SIZE:
        block = int.from_bytes(raw[HEADER_SIZE : HEADER_SIZE + 2], "big")
    return FrameKind(kind), session, block


class _Reader(FieldReader):
    """Reads a payload field by field; every shortfall names the field and the kind."""

    error = FrameError

    def __init__(self, kind: FrameKind, data: bytes) -> None:
        super().__init__(kind.name, data)


def _read_announce(session: int, r: _Reader) -> Announce:
    image_size = r.uint(4, "image_size")
    block_size = r.uint(2, "block_size")
    block_count = r.uint(2, "block_count")
    digest = r.take(DIGEST_SIZE, "digest")
    encrypted = r.flag("flags")
    version = r.str8("version")
    return Announce(session, image_size, block_size, block_count, digest, version, encrypted)


def _read_block(session: int, r: _Reader) -> Block:
    return Block(session, r.uint(2, "index"), r.rest())


def _read_bitmap_report(session: int, r: _Reader) -> BitmapReport:
    try:
        missing = MissingBlocks.decode(r.rest())
    except ValueError as exc:
        raise r.fail(str(exc)) from None
    return BitmapReport(session, missing)


def _read_start(session: int, r: _Reader) -> Start:
    counter = r.uint(4, "counter")
    allow_downgrade = r.flag("flags")
    digest = r.take(START_DIGEST_SIZE, "digest")
    version = r.str8("version")
    return Start(session, counter, version, digest, r.take(MAC_SIZE, "mac"), allow_downgrade)


def _read_status(session: int, r: _Reader) -> Status:
    state = r.enum("state", NodeState)
    error = r.enum("error", NodeError)
    counter = r.uint(4, "counter")
    version = r.str8("version")
    return Status(session, state, error, counter, version, r.take(MAC_SIZE, "mac"))


_PAYLOAD_DECODERS = {
    FrameKind.ANNOUNCE: _read_announce,
    FrameKind.BLOCK: _read_block,
    FrameKind.BITMAP_QUERY: lambda s, r: BitmapQuery(s, r.flag("flags")),
    FrameKind.BITMAP_REPORT: _read_bitmap_report,
    FrameKind.CERT_REQUEST: lambda s, r: CertRequest(s),
    FrameKind.CERT: lambda s, r: Cert(s, r.rest()),
    FrameKind.KEY: lambda s, r: Key(s, r.rest()),
    FrameKind.KEY_ACK: lambda s, r: KeyAck(s, r.enum("status", KeyStatus)),
    FrameKind.START: _read_start,
    FrameKind.STATUS_QUERY: lambda s, r: StatusQuery(s),
    FrameKind.STATUS: _read_status,
    FrameKind.ABORT: lambda s, r: Abort(s, r.enum("reason", AbortReason)),
    FrameKind.RESEND: lambda s, r: Resend(s, r.enum("answer", FrameKind), r.uint(4, "fragments")),
}


def decode_payload(kind: int, session: int, payload: bytes) -> Message:
    """The message a (reassembled) payload carries; raise FrameError saying what is wrong."""
    try:
        kind = FrameKind(kind)
    except ValueError:
        raise FrameError(f"unknown frame kind {kind}") from None
    reader = _Reader(kind, bytes(payload))
    message = _PAYLOAD_DECODERS[kind](session, reader)
    reader.end()
    return message


# -- reassembly ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame (or the message it completed) that was dropped, and why."""

    reason: str


class _Partial:
    __slots__ = ("count", "fragments", "held")

    def __init__(self, count: int) -> None:
        self.count = count
        self.fragments: list[bytes | None] = [None] * count
        self.held = 0


class Reassembler:
    """Turns one sender's frames back into messages; never raises.

    Holds at most one partial message per (kind, session), and at most ``max_partials``
    of those (the least recently fed is dropped first), so memory stays bounded whatever
    arrives. Fragments may come in any order. An identical repeat of a held fragment is
    ignored; a different fragment for a held index, or a different fragment count, means
    the sender started another message, so the partial restarts with it.
    """

    def __init__(self, max_partials: int = 8) -> None:
        if max_partials < 1:
            raise ValueError("max_partials must be at least 1")
        self.max_partials = max_partials
        self._partials: dict[tuple[int, int], _Partial] = {}

    @property
    def pending(self) -> int:
        """How many partial messages are held."""
        return len(self._partials)

    def clear(self) -> None:
        self._partials.clear()

    def missing_fragments(self, kind: FrameKind, session: int) -> int | None:
        """Bit mask of the fragments a partial ``kind`` message still lacks (the first 32),
        or None when none is partial: what to ask a sender to send again."""
        partial = self._partials.get((kind, session))
        if partial is None:
            return None
        return sum(1 << i for i, f in enumerate(partial.fragments[:32]) if f is None)

    def feed(self, raw: bytes) -> Message | Rejected | None:
        """The message ``raw`` completes, None if one is still partial, or why it was dropped."""
        try:
            if type(raw) is not bytes:
                if not isinstance(raw, bytearray | memoryview):
                    return Rejected(f"a frame must be bytes, not {type(raw).__name__}")
                raw = bytes(raw)
            # Fast path: a well-formed single-fragment BLOCK (version 1, kind 2, 0 of 1).
            if (
                len(raw) >= _BLOCK_OVERHEAD
                and raw[1] == _BLOCK
                and raw[0] == PROTOCOL_VERSION
                and raw[4] == 0
                and raw[5] == 1
                and not crc_hqx(raw, CRC_INIT)
            ):
                # (BLOCKs are never fragmented, so no partial can be waiting for this one.)
                session, index = _BLOCK_FIELDS.unpack_from(raw, 2)
                return _new_block(session, index, raw[_BLOCK_DATA:-CRC_SIZE])
            return self._feed(decode_frame(raw))
        except FrameError as exc:
            return Rejected(exc.reason)
        except Exception as exc:  # a receive loop must survive any input; tests look for this
            return Rejected(f"internal error: {exc!r}")

    def _feed(self, frame: RawFrame) -> Message | None:
        key = (frame.kind, frame.session)
        if frame.count == 1:
            # A complete message; it also ends any partial one of the same kind and session.
            self._partials.pop(key, None)
            return decode_payload(frame.kind, frame.session, frame.payload)
        partial = self._partials.pop(key, None)
        if partial is not None and partial.count == frame.count:
            held = partial.fragments[frame.index]
            if held == frame.payload:
                self._partials[key] = partial
                return None
            if held is not None:
                partial = None
        else:
            partial = None
        if partial is None:
            partial = _Partial(frame.count)
            while len(self._partials) >= self.max_partials:
                del self._partials[next(iter(self._partials))]
        partial.fragments[frame.index] = frame.payload
        partial.held += 1
        if partial.held < partial.count:
            self._partials[key] = partial  # (re)inserted last: most recently fed
            return None
        return decode_payload(frame.kind, frame.session, b"".join(partial.fragments))
