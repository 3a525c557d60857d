"""ULC stand-in frames: what the gateway and a camera say to each other, and their bytes.

The camera's real ULC wire format is not public; this is a documented stand-in
(docs/ulc.md) so a camera upgrade runs end to end over a real socket. Pure code, no I/O:
:func:`encode` turns a frame into bytes, a :class:`FrameReader` turns a byte stream back
into frames and raises :class:`FrameError`, with a reason, for anything malformed.

Every frame is ``magic "UL" | version | kind | payload length (u32) | payload | CRC-32``,
big-endian; the CRC (zlib's, IEEE 802.3) covers the header and the payload.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from harness.packages.manifest import path_problem, show
from harness.wire import FieldReader

MAGIC = b"UL"
PROTOCOL_VERSION = 1
HEADER = struct.Struct(">2sBBI")
CRC = struct.Struct(">I")
#: The largest payload a frame may carry; a header announcing more is refused at once.
MAX_PAYLOAD = 1 << 20
#: DATA's payload is its offset (8 bytes) and the bytes.
MAX_DATA = MAX_PAYLOAD - 8
DIGEST_SIZE = 32
MAX_STR8 = 255
#: The longest reason a frame carries (:func:`cut_reason` makes any text fit).
MAX_REASON = 1024
MAX_PATH = 4096
MAX_MODE = 0o777
U64 = (1 << 64) - 1


class FrameKind(IntEnum):
    HELLO = 1
    OFFER = 2
    ACCEPT = 3
    REJECT = 4
    DATA = 5
    ACK = 6
    FILE_DONE = 7
    FILE_OK = 8
    FILE_BAD = 9
    COMMIT = 10
    RESTARTING = 11
    ABORT = 12


class CameraState(IntEnum):
    """What a camera's HELLO says about its app."""

    READY = 0
    #: The app is restarting after a COMMIT: nothing else is said on this connection.
    RESTARTING = 1


class FrameError(Exception):
    """Bytes that are not a valid frame; the message says what is wrong with them."""


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One file as the camera will hold it: where, how big, its sha256, its permission bits."""

    path: str
    size: int
    sha256: bytes
    mode: int = 0o644


# -- frames ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Camera to gateway, first on every connection: who it is and what its app runs."""

    kind: ClassVar[FrameKind] = FrameKind.HELLO
    camera_id: str
    version: str
    state: CameraState = CameraState.READY


@dataclass(frozen=True, slots=True)
class Offer:
    """Gateway to camera: this file is coming."""

    kind: ClassVar[FrameKind] = FrameKind.OFFER
    file: FileSpec


@dataclass(frozen=True, slots=True)
class Accept:
    """Camera to gateway: send from ``offset`` (the bytes of this very file it already
    holds), with at most ``window`` bytes unacknowledged."""

    kind: ClassVar[FrameKind] = FrameKind.ACCEPT
    offset: int
    window: int


@dataclass(frozen=True, slots=True)
class Reject:
    """Camera to gateway: the offered file, or the COMMIT, is refused, and why."""

    kind: ClassVar[FrameKind] = FrameKind.REJECT
    reason: str


@dataclass(frozen=True, slots=True)
class Data:
    """Gateway to camera: the file's bytes from ``offset``; offsets follow each other."""

    kind: ClassVar[FrameKind] = FrameKind.DATA
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """Camera to gateway: it holds the file's first ``offset`` bytes."""

    kind: ClassVar[FrameKind] = FrameKind.ACK
    offset: int


@dataclass(frozen=True, slots=True)
class FileDone:
    """Gateway to camera: that was the whole file; check it."""

    kind: ClassVar[FrameKind] = FrameKind.FILE_DONE


@dataclass(frozen=True, slots=True)
class FileOk:
    """Camera to gateway: the file is complete and its sha256 matches."""

    kind: ClassVar[FrameKind] = FrameKind.FILE_OK


@dataclass(frozen=True, slots=True)
class FileBad:
    """Camera to gateway: the file as received is not the one offered; it is discarded."""

    kind: ClassVar[FrameKind] = FrameKind.FILE_BAD
    reason: str


@dataclass(frozen=True, slots=True)
class Commit:
    """Gateway to camera: make exactly ``files`` the app of ``version`` and restart it."""

    kind: ClassVar[FrameKind] = FrameKind.COMMIT
    version: str
    files: tuple[FileSpec, ...]


@dataclass(frozen=True, slots=True)
class Restarting:
    """Camera to gateway: the new app is in place and the camera restarts it; it answers
    HELLO again on a new connection once the app is up."""

    kind: ClassVar[FrameKind] = FrameKind.RESTARTING


