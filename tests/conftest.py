"""Shared fixtures for the tests: real brokers and a real platform on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.broker import EmbeddedBroker
from harness.gateway import GatewayAgent, GatewayConfig
from harness.platform import PlatformConfig, PlatformServer


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    """An embedded amqtt broker on a free loopback port."""
    async with EmbeddedBroker() as running:
        yield running


@pytest.fixture
async def platform_server(broker: EmbeddedBroker) -> AsyncIterator[PlatformServer]:
    """The mock platform on ``broker``, with a fast timer (0.1 s) for tests."""
    server = PlatformServer(
        broker.url, config=PlatformConfig(check_interval=0.1, timeout_resolution=0.05)
    )
    async with server:
        server.platform.registry.add_product("gw-product", "Gateway")
        server.platform.registry.add_device("gw-1", "gw-product", name="Gateway 1")
        yield server


@pytest.fixture
async def gateway(
    broker: EmbeddedBroker, platform_server: PlatformServer, tmp_path: Path
) -> AsyncIterator[GatewayAgent]:
    """The reference gateway gw-1 (version 1.0.0) on ``broker``, state in tmp_path."""
    agent = GatewayAgent(GatewayConfig("gw-product", "gw-1", tmp_path / "gw-1"))
    await agent.start(broker.url)
    yield agent
    await agent.stop()
