"""The contract between the gateway's distribution logic and whatever carries its frames.

The session (harness.gateway.distribution) is sans-IO: it is fed events and answers
with actions. A driver performs the actions on some medium (a SimPy world in sims/, a
coordinator board on a serial port in rigs/) and feeds back what happened. A
:class:`NodeLink` is such a driver as the gateway sees it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .frames import FrameKind

if TYPE_CHECKING:
    from ..gateway.distribution.session import BroadcastSession


@dataclass(frozen=True)
class Transmit:
    """Put these radio frames on air, back to back; ``to`` None is a broadcast."""

    frames: tuple[bytes, ...]
    to: str | None
    kind: FrameKind


@dataclass(frozen=True)
class SetTimer:
    """Call ``timer_fired`` at (or after) ``at``; replaces any earlier timer."""

    at: float


@dataclass(frozen=True)
class NodeProgress:
    """How far one node's upgrade is, 0..100, and in which phase."""

    node: str
    progress: float
    phase: str


@dataclass(frozen=True)
class NodeResult:
    """One node's outcome: ``ok`` with the version it now runs, or a reason."""

    node: str
    ok: bool
    reason: str | None = None
    version: str | None = None


Action = Transmit | SetTimer | NodeProgress | NodeResult
ActionSink = Callable[[Action], None]


class NodeLink(Protocol):
    """Runs a session against real or simulated nodes; the gateway never knows which."""

    #: Largest frame the medium carries (the radio's frame payload), in bytes.
    max_frame: int

    async def run(self, session: BroadcastSession, on_action: ActionSink) -> None:
        """Drive ``session`` until it is done, passing every progress and result action
        to ``on_action`` (on the caller's event loop) as it happens."""
        ...

    async def inventory(self) -> dict[str, str | None]:
        """The node ids this link reaches and their firmware versions, where known."""
        ...
