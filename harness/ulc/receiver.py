"""The camera's end of one ULC connection, as a sans-IO state machine.

Bytes from the gateway go in through :meth:`UlcReceiver.receive_data`, which returns
events; what to send comes out of :meth:`UlcReceiver.data_to_send`. The decisions are the
camera's (where a file resumes, whether it is refused, whether it checks out, the
commit), so the receiver stops at each and waits for the driver's answer; it acknowledges
data on its own, every half window and at the end of a file. Whatever bytes arrive, it
never raises: a malformed or unexpected frame is a :class:`Violation` and an ABORT.
"""

from __future__ import annotations

from enum import Enum

from .events import (
    Aborted,
    CommitRequested,
    DataReceived,
    FileComplete,
    OfferReceived,
    ReceiverEvent,
    Violation,
)
from .frames import (
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

DEFAULT_WINDOW = 64 * 1024


class ReceiverState(Enum):
    IDLE = "waiting for OFFER or COMMIT"
    DECIDING = "deciding on an OFFER"
    RECEIVING = "receiving data"
    CHECKING = "checking a file"
    COMMITTING = "committing"
    CLOSED = "closed"


#: The states in which frames are read; in the others the driver has to answer first.
_READING = (ReceiverState.IDLE, ReceiverState.RECEIVING)


class UlcReceiver:
    """One connection from the gateway, seen from the camera; its HELLO is queued at once.
    A restarting camera says HELLO (restarting) and nothing else."""

    def __init__(
        self,
        camera_id: str,
        version: str,
        *,
        restarting: bool = False,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if not 1 <= window <= 0xFFFFFFFF:
            raise ValueError("window must be 1..2^32-1")
        self.window = window
        self._ack_every = max(1, window // 2)
        self._reader = FrameReader()
        self._out = bytearray()
        state = CameraState.RESTARTING if restarting else CameraState.READY
        self._send(Hello(camera_id, version, state))
        self.state = ReceiverState.CLOSED if restarting else ReceiverState.IDLE
        #: The file offered or being received, and how many of its bytes are held.
        self.file: FileSpec | None = None
        self.received = 0
        self._acked = 0

    @property
    def closed(self) -> bool:
        return self.state is ReceiverState.CLOSED

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> list[ReceiverEvent]:
        if self.closed:
            return []
        self._reader.feed(data)
        return self._pump()

    # -- the driver's answers --------------------------------------------------------------

    def accept(self, offset: int) -> list[ReceiverEvent]:
        """Take the offered file from ``offset``: the bytes of it the camera holds."""
        self._require(ReceiverState.DECIDING, "accept")
        assert self.file is not None
        if not 0 <= offset <= self.file.size:
            raise ValueError(f"offset {offset} is outside 0..{self.file.size}")
        self.received = self._acked = offset
        self._send(Accept(offset, self.window))
        self.state = ReceiverState.RECEIVING
        return self._pump()

    def reject(self, reason: str) -> list[ReceiverEvent]:
        """Refuse the offered file or the COMMIT; the connection carries on."""
        if self.state not in (ReceiverState.DECIDING, ReceiverState.COMMITTING):
            raise RuntimeError(f"nothing to reject while {self.state.value}")
        self._send(Reject(cut_reason(reason)))
        self.file = None
        self.state = ReceiverState.IDLE
        return self._pump()

    def file_ok(self) -> list[ReceiverEvent]:
        self._require(ReceiverState.CHECKING, "confirm a file")
        self._send(FileOk())
        self.file = None
        self.state = ReceiverState.IDLE
        return self._pump()

    def file_bad(self, reason: str) -> list[ReceiverEvent]:
        self._require(ReceiverState.CHECKING, "refuse a file")
        self._send(FileBad(cut_reason(reason)))
        self.file = None
        self.state = ReceiverState.IDLE
        return self._pump()

    def restarting(self) -> None:
        """The commit is done: say RESTARTING; the connection is over."""
        self._require(ReceiverState.COMMITTING, "restart")
        self._send(Restarting())
        self.state = ReceiverState.CLOSED

    def abort(self, reason: str) -> None:
        """End the connection saying why; nothing queued before (an ACK for bytes that could
        not be stored) is sent."""
        if not self.closed:
            self._out.clear()
            self._send(Abort(cut_reason(reason)))
            self.state = ReceiverState.CLOSED

    # -- frames ----------------------------------------------------------------------------

    def _pump(self) -> list[ReceiverEvent]:
        events: list[ReceiverEvent] = []
        while self.state in _READING:
            try:
                frame = self._reader.next_frame()
            except FrameError as exc:
                events.append(self._violation(str(exc)))
                break
            if frame is None:
                break
            events.append(self._on_frame(frame))
        return events

    def _on_frame(self, frame: Frame) -> ReceiverEvent:
        state = self.state
        if isinstance(frame, Abort):
            self.state = ReceiverState.CLOSED
            return Aborted(frame.reason)
        if state is ReceiverState.IDLE and isinstance(frame, Offer):
            self.file = frame.file
            self.state = ReceiverState.DECIDING
            return OfferReceived(frame.file)
        if state is ReceiverState.IDLE and isinstance(frame, Commit):
            self.state = ReceiverState.COMMITTING
            return CommitRequested(frame.version, frame.files)
        if state is ReceiverState.RECEIVING and isinstance(frame, Data):
            return self._on_data(frame)
        if state is ReceiverState.RECEIVING and isinstance(frame, FileDone):
            assert self.file is not None
            if self.received != self.file.size:
                return self._violation(
                    f"FILE_DONE after {self.received} of the {self.file.size} bytes of "
                    f"{self.file.path}"
                )
            self.state = ReceiverState.CHECKING
            return FileComplete(self.file)
        return self._violation(f"unexpected {frame.kind.name} while {state.value}")

    def _on_data(self, frame: Data) -> ReceiverEvent:
        file = self.file
        assert file is not None
        if frame.offset != self.received:
            return self._violation(f"DATA at offset {frame.offset}, expected {self.received}")
        end = frame.offset + len(frame.data)
        if end > file.size:
            return self._violation(
                f"DATA runs to {end}, past the end of {file.path} ({file.size} bytes)"
            )
        self.received = end
        if end - self._acked >= self._ack_every or end == file.size:
            self._send(Ack(end))
            self._acked = end
        return DataReceived(file, frame.offset, frame.data)

    def _send(self, frame: Frame) -> None:
        self._out += encode(frame)

    def _require(self, state: ReceiverState, action: str) -> None:
        if self.state is not state:
            raise RuntimeError(f"cannot {action} while {self.state.value}")

    def _violation(self, reason: str) -> Violation:
        self.abort(f"protocol error: {reason}")
        return Violation(reason)
