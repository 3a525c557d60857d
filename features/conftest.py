"""Wiring for the scenarios: the step library, and the running system every scenario uses."""

import pytest

from harness.pytest_plugin import Ota

from .steps.common import scenario  # noqa: F401  (fixture)
from .steps.fleet_steps import *  # noqa: F403
from .steps.gateway_steps import *  # noqa: F403
from .steps.platform_steps import *  # noqa: F403


@pytest.fixture(autouse=True)
def _system_under_test(ota: Ota) -> Ota:
    """Every scenario runs against a live broker, platform and gateway (once per broker)."""
    return ota
