"""Steps about simulated cameras behind the gateway, upgraded over ULC."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from pytest_bdd import given, parsers, then, when

from harness.packages import build_package
from harness.pytest_plugin import Ota
from harness.ulc import UlcClient
from sims.camera import AttachedCameras, SimCamera, attach_cameras, camera_files

from ..targets import Target
from .common import ScenarioContext, record_of, wait_for

FINAL = {"success", "failed", "canceled"}


def _cameras(scenario: ScenarioContext) -> AttachedCameras:
    cameras = scenario.answers.get("cameras")
    assert cameras is not None, "no cameras in this scenario"
    return cameras


def _camera(scenario: ScenarioContext, index: int) -> SimCamera:
    cameras = _cameras(scenario).cameras
    assert index < len(cameras), f"the scenario has {len(cameras)} cameras, not {index + 1}"
    return cameras[index]


@given(parsers.parse('{count:d} cameras behind the gateway at version "{version}"'))
def _(
    ota: Ota,
    target: Target,
    scenario: ScenarioContext,
    request: pytest.FixtureRequest,
    count: int,
    version: str,
) -> None:
    target.require_sim("simulated cameras")
    attached = ota.run(attach_cameras(ota.system, count, version))
    request.addfinalizer(lambda: ota.run(attached.stop()))
    scenario.answers["cameras"] = attached
    scenario.answers["camera files before"] = [c.live_files() for c in attached.cameras]
    scenario.answers["camera connections before"] = [c.connections for c in attached.cameras]
    for cid in attached.ids:
        wait_for(
            lambda cid=cid: ota.run(ota.client.device(cid)).get("firmwareVersion"),
            lambda v: v == version,
            10,
            f"the platform to show {cid} at {version}",
        )


@given(parsers.parse("camera {index:d} drops the connection after {count:d} bytes"))
def _(scenario: ScenarioContext, index: int, count: int) -> None:
    _camera(scenario, index).faults.cut_after_bytes = count


@given(parsers.parse("camera {index:d} loses power after {count:d} bytes"))
def _(scenario: ScenarioContext, index: int, count: int) -> None:
    _camera(scenario, index).faults.power_loss_after_bytes = count


@then(parsers.parse('camera {index:d} rebooted on version "{version}" during the transfer'))
def _(scenario: ScenarioContext, index: int, version: str) -> None:
    camera = _camera(scenario, index)
    assert camera.restarts == 2, (
        f"expected the power-loss boot and the commit's restart, got {camera.restarts}"
    )
    assert camera.boots[0] == version, camera.boots


@given(parsers.parse('camera {index:d} rejects files matching "{pattern}"'))
def _(scenario: ScenarioContext, index: int, pattern: str) -> None:
    _camera(scenario, index).faults.reject_file = pattern


@given(parsers.parse("camera {index:d} boots its old version after an upgrade"))
def _(scenario: ScenarioContext, index: int) -> None:
    _camera(scenario, index).faults.boot_old_version = True


def _package(folder: Path, version: str) -> Path:
    source = folder / f"camera-{version}"
    for name, data in camera_files(version).items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    out = folder / f"camera-{version}.tar.gz"
    build_package(source, out, kind="camera", version=version)
    return out


def _push(
    ota: Ota, scenario: ScenarioContext, package: Path, version: str, devices: list[str]
) -> None:
    cameras = _cameras(scenario)
    scenario.firmware = ota.run(
        ota.client.upload_firmware(
            package.read_bytes(), cameras.product_id, version, sign_method="sha256"
        )
    )
    scenario.task = ota.run(
        ota.client.create_task(
            scenario.firmware["id"],
            name=f"camera {version}",
            mode="push",
            timeoutSeconds=scenario.timeout,
            responseTimeoutSeconds=scenario.response_timeout,
        )
    )
    ota.run(ota.client.deploy(scenario.task["id"], devices))


@when(parsers.parse('the platform pushes camera package "{version}" to camera {index:d}'))
def _(ota: Ota, scenario: ScenarioContext, tmp_path: Path, version: str, index: int) -> None:
    device = _camera(scenario, index).camera_id
    _push(ota, scenario, _package(tmp_path, version), version, [device])


@when(parsers.parse('the platform pushes camera package "{version}" to every camera'))
def _(ota: Ota, scenario: ScenarioContext, tmp_path: Path, version: str) -> None:
    _push(ota, scenario, _package(tmp_path, version), version, _cameras(scenario).ids)


@when(
    parsers.parse(
        'the platform pushes camera package "{version}" with a file that does not match its '
        "digest to camera {index:d}"
    )
)
def _(ota: Ota, scenario: ScenarioContext, tmp_path: Path, version: str, index: int) -> None:
    good = _package(tmp_path, version)
    bad = tmp_path / f"camera-{version}-tampered.tar.gz"
    with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if member.name == "files/etc/camera.conf":
                data = io.BytesIO(b"X" * member.size)
            dst.addfile(member, data)
    _push(ota, scenario, bad, version, [_camera(scenario, index).camera_id])


def _ended(ota: Ota, scenario: ScenarioContext, device: str, seconds: int) -> dict:
    return wait_for(
        lambda: record_of(ota, scenario, device),
        lambda r: r["state"] in FINAL,
        seconds,
        f"the record of {device} to end",
    )


@then(parsers.parse("camera {index:d}'s record ends in success within {seconds:d} seconds"))
def _(ota: Ota, scenario: ScenarioContext, index: int, seconds: int) -> None:
    record = _ended(ota, scenario, _camera(scenario, index).camera_id, seconds)
    assert record["state"] == "success", record


@then(parsers.parse("every camera's record ends in success within {seconds:d} seconds"))
def _(ota: Ota, scenario: ScenarioContext, seconds: int) -> None:
    records = {cid: _ended(ota, scenario, cid, seconds) for cid in _cameras(scenario).ids}
    failed = {cid: r for cid, r in records.items() if r["state"] != "success"}
    assert not failed, failed


@then(
    parsers.parse(
        "camera {index:d}'s record fails within {seconds:d} seconds with a reason "
        'containing "{text}"'
    )
)
def _(ota: Ota, scenario: ScenarioContext, index: int, seconds: int, text: str) -> None:
    record = _ended(ota, scenario, _camera(scenario, index).camera_id, seconds)
    assert record["state"] == "failed", record
    assert text in (record.get("errorReason") or ""), record


@then(parsers.parse('camera {index:d} runs version "{version}" with its {which} files'))
def _(scenario: ScenarioContext, index: int, version: str, which: str) -> None:
    camera = _camera(scenario, index)
    assert camera.version == version
    expected = (
        scenario.answers["camera files before"][index] if which == "old" else camera_files(version)
    )
    assert camera.live_files() == expected


@then(parsers.parse('the platform shows camera {index:d} at version "{version}"'))
def _(ota: Ota, scenario: ScenarioContext, index: int, version: str) -> None:
    gateway = ota.system.gateway
    assert gateway is not None
    ota.run(gateway.wait_idle())  # the gateway's last report is out
    device = _camera(scenario, index).camera_id
    wait_for(
        lambda: ota.run(ota.client.device(device)).get("firmwareVersion"),
        lambda v: v == version,
        10,
        f"the platform to show {device} at {version}",
    )


@then(parsers.parse("camera {index:d} resumed the transfer at byte {offset:d}"))
def _(scenario: ScenarioContext, index: int, offset: int) -> None:
    camera = _camera(scenario, index)
    assert len(camera.cuts) == 1 and camera.cuts[0][1] == offset, camera.cuts
    path = camera.cuts[0][0]
    assert camera.accepted.count((path, offset)) == 1, camera.accepted
    client = _cameras(scenario).upgrader.cameras[camera.camera_id]
    assert isinstance(client, UlcClient)
    assert client.resumed == [(path, offset)]


@then(parsers.parse("no file reached camera {index:d}"))
def _(scenario: ScenarioContext, index: int) -> None:
    camera = _camera(scenario, index)
    assert camera.accepted == [] and camera.bytes_received == 0, camera.accepted
    before = scenario.answers["camera connections before"][index]
    assert camera.connections == before, "the gateway connected to the camera"
