"""Cameras behind the gateway, each a child device whose app is upgraded with a package
(kind ``camera``) sent file by file over a :class:`~harness.ulc.CameraTransport`.

The package is checked whole on the gateway first (kind, version, every file's digest),
so a bad package fails before a byte reaches the camera; the camera then takes the files
beside its live app, switches to them on COMMIT and restarts, and the version it comes
back with is the verdict: the announced one, or the old one after its own rollback. So
the version decides even when the COMMIT's answer was lost.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from harness.packages import Manifest, PackageError, read_manifest, unpack
from harness.ulc import (
    CameraTransport,
    CommitUncertain,
    OutgoingFile,
    TransportError,
    UlcClient,
    UlcError,
    UlcPolicy,
)

from .apps import refuse_unannounced
from .jobs import Job, UpgradeFailed
from .upgraders import Progress

log = logging.getLogger("ota_hil.gateway.cameras")

#: The platform product of cameras.
CAMERA_PRODUCT = "camera"

#: Progress within the upgrader's share: package checked, files sent, committed.
_UNPACKED, _SENT, _COMMITTED = 10, 85, 90


class CameraUpgrader:
    """Installs camera packages (kind ``camera``) on the cameras in ``cameras``, by child id."""

    kind = "camera"

    def __init__(
        self, cameras: Mapping[str, CameraTransport], *, work_dir: Path | None = None
    ) -> None:
        self.cameras = dict(cameras)
        #: Where packages are unpacked while they are sent (a temporary folder each time).
        self.work_dir = work_dir
        self._versions: dict[str, str | None] = {}

    @classmethod
    def over_ulc(
        cls,
        addresses: Mapping[str, tuple[str, int]],
        policy: UlcPolicy | None = None,
        *,
        work_dir: Path | None = None,
    ) -> CameraUpgrader:
        """Cameras reached over the ULC stand-in at ``(host, port)`` each."""
        return cls(
            {cid: UlcClient(cid, host, port, policy) for cid, (host, port) in addresses.items()},
            work_dir=work_dir,
        )

    def current_version(self, device_id: str) -> str | None:
        """The version the camera last reported (at :meth:`refresh` or after an upgrade)."""
        return self._versions.get(device_id)

    async def refresh(self) -> dict[str, str | None]:
        """Ask every camera its version (None for one that does not answer)."""

        async def ask(cid: str, camera: CameraTransport) -> None:
            try:
                self._versions[cid] = await camera.version()
            except UlcError as exc:
                log.warning("%s: version unknown: %s", cid, exc)
                self._versions[cid] = None

        await asyncio.gather(*(ask(cid, cam) for cid, cam in self.cameras.items()))
        return {cid: self._versions.get(cid) for cid in self.cameras}

    async def apply(self, job: Job, progress: Progress) -> str:
        camera = self.cameras.get(job.device_id)
        if camera is None:
            raise UpgradeFailed(f"{job.device_id!r} is not a camera this gateway knows")
        if job.image is None:
            raise UpgradeFailed("no package to install")
        running = self._versions.get(job.device_id)
        if self.work_dir is not None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="camera-", dir=self.work_dir))
        try:
            manifest = await self._unpack(job, folder / "files", running)
            progress(_UNPACKED)
            files = [
                OutgoingFile(e.path, folder / "files" / e.path, e.size, e.sha256, e.mode)
                for e in manifest.files
            ]
            try:
                await camera.send_files(
                    files,
                    lambda done, total: progress(
                        _UNPACKED + (_SENT - _UNPACKED) * done / max(total, 1)
                    ),
                )
                progress(_SENT)
                await camera.commit(manifest.version, files)
                uncertain = None
            except CommitUncertain as exc:
                log.warning("%s: %s; asking the camera its version", job.device_id, exc)
                uncertain = str(exc)
            except UlcError as exc:
                raise UpgradeFailed(str(exc), version=running) from None
        finally:
            await asyncio.to_thread(shutil.rmtree, folder, True)
        progress(_COMMITTED)
        return await self._after_restart(job, camera, manifest.version, running, uncertain)

    async def _unpack(self, job: Job, dest: Path, running: str | None) -> Manifest:
        """The package's manifest after every file was checked; refused before anything
        is unpacked when it is not a camera package of the announced version."""
        try:
            manifest = await asyncio.to_thread(read_manifest, job.image)  # type: ignore[arg-type]
            refuse_unannounced(manifest, self.kind, job.firmware.version)
            return await asyncio.to_thread(unpack, job.image, dest)  # type: ignore[arg-type]
        except PackageError as exc:
            raise UpgradeFailed(str(exc), version=running) from None
        except OSError as exc:
            raise UpgradeFailed(f"cannot unpack the package: {exc}", version=running) from None

    async def _after_restart(
        self,
        job: Job,
        camera: CameraTransport,
        wanted: str,
        running: str | None,
        uncertain: str | None,
    ) -> str:
        """The camera's version decides; ``uncertain`` (the error of a COMMIT whose answer
        was lost) means it may not have committed at all, so an old version is no proof
        of a rollback and no answer leaves the outcome unknown."""
        try:
            now = await camera.version()
        except TransportError as exc:
            self._versions[job.device_id] = None
            if uncertain is None:
                raise UpgradeFailed(f"{exc} (after the COMMIT of {wanted})") from None
            last = f"version last known {running}" if running else "no version known before"
            raise UpgradeFailed(f"{uncertain}; then {exc}; {last}") from None
        self._versions[job.device_id] = now
        if now == wanted:
            return now
        if uncertain is None:
            raise UpgradeFailed(
                f"camera came back on {now}, not {wanted}: it rolled back", version=now
            )
        raise UpgradeFailed(
            f"{uncertain}; the camera answers on {now}, not {wanted}: it did not commit "
            "or it rolled back",
            version=now,
        )

    async def close(self) -> None:
        for camera in self.cameras.values():
            await camera.close()
