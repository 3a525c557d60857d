"""Steps about the reference gateway: online, offline, pulling, its own version."""

from __future__ import annotations

from pytest_bdd import given, parsers, then, when

from harness.pytest_plugin import Ota

from .common import ScenarioContext, wait_for


@given(parsers.parse('the reference gateway is online at version "{version}"'))
def _(ota: Ota, version: str) -> None:
    gateway = ota.system.gateway
    assert gateway is not None, "the reference gateway is not running"
    assert gateway.version == version, f"gateway runs {gateway.version}, not {version}"


@given("the gateway is offline")
def _(ota: Ota) -> None:
    ota.run(ota.system.stop_gateway())


@when("the gateway asks the platform for firmware")
def _(ota: Ota, scenario: ScenarioContext) -> None:
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
def _(ota: Ota, version: str) -> None:
    gateway = ota.system.gateway
    assert gateway is not None
    assert gateway.version == version
