"""Simulated cameras (their flash, restart and faults) and the gateway's camera upgrader
against real ones over TCP, with packages made by build_package."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from harness.gateway.cameras import CameraUpgrader
from harness.gateway.jobs import Job, UpgradeFailed
from harness.packages import build_package
from harness.protocol import FirmwareFields, TopicKind, child_topic
from harness.ulc import OutgoingFile, TransferProgress, UlcPolicy, UlcSender
from harness.ulc.events import Greeted
from harness.ulc.frames import FileSpec
from sims.camera import CameraFaults, CameraFlash, CommitError, SimCamera, camera_files

FAST = UlcPolicy(connect_timeout=1.0, io_timeout=1.0, attempts=3, backoff=0.01, restart_timeout=5)
APP = "bin/camera-app"


def spec_of(path: str, data: bytes, mode: int = 0o644) -> FileSpec:
    return FileSpec(path, len(data), hashlib.sha256(data).digest(), mode)


def stage(flash: CameraFlash, path: str, data: bytes, mode: int = 0o644) -> FileSpec:
    spec = spec_of(path, data, mode)
    held = flash.begin(spec)
    if data[held:]:
        flash.write(spec, held, data[held:])
    assert flash.check(spec) is None
    return spec


# -- the flash -------------------------------------------------------------------------------


def test_a_commit_builds_aside_then_flips_current_and_keeps_previous(tmp_path: Path) -> None:
    flash = CameraFlash(tmp_path / "flash")
    flash.install("1.0.0", {"a": b"one"})
    new = [stage(flash, "a", b"two"), stage(flash, "b/c.sh", b"#!/bin/sh\n", 0o755)]
    flash.commit("2.0.0", tuple(new))
    assert os.readlink(flash.current) == "releases/0002"
    assert os.readlink(flash.previous) == "releases/0001"
    assert flash.version() == "2.0.0"
    assert flash.live_files() == {"a": b"two", "b/c.sh": b"#!/bin/sh\n"}
    assert (flash.current / "files" / "b/c.sh").stat().st_mode & 0o777 == 0o755
    assert not flash.staging.exists()
    assert sorted(p.name for p in flash.releases.iterdir()) == ["0001", "0002"]
    flash.rollback()
    assert flash.version() == "1.0.0"
    assert flash.live_files() == {"a": b"one"}


def test_only_the_live_and_the_previous_release_are_kept(tmp_path: Path) -> None:
    flash = CameraFlash(tmp_path / "flash")
    flash.install("1", {"a": b"1"})
    for version in ("2", "3"):
        flash.commit(version, (stage(flash, "a", version.encode()),))
    assert sorted(p.name for p in flash.releases.iterdir()) == ["0002", "0003"]
    assert flash.live_files() == {"a": b"3"}


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"a": b"staged"}, "commit refused: never was not received whole"),
        ({"a": b"x", "a/b": b"y"}, "commit refused: "),
    ],
    ids=["not staged", "a file where a folder must be"],
)
def test_a_commit_that_cannot_be_made_leaves_the_live_app_alone(
    tmp_path: Path, files: dict[str, bytes], why: str
) -> None:
    flash = CameraFlash(tmp_path / "flash")
    flash.install("1.0.0", {"a": b"one"})
    specs = [stage(flash, path, data) for path, data in files.items()]
    if len(specs) == 1:
        specs.append(spec_of("never", b"sent"))
    with pytest.raises(CommitError, match=why):
        flash.commit("2.0.0", tuple(specs))
    assert flash.version() == "1.0.0"
    assert flash.live_files() == {"a": b"one"}
    assert os.readlink(flash.current) == "releases/0001"
    assert [p.name for p in flash.releases.iterdir()] == ["0001"]


def test_staged_bytes_that_do_not_match_are_discarded(tmp_path: Path) -> None:
    flash = CameraFlash(tmp_path / "flash")
    spec = spec_of("a", b"good")
    flash.begin(spec)
    flash.write(spec, 0, b"evil")
    assert flash.check(spec) == f"a: sha256 mismatch: got {hashlib.sha256(b'evil').hexdigest()}"
    assert flash.begin(spec) == 0


# -- the simulated camera --------------------------------------------------------------------


async def hello(camera: SimCamera) -> Greeted:
    reader, writer = await asyncio.open_connection(*camera.address)
    try:
        sender = UlcSender()
        async with asyncio.timeout(5):
            while not (events := sender.receive_data(await reader.read(4096))):
                pass
        (event,) = events
        assert isinstance(event, Greeted)
        return event
    finally:
        writer.close()


async def test_a_restarting_camera_says_so_until_its_app_is_back(tmp_path: Path) -> None:
    async with SimCamera("cam", tmp_path / "flash", "1.0.0", restart_delay=60) as camera:
        assert await hello(camera) == Greeted("cam", "1.0.0", restarting=False)
        spec = stage(camera.flash, "a", b"new")
        reader, writer = await asyncio.open_connection(*camera.address)
        sender = UlcSender()
        sender.receive_data(await reader.read(4096))
        sender.commit("2.0.0", [spec])
        writer.write(sender.data_to_send())
        async with asyncio.timeout(5):
            while not sender.closed:
                sender.receive_data(await reader.read(4096))
        writer.close()
        assert await hello(camera) == Greeted("cam", "2.0.0", restarting=True)
        assert camera.restarts == 0


async def test_the_simulated_camera_keeps_its_flash_across_a_new_server(tmp_path: Path) -> None:
    async with SimCamera("cam", tmp_path / "flash", "1.0.0", {"a": b"1"}) as camera:
        camera.flash.commit("2.0.0", (stage(camera.flash, "a", b"2"),))
    async with SimCamera("cam", tmp_path / "flash", "1.0.0") as again:
        assert again.version == "2.0.0"
        assert (await hello(again)).version == "2.0.0"


# -- the camera upgrader ---------------------------------------------------------------------


def package(folder: Path, version: str, *, kind: str = "camera", label: str = "") -> Path:
    source = folder / f"src-{kind}-{version}{label}"
    for name, data in camera_files(version).items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    out = folder / f"{kind}-{version}{label}.tar.gz"
    build_package(source, out, kind=kind, version=version)
    return out


def tampered(folder: Path, version: str) -> Path:
    good = package(folder, version)
    bad = folder / f"camera-{version}-tampered.tar.gz"
    with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if member.name == f"files/{APP}":
                data = io.BytesIO(bytes(member.size))
            dst.addfile(member, data)
    return bad


def job(device: str, version: str, image: Path) -> Job:
    firmware = FirmwareFields(
        url="http://127.0.0.1:1/file/x",
        version=version,
        sign="0" * 64,
        signMethod="sha256",
        firmwareId="fw-1",
        size=image.stat().st_size,
    )
    topic = child_topic("gw-product", "gw-1", device, TopicKind.UPGRADE)
    return Job(device, "camera", firmware, topic, image)


class Rig:
    def __init__(self, tmp: Path, cameras: list[SimCamera], policy: UlcPolicy = FAST) -> None:
        self.tmp = tmp
        self.cameras = cameras
        self.work = tmp / "work"
        self.upgrader = CameraUpgrader.over_ulc(
            {c.camera_id: c.address for c in cameras}, policy, work_dir=self.work
        )
        self.progress: list[float] = []

    async def apply(self, index: int, version: str, image: Path) -> str:
        device = self.cameras[index].camera_id
        return await self.upgrader.apply(job(device, version, image), self.progress.append)


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    faults = getattr(request, "param", CameraFaults())
    cameras = [
        SimCamera("camera-0000", tmp_path / "c0", "1.0.0", faults=faults, restart_delay=0.05),
        SimCamera("camera-0001", tmp_path / "c1", "1.0.0", restart_delay=0.05),
    ]
    for camera in cameras:
        await camera.start()
    try:
        built = Rig(tmp_path, cameras)
        assert await built.upgrader.refresh() == {"camera-0000": "1.0.0", "camera-0001": "1.0.0"}
        yield built
    finally:
        for camera in cameras:
            await camera.stop()


async def test_a_package_is_installed_on_its_camera_and_its_version_read_back(rig: Rig) -> None:
    assert await rig.apply(0, "2.0.0", package(rig.tmp, "2.0.0")) == "2.0.0"
    first, second = rig.cameras
    assert first.version == "2.0.0" and first.live_files() == camera_files("2.0.0")
    assert second.version == "1.0.0" and second.connections == 1
    assert rig.upgrader.current_version("camera-0000") == "2.0.0"
    assert rig.upgrader.current_version("camera-0001") == "1.0.0"
    assert rig.progress == sorted(rig.progress)
    assert rig.progress[0] >= 0 and 90 <= rig.progress[-1] <= 100
    assert list(rig.work.iterdir()) == []  # the unpacked files are gone


async def test_a_corrupted_package_fails_before_any_connection(rig: Rig) -> None:
    camera = rig.cameras[0]
    with pytest.raises(UpgradeFailed) as caught:
        await rig.apply(0, "2.0.0", tampered(rig.tmp, "2.0.0"))
    assert f"package refused: files/{APP}: sha256 mismatch" in str(caught.value)
    assert caught.value.version == "1.0.0"
    assert camera.connections == 1  # the HELLO at refresh, nothing since
    assert camera.version == "1.0.0" and camera.live_files() == camera_files("1.0.0")
    assert list(rig.work.iterdir()) == []


@pytest.mark.parametrize(
    ("kind", "inside", "why"),
    [
        ("app", "2.0.0", "package refused: it is for app, not camera"),
        (
            "camera",
            "3.0.0",
            "package refused: it holds version 3.0.0, the platform announced 2.0.0",
        ),
    ],
)
async def test_a_package_for_something_else_is_refused_untouched(
    rig: Rig, kind: str, inside: str, why: str
) -> None:
    with pytest.raises(UpgradeFailed, match=why) as caught:
        await rig.apply(0, "2.0.0", package(rig.tmp, inside, kind=kind))
    assert caught.value.version == "1.0.0"
    assert rig.cameras[0].connections == 1
    assert list(rig.work.iterdir()) == []


@pytest.mark.parametrize("rig", [CameraFaults(reject_file="bin/*")], indirect=True)
async def test_a_file_the_camera_rejects_fails_with_its_reason_on_the_old_version(
    rig: Rig,
) -> None:
    camera = rig.cameras[0]
    with pytest.raises(UpgradeFailed) as caught:
        await rig.apply(0, "2.0.0", package(rig.tmp, "2.0.0"))
    assert str(caught.value) == (
        f"camera camera-0000 ({camera.host}:{camera.port}) rejected {APP}: "
        "file too large for the camera's flash"
    )
    assert caught.value.version == "1.0.0"
    assert camera.version == "1.0.0" and camera.live_files() == camera_files("1.0.0")
    assert camera.restarts == 0


@pytest.mark.parametrize("rig", [CameraFaults(boot_old_version=True)], indirect=True)
async def test_a_camera_that_boots_its_old_version_fails_as_rolled_back(rig: Rig) -> None:
    camera = rig.cameras[0]
    with pytest.raises(UpgradeFailed) as caught:
        await rig.apply(0, "2.0.0", package(rig.tmp, "2.0.0"))
    assert str(caught.value) == "camera came back on 1.0.0, not 2.0.0: it rolled back"
    assert caught.value.version == "1.0.0"
    assert rig.upgrader.current_version("camera-0000") == "1.0.0"
    assert camera.restarts == 1
    assert camera.live_files() == camera_files("1.0.0")


@pytest.mark.parametrize("rig", [CameraFaults(cut_after_bytes=50_000)], indirect=True)
async def test_a_cut_mid_file_is_resumed_and_the_upgrade_succeeds(rig: Rig) -> None:
    camera = rig.cameras[0]
    assert await rig.apply(0, "2.0.0", package(rig.tmp, "2.0.0")) == "2.0.0"
    assert camera.cuts == [(APP, 50_000)]
    assert (APP, 50_000) in camera.accepted
    total = sum(len(d) for d in camera_files("2.0.0").values())
    assert camera.bytes_received == total


async def test_a_camera_that_does_not_come_back_fails_with_an_unknown_version(
    tmp_path: Path,
) -> None:
    patient = UlcPolicy(io_timeout=1.0, backoff=0.01, restart_timeout=0.3)
    async with SimCamera("camera-0000", tmp_path / "c", "1.0.0", restart_delay=60) as camera:
        rig = Rig(tmp_path, [camera], patient)
        await rig.upgrader.refresh()
        with pytest.raises(UpgradeFailed) as caught:
            await rig.apply(0, "2.0.0", package(tmp_path, "2.0.0"))
    assert str(caught.value) == (
        f"camera camera-0000 ({camera.host}:{camera.port}) did not answer as ready within "
        "0.3 s: its app is restarting (after the COMMIT of 2.0.0)"
    )
    assert caught.value.version is None
    assert rig.upgrader.current_version("camera-0000") is None


@pytest.mark.parametrize(
    ("rig", "rolled_back"),
    [
        (CameraFaults(drop_after_commit=True), False),
        (CameraFaults(drop_after_commit=True, boot_old_version=True), True),
    ],
    indirect=["rig"],
    ids=["committed", "rolled back"],
)
async def test_a_commit_whose_answer_is_lost_is_decided_by_the_version_after(
    rig: Rig, rolled_back: bool
) -> None:
    camera = rig.cameras[0]
    image = package(rig.tmp, "2.0.0")
    if not rolled_back:
        assert await rig.apply(0, "2.0.0", image) == "2.0.0"
        assert camera.live_files() == camera_files("2.0.0")
    else:
        with pytest.raises(UpgradeFailed) as caught:
            await rig.apply(0, "2.0.0", image)
        assert str(caught.value).startswith(
            f"camera camera-0000 ({camera.host}:{camera.port}): COMMIT of 2.0.0 sent, "
            "outcome unknown: "
        )
        assert str(caught.value).endswith(
            "; the camera answers on 1.0.0, not 2.0.0: it did not commit or it rolled back"
        )
        assert caught.value.version == "1.0.0"
    assert camera.restarts == 1
    assert rig.upgrader.current_version("camera-0000") == ("1.0.0" if rolled_back else "2.0.0")


async def test_a_lost_commit_answer_and_no_camera_after_leave_the_outcome_unknown(
    tmp_path: Path,
) -> None:
    patient = UlcPolicy(io_timeout=1.0, backoff=0.01, restart_timeout=0.3)
    faults = CameraFaults(drop_after_commit=True)
    async with SimCamera(
        "camera-0000", tmp_path / "c", "1.0.0", faults=faults, restart_delay=60
    ) as camera:
        rig = Rig(tmp_path, [camera], patient)
        await rig.upgrader.refresh()
        with pytest.raises(UpgradeFailed) as caught:
            await rig.apply(0, "2.0.0", package(tmp_path, "2.0.0"))
    name = f"camera camera-0000 ({camera.host}:{camera.port})"
    message = str(caught.value)
    assert message.startswith(f"{name}: COMMIT of 2.0.0 sent, outcome unknown: ")
    assert message.endswith(
        f"; then {name} did not answer as ready within 0.3 s: its app is restarting; "
        "version last known 1.0.0"
    )
    assert caught.value.version is None
    assert rig.upgrader.current_version("camera-0000") is None


async def test_a_version_the_link_cannot_carry_fails_the_job_naming_it(rig: Rig) -> None:
    version = "\U0001d7d8" * 64  # 64 characters, as a manifest allows: 256 bytes of UTF-8
    source = rig.tmp / "src"
    for name, data in camera_files("2.0.0").items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    image = rig.tmp / "camera.tar.gz"
    build_package(source, image, kind="camera", version=version)
    camera = rig.cameras[0]
    with pytest.raises(UpgradeFailed) as caught:
        await rig.apply(0, version, image)
    assert str(caught.value) == (
        f"camera camera-0000 ({camera.host}:{camera.port}): cannot send a COMMIT of {version}: "
        "version is 256 bytes of UTF-8, more than 255"
    )
    assert caught.value.version == "1.0.0"
    assert camera.version == "1.0.0" and camera.restarts == 0


def test_a_simulated_camera_refuses_a_version_hello_cannot_carry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^version is 256 bytes of UTF-8, more than 255: HELLO"):
        SimCamera("camera-0000", tmp_path / "c", "\u00e9" * 128)
    assert not (tmp_path / "c").exists()


async def test_an_unknown_camera_and_an_unreachable_one(tmp_path: Path) -> None:
    async with SimCamera("camera-0000", tmp_path / "c", "1.0.0") as camera:
        address = camera.address
    upgrader = CameraUpgrader.over_ulc(
        {"camera-0000": address}, UlcPolicy(connect_timeout=1, restart_timeout=0.1, backoff=0.01)
    )
    assert await upgrader.refresh() == {"camera-0000": None}
    image = package(tmp_path, "2.0.0")
    with pytest.raises(UpgradeFailed, match="'camera-0009' is not a camera this gateway knows"):
        await upgrader.apply(job("camera-0009", "2.0.0", image), lambda p: None)


class FolderCamera:
    """A camera reached some other way (here: a mounted folder): another CameraTransport,
    to show the upgrader needs nothing of ULC."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = f"camera at {root}"
        self.committed: list[str] = []

    async def version(self) -> str:
        return (self.root / "version").read_text()

    async def send_files(self, files: Sequence[OutgoingFile], progress: TransferProgress) -> None:
        total = sum(f.size for f in files)
        done = 0
        for f in files:
            target = self.root / "incoming" / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f.local, target)
            done += f.size
            progress(done, total)

    async def commit(self, version: str, files: Sequence[OutgoingFile]) -> None:
        self.committed.append(version)
        (self.root / "version").write_text(version)

    async def close(self) -> None:
        pass


async def test_any_camera_transport_drops_in(tmp_path: Path) -> None:
    camera = FolderCamera(tmp_path / "mounted")
    camera.root.mkdir()
    (camera.root / "version").write_text("1.0.0")
    upgrader = CameraUpgrader({"camera-0000": camera}, work_dir=tmp_path / "work")
    assert await upgrader.refresh() == {"camera-0000": "1.0.0"}
    image = package(tmp_path, "2.0.0")
    assert await upgrader.apply(job("camera-0000", "2.0.0", image), lambda p: None) == "2.0.0"
    assert camera.committed == ["2.0.0"]
    incoming = camera.root / "incoming"
    assert {
        p.relative_to(incoming).as_posix(): p.read_bytes()
        for p in incoming.rglob("*")
        if p.is_file()
    } == camera_files("2.0.0")
