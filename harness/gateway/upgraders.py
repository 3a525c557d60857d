"""Upgraders, registered by target kind: the part of the gateway that installs an image.

The agent downloads and checks the image; an upgrader installs it for one kind of
target and knows that target's current version. Later kinds (radio nodes, local
apps, drivers) plug in here without touching the agent.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
from collections.abc import Callable
from typing import Protocol

from .jobs import Job, UpgradeFailed
from .state import GatewayState

Progress = Callable[[float], None]


class Upgrader(Protocol):
    """Installs images for one target kind."""

    kind: str

    def current_version(self, device_id: str) -> str | None: ...

    async def apply(self, job: Job, progress: Progress) -> str:
        """Install ``job.image``; return the version now running, or raise UpgradeFailed."""
        ...


class UndecidedUpgrader:
    """A target the gateway knows but cannot upgrade yet (the seed leaves WiFi and UWB "to
    be decided"): every upgrade is answered success=false with :attr:`code` and a message
    that says so, so the platform's record fails at once with that reason rather than
    timing out. Replace it by registering a real upgrader of the same kind."""

    code = "not_supported_yet"

    def __init__(self, kind: str, what: str) -> None:
        self.kind = kind
        self.what = what

    @property
    def refusal(self) -> tuple[str, str]:
        return self.code, f"{self.what} upgrades are not supported yet by this gateway"

    def current_version(self, device_id: str) -> str | None:
        return None

    async def apply(self, job: Job, progress: Progress) -> str:
        raise UpgradeFailed(self.refusal[1])


class UpgraderRegistry:
    def __init__(self) -> None:
        self._by_kind: dict[str, Upgrader] = {}

    def register(self, upgrader: Upgrader) -> None:
        if upgrader.kind in self._by_kind:
            raise ValueError(f"an upgrader for {upgrader.kind!r} is already registered")
        self._by_kind[upgrader.kind] = upgrader

    def get(self, kind: str) -> Upgrader | None:
        return self._by_kind.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._by_kind)


def image_name(version: str) -> str:
    """A file name for an image of ``version``: the version itself when it is a plain name,
    else a digest of it (versions come off the wire)."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", version):
        return f"{version}.bin"
    return hashlib.sha256(version.encode()).hexdigest()[:32] + ".bin"


class GatewayImageUpgrader:
    """The gateway's own firmware: the image is kept in the state folder and the version bumped.

    Stands in for flashing the gateway itself, so the whole flow is real end to end.
    """

    kind = "gateway"

    def __init__(self, state: GatewayState) -> None:
        self.state = state

    def current_version(self, device_id: str) -> str | None:
        return self.state.version(device_id)

    async def apply(self, job: Job, progress: Progress) -> str:
        if job.image is None:
            raise UpgradeFailed("no image to install")
        slot = self.state.dir / "firmware"
        slot.mkdir(exist_ok=True)
        target = slot / image_name(job.firmware.version)
        try:
            await asyncio.to_thread(shutil.copyfile, job.image, target.with_suffix(".tmp"))
            target.with_suffix(".tmp").replace(target)
        except OSError as exc:
            raise UpgradeFailed(f"cannot store the image: {exc}") from None
        progress(50)
        self.state.set_version(job.device_id, job.firmware.version)
        progress(100)
        return job.firmware.version
