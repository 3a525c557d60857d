"""Steps about the gateway's local components, each a child device of the gateway whose
files a package replaces as a whole: its application (lua and .so files) and its kernel
drivers (.ko files)."""

from __future__ import annotations

import _ctypes
import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_bdd import given, parsers, then, when

from harness.gateway.apps import APP_PRODUCT, AppUpgrader, app_device_id
from harness.gateway.drivers import DRIVERS_PRODUCT, DriverUpgrader, drivers_device_id
from harness.gateway.local import LOCAL_COMPONENTS, local_device_id
from harness.packages import build_package
from harness.pytest_plugin import Ota
from sims.kmod import VERMAGIC, fake_module

from ..targets import Target
from .common import ScenarioContext, record_of, wait_for

#: A real shared library that loads on this machine.
LIBRARY = Path(_ctypes.__file__).read_bytes()
#: A kernel the gateway does not run.
OTHER_KERNEL = "5.4.0 SMP mod_unload aarch64"


class PowerCut(BaseException):
    """The gateway's power goes: nothing after this point runs, nothing is cleaned up."""


@dataclass(frozen=True)
class Component:
    """A local component as the scenarios see it."""

    kind: str
    product: str
    device: Callable[[str], str]
    files: Callable[[str], dict[str, bytes]]
    #: Files that pass the package checks but fail once switched in.
    broken: Callable[[str], dict[str, bytes]]


COMPONENTS = {
    "app": Component(
        AppUpgrader.kind,
        APP_PRODUCT,
        app_device_id,
        lambda v: {
            "main.lua": f"print('gateway app {v}')\n".encode(),
            f"lib/app-{v}.lua": b"return {}\n",
            "lib/libota.so": LIBRARY,
        },
        lambda v: {"main.lua": b"print('hi')\n", "lib/libota.so": b"\x7fELF" + bytes(60)},
    ),
    "drivers": Component(
        DriverUpgrader.kind,
        DRIVERS_PRODUCT,
        drivers_device_id,
        lambda v: {"10-radio.ko": fake_module("radio", VERMAGIC, v.encode())},
        lambda v: {"10-radio.ko": fake_module("radio", OTHER_KERNEL, v.encode())},
    ),
}
COMPONENT = r"(?P<component>app|drivers)"


def _upgrader(ota: Ota, target: Target, component: str) -> Any:
    target.require_in_process_gateway(f"the gateway {component}' files")
    gateway = ota.system.gateway
    assert gateway is not None, "the reference gateway is not running"
    upgrader = gateway.upgraders.get(COMPONENTS[component].kind)
    assert upgrader is not None, f"the gateway has no {component} upgrader"
    return upgrader


def _device(ota: Ota, component: str) -> str:
    return COMPONENTS[component].device(ota.system.config.gateway_id)


def _package(folder: Path, component: str, version: str, files: dict[str, bytes]) -> Path:
    source = folder / f"{component}-{version}"
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    out = folder / f"{component}-{version}.tar.gz"
    build_package(source, out, kind=COMPONENTS[component].kind, version=version)
    return out


@given(parsers.re(rf'the gateway {COMPONENT} runs version "(?P<version>[^"]+)"'))
def _(
    ota: Ota,
    target: Target,
    scenario: ScenarioContext,
    tmp_path: Path,
    component: str,
    version: str,
) -> None:
    upgrader = _upgrader(ota, target, component)
    files = COMPONENTS[component].files(version)
    ota.run(upgrader.store.install(_package(tmp_path, component, version, files), _healthy))
    gateway = ota.system.gateway
    assert gateway is not None
    gateway.attach(upgrader, {_device(ota, component): version})  # reports the version
    scenario.answers["files before"] = upgrader.store.live_files()


async def _healthy(files: Path) -> None:
    """The component as shipped with the gateway: installed without a check."""


@given(parsers.re(rf'the gateway loses power after the {COMPONENT} switch step "(?P<step>\w+)"'))
def _(ota: Ota, target: Target, scenario: ScenarioContext, component: str, step: str) -> None:
    def cut(at: str) -> None:
        if at == step:
            scenario.answers["power cut"] = at
            raise PowerCut(at)

    _upgrader(ota, target, component).store.on_step = cut


def _push(ota: Ota, scenario: ScenarioContext, component: str, package: Path, version: str) -> None:
    scenario.firmware = ota.run(
        ota.client.upload_firmware(
            package.read_bytes(), COMPONENTS[component].product, version, sign_method="sha256"
        )
    )
    scenario.task = ota.run(
        ota.client.create_task(
            scenario.firmware["id"],
            name=f"{component} {version}",
            mode="push",
            timeoutSeconds=scenario.timeout,
            responseTimeoutSeconds=scenario.response_timeout,
        )
    )
    ota.run(ota.client.deploy(scenario.task["id"], [_device(ota, component)]))


@when(parsers.re(rf'the platform pushes {COMPONENT} package "(?P<version>[^"]+)"$'))
def _(
    ota: Ota,
    target: Target,
    scenario: ScenarioContext,
    tmp_path: Path,
    component: str,
    version: str,
) -> None:
    _upgrader(ota, target, component)
    files = COMPONENTS[component].files(version)
    scenario.answers["files after"] = files
    _push(ota, scenario, component, _package(tmp_path, component, version, files), version)


