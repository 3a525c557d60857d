"""ULC, the cameras' file transfer, as a documented stand-in (docs/ulc.md): chunked
transfer with acknowledgements and resume over TCP, behind :class:`CameraTransport` so
the real ULC can be dropped in.

- ``frames``: the wire, byte by byte;
- ``sender`` / ``receiver``: the gateway's and the camera's end, sans-IO state machines;
- ``client``: :class:`UlcClient`, the asyncio driver on the gateway's side;
- ``transport``: the interface the camera upgrader uses, and its errors.
"""

from .client import UlcClient, UlcPolicy
from .frames import FileSpec, FrameError
from .receiver import UlcReceiver
from .sender import UlcSender
from .transport import (
    CameraTransport,
    CommitRefused,
    CommitUncertain,
    FileRejected,
    OutgoingFile,
    TransferProgress,
    TransportError,
    UlcError,
    Unsendable,
)

__all__ = [
    "CameraTransport",
    "CommitRefused",
    "CommitUncertain",
    "FileRejected",
    "FileSpec",
    "FrameError",
    "OutgoingFile",
    "TransferProgress",
    "TransportError",
    "UlcClient",
    "UlcError",
    "UlcPolicy",
    "UlcReceiver",
    "UlcSender",
    "Unsendable",
]
