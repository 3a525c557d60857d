"""The gateway's end of one ULC connection, as a sans-IO state machine.

Bytes from the camera go in through :meth:`UlcSender.receive_data`, which returns events;
what to send comes out of :meth:`UlcSender.data_to_send`. The driver offers a file, then
asks :meth:`UlcSender.next_chunk` what the window allows and hands the bytes to
:meth:`UlcSender.send_data`; FILE_DONE follows the last byte by itself. Nothing here
reads a file or a socket, so a transfer can be tested byte for byte without either.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from .events import (
    Aborted,
    Accepted,
    Acked,
    CameraRestarting,
    FileFailed,
    FileVerified,
    Greeted,
    Rejected,
    SenderEvent,
    Violation,
)
from .frames import (
    MAX_DATA,
    Abort,
    Accept,
    Ack,
    CameraState,
    Commit,
    Data,
    FileBad,
    FileDone,
    FileOk,
    FileSpec,
    Frame,
    FrameError,
    FrameReader,
    Hello,
    Offer,
    Reject,
    Restarting,
    cut_reason,
    encode,
)

DEFAULT_CHUNK = 16 * 1024


class SenderState(Enum):
    GREETING = "waiting for HELLO"
    IDLE = "idle"
    OFFERING = "waiting for ACCEPT or REJECT"
    SENDING = "sending data"
    FINISHING = "waiting for FILE_OK or FILE_BAD"
    COMMITTING = "waiting for RESTARTING"
    CLOSED = "closed"


class UlcSender:
    """One connection to a camera, seen from the gateway. A cut connection needs a new
    sender; the camera's ACCEPT on the new one says where the file resumes."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK) -> None:
        if not 1 <= chunk_size <= MAX_DATA:
            raise ValueError(f"chunk size must be 1..{MAX_DATA}")
        self.chunk_size = chunk_size
        self.state = SenderState.GREETING
        #: The file being offered or sent.
        self.file: FileSpec | None = None
        #: Bytes of the file sent (from the start of the file) and acknowledged.
        self.sent = 0
        self.acked = 0
        self.window = 0
        self._reader = FrameReader()
        self._out = bytearray()

    @property
    def closed(self) -> bool:
        return self.state is SenderState.CLOSED

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    # -- what the driver asks ------------------------------------------------------------

    def offer(self, file: FileSpec) -> None:
        self._require(SenderState.IDLE, "offer a file")
        self.file, self.sent, self.acked = file, 0, 0
        self._send(Offer(file))
        self.state = SenderState.OFFERING

    def next_chunk(self) -> tuple[int, int] | None:
        """``(offset, length)`` of the next DATA the window allows, or None for now."""
        if self.state is not SenderState.SENDING:
            return None
        limit = self._limit()
        if self.sent >= limit:
            return None
        return self.sent, min(self.chunk_size, limit - self.sent)

    def send_data(self, data: bytes) -> None:
        """Queue DATA with ``data`` at the current offset (and FILE_DONE after the last)."""
        self._require(SenderState.SENDING, "send data")
        assert self.file is not None
        if not data or self.sent + len(data) > self._limit():
            raise ValueError(
                f"{len(data)} bytes at {self.sent} do not fit the window "
                f"(acked {self.acked}, window {self.window}, size {self.file.size})"
            )
        self._send(Data(self.sent, data))
        self.sent += len(data)
        if self.sent == self.file.size:
            self._finish()

    def commit(self, version: str, files: Sequence[FileSpec]) -> None:
        self._require(SenderState.IDLE, "commit")
        self._send(Commit(version, tuple(files)))
        self.state = SenderState.COMMITTING

    def abort(self, reason: str) -> None:
        """End the connection saying why; nothing queued before is sent."""
        if not self.closed:
            self._out.clear()
            self._send(Abort(cut_reason(reason)))
            self.state = SenderState.CLOSED

    # -- what the camera says ------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[SenderEvent]:
        """The events in ``data``; a malformed or unexpected frame ends the connection with
        a :class:`Violation` (an ABORT is queued), it never raises."""
        if self.closed:
            return []
        self._reader.feed(data)
        events: list[SenderEvent] = []
        while not self.closed:
            try:
                frame = self._reader.next_frame()
            except FrameError as exc:
                events.append(self._violation(str(exc)))
                break
            if frame is None:
                break
            events.append(self._on_frame(frame))
        return events

    def _on_frame(self, frame: Frame) -> SenderEvent:
        state = self.state
        if isinstance(frame, Abort):
            self.state = SenderState.CLOSED
            return Aborted(frame.reason)
        if state is SenderState.GREETING and isinstance(frame, Hello):
            restarting = frame.state is CameraState.RESTARTING
            self.state = SenderState.CLOSED if restarting else SenderState.IDLE
            return Greeted(frame.camera_id, frame.version, restarting)
        if state is SenderState.OFFERING and isinstance(frame, Accept):
            return self._on_accept(frame)
        if state in (SenderState.OFFERING, SenderState.COMMITTING) and isinstance(frame, Reject):
            self.state = SenderState.IDLE
            return Rejected(frame.reason)
        if state in (SenderState.SENDING, SenderState.FINISHING) and isinstance(frame, Ack):
            if not self.acked <= frame.offset <= self.sent:
                return self._violation(
                    f"ACK of {frame.offset} is outside {self.acked}..{self.sent}, "
                    "the bytes sent and not yet acknowledged"
                )
            self.acked = frame.offset
            return Acked(frame.offset)
        if state is SenderState.FINISHING and isinstance(frame, FileOk):
            self.state = SenderState.IDLE
            return FileVerified()
        if state is SenderState.FINISHING and isinstance(frame, FileBad):
            self.state = SenderState.IDLE
            return FileFailed(frame.reason)
        if state is SenderState.COMMITTING and isinstance(frame, Restarting):
            self.state = SenderState.CLOSED
            return CameraRestarting()
        return self._violation(f"unexpected {frame.kind.name} while {state.value}")

    def _on_accept(self, frame: Accept) -> SenderEvent:
        assert self.file is not None
        if frame.offset > self.file.size:
            return self._violation(
                f"ACCEPT from {frame.offset}, past the end of {self.file.path} "
                f"({self.file.size} bytes)"
            )
        self.sent = self.acked = frame.offset
        self.window = frame.window
        self.state = SenderState.SENDING
        if self.sent == self.file.size:
            self._finish()
        return Accepted(frame.offset, frame.window)

    # -- helpers ---------------------------------------------------------------------------

    def _limit(self) -> int:
        assert self.file is not None
        return min(self.file.size, self.acked + self.window)

    def _finish(self) -> None:
        self._send(FileDone())
        self.state = SenderState.FINISHING

    def _send(self, frame: Frame) -> None:
        self._out += encode(frame)

    def _require(self, state: SenderState, action: str) -> None:
        if self.state is not state:
            raise RuntimeError(f"cannot {action} while {self.state.value}")

    def _violation(self, reason: str) -> Violation:
        self.abort(f"protocol error: {reason}")
        return Violation(reason)
