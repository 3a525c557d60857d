"""Wiring for the scenarios: the step library, the target they run against (--target,
--rig), and the running system every scenario uses."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.pytest_plugin import Ota, target_and_rig
from harness.system import SystemConfig
from rigs.lock import RigLock

from .steps.camera_steps import *  # noqa: F403
from .steps.common import scenario  # noqa: F401  (fixture)
from .steps.field_steps import *  # noqa: F403
from .steps.fleet_steps import *  # noqa: F403
from .steps.gateway_steps import *  # noqa: F403
from .steps.local_steps import *  # noqa: F403
from .steps.platform_steps import *  # noqa: F403
from .targets import Target


@pytest.fixture(scope="session")
def _rig_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """A rig is driven by one run at a time: the whole session holds its lock."""
    _, rig = target_and_rig(request.config)
    if rig is None:
        yield
        return
    timeout = request.config.getoption("--rig-lock-timeout")
    with RigLock.for_rig(rig, timeout=timeout):
        yield


@pytest.fixture
def target(request: pytest.FixtureRequest, _rig_lock: None, ota_log: Path, ota_seed: int) -> Target:
    kind, rig = target_and_rig(request.config)
    logs = ota_log.with_suffix("")
    logs.mkdir(parents=True, exist_ok=True)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")

    def say(line: str) -> None:
        if reporter is not None:
            reporter.write_line(f"ota-hil: {line}")

    target = Target(kind, rig, logs, say, seed=ota_seed)
    target.check_needs(request.node)
    return target


@pytest.fixture
def ota_config(target: Target, broker_backend: str, request: pytest.FixtureRequest) -> SystemConfig:
    interval = request.config.getoption("--ota-check-interval") or 0.2
    return target.config(broker_backend, interval)


@pytest.fixture(autouse=True)
def _system_under_test(ota: Ota, target: Target) -> Iterator[Ota]:
    """Every scenario runs against a live broker and platform, and the target's gateway."""
    try:
        target.start(ota)  # a gateway that never comes online is stopped all the same
        yield ota
    finally:
        target.stop(ota)
