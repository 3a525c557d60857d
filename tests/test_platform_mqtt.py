"""The mock platform's MQTT side, against a real broker, with the device played by hand.

The device is a raw aiomqtt client that publishes the seed's JSON, written out literally,
on the seed's topics; the platform is observed over its REST API.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import aiohttp
import aiomqtt
import pytest

from harness.broker import EmbeddedBroker
from harness.client import PlatformApiError, PlatformClient
from harness.platform import PlatformConfig, PlatformServer
from harness.protocol import AuthError, DeviceSecret, credentials_for
from harness.protocol.auth import sign_password

T = TypeVar("T")

GW = "/gw-product/gw-1/firmware"
IMAGE = b"gateway image 2.0.0\n" * 64
CHILD_IMAGE = b"324 node image 0.2\n" * 16


def now_ms() -> int:
    return int(time.time() * 1000)


async def until(
    probe: Callable[[], Awaitable[T] | T], what: str, timeout: float = 3.0, every: float = 0.01
) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(every)


class FakeDevice:
    """A hand-driven MQTT client standing in for a device (or a gateway and its children)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.received: list[tuple[str, dict[str, Any]]] = []

    async def send(self, topic: str, payload: dict[str, Any] | str | bytes) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        await self.client.publish(topic, payload, qos=1)

    async def expect(self, topic: str, n: int = 1, timeout: float = 3.0) -> dict[str, Any]:
        """The ``n``-th message received on ``topic`` (waiting for it)."""

        def found() -> list[dict[str, Any]] | None:
            on_topic = [p for t, p in self.received if t == topic]
            return on_topic if len(on_topic) >= n else None

        return (await until(found, f"message #{n} on {topic}", timeout))[n - 1]

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [p for t, p in self.received if t == topic]

    async def _read(self) -> None:
        async for message in self.client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            self.received.append((str(message.topic), json.loads(payload)))


DOWNSTREAM = ("upgrade", "pull/reply", "read")


@asynccontextmanager
async def fake_device(
    broker: EmbeddedBroker, client_id: str = "gw-1", product: str = "gw-product"
) -> AsyncIterator[FakeDevice]:
    """Subscribed, as a gateway is, to the downstream topics of itself and its children."""
    async with aiomqtt.Client(
        broker.url.host, broker.url.port, identifier=client_id, timeout=5
    ) as client:
        for base in (f"/{product}/{client_id}", f"/{product}/{client_id}/child/+"):
            for kind in DOWNSTREAM:
                await client.subscribe(f"{base}/firmware/{kind}", qos=1)
        device = FakeDevice(client)
        reader = asyncio.create_task(device._read())
        try:
            yield device
        finally:
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader


@pytest.fixture
async def api(platform_server: PlatformServer) -> AsyncIterator[PlatformClient]:
    async with PlatformClient(platform_server.url, timeout=10) as client:
        yield client


@pytest.fixture
async def device(broker: EmbeddedBroker) -> AsyncIterator[FakeDevice]:
    """gw-1, listening for its own and its children's downstream messages."""
    async with fake_device(broker) as dev:
        yield dev


