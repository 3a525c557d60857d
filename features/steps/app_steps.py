"""Steps about the gateway application (lua and .so files), a child device of the gateway."""

from __future__ import annotations

import _ctypes
import io
import tarfile
from pathlib import Path

from pytest_bdd import given, parsers, then, when

from harness.gateway.apps import APP_PRODUCT, AppUpgrader, app_device_id
from harness.packages import build_package
from harness.pytest_plugin import Ota

from ..targets import Target
from .common import ScenarioContext, record_of, wait_for

#: A real shared library that loads on this machine.
LIBRARY = Path(_ctypes.__file__).read_bytes()


class PowerCut(BaseException):
    """The gateway's power goes: nothing after this point runs, nothing is cleaned up."""


def app_files(version: str) -> dict[str, bytes]:
    return {
        "main.lua": f"print('gateway app {version}')\n".encode(),
        f"lib/app-{version}.lua": b"return {}\n",
        "lib/libota.so": LIBRARY,
    }


def _app(ota: Ota, target: Target) -> AppUpgrader:
    target.require_in_process_gateway("the gateway app's files")
    gateway = ota.system.gateway
    assert gateway is not None, "the reference gateway is not running"
    app = gateway.upgraders.get(AppUpgrader.kind)
    assert isinstance(app, AppUpgrader)
    return app


def _package(folder: Path, version: str, files: dict[str, bytes]) -> Path:
    source = folder / f"app-{version}"
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    out = folder / f"app-{version}.tar.gz"
    build_package(source, out, kind="app", version=version)
    return out


@given(parsers.parse('the gateway app runs version "{version}"'))
def _(ota: Ota, target: Target, scenario: ScenarioContext, tmp_path: Path, version: str) -> None:
    app = _app(ota, target)
    ota.run(app.install_local(_package(tmp_path, version, app_files(version))))
    gateway = ota.system.gateway
    assert gateway is not None
    gateway.attach(app, {app_device_id(gateway.device_id): version})  # reports the version
    scenario.answers["app files before"] = app.store.live_files()


@given(parsers.parse('the gateway loses power after the app switch step "{step}"'))
def _(ota: Ota, target: Target, scenario: ScenarioContext, step: str) -> None:
    def cut(at: str) -> None:
        if at == step:
            scenario.answers["power cut"] = at
            raise PowerCut(at)

    _app(ota, target).store.on_step = cut


def _push(ota: Ota, scenario: ScenarioContext, package: Path, version: str) -> None:
    gateway = ota.system.gateway
    assert gateway is not None
    scenario.answers["app package"] = package
    scenario.firmware = ota.run(
        ota.client.upload_firmware(package.read_bytes(), APP_PRODUCT, version, sign_method="sha256")
    )
    scenario.task = ota.run(
        ota.client.create_task(
            scenario.firmware["id"],
            name=f"app {version}",
            mode="push",
            timeoutSeconds=scenario.timeout,
            responseTimeoutSeconds=scenario.response_timeout,
        )
    )
    ota.run(ota.client.deploy(scenario.task["id"], [app_device_id(gateway.device_id)]))


@when(parsers.parse('the platform pushes app package "{version}" to the gateway app'))
def _(ota: Ota, target: Target, scenario: ScenarioContext, tmp_path: Path, version: str) -> None:
    _app(ota, target)
    scenario.answers["app files after"] = app_files(version)
    _push(ota, scenario, _package(tmp_path, version, app_files(version)), version)


@when(
    parsers.parse(
        'the platform pushes app package "{version}" with a file that does not match its '
        "digest to the gateway app"
    )
)
def _(ota: Ota, target: Target, scenario: ScenarioContext, tmp_path: Path, version: str) -> None:
    _app(ota, target)
    good = _package(tmp_path, version, app_files(version))
    bad = tmp_path / f"app-{version}-tampered.tar.gz"
    with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if member.name == "files/main.lua":
                tampered = b"os.execute('reboot')\n".ljust(member.size, b" ")[: member.size]
                data = io.BytesIO(tampered)
            dst.addfile(member, data)
    _push(ota, scenario, bad, version)


@when(
    parsers.parse(
        'the platform pushes app package "{version}" with a library that does not load to '
        "the gateway app"
    )
)
def _(ota: Ota, target: Target, scenario: ScenarioContext, tmp_path: Path, version: str) -> None:
    _app(ota, target)
    files = {**app_files(version), "lib/libota.so": b"\x7fELF" + bytes(60)}
    _push(ota, scenario, _package(tmp_path, version, files), version)


@when("the gateway restarts after the power loss")
def _(ota: Ota, target: Target, scenario: ScenarioContext) -> None:
    gateway = ota.system.gateway
    assert gateway is not None
    app = _app(ota, target)
    wait_for(lambda: scenario.answers.get("power cut"), bool, 30, "the power cut during the switch")
    wait_for(lambda: gateway.jobs, lambda jobs: not jobs, 10, "the app job to stop at the cut")
    app.store.on_step = None
    ota.run(ota.system.start_gateway())  # a new agent: recovery runs before it reports


def _app_record(ota: Ota, scenario: ScenarioContext) -> dict:
    gateway = ota.system.gateway
    assert gateway is not None
    return record_of(ota, scenario, app_device_id(gateway.device_id))


@then(parsers.parse("the gateway app's record ends in success within {seconds:d} seconds"))
def _(ota: Ota, scenario: ScenarioContext, seconds: int) -> None:
    record = wait_for(
        lambda: _app_record(ota, scenario),
        lambda r: r["state"] in ("success", "failed", "canceled"),
        seconds,
        "the gateway app's record to end",
    )
    assert record["state"] == "success", record


@then(
    parsers.parse(
        "the gateway app's record fails within {seconds:d} seconds with a reason "
        'containing "{text}"'
    )
)
def _(ota: Ota, scenario: ScenarioContext, seconds: int, text: str) -> None:
    record = wait_for(
        lambda: _app_record(ota, scenario),
        lambda r: r["state"] in ("success", "failed", "canceled"),
        seconds,
        "the gateway app's record to end",
    )
    assert record["state"] == "failed", record
    assert text in (record.get("errorReason") or ""), record


@then(parsers.parse('the gateway app runs version "{version}" with its {which} files'))
def _(ota: Ota, target: Target, scenario: ScenarioContext, version: str, which: str) -> None:
    app = _app(ota, target)
    assert app.store.version() == version
    expected = scenario.answers[f"app files {'before' if which == 'old' else 'after'}"]
    assert app.store.live_files() == expected


@then(parsers.parse('the platform shows the gateway app at version "{version}"'))
def _(ota: Ota, version: str) -> None:
    gateway = ota.system.gateway
    assert gateway is not None
    device = app_device_id(gateway.device_id)
    wait_for(
        lambda: ota.run(ota.client.device(device)).get("firmwareVersion"),
        lambda v: v == version,
        10,
        f"the platform to show {device} at {version}",
    )
