"""Steps about the gateway: online, offline, pulling, its own version. On target external
the gateway is a separate device, read through the platform."""

from __future__ import annotations

from pytest_bdd import given, parsers, then, when

from harness.pytest_plugin import Ota

from ..targets import Target
from .common import ScenarioContext, wait_for


@given(parsers.parse('the reference gateway is online at version "{version}"'))
def _(ota: Ota, target: Target, version: str) -> None:
    running = target.gateway_version(ota)
    assert running == version, f"the gateway runs {running}, not {version}"


@given("the gateway is offline")
def _(ota: Ota, target: Target) -> None:
    target.take_gateway_offline(ota)


@when("the gateway asks the platform for firmware")
def _(ota: Ota, target: Target, scenario: ScenarioContext) -> None:
    target.require_in_process_gateway("making the gateway pull")
    gateway = ota.system.gateway
    assert gateway is not None

    async def ask() -> str:
        return gateway.pull()

    scenario.answers["pull"] = ota.run(ask())


@then(parsers.parse('the platform answers the pull with code "{code}"'))
def _(ota: Ota, scenario: ScenarioContext, code: str) -> None:
    gateway = ota.system.gateway
    assert gateway is not None
    reply = wait_for(
        lambda: gateway.pull_replies.get(scenario.answers["pull"]),
        lambda r: r is not None,
        5,
        "a reply to the gateway's pull",
    )
    assert not reply.success and reply.code == code, reply


@then(parsers.parse('the gateway runs version "{version}"'))
def _(ota: Ota, target: Target, version: str) -> None:
    assert target.gateway_version(ota) == version
