"""Simulated cameras: asyncio TCP servers that speak the camera's end of the ULC stand-in,
keep their app in a folder switched atomically, restart it on COMMIT and report its
version, with faults on demand; and :func:`attach_cameras`, which puts a few of them
behind a running system's gateway as child devices.

A camera's folder (its flash):

    releases/<n>/files/   one complete app
    releases/<n>/version  and its version
    current -> releases/<n>   the running app (replaced in one rename)
    previous -> releases/<n>  the app before, for a rollback
    staging/<key>.part    files received (or partly received) for the next app
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import os
import random
import shutil
import tempfile
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.gateway.cameras import CAMERA_PRODUCT, CameraUpgrader
from harness.system import OtaSystem
from harness.ulc import UlcPolicy, UlcReceiver
from harness.ulc.events import (
    Aborted,
    CommitRequested,
    DataReceived,
    FileComplete,
    OfferReceived,
    ReceiverEvent,
    Violation,
)
from harness.ulc.frames import FileSpec, name_problem
from harness.ulc.receiver import DEFAULT_WINDOW

log = logging.getLogger("ota_hil.sims.camera")

#: The reason a camera gives for a file its ``reject_file`` fault matches.
TOO_LARGE = "file too large for the camera's flash"


@dataclass
class CameraFaults:
    """What a simulated camera does wrong; change them on a running camera at will."""

    #: Drop the connection once, after this many bytes of a transfer (to prove resume).
    cut_after_bytes: int | None = None
    #: Refuse offered files whose path matches this glob (fnmatch), with ``reject_reason``.
    reject_file: str | None = None
    reject_reason: str = TOO_LARGE
    #: After a COMMIT, come back on the old app (its self-test failed: a rollback).
    boot_old_version: bool = False
    #: Lose power once, after this many bytes of a transfer: the connection drops and the
    #: camera reboots on the app it runs, keeping what it had staged in its flash.
    power_loss_after_bytes: int | None = None
    #: Drop the connection right after a COMMIT is made, before answering RESTARTING
    #: (the answer is lost; the camera restarts on the new app all the same).
    drop_after_commit: bool = False


class CommitError(Exception):
    """The camera cannot make the offered files its app; the message says why."""


class CameraFlash:
    """A camera's app folder: staged files, releases, and the ``current`` link."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.releases = root / "releases"
        self.staging = root / "staging"
        self.current = root / "current"
        self.previous = root / "previous"

    def install(self, version: str, files: Mapping[str, bytes]) -> None:
        """Put a first app in place (the one the camera ships with)."""
        self.releases.mkdir(parents=True, exist_ok=True)
        build = self._new_build()
        for path, data in files.items():
            target = build / "files" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        self._release(build, version)

    def version(self) -> str | None:
        try:
            return (self.current / "version").read_text()
        except OSError:
            return None

    def live_files(self) -> dict[str, bytes]:
        base = self.current / "files"
        return {
            p.relative_to(base).as_posix(): p.read_bytes()
            for p in sorted(base.rglob("*"))
            if p.is_file()
        }

    # -- staging -----------------------------------------------------------------------------

    def part(self, spec: FileSpec) -> Path:
        key = hashlib.sha256(f"{spec.path}\0{spec.size}\0{spec.sha256.hex()}".encode())
        return self.staging / f"{key.hexdigest()[:32]}.part"

    def begin(self, spec: FileSpec) -> int:
        """Stage this very file (path, size, digest): how many of its bytes are held."""
        self.staging.mkdir(parents=True, exist_ok=True)
        part = self.part(spec)
        with part.open("ab") as f:
            size = f.tell()
        if size > spec.size:
            part.write_bytes(b"")
            return 0
        return size

    def write(self, spec: FileSpec, offset: int, data: bytes) -> None:
        with self.part(spec).open("r+b") as f:
            f.seek(offset)
            f.write(data)
            f.truncate()

    def check(self, spec: FileSpec) -> str | None:
        """Why the staged file is not the offered one (it is discarded then), or None."""
        part = self.part(spec)
        digest = hashlib.sha256(part.read_bytes()).digest() if part.exists() else b""
        if digest != spec.sha256:
            part.unlink(missing_ok=True)
            return f"{spec.path}: sha256 mismatch: got {digest.hex() or 'nothing'}"
        return None

    # -- switching ---------------------------------------------------------------------------

    def commit(self, version: str, files: tuple[FileSpec, ...]) -> None:
        """Make exactly ``files`` (all staged and checked) the app of ``version``: built
        aside, then ``current`` flipped in one rename."""
        for spec in files:
            if not self.part(spec).exists() or self.check(spec) is not None:
                raise CommitError(f"commit refused: {spec.path} was not received whole")
        build = self._new_build()
        try:
            for spec in files:
                target = build / "files" / spec.path
                target.parent.mkdir(parents=True, exist_ok=True)
                self.part(spec).rename(target)
                target.chmod(spec.mode)
        except OSError as exc:
            shutil.rmtree(build, ignore_errors=True)
            raise CommitError(f"commit refused: {exc}") from None
        self._release(build, version)
        shutil.rmtree(self.staging, ignore_errors=True)

    def rollback(self) -> None:
        """Back to the previous app (a failed self-test at boot)."""
        old = os.readlink(self.previous) if self.previous.is_symlink() else None
        if old is not None:
            self._point(self.current, old)

    def _new_build(self) -> Path:
        self.releases.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".build-", dir=self.releases))

    def _release(self, build: Path, version: str) -> None:
        (build / "version").write_text(version)
        numbers = [int(p.name) for p in self.releases.iterdir() if p.name.isdigit()]
        name = f"{max(numbers, default=0) + 1:04d}"
        build.rename(self.releases / name)
        old = os.readlink(self.current) if self.current.is_symlink() else None
        self._point(self.current, f"releases/{name}")
        keep = {name}
        if old is not None:
            self._point(self.previous, old)
            keep.add(Path(old).name)
        for release in self.releases.iterdir():
            if release.name not in keep:
                shutil.rmtree(release, ignore_errors=True)

    def _point(self, link: Path, target: str) -> None:
        tmp = link.with_name(link.name + ".tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)


class _Cut(Exception):
    """The camera drops the connection (a fault)."""


@dataclass
class _Connection:
    receiver: UlcReceiver
    #: Data bytes stored from this connection.
    received: int = 0


class SimCamera:
    """One camera on ``host:port`` (port 0: a free one), its flash under ``root``."""

    def __init__(
        self,
        camera_id: str,
        root: Path,
        version: str,
        files: Mapping[str, bytes] | None = None,
        *,
        faults: CameraFaults | None = None,
        restart_delay: float = 0.1,
        window: int = DEFAULT_WINDOW,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        for what, value in (("camera id", camera_id), ("version", version)):
            problem = name_problem(value)
            if problem:
                raise ValueError(f"{what} {problem}: HELLO cannot carry it")
        self.camera_id = camera_id
        self.flash = CameraFlash(root)
        if self.flash.version() is None:
            self.flash.install(version, files if files is not None else camera_files(version))
        self.faults = faults or CameraFaults()
        self.restart_delay = restart_delay
        self.window = window
        self.host = host
        self.port = port
        self.restarting = False
        #: What happened, for tests: connections taken, every ACCEPT (path, offset), every
        #: refusal (path, reason), data bytes stored, where the connection was cut (once, by
        #: ``cut_after_bytes``: path, offset), protocol errors seen.
        self.connections = 0
        self.accepted: list[tuple[str, int]] = []
        self.rejected: list[tuple[str, str]] = []
        self.bytes_received = 0
        self.cuts: list[tuple[str, int]] = []
        self.violations: list[str] = []
        self.restarts = 0
        #: The version the camera came back on, after each restart.
        self.boots: list[str | None] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def version(self) -> str | None:
        """The running app's version (the old one while it restarts)."""
        return self.flash.version()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def live_files(self) -> dict[str, bytes]:
        return self.flash.live_files()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await server.wait_closed()

    async def __aenter__(self) -> SimCamera:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- a connection ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        receiver = UlcReceiver(
            self.camera_id,
            self.version or "unknown",
            restarting=self.restarting,
            window=self.window,
        )
        conn = _Connection(receiver)
        try:
            writer.write(receiver.data_to_send())
            await writer.drain()
            while not receiver.closed:
                data = await reader.read(64 * 1024)
                if not data:
                    break
                pending = deque(receiver.receive_data(data))
                while pending:
                    pending.extend(self._on_event(conn, pending.popleft()))
                writer.write(receiver.data_to_send())
                await writer.drain()
        except (_Cut, OSError, asyncio.CancelledError):
            # Cancelled at stop: this task is the connection's top, and Python 3.11's
            # streams log a handler that ends cancelled as an error.
            writer.transport.abort()
        finally:
            writer.close()
            self._tasks.discard(task)

    def _on_event(self, conn: _Connection, event: ReceiverEvent) -> list[ReceiverEvent]:
        faults = self.faults
        receiver = conn.receiver
        match event:
            case OfferReceived(file=spec):
                if faults.reject_file and fnmatch.fnmatchcase(spec.path, faults.reject_file):
                    self.rejected.append((spec.path, faults.reject_reason))
                    return receiver.reject(faults.reject_reason)
                held = self.flash.begin(spec)
                self.accepted.append((spec.path, held))
                return receiver.accept(held)
            case DataReceived(file=spec, offset=offset, data=data):
                power_loss = faults.power_loss_after_bytes
                cut = faults.cut_after_bytes if power_loss is None else power_loss
                if cut is not None and not self.cuts and conn.received + len(data) >= cut:
                    keep = cut - conn.received
                    self.flash.write(spec, offset, data[:keep])
                    self.bytes_received += keep
                    self.cuts.append((spec.path, offset + keep))
                    log.info(
                        "%s: %s at %s byte %d",
                        self.camera_id,
                        "power lost" if power_loss is not None else "cutting the connection",
                        spec.path,
                        offset + keep,
                    )
                    if power_loss is not None:
                        self.restarting = True
                        self._spawn(self._restart(after_commit=False))
                    raise _Cut
                try:
                    self.flash.write(spec, offset, data)
                except OSError as exc:
                    receiver.abort(f"cannot store {spec.path}: {exc}")
                    return []
                conn.received += len(data)
                self.bytes_received += len(data)
            case FileComplete(file=spec):
                problem = self.flash.check(spec)
                return receiver.file_bad(problem) if problem else receiver.file_ok()
            case CommitRequested(version=version, files=files):
                try:
                    self.flash.commit(version, files)
                except CommitError as exc:
                    return receiver.reject(str(exc))
                self.restarting = True
                self._spawn(self._restart())
                if faults.drop_after_commit:
                    log.info("%s: dropping the connection after the COMMIT", self.camera_id)
                    raise _Cut
                receiver.restarting()
            case Violation(reason=reason):
                self.violations.append(reason)
                log.info("%s: protocol error: %s", self.camera_id, reason)
            case Aborted(reason=reason):
                log.info("%s: the gateway aborted: %s", self.camera_id, reason)
        return []

    async def _restart(self, after_commit: bool = True) -> None:
        try:
            await asyncio.sleep(self.restart_delay)
            if after_commit and self.faults.boot_old_version:
                log.info("%s: self-test failed: back to the old app", self.camera_id)
                self.flash.rollback()
            self.restarts += 1
            self.boots.append(self.flash.version())
        finally:
            self.restarting = False

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def camera_files(version: str, app_size: int = 96 * 1024) -> dict[str, bytes]:
    """A camera app of ``version``: a binary of ``app_size`` bytes (its content depends on
    the version), a config and a web page."""
    return {
        "bin/camera-app": random.Random(version).randbytes(app_size),
        "etc/camera.conf": f"version={version}\nstream=rtsp\n".encode(),
        "www/index.html": f"<html><body>camera app {version}</body></html>\n".encode(),
    }


def camera_id(index: int) -> str:
    return f"camera-{index:04d}"


@dataclass
class AttachedCameras:
    cameras: list[SimCamera]
    upgrader: CameraUpgrader
    #: The platform product of the cameras.
    product_id: str
    ids: list[str] = field(default_factory=list)
    _folder: tempfile.TemporaryDirectory[str] | None = None

    async def stop(self) -> None:
        """Stop every camera's server (and remove their folders, if made here)."""
        for camera in self.cameras:
            await camera.stop()
        if self._folder is not None:
            with contextlib.suppress(OSError):
                self._folder.cleanup()
            self._folder = None


async def attach_cameras(
    system: OtaSystem,
    count: int,
    version: str,
    *,
    faults_by_index: Mapping[int, CameraFaults] | None = None,
    files: Mapping[str, bytes] | None = None,
    root: Path | None = None,
    policy: UlcPolicy | None = None,
    restart_delay: float = 0.1,
) -> AttachedCameras:
    """Start ``count`` cameras at ``version``, register them at the platform as children
    ``camera-0000``.. of the gateway (product ``camera``), give the gateway a camera
    upgrader for them, and report their versions. Call ``stop()`` when done."""
    assert system.platform_server is not None and system.gateway is not None
    gateway = system.gateway
    if gateway.upgraders.get(CameraUpgrader.kind) is not None:
        raise ValueError("the gateway already has cameras attached")
    folder = None
    if root is None:
        folder = tempfile.TemporaryDirectory(prefix="ota-hil-cameras-")
        root = Path(folder.name)
    faults = faults_by_index or {}
    ids = [camera_id(i) for i in range(count)]
    cameras = [
        SimCamera(
            cid,
            root / cid,
            version,
            files,
            faults=faults.get(i),
            restart_delay=restart_delay,
        )
        for i, cid in enumerate(ids)
    ]
    try:
        for camera in cameras:
            await camera.start()
        registry = system.platform_server.platform.registry
        registry.add_product(CAMERA_PRODUCT, "Camera")
        for cid in ids:
            registry.add_device(cid, CAMERA_PRODUCT, parent_id=system.config.gateway_id)
        upgrader = CameraUpgrader.over_ulc(
            {cam.camera_id: cam.address for cam in cameras},
            policy or UlcPolicy(io_timeout=5.0, backoff=0.05, restart_timeout=10.0),
            work_dir=gateway.state.dir / "cameras",
        )
        gateway.attach(upgrader, await upgrader.refresh())
    except BaseException:
        for camera in cameras:
            await camera.stop()
        if folder is not None:
            folder.cleanup()
        raise
    return AttachedCameras(cameras, upgrader, CAMERA_PRODUCT, ids, folder)
