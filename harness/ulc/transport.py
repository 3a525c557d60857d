"""What the gateway's camera upgrader needs from a camera link, whatever carries it.

:class:`CameraTransport` is the seam: :class:`~harness.ulc.client.UlcClient` implements it
over the ULC stand-in, and a real ULC implementation drops in by implementing the same
four calls (docs/ulc.md). Errors name the camera, the file and what happened, because
they become a record's errorReason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .frames import FileSpec

#: ``progress(bytes the camera confirmed, bytes in all)`` during a transfer.
TransferProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class OutgoingFile:
    """A file for the camera: ``path`` on the camera, its bytes in ``local`` (checked)."""

    path: str
    local: Path
    size: int
    #: sha256 of the contents, 64 lowercase hex digits.
    sha256: str
    mode: int = 0o644

    @property
    def spec(self) -> FileSpec:
        return FileSpec(self.path, self.size, bytes.fromhex(self.sha256), self.mode)


class UlcError(Exception):
    """A camera operation failed; the message is a complete errorReason."""


class TransportError(UlcError):
    """The link failed (no connection, silence, a cut, nonsense on the wire) and the
    retries ran out, or the camera did not come back after a restart."""


class CommitUncertain(TransportError):
    """The COMMIT went out but its answer was lost: the camera may run either app, so
    only its version (after a restart) says which."""


class Unsendable(UlcError):
    """A value the link cannot carry (a version of more than 255 bytes of UTF-8): the
    operation sent nothing for it."""


class FileRejected(UlcError):
    """The camera refused a file, before the transfer (REJECT) or after it (FILE_BAD)."""

    def __init__(self, message: str, path: str, reason: str) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class CommitRefused(UlcError):
    """The camera refused to make the files its app."""


class CameraTransport(Protocol):
    """One camera, as the camera upgrader drives it."""

    #: Names the camera in errors and logs, e.g. "camera camera-0000 (127.0.0.1:40123)".
    name: str

    async def version(self) -> str:
        """The version the camera's app runs; waits (bounded) while the app restarts."""
        ...

    async def send_files(self, files: Sequence[OutgoingFile], progress: TransferProgress) -> None:
        """Put ``files`` on the camera beside its live app, resuming after a cut; raise
        FileRejected or TransportError."""
        ...

    async def commit(self, version: str, files: Sequence[OutgoingFile]) -> None:
        """Make exactly ``files`` (all sent) the app of ``version`` and restart it; returns
        when the camera restarts. Raise CommitRefused, CommitUncertain (sent, answer lost),
        Unsendable (not sent: the link cannot carry ``version``) or TransportError (not
        sent)."""
        ...

    async def close(self) -> None: ...
