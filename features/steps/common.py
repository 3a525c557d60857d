"""What a scenario carries between its steps, and waiting with a useful failure message."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from harness.pytest_plugin import Ota
from sims.reproduce import seeded_image

T = TypeVar("T")


@dataclass
class ScenarioContext:
    firmware: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    response_timeout: int = 30
    timeout: int = 120
    answers: dict[str, Any] = field(default_factory=dict)
    #: The run's seed (--ota-seed): images and fleets are drawn from it.
    seed: int = 0

    def image(self, version: str, size: int) -> bytes:
        """A firmware image of ``size`` bytes, the same for the same seed and version:
        two runs push the same bytes, so their traces compare."""
        return seeded_image(self.seed, version, size)


@pytest.fixture
def scenario(ota_seed: int) -> ScenarioContext:
    return ScenarioContext(seed=ota_seed)


def wait_for(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """Poll ``probe`` until ``done`` holds; fail naming ``what`` and showing the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:g} s; last seen: {value!r}", pytrace=False)
        time.sleep(interval)


def gateway_id(ota: Ota) -> str:
    return ota.system.config.gateway_id


def record_of(ota: Ota, scenario: ScenarioContext, device_id: str) -> dict[str, Any]:
    assert scenario.task is not None, "no task was created in this scenario"
    records = ota.run(ota.client.records(taskId=scenario.task["id"], deviceId=device_id))
    assert len(records) == 1, f"expected one record for {device_id}, got {records}"
    return records[0]
