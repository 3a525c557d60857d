"""An independent client's view: every message the platform and the gateway put on the wire
during push, pull and read flows must match the seed's topics and JSON.

The schemas below are written from the seed document alone (not from harness.protocol),
so a change to the models that drifts from the seed fails here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable
from typing import Any

import aiomqtt
import jsonschema
import pytest

from harness.aio import cancel_and_wait
from harness.broker import BrokerUnavailable
from harness.platform import PlatformConfig
from harness.system import OtaSystem, SystemConfig

TS = {"type": "integer", "minimum": 1_500_000_000_000}
STR = {"type": "string"}
STR_OR_NULL = {"type": ["string", "null"]}

FIRMWARE = {
    "url": {"type": "string", "pattern": r"^http://[^/]+/file/[0-9a-f]+\?accessKey=[0-9a-f]+$"},
    "version": STR,
    "parameters": {"type": "object"},
    "sign": {"type": "string", "pattern": "^[0-9a-fA-F]+$"},
    "signMethod": {"type": "string", "pattern": "^(?i:md5|sha256)$"},
    "firmwareId": STR,
    "size": {"type": "integer", "minimum": 0},
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "upgrade": {
        "required": ["messageId", "deviceId", "headers", "timestamp", *FIRMWARE, "messageType"],
        "properties": {
            "messageId": STR,
            "deviceId": STR,
            "headers": {"type": "object"},
            "timestamp": TS,
            **FIRMWARE,
            "messageType": {"const": "UPGRADE_FIRMWARE"},
        },
    },
    "upgrade/reply": {
        "required": ["success", "messageId", "timestamp"],
        "properties": {
            "success": {"type": "boolean"},
            "messageId": STR,
            "timestamp": TS,
            "code": STR,
            "message": STR,
        },
    },
    "upgrade/progress": {
        "required": ["timestamp", "progress", "complete", "version", "success", "firmwareId"],
        "properties": {
            "timestamp": TS,
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "complete": {"type": "boolean"},
            "version": STR,
            "success": {"type": "boolean"},
            "errorReason": STR,
            "firmwareId": STR,
        },
    },
    "pull": {
        "required": ["timestamp", "messageId", "currentVersion", "requestVersion"],
        "properties": {
            "timestamp": TS,
            "messageId": STR,
            "currentVersion": STR_OR_NULL,
            "requestVersion": STR_OR_NULL,
        },
    },
    "pull/reply": {
        "required": ["timestamp", "messageId", *FIRMWARE],
        "properties": {"timestamp": TS, "messageId": STR, **FIRMWARE},
    },
    "report": {
        "required": ["timestamp", "version"],
        "properties": {"timestamp": TS, "version": STR},
    },
    "read": {
        "required": ["timestamp", "messageId"],
        "properties": {"timestamp": TS, "messageId": STR},
    },
    "read/reply": {
        "required": ["timestamp", "messageId", "version"],
        "properties": {"timestamp": TS, "messageId": STR, "version": STR},
    },
}

TOPIC = re.compile(r"^/(?P<product>[^/+#]+)/(?P<device>[^/+#]+)/firmware/(?P<kind>.+)$")


class Spy:
    """Subscribes to everything and keeps (topic, payload) in arrival order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def run(self, host: str, port: int, ready: asyncio.Event) -> None:
        async with aiomqtt.Client(host, port, identifier="conformance-spy") as client:
            await client.subscribe("#", qos=1)
            ready.set()
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes | bytearray)
                self.seen.append((str(message.topic), json.loads(payload)))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [p for t, p in self.seen if (m := TOPIC.match(t)) and m["kind"] == kind]


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def run_flows(backend: str) -> Spy:
    """A push, a pull and a read through broker, platform and gateway, seen from outside."""
    system = OtaSystem(
        SystemConfig(
            broker=backend, platform=PlatformConfig(check_interval=0.1), start_gateway=False
        )
    )
    await system.start()
    spy, ready = Spy(), asyncio.Event()
    assert system.broker is not None and system.client is not None
    watcher = asyncio.create_task(spy.run(system.broker.url.host, system.broker.url.port, ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        gateway = await system.start_gateway()
        client, product, gw = system.client, system.config.product_id, system.config.gateway_id
        push_fw = await client.upload_firmware(os.urandom(50_000), product, "2.0.0")
        task = await client.create_task(push_fw["id"], mode="push")
        await client.deploy(task["id"], [gw])
        await wait_until(lambda: any(p["complete"] for p in spy.of("upgrade/progress")))

        pull_fw = await client.upload_firmware(os.urandom(20_000), product, "3.0.0")
        pull_task = await client.create_task(pull_fw["id"], mode="pull")
        await client.deploy(pull_task["id"], [gw])
        gateway.pull()
        await wait_until(
            lambda: [p["complete"] for p in spy.of("upgrade/progress")].count(True) == 2
        )

        assert await client.read_version(gw) == "3.0.0"
        await wait_until(lambda: len(spy.of("report")) >= 3)
    finally:
        await system.stop()
        await cancel_and_wait(watcher)
    return spy


@pytest.fixture(scope="module")
def flows(broker_backend: str) -> Spy:
    try:
        return asyncio.run(run_flows(broker_backend))
    except BrokerUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_every_message_matches_the_seed(flows: Spy, kind: str) -> None:
    messages = flows.of(kind)
    assert messages, f"the flows produced no {kind} message"
    for payload in messages:
        jsonschema.validate(payload, {"type": "object", **SCHEMAS[kind]})


def test_every_topic_is_a_seed_topic(flows: Spy) -> None:
    for topic, _ in flows.seen:
        match = TOPIC.match(topic)
        assert match, topic
        assert match["kind"] in SCHEMAS, topic
        assert match["product"] == "gateway-product" and match["device"] == "gateway-1", topic


def test_replies_carry_the_request_message_id(flows: Spy) -> None:
    sent = {p["messageId"] for p in flows.of("upgrade")}
    assert {p["messageId"] for p in flows.of("upgrade/reply")} == sent
    assert {p["messageId"] for p in flows.of("pull/reply")} == {
        p["messageId"] for p in flows.of("pull")
    }
    assert {p["messageId"] for p in flows.of("read/reply")} == {
        p["messageId"] for p in flows.of("read")
    }


def test_progress_is_monotonic_and_ends_once_per_firmware(flows: Spy) -> None:
    by_firmware: dict[str, list[dict[str, Any]]] = {}
    for p in flows.of("upgrade/progress"):
        by_firmware.setdefault(p["firmwareId"], []).append(p)
    assert len(by_firmware) == 2
    for series in by_firmware.values():
        values = [p["progress"] for p in series]
        assert values == sorted(values), values
        assert [p["complete"] for p in series].count(True) == 1
        assert series[-1] == {**series[-1], "complete": True, "success": True, "progress": 100}


def test_gateway_reports_each_version_it_reaches(flows: Spy) -> None:
    assert [p["version"] for p in flows.of("report")] == ["1.0.0", "2.0.0", "3.0.0"]
