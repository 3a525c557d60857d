"""Host <-> coordinator packets: how the gateway host drives a radio coordinator board
over a UART, and reads back what the radio heard.

Pure code, no I/O (as h11 keeps HTTP apart from sockets): :func:`encode_packet` turns a
packet into the bytes to write to the port, a :class:`PacketReader` turns whatever the
port delivers back into packets and never raises. Node frames (frames.py) travel inside,
opaque. The layout is in docs/host-protocol.md.

Each packet is COBS-encoded and ends with one 0x00, so a receiver that joins mid-stream
or loses bytes to line noise finds the next packet start at the next 0x00; the CRC-16
inside catches what the noise changed.
"""

from __future__ import annotations

import struct
from binascii import crc_hqx
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from cobs import cobs

from ..wire import FieldReader
from .crc import CRC_INIT, crc16

HOST_PROTOCOL_VERSION = 1
HEADER_SIZE = 3
CRC_SIZE = 2
PACKET_OVERHEAD = HEADER_SIZE + CRC_SIZE
#: The largest radio frame a packet carries (its length is implied, at most a u8's worth).
MAX_FRAME = 255
MAX_STR8 = 255
#: The longest packet before COBS: a STATUS with a 255-byte firmware string.
MAX_PACKET_SIZE = PACKET_OVERHEAD + 1 + 1 + 4 + 1 + MAX_STR8
#: The longest packet after COBS, without its delimiter (one code byte per 254 bytes).
MAX_ENCODED_SIZE = MAX_PACKET_SIZE + -(-MAX_PACKET_SIZE // 254)
#: Bytes of a rejected packet a Rejected keeps, for logs.
REJECTED_KEEP = 64
DELIMITER = b"\x00"

_HEAD = struct.Struct(">BBB")


class PacketType(IntEnum):
    # host -> coordinator
    BROADCAST = 0x01
    SEND = 0x02
    STATUS_REQUEST = 0x03
    # coordinator -> host
    RECEIVED = 0x81
    TRANSMIT_DONE = 0x82
    STATUS = 0x83
    ERROR = 0x84


class ErrorCode(IntEnum):
    BAD_PACKET = 1
    QUEUE_FULL = 2
    FRAME_TOO_LONG = 3
    UNKNOWN_ADDRESS = 4
    RADIO_FAULT = 5
    BUSY = 6


# -- packets ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Host to coordinator: put ``frame`` on air for every node."""

    type: ClassVar[PacketType] = PacketType.BROADCAST
    seq: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class Send:
    """Host to coordinator: put ``frame`` on air for the node at radio ``address``."""

    type: ClassVar[PacketType] = PacketType.SEND
    seq: int
    address: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class StatusRequest:
    type: ClassVar[PacketType] = PacketType.STATUS_REQUEST
    seq: int


@dataclass(frozen=True, slots=True)
class Received:
    """Coordinator to host, unsolicited: the radio heard ``frame`` from ``address``."""

    type: ClassVar[PacketType] = PacketType.RECEIVED
    address: int
    #: Signal strength in dBm (signed).
    rssi: int
    frame: bytes
    #: 0 on the wire: a RECEIVED answers no request. Kept as read, for logs.
    seq: int = 0


@dataclass(frozen=True, slots=True)
class TransmitDone:
    """Coordinator to host: the BROADCAST/SEND numbered ``seq`` went on air."""

    type: ClassVar[PacketType] = PacketType.TRANSMIT_DONE
    seq: int
    #: How long the frame was on air, in microseconds: what duty-cycle budgets add up.
    airtime_us: int


@dataclass(frozen=True, slots=True)
class CoordinatorStatus:
    """Coordinator to host: the answer to the STATUS_REQUEST numbered ``seq``."""

    type: ClassVar[PacketType] = PacketType.STATUS
    seq: int
    #: The largest radio frame the board carries: the ``max_frame`` of frames.encode.
    max_frame: int
    #: Frames waiting to be sent.
    queue: int
    uptime_ms: int
    firmware: str


@dataclass(frozen=True, slots=True)
class CoordinatorError:
    """Coordinator to host: the request numbered ``seq`` is refused (0: no request)."""

    type: ClassVar[PacketType] = PacketType.ERROR
    seq: int
    code: ErrorCode
    message: str


Packet = (
    Broadcast
    | Send
    | StatusRequest
    | Received
    | TransmitDone
    | CoordinatorStatus
    | CoordinatorError
)


# -- encoding -----------------------------------------------------------------------


def _uint(name: str, value: int, size: int) -> bytes:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    top = (1 << (8 * size)) - 1
    if not 0 <= value <= top:
        raise ValueError(f"{name} {value} is outside 0..{top}")
    return value.to_bytes(size, "big")


def _int8(name: str, value: int) -> bytes:
    if not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not -128 <= value <= 127:
        raise ValueError(f"{name} {value} is outside -128..127")
    return value.to_bytes(1, "big", signed=True)


def _frame(name: str, value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    value = bytes(value)
    if not 1 <= len(value) <= MAX_FRAME:
        raise ValueError(f"{name} of {len(value)} bytes: a radio frame is 1..{MAX_FRAME} bytes")
    return value


def _enum(name: str, value: int, enum: type[IntEnum]) -> bytes:
    try:
        return bytes([enum(value)])
    except ValueError:
        raise ValueError(f"{name} {value!r}: not a valid {enum.__name__}") from None


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


_BODY_ENCODERS = {
    Broadcast: lambda p: _frame("Broadcast.frame", p.frame),
    Send: lambda p: _uint("Send.address", p.address, 2) + _frame("Send.frame", p.frame),
    StatusRequest: lambda p: b"",
    Received: lambda p: b"".join(
        (
            _uint("Received.address", p.address, 2),
            _int8("Received.rssi", p.rssi),
            _frame("Received.frame", p.frame),
        )
    ),
    TransmitDone: lambda p: _uint("TransmitDone.airtime_us", p.airtime_us, 4),
    CoordinatorStatus: lambda p: b"".join(
        (
            _uint("CoordinatorStatus.max_frame", p.max_frame, 1),
            _uint("CoordinatorStatus.queue", p.queue, 1),
            _uint("CoordinatorStatus.uptime_ms", p.uptime_ms, 4),
            _str8("CoordinatorStatus.firmware", p.firmware),
        )
    ),
    CoordinatorError: lambda p: (
        _enum("CoordinatorError.code", p.code, ErrorCode)
        + _str8("CoordinatorError.message", p.message)
    ),
}


def packet_bytes(packet: Packet) -> bytes:
    """``packet`` before COBS: header, body and CRC (what the CRC and the doc talk about)."""
    encoder = _BODY_ENCODERS.get(type(packet))
    if encoder is None:
        raise TypeError(f"not a host packet: {type(packet).__name__}")
    body = encoder(packet)
    seq = _uint(f"{type(packet).__name__}.seq", packet.seq, 1)
    data = bytes([HOST_PROTOCOL_VERSION, packet.type]) + seq + body
    return data + crc16(data).to_bytes(CRC_SIZE, "big")


def encode_packet(packet: Packet) -> bytes:
    """The bytes to write to the UART for ``packet``: COBS-encoded, with the final 0x00.

    Raises ValueError (TypeError for a wrong type) naming the field that is out of range.
    """
    return cobs.encode(packet_bytes(packet)) + DELIMITER


# -- decoding -----------------------------------------------------------------------


class PacketError(Exception):
    """A packet this side cannot accept; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Reader(FieldReader):
    """Reads a body field by field; every shortfall names the field and the packet type."""

    error = PacketError
    TRUNCATED = "body truncated in {field}: needs {size} bytes, {left} left"
    TRAILING = "body too long: {count} trailing bytes"

    def __init__(self, type_: PacketType, data: bytes) -> None:
        super().__init__(type_.name, data)

    def frame(self) -> bytes:
        """The radio frame: all that is left of the body, 1..MAX_FRAME bytes."""
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        if not chunk:
            raise self.fail("body truncated: the radio frame is empty")
        if len(chunk) > MAX_FRAME:
            raise self.fail(
                f"body too long: radio frame of {len(chunk)} bytes, at most {MAX_FRAME}"
            )
        return chunk


def _read_status(seq: int, r: _Reader) -> CoordinatorStatus:
    max_frame = r.uint(1, "max_frame")
    queue = r.uint(1, "queue")
    uptime_ms = r.uint(4, "uptime_ms")
    return CoordinatorStatus(seq, max_frame, queue, uptime_ms, r.str8("firmware"))


def _read_received(seq: int, r: _Reader) -> Received:
    address = r.uint(2, "address")
    rssi = r.int8("rssi")
    return Received(address, rssi, r.frame(), seq)


_BODY_DECODERS = {
    PacketType.BROADCAST: lambda seq, r: Broadcast(seq, r.frame()),
    PacketType.SEND: lambda seq, r: Send(seq, r.uint(2, "address"), r.frame()),
    PacketType.STATUS_REQUEST: lambda seq, r: StatusRequest(seq),
    PacketType.RECEIVED: _read_received,
    PacketType.TRANSMIT_DONE: lambda seq, r: TransmitDone(seq, r.uint(4, "airtime_us")),
    PacketType.STATUS: _read_status,
    PacketType.ERROR: lambda seq, r: CoordinatorError(
        seq, r.enum("code", ErrorCode), r.str8("message")
    ),
}
_TYPES = {t.value: t for t in PacketType}


def decode_packet(raw: bytes) -> Packet:
    """The packet in ``raw``: one packet's bytes, still COBS-encoded, without the 0x00.

    Raises PacketError saying what is wrong.
    """
    try:
        data = cobs.decode(raw)
    except cobs.DecodeError as exc:
        raise PacketError(f"COBS decode failed: {exc}") from None
    if len(data) < PACKET_OVERHEAD:
        raise PacketError(f"packet too short: {len(data)} bytes, at least {PACKET_OVERHEAD}")
    if crc_hqx(data, CRC_INIT):
        claimed = int.from_bytes(data[-CRC_SIZE:], "big")
        raise PacketError(
            f"bad CRC: packet says 0x{claimed:04X}, its bytes give 0x{crc16(data[:-CRC_SIZE]):04X}"
        )
    version, type_, seq = _HEAD.unpack_from(data)
    if version != HOST_PROTOCOL_VERSION:
        raise PacketError(
            f"unknown protocol version {version} (this side speaks {HOST_PROTOCOL_VERSION})"
        )
    packet_type = _TYPES.get(type_)
    if packet_type is None:
        raise PacketError(f"unknown packet type 0x{type_:02X}")
    reader = _Reader(packet_type, data[HEADER_SIZE:-CRC_SIZE])
    packet = _BODY_DECODERS[packet_type](seq, reader)
    reader.end()
    return packet


# -- the byte stream ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejected:
    """Bytes between two delimiters that were dropped, and why.

    ``data`` is the raw (still COBS-encoded) bytes, at most the first 64: enough for a log
    line, while a stream of noise cannot pile up in memory.
    """

    reason: str
    data: bytes


class PacketReader:
    """Splits a UART byte stream on 0x00 and decodes each packet; never raises.

    Holds at most ``max_packet`` bytes of an unfinished packet: more without a delimiter
    (a babbling board, a wrong baud rate) are rejected once and dropped, and reading
    starts again after the next 0x00. Empty packets (0x00 0x00) are skipped silently, so a
    sender that opens the port may send a lone 0x00 to end whatever noise came before.
    """

    def __init__(self, max_packet: int = 1024) -> None:
        if max_packet < MAX_ENCODED_SIZE:
            raise ValueError(
                f"max_packet {max_packet} is below {MAX_ENCODED_SIZE}, the longest packet"
            )
        self.max_packet = max_packet
        self._buffer = b""
        #: True after an overlong packet: drop bytes up to the next delimiter.
        self._skipping = False

    @property
    def pending(self) -> int:
        """How many bytes of an unfinished packet are held."""
        return len(self._buffer)

    def clear(self) -> None:
        """Forget any unfinished packet (e.g. after reopening the port)."""
        self._buffer = b""
        self._skipping = False

    def feed(self, data: bytes) -> list[Packet | Rejected]:
        """The packets (and rejections) that ``data`` completes, in stream order."""
        out: list[Packet | Rejected] = []
        try:
            if type(data) is not bytes:
                if not isinstance(data, bytearray | memoryview):
                    return [Rejected(f"data must be bytes, not {type(data).__name__}", b"")]
                data = bytes(data)
            if self._skipping:
                end = data.find(0)
                if end < 0:
                    return out
                self._skipping = False
                data = data[end + 1 :]
            if 0 not in data:  # no packet ends here: the common case for small reads
                self._buffer += data
            else:
                parts = (self._buffer + data).split(DELIMITER)
                self._buffer = parts.pop()
                for raw in parts:
                    if raw:
                        out.append(self._decode(raw))
            if len(self._buffer) > self.max_packet:
                out.append(self._overlong(self._buffer))
                self._buffer = b""
                self._skipping = True
        except Exception as exc:  # a receive loop must survive any input; tests look for this
            self.clear()
            out.append(Rejected(f"internal error: {exc!r}", b""))
        return out

    def _decode(self, raw: bytes) -> Packet | Rejected:
        if len(raw) > self.max_packet:
            return self._overlong(raw)
        try:
            return decode_packet(raw)
        except PacketError as exc:
            return Rejected(exc.reason, raw[:REJECTED_KEEP])
        except Exception as exc:  # see feed
            return Rejected(f"internal error: {exc!r}", raw[:REJECTED_KEEP])

    def _overlong(self, raw: bytes) -> Rejected:
        return Rejected(f"no packet delimiter within {self.max_packet} bytes", raw[:REJECTED_KEEP])
