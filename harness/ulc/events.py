"""What the two ends of a ULC connection tell their drivers: the events of the sans-IO
:class:`~harness.ulc.sender.UlcSender` (the gateway) and
:class:`~harness.ulc.receiver.UlcReceiver` (the camera)."""

from __future__ import annotations

from dataclasses import dataclass

from .frames import FileSpec

# -- either side -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Aborted:
    """The peer sent ABORT: the connection is over."""

    reason: str


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer sent a malformed or unexpected frame: an ABORT saying so is queued and the
    connection is over."""

    reason: str


# -- the gateway's side ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Greeted:
    """The camera's HELLO. A restarting camera says nothing more on this connection."""

    camera_id: str
    version: str
    restarting: bool


@dataclass(frozen=True, slots=True)
class Accepted:
    """The offered file is wanted from ``offset`` (above 0: a resume)."""

    offset: int
    window: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The offered file, or the COMMIT, is refused."""

    reason: str


@dataclass(frozen=True, slots=True)
class Acked:
    """The camera holds the file's first ``offset`` bytes."""

    offset: int


@dataclass(frozen=True, slots=True)
class FileVerified:
    """The camera has the whole file and its digest matches."""


@dataclass(frozen=True, slots=True)
class FileFailed:
    """The camera found the file bad after the transfer and discarded it."""

    reason: str


@dataclass(frozen=True, slots=True)
class CameraRestarting:
    """The COMMIT is done: the camera restarts its app and closes the connection."""


SenderEvent = (
    Aborted
    | Violation
    | Greeted
    | Accepted
    | Rejected
    | Acked
    | FileVerified
    | FileFailed
    | CameraRestarting
)

# -- the camera's side -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfferReceived:
    """A file is offered: the driver answers with ``accept(offset)`` or ``reject(reason)``."""

    file: FileSpec


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes of ``file`` from ``offset``: the driver stores them before it sends what the
    receiver queued (the ACK that covers them)."""

    file: FileSpec
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class FileComplete:
    """All of ``file`` arrived: the driver checks it, then ``file_ok()`` or ``file_bad()``."""

    file: FileSpec


@dataclass(frozen=True, slots=True)
class CommitRequested:
    """Make ``files`` the app of ``version``: the driver answers ``restarting()`` or
    ``reject(reason)``."""

    version: str
    files: tuple[FileSpec, ...]


ReceiverEvent = Aborted | Violation | OfferReceived | DataReceived | FileComplete | CommitRequested