@dataclass(frozen=True, slots=True)
class Abort:
    """Either side: the connection ends, and why."""

    kind: ClassVar[FrameKind] = FrameKind.ABORT
    reason: str


Frame = (
    Hello
    | Offer
    | Accept
    | Reject
    | Data
    | Ack
    | FileDone
    | FileOk
    | FileBad
    | Commit
    | Restarting
    | Abort
)


def cut_reason(text: str) -> str:
    """``text`` cut to at most :data:`MAX_REASON` bytes of UTF-8, fit for a REJECT, FILE_BAD
    or ABORT."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= MAX_REASON:
        return text
    return raw[: MAX_REASON - 3].decode("utf-8", "ignore") + "..."


# -- encoding --------------------------------------------------------------------------


def _str(text: str, size: int, limit: int, what: str) -> bytes:
    raw = text.encode()
    if len(raw) > limit:
        raise ValueError(f"{what} is {len(raw)} bytes of UTF-8, more than {limit}")
    return len(raw).to_bytes(size, "big") + raw


def _name(text: str, what: str) -> bytes:
    problem = name_problem(text)
    if problem:
        raise ValueError(f"{what} {problem}")
    return _str(text, 1, MAX_STR8, what)


def _spec(spec: FileSpec) -> bytes:
    problem = path_problem(spec.path)
    if problem:
        raise ValueError(f"{spec.path!r}: {problem}")
    if not 0 <= spec.size <= U64:
        raise ValueError(f"{spec.path}: size {spec.size} is out of range")
    if len(spec.sha256) != DIGEST_SIZE:
        raise ValueError(f"{spec.path}: sha256 must be {DIGEST_SIZE} bytes")
    if not 0 <= spec.mode <= MAX_MODE:
        raise ValueError(f"{spec.path}: mode 0{spec.mode:o} is out of 0..0777")
    return (
        _str(spec.path, 2, MAX_PATH, "path")
        + struct.pack(">Q", spec.size)
        + spec.sha256
        + struct.pack(">H", spec.mode)
    )


def _offset(value: int) -> bytes:
    if not 0 <= value <= U64:
        raise ValueError(f"offset {value} is out of range")
    return struct.pack(">Q", value)


def encode_payload(frame: Frame) -> bytes:
    """The payload of ``frame``; ValueError for a value the wire cannot carry."""
    match frame:
        case Hello(camera_id=cid, version=version, state=state):
            return _name(cid, "camera id") + _name(version, "version") + bytes([state])
        case Offer(file=spec):
            return _spec(spec)
        case Accept(offset=offset, window=window):
            if not 1 <= window <= 0xFFFFFFFF:
                raise ValueError(f"window {window} is out of 1..2^32-1")
            return _offset(offset) + struct.pack(">I", window)
        case Reject(reason=text) | FileBad(reason=text) | Abort(reason=text):
            return _str(text, 2, MAX_REASON, "reason")
        case Data(offset=offset, data=data):
            if not 1 <= len(data) <= MAX_DATA:
                raise ValueError(f"DATA carries 1..{MAX_DATA} bytes, not {len(data)}")
            return _offset(offset) + bytes(data)
        case Ack(offset=offset):
            return _offset(offset)
        case Commit(version=version, files=files):
            if not files:
                raise ValueError("COMMIT names at least one file")
            return (
                _name(version, "version")
                + struct.pack(">I", len(files))
                + b"".join(_spec(f) for f in files)
            )
        case FileDone() | FileOk() | Restarting():
            return b""
    raise TypeError(f"not a ULC frame: {frame!r}")


def encode(frame: Frame) -> bytes:
    """``frame`` as it goes on the wire."""
    payload = encode_payload(frame)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"{frame.kind.name} payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    head = HEADER.pack(MAGIC, PROTOCOL_VERSION, frame.kind, len(payload))
    return head + payload + CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


# -- decoding --------------------------------------------------------------------------


def name_problem(text: str) -> str | None:
    """Why ``text`` cannot be a name on the wire (a camera id, a version), or None: the
    drivers ask before they build a frame, so the refusal names the field, not the frame."""
    if not text:
        return "is empty"
    if not text.isprintable():
        return "has unprintable characters"
    size = len(text.encode())
    if size > MAX_STR8:
        return f"is {size} bytes of UTF-8, more than {MAX_STR8}"
    return None


class _Cursor(FieldReader):
    """Reads a payload's fields in order; every shortfall is a FrameError naming the field."""

    error = FrameError
    TRUNCATED = "payload ends inside {field}"
    TRAILING = "{count} unexpected bytes after the payload"
    NOT_UTF8 = "{field} is not valid UTF-8"
    LENGTH_OF = "the length of {field}"

    def __init__(self, kind: FrameKind, payload: bytes) -> None:
        super().__init__(kind.name, payload)

    def name(self, what: str) -> str:
        value = self.text(1, what)
        problem = name_problem(value)
        if problem:
            raise self.fail(f"{what} {problem}")
        return value

    def spec(self, where: str = "") -> FileSpec:
        path = self.text(2, f"{where}path")
        if len(path.encode()) > MAX_PATH:
            raise self.fail(f"{where}path is longer than {MAX_PATH} bytes")
        problem = path_problem(path)
        if problem:
            raise self.fail(f"{where}path {show(path)}: {problem}")
        size = self.uint(8, f"{where}size")
        digest = self.take(DIGEST_SIZE, f"{where}sha256")
        mode = self.uint(2, f"{where}mode")
        if mode > MAX_MODE:
            raise self.fail(f"{where}mode 0{mode:o} is out of 0..0777")
        return FileSpec(path, size, digest, mode)


