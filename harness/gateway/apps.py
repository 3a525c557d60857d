"""The gateway application (its lua and .so files) as a child device of the gateway: a
package replaces the whole app through an :class:`AppStore`, checked before it counts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from harness.packages import Manifest, PackageError, read_manifest

from .appstore import AppStore, HealthCheck, StepHook, SwitchFailed
from .health import command_check, default_check
from .jobs import Job, UpgradeFailed
from .local import LOCAL_COMPONENTS, local_device_id
from .upgraders import Progress

#: The platform product of the gateway application's child device.
APP_PRODUCT = LOCAL_COMPONENTS["app"].product


def app_device_id(gateway_id: str) -> str:
    """The gateway application's child device id: one per gateway."""
    return local_device_id(gateway_id, "app")


def refuse_unannounced(manifest: Manifest, kind: str, version: str) -> None:
    """Raise :class:`PackageError` unless the package is of ``kind`` and holds the version
    the platform announced: checked before anything of it is installed."""
    if manifest.kind != kind:
        raise PackageError(f"package refused: it is for {manifest.kind}, not {kind}")
    if manifest.version != version:
        raise PackageError(
            f"package refused: it holds version {manifest.version}, the platform "
            f"announced {version}"
        )


class StoreUpgrader:
    """An upgrader whose device is a folder replaced whole through an :class:`AppStore`:
    a package is checked against what the platform announced, then :meth:`install`ed; a
    refusal reports the version that still runs."""

    kind: ClassVar[str]
    #: What the device is, in a failure's words ("the app").
    what: ClassVar[str]
    store: AppStore

    def current_version(self, device_id: str) -> str | None:
        return self.store.version()

    async def install(self, package: Path) -> str:
        raise NotImplementedError

    async def apply(self, job: Job, progress: Progress) -> str:
        if job.image is None:
            raise UpgradeFailed("no package to install")
        running = self.store.version()
        try:
            manifest = await asyncio.to_thread(read_manifest, job.image)
            refuse_unannounced(manifest, self.kind, job.firmware.version)
            progress(10)
            version = await self.install(job.image)
        except (PackageError, SwitchFailed) as exc:
            raise UpgradeFailed(str(exc), version=self.store.version() or running) from None
        except OSError as exc:
            raise UpgradeFailed(
                f"cannot install {self.what}: {exc}", version=self.store.version()
            ) from None
        progress(100)
        return version


class AppUpgrader(StoreUpgrader):
    """Installs app packages (kind ``app``) for the gateway's application device."""

    kind = "app"
    what = "the app"

    def __init__(
        self,
        root: Path,
        *,
        health_command: str | None = None,
        on_step: StepHook | None = None,
    ) -> None:
        self.store = AppStore(root, on_step)
        self.check: HealthCheck = command_check(health_command) if health_command else default_check
        self.recovered = self.store.recover()

    async def install(self, package: Path) -> str:
        """Switch to ``package``'s files and check them (also the app a gateway ships
        with, without the platform)."""
        return await self.store.install(package, self.check, kind=self.kind)
