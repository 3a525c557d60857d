"""The gateway's own components as child devices: which upgrader each gets, and how a
real WiFi upgrader replaces the "not supported yet" one."""

from __future__ import annotations

from pathlib import Path

from harness.broker import EmbeddedBroker
from harness.gateway import GatewayAgent, GatewayConfig
from harness.gateway.apps import AppUpgrader
from harness.gateway.jobs import Job
from harness.gateway.upgraders import Progress, UndecidedUpgrader, UpgraderRegistry


class WifiUpgrader:
    kind = "wifi"

    def current_version(self, device_id: str) -> str | None:
        return "7.1"

    async def apply(self, job: Job, progress: Progress) -> str:
        return job.firmware.version


async def test_each_component_is_a_child_device_and_a_real_upgrader_wins(tmp_path: Path) -> None:
    wifi = WifiUpgrader()
    registry = UpgraderRegistry()
    registry.register(wifi)
    agent = GatewayAgent(GatewayConfig("gateway-product", "gw", tmp_path), registry)
    async with EmbeddedBroker() as broker:
        await agent.start(broker.url)
        try:
            assert agent.children == {
                "gw-app": "app",
                "gw-wifi": "wifi",
                "gw-uwb": "uwb",
            }  # no drivers: no load and unload commands configured
            assert agent.upgraders.get("wifi") is wifi
            assert isinstance(agent.upgraders.get("app"), AppUpgrader)
            uwb = agent.upgraders.get("uwb")
            assert isinstance(uwb, UndecidedUpgrader)
            assert uwb.refusal == (
                "not_supported_yet",
                "UWB module upgrades are not supported yet by this gateway",
            )
            assert agent.state.version("gw-wifi") == "7.1"  # reported at start
        finally:
            await agent.stop()