def decode_payload(kind: int, payload: bytes) -> Frame:
    """The frame of ``kind`` carried by ``payload``; FrameError if it is not one."""
    try:
        fk = FrameKind(kind)
    except ValueError:
        raise FrameError(f"unknown frame kind {kind}") from None
    c = _Cursor(fk, payload)
    frame: Frame
    match fk:
        case FrameKind.HELLO:
            cid, version = c.name("camera id"), c.name("version")
            state = c.uint(1, "state")
            try:
                frame = Hello(cid, version, CameraState(state))
            except ValueError:
                raise c.fail(f"unknown camera state {state}") from None
        case FrameKind.OFFER:
            frame = Offer(c.spec())
        case FrameKind.ACCEPT:
            offset, window = c.uint(8, "offset"), c.uint(4, "window")
            if window == 0:
                raise c.fail("window is 0")
            frame = Accept(offset, window)
        case FrameKind.REJECT:
            frame = Reject(c.text(2, "reason"))
        case FrameKind.DATA:
            offset, data = c.uint(8, "offset"), c.rest()
            if not data:
                raise c.fail("no data")
            frame = Data(offset, data)
        case FrameKind.ACK:
            frame = Ack(c.uint(8, "offset"))
        case FrameKind.FILE_DONE:
            frame = FileDone()
        case FrameKind.FILE_OK:
            frame = FileOk()
        case FrameKind.FILE_BAD:
            frame = FileBad(c.text(2, "reason"))
        case FrameKind.COMMIT:
            version = c.name("version")
            count = c.uint(4, "file count")
            if count == 0:
                raise c.fail("no files")
            files = tuple(c.spec(f"files[{i}].") for i in range(count))
            seen: set[str] = set()
            for i, f in enumerate(files):
                if f.path in seen:
                    raise c.fail(f"files[{i}].path {show(f.path)}: listed twice")
                seen.add(f.path)
            frame = Commit(version, files)
        case FrameKind.RESTARTING:
            frame = Restarting()
        case FrameKind.ABORT:
            frame = Abort(c.text(2, "reason"))
    c.end()
    return frame


class FrameReader:
    """Cuts a byte stream into frames. A malformed frame raises :class:`FrameError` as soon
    as its bytes show it (bad magic and version at once, an oversized length before its
    payload arrives); after that the stream is unusable and every call raises again."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buf = bytearray()
        self.error: str | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        if self.error is not None:
            raise FrameError(self.error)
        try:
            return self._next()
        except FrameError as exc:
            self.error = str(exc)
            self._buf.clear()
            raise

    def _next(self) -> Frame | None:
        buf = self._buf
        if not MAGIC.startswith(bytes(buf[: len(MAGIC)])):
            raise FrameError(f"bad magic {bytes(buf[: len(MAGIC)]).hex()} (not a ULC frame)")
        if len(buf) > 2 and buf[2] != PROTOCOL_VERSION:
            raise FrameError(
                f"protocol version {buf[2]} is not understood (only {PROTOCOL_VERSION})"
            )
        if len(buf) < HEADER.size:
            return None
        _, _, kind, length = HEADER.unpack_from(buf)
        if length > self.max_payload:
            raise FrameError(f"payload of {length} bytes exceeds the limit of {self.max_payload}")
        end = HEADER.size + length
        if len(buf) < end + CRC.size:
            return None
        (crc,) = CRC.unpack_from(buf, end)
        payload = bytes(buf[HEADER.size : end])
        actual = zlib.crc32(payload, zlib.crc32(bytes(buf[: HEADER.size])))
        if crc != actual:
            raise FrameError(f"CRC mismatch: frame says {crc:08x}, bytes give {actual:08x}")
        del buf[: end + CRC.size]
        return decode_payload(kind, payload)