@when(
    parsers.re(
        rf'the platform pushes {COMPONENT} package "(?P<version>[^"]+)" with a file that '
        "does not match its digest"
    )
)
def _(
    ota: Ota,
    target: Target,
    scenario: ScenarioContext,
    tmp_path: Path,
    component: str,
    version: str,
) -> None:
    _upgrader(ota, target, component)
    good = _package(tmp_path, component, version, COMPONENTS[component].files(version))
    bad = tmp_path / f"{component}-{version}-tampered.tar.gz"
    with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if data is not None:
                content = bytearray(data.read())
                if member.name.startswith("files/") and not scenario.answers.get("tampered"):
                    content[-1] ^= 0xFF  # same size, another digest
                    scenario.answers["tampered"] = member.name
                data = io.BytesIO(bytes(content))
            dst.addfile(member, data)
    _push(ota, scenario, component, bad, version)


@when(
    parsers.re(
        rf'the platform pushes {COMPONENT} package "(?P<version>[^"]+)" that fails once '
        "switched in"
    )
)
def _(
    ota: Ota,
    target: Target,
    scenario: ScenarioContext,
    tmp_path: Path,
    component: str,
    version: str,
) -> None:
    _upgrader(ota, target, component)
    files = COMPONENTS[component].broken(version)
    _push(ota, scenario, component, _package(tmp_path, component, version, files), version)


@when("the gateway restarts after the power loss")
def _(ota: Ota, scenario: ScenarioContext) -> None:
    gateway = ota.system.gateway
    assert gateway is not None
    wait_for(lambda: scenario.answers.get("power cut"), bool, 30, "the power cut during the switch")
    wait_for(lambda: gateway.jobs, lambda jobs: not jobs, 10, "the job to stop at the cut")
    ota.run(ota.system.start_gateway())  # a new agent: recovery runs before it reports


def _record(ota: Ota, scenario: ScenarioContext, component: str) -> dict[str, Any]:
    return record_of(ota, scenario, _device(ota, component))


def _ended(ota: Ota, scenario: ScenarioContext, component: str, seconds: int) -> dict[str, Any]:
    return wait_for(
        lambda: _record(ota, scenario, component),
        lambda r: r["state"] in ("success", "failed", "canceled"),
        seconds,
        f"the gateway {component}' record to end",
    )


@then(
    parsers.re(rf"the record of the gateway {COMPONENT} ends in success within (?P<seconds>\d+) s")
)
def _(ota: Ota, scenario: ScenarioContext, component: str, seconds: str) -> None:
    record = _ended(ota, scenario, component, int(seconds))
    assert record["state"] == "success", record


@then(
    parsers.re(
        rf"the record of the gateway {COMPONENT} fails within (?P<seconds>\d+) s with a reason "
        'containing "(?P<text>[^"]+)"'
    )
)
def _(ota: Ota, scenario: ScenarioContext, component: str, seconds: str, text: str) -> None:
    record = _ended(ota, scenario, component, int(seconds))
    assert record["state"] == "failed", record
    assert text in (record.get("errorReason") or ""), record


@then(
    parsers.re(
        rf'the gateway {COMPONENT} runs version "(?P<version>[^"]+)" with its (?P<which>old|new) '
        "files"
    )
)
def _(
    ota: Ota, target: Target, scenario: ScenarioContext, component: str, version: str, which: str
) -> None:
    upgrader = _upgrader(ota, target, component)
    assert upgrader.store.version() == version
    expected = scenario.answers["files before" if which == "old" else "files after"]
    assert upgrader.store.live_files() == expected


@then(parsers.re(rf'the platform shows the gateway {COMPONENT} at version "(?P<version>[^"]+)"'))
def _(ota: Ota, component: str, version: str) -> None:
    device = _device(ota, component)
    wait_for(
        lambda: ota.run(ota.client.device(device)).get("firmwareVersion"),
        lambda v: v == version,
        10,
        f"the platform to show {device} at {version}",
    )


MODULE = r"(?P<module>wifi|uwb)"


@when(
    parsers.re(rf'the platform pushes firmware "(?P<version>[^"]+)" to the gateway {MODULE} module')
)
def _(ota: Ota, scenario: ScenarioContext, module: str, version: str) -> None:
    component = LOCAL_COMPONENTS[module]
    scenario.firmware = ota.run(
        ota.client.upload_firmware(scenario.image(version, 1024), component.product, version)
    )
    scenario.task = ota.run(
        ota.client.create_task(
            scenario.firmware["id"],
            name=f"{module} {version}",
            mode="push",
            timeoutSeconds=scenario.timeout,
            responseTimeoutSeconds=scenario.response_timeout,
        )
    )
    device = local_device_id(ota.system.config.gateway_id, module)
    ota.run(ota.client.deploy(scenario.task["id"], [device]))


@then(
    parsers.re(
        rf"the record of the gateway {MODULE} module fails within (?P<seconds>\d+) s with "
        'the reason "(?P<text>[^"]+)"'
    )
)
def _(ota: Ota, scenario: ScenarioContext, module: str, seconds: str, text: str) -> None:
    device = local_device_id(ota.system.config.gateway_id, module)
    record = wait_for(
        lambda: record_of(ota, scenario, device),
        lambda r: r["state"] in ("success", "failed", "canceled"),
        int(seconds),
        f"the record of {device} to end",
    )
    assert record["state"] == "failed" and record.get("errorReason") == text, record