async def push(
    api: PlatformClient,
    data: bytes = IMAGE,
    product: str = "gw-product",
    version: str = "2.0.0",
    devices: list[str] | None = None,
    **task: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Firmware plus a deployed push task; returns (firmware, task)."""
    fw = await api.upload_firmware(data, product, version, parameters={"test": "test"})
    created = await api.create_task(fw["id"], **task)
    await api.deploy(created["id"], devices or ["gw-1"])
    return fw, created


async def record_of(api: PlatformClient, task: dict[str, Any], device: str = "gw-1") -> dict:
    (record,) = await api.records(taskId=task["id"], deviceId=device)
    return record


async def state_becomes(
    api: PlatformClient,
    task: dict[str, Any],
    state: str,
    device: str = "gw-1",
    timeout: float = 3.0,
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        record = await record_of(api, task, device)
        return record if record["state"] == state else None

    return await until(probe, f"{device}'s record to be {state}", timeout)


async def event(api: PlatformClient, kind: str, n: int = 1) -> dict[str, Any]:
    async def probe() -> list[dict[str, Any]] | None:
        events = (await api.events(kind))["events"]
        return events if len(events) >= n else None

    return (await until(probe, f"{n} {kind} event(s)"))[n - 1]


async def version_becomes(api: PlatformClient, device: str, version: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        got = await api.device(device)
        return got if got["firmwareVersion"] == version else None

    return await until(probe, f"{device}'s firmwareVersion to be {version}")


def reply(message_id: str, **extra: Any) -> dict[str, Any]:
    return {"success": True, "messageId": message_id, "timestamp": now_ms(), **extra}


def progress(fw: dict[str, Any], pct: int, **extra: Any) -> dict[str, Any]:
    return {
        "timestamp": now_ms(),
        "progress": pct,
        "complete": False,
        "version": fw["version"],
        "success": True,
        "firmwareId": fw["id"],
        **extra,
    }


# -- push ----------------------------------------------------------------------------------


async def test_push_sends_the_seeds_upgrade_message(
    api: PlatformClient, device: FakeDevice, platform_server: PlatformServer
) -> None:
    before = now_ms()
    fw, task = await push(api, responseTimeoutSeconds=10)

    msg = await device.expect(f"{GW}/upgrade")

    assert msg["messageType"] == "UPGRADE_FIRMWARE"
    assert msg["deviceId"] == "gw-1"
    assert isinstance(msg["messageId"], str) and msg["messageId"].isdigit()
    assert msg["url"] == fw["url"]
    assert msg["url"].startswith(f"{platform_server.url}/file/")
    assert "?accessKey=" in msg["url"]
    assert msg["version"] == "2.0.0"
    assert msg["sign"] == hashlib.md5(IMAGE).hexdigest()
    assert msg["signMethod"].lower() == "md5"
    assert msg["firmwareId"] == fw["id"]
    assert msg["size"] == len(IMAGE)
    assert msg["parameters"] == {"test": "test"}
    assert isinstance(msg["timestamp"], int) and msg["timestamp"] >= before - 1000
    headers = msg["headers"]
    assert headers["productId"] == "gw-product"
    assert headers["deviceName"] == "Gateway 1"
    assert headers["productName"] == "Gateway"
    assert headers["timeout"] == 10_000
    assert headers["async"] is True
    # the URL in the message downloads exactly the image the sign is of
    async with aiohttp.ClientSession(trust_env=False) as http, http.get(msg["url"]) as resp:
        assert resp.status == 200
        assert hashlib.md5(await resp.read()).hexdigest() == msg["sign"]

    record = await record_of(api, task)
    assert record["state"] == "processing"
    assert isinstance(record["upgradeTime"], int)
    assert len(device.on(f"{GW}/upgrade")) == 1  # pushed once, not on every tick


async def test_reply_progress_complete_is_success(api: PlatformClient, device: FakeDevice) -> None:
    fw, task = await push(api)
    msg = await device.expect(f"{GW}/upgrade")

    await device.send(f"{GW}/upgrade/reply", reply(msg["messageId"]))
    await device.send(f"{GW}/upgrade/progress", progress(fw, 50))

    async def half() -> dict[str, Any] | None:
        record = await record_of(api, task)
        return record if record["progress"] == 50 else None

    record = await until(half, "progress 50")
    assert record["state"] == "processing"

    await device.send(f"{GW}/upgrade/progress", progress(fw, 100, complete=True))
    record = await state_becomes(api, task, "success")
    assert record["progress"] == 100
    assert record["errorReason"] is None
    assert isinstance(record["completeTime"], int)
    assert [h["state"] for h in record["history"]] == ["waiting", "processing", "success"]
    assert (await api.events())["counts"] == {}


async def test_reply_failure_fails_the_record_with_code_and_message(
    api: PlatformClient, device: FakeDevice
) -> None:
    _, task = await push(api)
    msg = await device.expect(f"{GW}/upgrade")
    await device.send(
        f"{GW}/upgrade/reply",
        {
            "success": False,
            "messageId": msg["messageId"],
            "timestamp": now_ms(),
            "code": "busy",
            "message": "battery below 20%",
        },
    )
    record = await state_becomes(api, task, "failed")
    assert "busy" in record["errorReason"]
    assert "battery below 20%" in record["errorReason"]


async def test_no_reply_fails_after_the_response_timeout(
    api: PlatformClient, device: FakeDevice
) -> None:
    _, task = await push(api, responseTimeoutSeconds=1, timeoutSeconds=600)
    await device.expect(f"{GW}/upgrade")
    record = await state_becomes(api, task, "failed", timeout=4)
    assert "no reply" in record["errorReason"]
    assert record["completeTime"] - record["upgradeTime"] >= 1000
    timeout_event = await event(api, "record_timeout")
    assert timeout_event["device_id"] == "gw-1"
    assert record["id"] in timeout_event["detail"]


async def test_no_completion_fails_after_the_overall_timeout(
    api: PlatformClient, device: FakeDevice
) -> None:
    fw, task = await push(api, responseTimeoutSeconds=0, timeoutSeconds=1)
    msg = await device.expect(f"{GW}/upgrade")
    await device.send(f"{GW}/upgrade/reply", reply(msg["messageId"]))
    await device.send(f"{GW}/upgrade/progress", progress(fw, 30))
    record = await state_becomes(api, task, "failed", timeout=4)
    assert "not complete" in record["errorReason"]
    assert "30%" in record["errorReason"]
    assert record["completeTime"] - record["upgradeTime"] >= 1000


async def test_each_push_has_a_new_message_id(api: PlatformClient, device: FakeDevice) -> None:
    _, task = await push(api)
    first = await device.expect(f"{GW}/upgrade")
    await device.send(f"{GW}/upgrade/reply", reply(first["messageId"], success=False))
    await state_becomes(api, task, "failed")

    assert await api.start_task(task["id"], ["failed"]) == {"total": 1}
    second = await device.expect(f"{GW}/upgrade", n=2)

    assert second["messageId"] != first["messageId"]
    await device.send(f"{GW}/upgrade/reply", reply(second["messageId"]))
    record = await state_becomes(api, task, "processing")
    assert [h["state"] for h in record["history"]] == [
        "waiting",
        "processing",
        "failed",
        "waiting",
        "processing",
    ]


async def test_a_stale_reply_to_a_previous_attempt_is_unknown(
    api: PlatformClient, device: FakeDevice
) -> None:
    _, task = await push(api)
    first = await device.expect(f"{GW}/upgrade")
    await device.send(f"{GW}/upgrade/reply", reply(first["messageId"], success=False))
    await state_becomes(api, task, "failed")
    await api.start_task(task["id"], ["failed"])
    await device.expect(f"{GW}/upgrade", n=2)

    # e.g. a QoS 1 redelivery of the first attempt's refusal
    await device.send(f"{GW}/upgrade/reply", reply(first["messageId"], success=False))

    async def decided() -> dict[str, Any] | None:
        events = (await api.events("unknown_reply"))["events"]
        record = await record_of(api, task)
        return record if events or record["state"] != "processing" else None

    record = await until(decided, "the stale reply to be handled")
    assert record["state"] == "processing"
    assert (await api.events("unknown_reply"))["events"]


async def test_child_device_is_upgraded_through_its_gateway(
    api: PlatformClient, device: FakeDevice
) -> None:
    await api.save_product("node-product", "324 node")
    await api.save_device("node-1", "node-product", name="Node 1", parentId="gw-1")
    fw, task = await push(api, CHILD_IMAGE, "node-product", "0.2", ["node-1"])
    child = "/gw-product/gw-1/child/node-1/firmware"

    msg = await device.expect(f"{child}/upgrade")

    assert msg["deviceId"] == "node-1"
    assert msg["headers"]["productId"] == "node-product"
    assert msg["size"] == len(CHILD_IMAGE)
    assert not device.on("/node-product/node-1/firmware/upgrade")
    await device.send(f"{child}/upgrade/reply", reply(msg["messageId"]))
    await device.send(f"{child}/upgrade/progress", progress(fw, 100, complete=True))
    record = await state_becomes(api, task, "success", device="node-1")
    assert record["progress"] == 100


# -- progress and replies that match nothing -----------------------------------------------


@pytest.mark.parametrize(
    "wrong", [{"firmwareId": "not-this-one"}, {"version": "9.9.9"}], ids=["firmwareId", "version"]
)
async def test_unmatched_progress_leaves_the_record_and_is_an_event(
    api: PlatformClient, device: FakeDevice, wrong: dict[str, str]
) -> None:
    fw, task = await push(api)
    msg = await device.expect(f"{GW}/upgrade")
    await device.send(f"{GW}/upgrade/reply", reply(msg["messageId"]))

    await device.send(f"{GW}/upgrade/progress", progress(fw, 60, complete=True, **wrong))

    unmatched = await event(api, "unmatched_progress")
    assert unmatched["device_id"] == "gw-1"
    assert unmatched["topic"] == f"{GW}/upgrade/progress"
    assert next(iter(wrong.values())) in unmatched["detail"]
    record = await record_of(api, task)
    assert (record["state"], record["progress"]) == ("processing", 0)

    # the right firmware and version still move it
    await device.send(f"{GW}/upgrade/progress", progress(fw, 100, complete=True))
    await state_becomes(api, task, "success")


async def test_progress_after_a_failure_is_unmatched(
    api: PlatformClient, device: FakeDevice
) -> None:
    fw, task = await push(api)
    msg = await device.expect(f"{GW}/upgrade")
    await device.send(f"{GW}/upgrade/reply", reply(msg["messageId"], success=False))
    await state_becomes(api, task, "failed")
    await device.send(f"{GW}/upgrade/progress", progress(fw, 100, complete=True))
    assert "failed" in (await event(api, "unmatched_progress"))["detail"]
    assert (await record_of(api, task))["state"] == "failed"


async def test_progress_failure_fails_with_the_error_reason(
    api: PlatformClient, device: FakeDevice
) -> None:
    fw, task = await push(api)
    msg = await device.expect(f"{GW}/upgrade")
    await device.send(f"{GW}/upgrade/reply", reply(msg["messageId"]))
    await device.send(
        f"{GW}/upgrade/progress",
        progress(fw, 40, complete=True, success=False, errorReason="sign mismatch"),
    )
    record = await state_becomes(api, task, "failed")
    assert record["errorReason"] == "sign mismatch"


async def test_reply_with_an_unknown_message_id(api: PlatformClient, device: FakeDevice) -> None:
    await device.send(f"{GW}/upgrade/reply", reply("1234567890123456789"))
    found = await event(api, "unknown_reply")
    assert "1234567890123456789" in found["detail"]
    assert found["device_id"] == "gw-1"


async def test_reply_for_another_devices_message_is_unknown(
    api: PlatformClient, device: FakeDevice, platform_server: PlatformServer
) -> None:
    platform_server.platform.registry.add_device("gw-2", "gw-product")
    _, task = await push(api, devices=["gw-2"])
    sent = await until(
        lambda: platform_server.platform.upgrades.records_of(device_id="gw-2")[0].message_id,
        "the push to gw-2",
    )
    await device.send(f"{GW}/upgrade/reply", reply(sent, success=False))  # gw-1 answers it
    assert sent in (await event(api, "unknown_reply"))["detail"]
    assert (await record_of(api, task, "gw-2"))["state"] == "processing"


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "payload", "field", "says"),
    [
        ("upgrade/progress", b'{"progress": 50, "version": ', None, "not valid JSON"),
        ("upgrade/reply", b"\xff\xfe{}", None, "not valid JSON"),
        (
            "upgrade/progress",
            {
                "timestamp": 1,
                "progress": 150,
                "complete": False,
                "version": "2.0.0",
                "success": True,
                "firmwareId": "f",
            },
            "progress",
            "100",
        ),
        (
            "upgrade/progress",
            {"timestamp": 1, "progress": 50, "version": "2.0.0"},
            "firmwareId",
            "missing",
        ),
        (
            "upgrade/progress",
            {"progress": "50", "version": "2.0.0", "firmwareId": "f"},
            "progress",
            "integer",
        ),
        ("upgrade/reply", b"[]", None, "JSON object"),
        ("pull", {"timestamp": 1, "currentVersion": "1.0"}, "messageId", "missing"),
        ("report", {"timestamp": 1, "version": 2}, "version", "string"),
        ("read/reply", {"timestamp": 1, "version": "1.0"}, "messageId", "missing"),
    ],
    ids=[
        "malformed-json",
        "not-utf8",
        "progress-150",
        "missing-field",
        "string-progress",
        "not-an-object",
        "pull-without-id",
        "numeric-version",
        "read-reply-without-id",
    ],
)
async def test_bad_message_is_an_event_and_the_platform_keeps_serving(
    api: PlatformClient,
    device: FakeDevice,
    kind: str,
    payload: dict[str, Any] | bytes,
    field: str | None,
    says: str,
) -> None:
    topic = f"{GW}/{kind}"
    await device.send(topic, payload)
    await device.send(f"{GW}/report", {"timestamp": now_ms(), "version": "1.0.1"})

    bad = await event(api, "bad_message")
    assert bad["topic"] == topic
    assert topic in bad["detail"]
    if field is not None:
        assert f"field {field!r}" in bad["detail"]
    assert says in bad["detail"]
    await version_becomes(api, "gw-1", "1.0.1")  # the good message after it was handled
    assert (await api.events())["counts"] == {"bad_message": 1}


async def test_unknown_topic_kind_is_a_bad_message(
    api: PlatformClient, platform_server: PlatformServer
) -> None:
    # The platform subscribes to the known upstream kinds only, so the broker never hands it
    # an unknown kind; its handler is called directly to show it copes anyway.
    topic = f"{GW}/upgrade/status"
    await platform_server.platform.on_message(topic, b'{"timestamp": 1}')
    bad = await event(api, "bad_message")
    assert bad["topic"] == topic
    assert "upgrade/status" in bad["detail"]


async def test_empty_product_segment_is_a_bad_message_naming_it(
    api: PlatformClient, device: FakeDevice
) -> None:
    await device.send("//gw-1/firmware/report", {"timestamp": now_ms(), "version": "6.6.6"})
    bad = await event(api, "bad_message")
    assert bad["topic"] == "//gw-1/firmware/report"
    assert "productId" in bad["detail"]
    assert (await api.device("gw-1"))["firmwareVersion"] is None


async def test_message_from_an_unknown_device(api: PlatformClient, broker: EmbeddedBroker) -> None:
    async with fake_device(broker, "ghost") as ghost:
        await ghost.send("/gw-product/ghost/firmware/report", {"timestamp": 1, "version": "1"})
        found = await event(api, "unknown_device")
    assert found["device_id"] == "ghost"
    assert found["topic"] == "/gw-product/ghost/firmware/report"
    with pytest.raises(PlatformApiError):
        await api.device("ghost")


async def test_device_on_another_products_topic_is_a_bad_message(
    api: PlatformClient, device: FakeDevice
) -> None:
    await api.save_product("other-product")
    await device.send(
        "/other-product/gw-1/firmware/report", {"timestamp": now_ms(), "version": "6.6.6"}
    )
    bad = await event(api, "bad_message")
    assert "other-product" in bad["detail"] and "gw-product" in bad["detail"]
    assert (await api.device("gw-1"))["firmwareVersion"] is None


async def test_child_on_its_own_topic_or_another_gateway_is_a_bad_message(
    api: PlatformClient, device: FakeDevice
) -> None:
    await api.save_product("node-product")
    await api.save_device("node-1", "node-product", parentId="gw-1")
    await api.save_device("gw-2", "gw-product")
    report = {"timestamp": now_ms(), "version": "6.6.6"}
    await device.send("/node-product/node-1/firmware/report", report)
    await device.send("/gw-product/gw-2/child/node-1/firmware/report", report)
    first = await event(api, "bad_message", 1)
    second = await event(api, "bad_message", 2)
    assert first["topic"] == "/node-product/node-1/firmware/report"
    assert "gw-2" in second["detail"]
    assert (await api.device("node-1"))["firmwareVersion"] is None


async def test_a_gateway_without_children_on_a_child_topic_is_a_bad_message(
    api: PlatformClient, device: FakeDevice
) -> None:
    await device.send("/gw-product/gw-x/child/gw-1/firmware/report", {"version": "6.6.6"})
    assert "no parent gateway" in (await event(api, "bad_message"))["detail"]


async def test_child_topic_with_the_wrong_gateway_product_is_a_bad_message(
    api: PlatformClient, device: FakeDevice
) -> None:
    await api.save_product("node-product")
    await api.save_device("node-1", "node-product", parentId="gw-1")
    await device.send(
        "/other-product/gw-1/child/node-1/firmware/report",
        {"timestamp": now_ms(), "version": "6.6.6"},
    )

    async def decided() -> bool:
        events = (await api.events("bad_message"))["events"]
        return bool(events) or (await api.device("node-1"))["firmwareVersion"] is not None

    await until(decided, "the report to be handled")
    assert (await api.device("node-1"))["firmwareVersion"] is None
    assert (await api.events("bad_message"))["events"]


# -- pull ----------------------------------------------------------------------------------


async def pull_task(api: PlatformClient, version: str, order: int) -> dict[str, Any]:
    fw = await api.upload_firmware(
        IMAGE + version.encode(), "gw-product", version, version_order=order, sign_method="sha256"
    )
    task = await api.create_task(fw["id"], name=f"pull {version}", mode="pull")
    await api.deploy(task["id"], ["gw-1"])
    return fw


def pull(message_id: str, request_version: str | None = None) -> dict[str, Any]:
    return {
        "timestamp": now_ms(),
        "messageId": message_id,
        "currentVersion": "1.0.0",
        "requestVersion": request_version,
    }


async def test_pull_hands_out_the_pull_tasks_firmware(
    api: PlatformClient, device: FakeDevice
) -> None:
    fw = await pull_task(api, "2.0.0", 1)
    assert await api.check_now() == 0  # a pull task is never pushed
    (record,) = await api.records(deviceId="gw-1")
    assert record["state"] == "waiting"

    await device.send(f"{GW}/pull", pull("pull-1"))
    answer = await device.expect(f"{GW}/pull/reply")

    assert answer["messageId"] == "pull-1"
    assert answer.get("success", True) is True
    assert answer["url"] == fw["url"]
    assert answer["version"] == "2.0.0"
    assert answer["firmwareId"] == fw["id"]
    assert answer["sign"] == hashlib.sha256(IMAGE + b"2.0.0").hexdigest()
    assert answer["signMethod"].lower() == "sha256"
    assert answer["size"] == len(IMAGE) + 5
    assert isinstance(answer["timestamp"], int)
    record = await api.record(record["id"])
    assert record["state"] == "processing"


async def test_pull_without_a_record_is_not_found(api: PlatformClient, device: FakeDevice) -> None:
    await device.send(f"{GW}/pull", pull("pull-2"))
    answer = await device.expect(f"{GW}/pull/reply")
    assert answer["messageId"] == "pull-2"
    assert answer["success"] is False
    assert answer["code"] == "not_found"
    assert "url" not in answer and "firmwareId" not in answer


async def test_pull_request_version_filters(api: PlatformClient, device: FakeDevice) -> None:
    await pull_task(api, "2.0.0", 1)
    newest = await pull_task(api, "3.0.0", 3)
    await pull_task(api, "2.5.0", 2)

    await device.send(f"{GW}/pull", pull("latest", None))
    await device.send(f"{GW}/pull", pull("asked", "2.5.0"))
    await device.send(f"{GW}/pull", pull("absent", "9.9.9"))
    answers = {}
    for n in (1, 2, 3):
        got = await device.expect(f"{GW}/pull/reply", n=n)
        answers[got["messageId"]] = got

    assert answers["latest"]["version"] == "3.0.0"
    assert answers["latest"]["firmwareId"] == newest["id"]
    assert answers["asked"]["version"] == "2.5.0"
    assert answers["absent"]["success"] is False and answers["absent"]["code"] == "not_found"
    states = {r["version"]: r["state"] for r in await api.records(deviceId="gw-1")}
    assert states == {"2.0.0": "waiting", "2.5.0": "processing", "3.0.0": "processing"}


# -- report and read -----------------------------------------------------------------------


async def test_report_updates_the_devices_version(api: PlatformClient, device: FakeDevice) -> None:
    await device.send(f"{GW}/report", {"timestamp": 1601196762389, "version": "2.0.0"})
    got = await version_becomes(api, "gw-1", "2.0.0")
    assert isinstance(got["versionTime"], int)


async def test_report_does_not_touch_records(api: PlatformClient, device: FakeDevice) -> None:
    fw, task = await push(api)
    await device.expect(f"{GW}/upgrade")
    await device.send(f"{GW}/report", {"timestamp": now_ms(), "version": fw["version"]})
    await version_becomes(api, "gw-1", fw["version"])
    assert (await record_of(api, task))["state"] == "processing"


async def test_read_asks_the_device_and_returns_its_version(
    api: PlatformClient, device: FakeDevice
) -> None:
    async def answer() -> dict[str, Any]:
        asked = await device.expect(f"{GW}/read")
        await device.send(
            f"{GW}/read/reply",
            {"timestamp": now_ms(), "messageId": asked["messageId"], "version": "1.4.2"},
        )
        return asked

    version, asked = await asyncio.gather(api.read_version("gw-1", timeout=3), answer())

    assert version == "1.4.2"
    assert isinstance(asked["messageId"], str) and asked["messageId"]
    assert isinstance(asked["timestamp"], int)
    assert (await api.device("gw-1"))["firmwareVersion"] == "1.4.2"


async def test_read_of_a_child_goes_through_the_gateway(
    api: PlatformClient, device: FakeDevice
) -> None:
    await api.save_product("node-product")
    await api.save_device("node-1", "node-product", parentId="gw-1")
    child = "/gw-product/gw-1/child/node-1/firmware"

    async def answer() -> None:
        asked = await device.expect(f"{child}/read")
        await device.send(
            f"{child}/read/reply",
            {"timestamp": now_ms(), "messageId": asked["messageId"], "version": "0.1"},
        )

    version, _ = await asyncio.gather(api.read_version("node-1", timeout=3), answer())
    assert version == "0.1"


async def test_read_without_an_answer_is_504_within_the_timeout(
    api: PlatformClient, device: FakeDevice
) -> None:
    started = time.monotonic()
    with pytest.raises(PlatformApiError) as caught:
        await api.read_version("gw-1", timeout=0.3)
    elapsed = time.monotonic() - started

    assert caught.value.status == 504
    assert caught.value.code == "timeout"
    assert "0.3" in str(caught.value)
    assert 0.3 <= elapsed < 5
    assert (await device.expect(f"{GW}/read"))["messageId"]


async def test_read_with_timeout_zero_does_not_wait_the_default(
    platform_server: PlatformServer, device: FakeDevice
) -> None:
    url = f"{platform_server.url}/device-instance/gw-1/firmware/_read?timeout=0"
    async with aiohttp.ClientSession(
        trust_env=False, timeout=aiohttp.ClientTimeout(total=0.5)
    ) as http:
        try:
            async with http.post(url) as resp:
                status = resp.status
        except TimeoutError:
            status = None  # still waiting: the platform's default of 10 s applied
    assert status in (400, 504)


async def test_read_reply_nobody_waits_for_is_unknown(
    api: PlatformClient, device: FakeDevice
) -> None:
    await device.send(f"{GW}/read/reply", {"timestamp": 1, "messageId": "42", "version": "1"})
    assert "'42'" in (await event(api, "unknown_reply"))["detail"]
    assert (await api.device("gw-1"))["firmwareVersion"] is None


# -- authentication ------------------------------------------------------------------------


async def test_authenticate_with_jetlinks_credentials() -> None:
    server = PlatformServer("mqtt://127.0.0.1:1")  # not started: only its platform is used
    platform = server.platform
    secret = DeviceSecret("sid-9", "key-9")
    platform.registry.add_product("gw-product")
    platform.registry.add_device("gw-9", "gw-product", secret=secret)
    platform.registry.add_device("gw-open", "gw-product")

    good = credentials_for("gw-9", secret)
    platform.authenticate(good.client_id, good.username, good.password)  # no error

    stale_ts = now_ms() - 10 * 60 * 1000
    refused = [
        ("gw-9", good.username, "0" * 32),
        ("gw-9", good.username, credentials_for("gw-9", DeviceSecret("sid-9", "other")).password),
        ("gw-9", f"other|{now_ms()}", good.password),
        ("gw-9", f"sid-9|{stale_ts}", sign_password("sid-9", stale_ts, "key-9")),
        ("ghost", good.username, good.password),
        ("gw-open", "x|1", "y"),  # registered without a secret
        ("ota-hil-platform", "ota-hil-platform", "guess"),
    ]
    for client_id, username, password in refused:
        with pytest.raises(AuthError):
            platform.authenticate(client_id, username, password)


async def test_broker_with_platform_auth_lets_the_platform_and_good_devices_in() -> None:
    server = PlatformServer(
        "mqtt://127.0.0.1:1",
        config=PlatformConfig(check_interval=0.1, timeout_resolution=0.05, broker_auth=True),
    )
    platform = server.platform
    secret = DeviceSecret("sid-9", "key-9")
    platform.registry.add_product("gw-product")
    platform.registry.add_device("gw-9", "gw-product", secret=secret)

    async with EmbeddedBroker(authenticator=platform.authenticate) as broker:
        server.broker = broker.url
        async with server, PlatformClient(server.url, timeout=10) as api:
            assert platform.mqtt is not None and platform.mqtt.connected.is_set()

            good = credentials_for("gw-9", secret)
            async with aiomqtt.Client(
                broker.url.host,
                broker.url.port,
                identifier=good.client_id,
                username=good.username,
                password=good.password,
                timeout=5,
            ) as client:
                await client.publish(
                    "/gw-product/gw-9/firmware/report", json.dumps({"version": "3.1.4"}), qos=1
                )
                await version_becomes(api, "gw-9", "3.1.4")

            for client_id, username, password in [
                ("gw-9", good.username, "0" * 32),
                ("gw-9", None, None),
                ("ota-hil-platform", "ota-hil-platform", "guess"),
            ]:
                with pytest.raises(aiomqtt.MqttError):
                    async with aiomqtt.Client(
                        broker.url.host,
                        broker.url.port,
                        identifier=client_id,
                        username=username,
                        password=password,
                        timeout=5,
                    ):
                        pass
            # the refused impostor did not take the platform's session over
            assert platform.mqtt.connected.is_set()
            assert platform.mqtt.connections == 1


# -- robustness ------------------------------------------------------------------------------


async def test_a_failed_read_is_a_502_and_keeps_the_version(
    api: PlatformClient, device: FakeDevice
) -> None:
    await device.send(f"{GW}/report", {"timestamp": now_ms(), "version": "1.0.0"})
    await version_becomes(api, "gw-1", "1.0.0")

    async def refuse() -> None:
        asked = await device.expect(f"{GW}/read")
        await device.send(
            f"{GW}/read/reply",
            {
                "timestamp": now_ms(),
                "messageId": asked["messageId"],
                "version": "",
                "success": False,
            },
        )

    with pytest.raises(PlatformApiError) as failed:
        await asyncio.gather(api.read_version("gw-1", timeout=3), refuse())
    assert (failed.value.status, failed.value.code) == (502, "read_failed")
    assert (await api.device("gw-1"))["firmwareVersion"] == "1.0.0"


async def test_pull_with_force_hands_out_a_finished_record_again(
    api: PlatformClient, device: FakeDevice, platform_server: PlatformServer
) -> None:
    await pull_task(api, "2.0.0", 1)
    (record,) = platform_server.platform.upgrades.records_of(device_id="gw-1")
    record.fail(now_ms(), "gave up")
    await device.send(f"{GW}/pull", pull("plain"))
    await device.send(f"{GW}/pull", {**pull("forced"), "headers": {"force": True}})
    plain = await device.expect(f"{GW}/pull/reply", n=1)
    forced = await device.expect(f"{GW}/pull/reply", n=2)
    assert (plain["messageId"], plain["success"]) == ("plain", False)
    assert (forced["messageId"], forced["version"]) == ("forced", "2.0.0")
    assert record.state.value == "processing"


async def test_a_record_that_cannot_be_sent_fails_and_the_timer_goes_on(
    api: PlatformClient, device: FakeDevice, platform_server: PlatformServer
) -> None:
    """An id no topic can carry (the REST API refuses it; the registry is reached directly)
    fails its own record with the reason, and the next push still goes out."""
    platform = platform_server.platform
    platform.registry.add_device("bad+id", "gw-product")
    fw = await api.upload_firmware(IMAGE, "gw-product", "2.0.0")
    task = await api.create_task(fw["id"], mode="push")
    await api.deploy(task["id"], ["bad+id"])
    await api.deploy(task["id"], ["gw-1"])

    await device.expect(f"{GW}/upgrade")
    bad = platform.upgrades.records_of(device_id="bad+id")[0]
    assert bad.state.value == "failed"
    assert "cannot send the upgrade" in (bad.error_reason or "")
    assert (await record_of(api, task))["state"] == "processing"
