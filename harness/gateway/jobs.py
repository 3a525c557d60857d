"""An upgrade job and the progress it reports.

Progress is what the platform's record shows, so it follows rules a platform can rely
on: it never goes down, stays within 0..100, always echoes the job's firmwareId and
version (JetLinks drops progress that does not), and ends exactly once, with
complete=true and either success or an errorReason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..protocol import FirmwareFields, FirmwareTopic, UpgradeProgress


class UpgradeFailed(Exception):
    """An upgrade step failed; the message becomes the record's errorReason. ``version`` is
    what the device runs afterwards, when it said so (reported to the platform)."""

    def __init__(self, reason: str, version: str | None = None) -> None:
        super().__init__(reason)
        self.version = version


@dataclass
class Job:
    """One device's upgrade to one firmware, however it was asked for (push or pull)."""

    device_id: str
    target: str
    firmware: FirmwareFields
    #: The topic the request came on; progress and reports go to the same device.
    topic: FirmwareTopic
    image: Path | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.device_id, self.firmware.firmwareId, self.firmware.version)


class ProgressReporter:
    """Turns a job's steps into progress messages handed to ``send``."""

    def __init__(
        self,
        job: Job,
        send: Callable[[UpgradeProgress], None],
        step: int = 5,
    ) -> None:
        self.job = job
        self._send = send
        self._step = step
        self.last = -1
        self.done = False

    def _emit(self, progress: int, complete: bool = False, error: str | None = None) -> None:
        self._send(
            UpgradeProgress(
                progress=progress,
                complete=complete,
                success=error is None,
                errorReason=error,
                version=self.job.firmware.version,
                firmwareId=self.job.firmware.firmwareId,
            )
        )

    def update(self, progress: float) -> None:
        """Report ``progress`` if it moved at least one step; never backwards, never 100."""
        if self.done:
            return
        value = max(0, min(99, int(progress)))
        if value <= self.last or (self.last >= 0 and value - self.last < self._step):
            return
        self.last = value
        self._emit(value)

    def span(self, low: int, high: int) -> Callable[[float], None]:
        """A callback mapping a phase's 0..100 onto ``low``..``high`` of the whole job."""
        return lambda fraction: self.update(
            low + (high - low) * max(0.0, min(fraction, 100.0)) / 100
        )

    def succeed(self) -> None:
        if not self.done:
            self.done = True
            self.last = 100
            self._emit(100, complete=True)

    def fail(self, reason: str) -> None:
        if not self.done:
            self.done = True
            self._emit(max(self.last, 0), complete=True, error=reason)
