"""The reference gateway agent over MQTT, driven by hand from the platform's side.

The platform here is a plain aiomqtt client that sends the seed's JSON on the seed's
topics and keeps everything the gateway publishes; firmware comes from a real aiohttp
file server on loopback that serves Range and can hold the body mid-way on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp import web

from harness.aio import cancel_and_wait
from harness.broker import EmbeddedBroker
from harness.gateway import (
    DownloadPolicy,
    GatewayAgent,
    GatewayConfig,
    GatewayState,
    UpgradeFailed,
)
from harness.mqtt import BrokerUrl
from harness.protocol import CorrelationError, MessageError

# The seed's ids.
PRODUCT = "1549064506569449472"
DEVICE = "1549217055251308544"
MESSAGE_ID = "1551807719374848000"
FIRMWARE_ID = "1551519269396340736"
ACCESS_KEY = "65bd8a681e1fea659886962621ddf337"

IMAGE = os.urandom(120_000)
POLICY = DownloadPolicy(connect_timeout=2.0, read_timeout=5.0, retries=2, backoff=0.01, chunk=4096)

OWN = f"/{PRODUCT}/{DEVICE}/firmware"
UPSTREAM = ["upgrade/reply", "upgrade/progress", "report", "read/reply", "pull"]


def child(child_id: str) -> str:
    return f"/{PRODUCT}/{DEVICE}/child/{child_id}/firmware"


#: paho leaves Nagle on; with it every request/answer pair on loopback costs ~40 ms per hop.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


async def eventually(check: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.01)


# -- the firmware file server --------------------------------------------------------------


class FileServer:
    """Serves IMAGE at /file/{id}?accessKey=KEY with correct Range support. With
    ``hold_after`` set it sends at least that many bytes (whole 8 KiB writes), then sets
    ``holding`` and waits for ``release``."""

    def __init__(self, data: bytes = IMAGE) -> None:
        self.data = data
        self.requests: list[tuple[str, str | None]] = []
        self.hold_after: int | None = None
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> FileServer:
        app = web.Application()
        app.router.add_get("/file/{name}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self._runner is not None
        await self._runner.cleanup()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/97b8f5ae7311a275c27e734b633635d0?accessKey={ACCESS_KEY}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        range_header = request.headers.get("Range")
        self.requests.append((request.path_qs, range_header))
        if request.query.get("accessKey") != ACCESS_KEY:
            return web.Response(status=403, text="access denied")
        size, start, status, headers = len(self.data), 0, 200, {}
        if range_header:
            match = re.fullmatch(r"bytes=(\d+)-", range_header)
            assert match
            start = int(match.group(1))
            if start >= size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        body = self.data[start:]
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        for i in range(0, len(body), 8192):
            if self.hold_after is not None and start + i >= self.hold_after:
                self.holding.set()
                await self.release.wait()
            await resp.write(body[i : i + 8192])
        await resp.write_eof()
        return resp


# -- the platform, by hand -----------------------------------------------------------------


class Platform:
    """A raw MQTT client on the platform's side of the seed's topics."""

    def __init__(self, url: BrokerUrl, children: tuple[str, ...] = ("+",)) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._filters = [f"{OWN}/{kind}" for kind in UPSTREAM] + [
            f"{child(c)}/{kind}" for c in children for kind in UPSTREAM
        ]
        self._client = aiomqtt.Client(
            url.host,
            url.port,
            identifier=f"platform-{uuid.uuid4().hex[:8]}",
            timeout=5,
            socket_options=NO_DELAY,
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Platform:
        await self._client.__aenter__()
        for topic in self._filters:
            await self._client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for message in self._client.messages:
            assert isinstance(message.payload, bytes)
            self.received.append((str(message.topic), json.loads(message.payload)))

    async def send(self, topic: str, payload: dict[str, Any] | bytes) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload, ensure_ascii=False).encode()
        await self._client.publish(topic, payload, qos=1)

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [payload for t, payload in self.received if t == topic]

    def index(self, topic: str, check: Callable[[dict[str, Any]], bool] = lambda _: True) -> int:
        for n, (t, payload) in enumerate(self.received):
            if t == topic and check(payload):
                return n
        raise AssertionError(f"nothing on {topic}")

    def finals(self, base: str = OWN) -> list[dict[str, Any]]:
        return [p for p in self.on(f"{base}/upgrade/progress") if p["complete"]]

    async def final(self, base: str = OWN, timeout: float = 10.0) -> dict[str, Any]:
        await eventually(lambda: self.finals(base), "the final progress", timeout)
        return self.finals(base)[0]

    async def read_round_trip(self, base: str = OWN) -> dict[str, Any]:
        """A read answered means everything sent before it was handled (one session, in order)."""
        message_id = uuid.uuid4().hex
        await self.send(
            f"{base}/read", {"timestamp": int(time.time() * 1000), "messageId": message_id}
        )
        topic = f"{base}/read/reply"
        await eventually(
            lambda: any(p["messageId"] == message_id for p in self.on(topic)), "the read reply"
        )
        return next(p for p in self.on(topic) if p["messageId"] == message_id)


def seed_upgrade(url: str, data: bytes = IMAGE, **changes: Any) -> dict[str, Any]:
    """The seed's platform-push upgrade message, for ``data`` at ``url``."""
    message = {
        "messageId": MESSAGE_ID,
        "deviceId": DEVICE,
        "headers": {
            "deviceName": "固件升级",
            "productName": "升级",
            "productId": PRODUCT,
            "creatorId": "1199596756811550720",
            "timeout": 10000,
        },
        "timestamp": 1658814766149,
        "url": url,
        "version": "1.1.0",
        "parameters": {"test": "test"},
        "sign": hashlib.md5(data).hexdigest(),
        "signMethod": "MD5",
        "firmwareId": FIRMWARE_ID,
        "size": len(data),
        "messageType": "UPGRADE_FIRMWARE",
    }
    message.update(changes)
    return message


def check_progress(messages: list[dict[str, Any]], version: str, firmware_id: str) -> None:
    """The rules a platform relies on: monotonic, 0..100, echoes, exactly one final, last."""
    assert messages, "no progress at all"
    values = [m["progress"] for m in messages]
    assert values == sorted(values), f"progress went down: {values}"
    assert all(0 <= v <= 100 for v in values)
    assert all(m["version"] == version and m["firmwareId"] == firmware_id for m in messages)
    finals = [m for m in messages if m["complete"]]
    assert finals == [messages[-1]], "not exactly one final progress, at the end"


def state_versions(state_dir: Path) -> dict[str, str]:
    return json.loads((state_dir / "state.json").read_text())["versions"]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def files() -> AsyncIterator[FileServer]:
    async with FileServer() as server:
        yield server


@pytest.fixture
async def platform(broker: EmbeddedBroker) -> AsyncIterator[Platform]:
    async with Platform(broker.url) as running:
        yield running


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "gw"


@pytest.fixture
async def agent(
    broker: EmbeddedBroker, platform: Platform, files: FileServer, state_dir: Path
) -> AsyncIterator[GatewayAgent]:
    # Depends on ``files`` so that the file server outlives the agent's open connections.
    gateway = GatewayAgent(GatewayConfig(PRODUCT, DEVICE, state_dir, download=POLICY))
    await gateway.start(broker.url, wait=5)
    await eventually(lambda: platform.on(f"{OWN}/report"), "the start-up report")
    yield gateway
    await gateway.stop()


# -- start-up, read, report ----------------------------------------------------------------


async def test_start_reports_the_version(agent: GatewayAgent, platform: Platform) -> None:
    reports = platform.on(f"{OWN}/report")
    assert [r["version"] for r in reports] == ["1.0.0"]
    assert isinstance(reports[0]["timestamp"], int)


async def test_start_reports_the_version_kept_in_the_state_folder(
    broker: EmbeddedBroker, platform: Platform, tmp_path: Path
) -> None:
    GatewayState(tmp_path / "kept").set_version(DEVICE, "2.3.4")
    gateway = GatewayAgent(GatewayConfig(PRODUCT, DEVICE, tmp_path / "kept", download=POLICY))
    await gateway.start(broker.url, wait=5)
    try:
        await eventually(lambda: platform.on(f"{OWN}/report"), "the start-up report")
        assert platform.on(f"{OWN}/report")[0]["version"] == "2.3.4"
        assert gateway.version == "2.3.4"
    finally:
        await gateway.stop()


async def test_read_is_answered_with_the_same_message_id_and_the_version(
    agent: GatewayAgent, platform: Platform
) -> None:
    await platform.send(f"{OWN}/read", {"timestamp": 1601196762389, "messageId": "read-42"})
    await eventually(lambda: platform.on(f"{OWN}/read/reply"), "the read reply")
    [reply] = platform.on(f"{OWN}/read/reply")
    assert reply["messageId"] == "read-42"
    assert reply["version"] == "1.0.0"
    assert reply.get("success", True) is True


async def test_read_of_an_unknown_child_says_it_has_no_version(
    agent: GatewayAgent, platform: Platform
) -> None:
    reply = await platform.read_round_trip(child("node-404"))
    assert reply["success"] is False
    assert reply["version"] == ""
    assert not platform.on(f"{OWN}/read/reply")


# -- push upgrades -------------------------------------------------------------------------


async def test_valid_upgrade_end_to_end(
    agent: GatewayAgent, platform: Platform, files: FileServer, state_dir: Path
) -> None:
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url()))
    final = await platform.final()
    await eventually(lambda: len(platform.on(f"{OWN}/report")) == 2, "the report of 1.1.0")

    replies = platform.on(f"{OWN}/upgrade/reply")
    assert len(replies) == 1
    assert replies[0]["messageId"] == MESSAGE_ID
    assert replies[0]["success"] is True

    progress = platform.on(f"{OWN}/upgrade/progress")
    check_progress(progress, "1.1.0", FIRMWARE_ID)
    assert len(progress) >= 4, f"hardly any steps reported: {[p['progress'] for p in progress]}"
    assert progress[0]["progress"] == 0
    assert (final["progress"], final["complete"], final["success"]) == (100, True, True)
    assert "errorReason" not in final

    # Reply first, then progress, then the report of the new version.
    reply_at = platform.index(f"{OWN}/upgrade/reply")
    first_progress_at = platform.index(f"{OWN}/upgrade/progress")
    final_at = platform.index(f"{OWN}/upgrade/progress", lambda p: p["complete"])
    report_at = platform.index(f"{OWN}/report", lambda p: p["version"] == "1.1.0")
    assert reply_at < first_progress_at < final_at < report_at

    assert agent.version == "1.1.0"
    assert state_versions(state_dir)[DEVICE] == "1.1.0"
    assert GatewayState(state_dir).version(DEVICE) == "1.1.0"
    assert (state_dir / "firmware" / "1.1.0.bin").read_bytes() == IMAGE
    assert list((state_dir / "downloads").iterdir()) == []
    assert [q for q, _ in files.requests] == [
        f"/file/97b8f5ae7311a275c27e734b633635d0?accessKey={ACCESS_KEY}"
    ]


async def test_upgrade_with_a_sha256_sign_in_upper_case(
    agent: GatewayAgent, platform: Platform, files: FileServer
) -> None:
    sign = hashlib.sha256(IMAGE).hexdigest().upper()
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url(), sign=sign, signMethod="SHA256"))
    final = await platform.final()
    assert final["success"] is True
    assert agent.version == "1.1.0"


async def test_wrong_sign_fails_and_keeps_the_version(
    agent: GatewayAgent, platform: Platform, files: FileServer, state_dir: Path
) -> None:
    wrong = hashlib.md5(b"another image").hexdigest()
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url(), sign=wrong))
    final = await platform.final()
    progress = platform.on(f"{OWN}/upgrade/progress")
    check_progress(progress, "1.1.0", FIRMWARE_ID)
    assert final["complete"] is True
    assert final["success"] is False
    assert "sign mismatch" in final["errorReason"]
    assert wrong in final["errorReason"]
    assert hashlib.md5(IMAGE).hexdigest() in final["errorReason"]
    assert final["progress"] < 100
    assert final["progress"] == max(p["progress"] for p in progress)
    await platform.read_round_trip()
    assert agent.version == "1.0.0"
    assert state_versions(state_dir)[DEVICE] == "1.0.0"
    assert [r["version"] for r in platform.on(f"{OWN}/report")] == ["1.0.0"]
    assert not (state_dir / "firmware" / "1.1.0.bin").exists()
    assert list((state_dir / "downloads").iterdir()) == []


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        (
            len(IMAGE) + 100,
            f"is {len(IMAGE)} bytes, shorter than the announced size {len(IMAGE) + 100}",
        ),
        (len(IMAGE) - 100, f"more than the announced size {len(IMAGE) - 100}"),
    ],
    ids=["announced-larger", "announced-smaller"],
)
async def test_size_mismatch_fails_and_keeps_the_version(
    agent: GatewayAgent, platform: Platform, files: FileServer, size: int, reason: str
) -> None:
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url(), size=size))
    final = await platform.final()
    check_progress(platform.on(f"{OWN}/upgrade/progress"), "1.1.0", FIRMWARE_ID)
    assert final["success"] is False
    assert reason in final["errorReason"]
    assert agent.version == "1.0.0"


async def test_failure_reason_does_not_carry_the_access_key(
    agent: GatewayAgent, platform: Platform, files: FileServer
) -> None:
    # Announced larger than served: the server answers the resume with 416, retried.
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url(), size=len(IMAGE) + 1))
    final = await platform.final()
    assert final["success"] is False
    assert ACCESS_KEY not in final["errorReason"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"url": None}, "url"),
        ({"size": "570"}, "size"),
        ({"signMethod": "crc32"}, "signMethod"),
        ({"firmwareId": ""}, "firmwareId"),
    ],
)
async def test_invalid_upgrade_is_refused_and_the_next_one_is_served(
    agent: GatewayAgent, platform: Platform, files: FileServer, changes: dict[str, Any], field: str
) -> None:
    bad = seed_upgrade(files.url(), messageId="bad-1") | changes
    bad = {k: v for k, v in bad.items() if v is not None}  # None: the field is left out
    await platform.send(f"{OWN}/upgrade", bad)
    await eventually(lambda: platform.on(f"{OWN}/upgrade/reply"), "the refusal")
    [refusal] = platform.on(f"{OWN}/upgrade/reply")
    assert refusal["messageId"] == "bad-1"
    assert refusal["success"] is False
    assert refusal["code"] == "invalid_message"
    assert repr(field) in refusal["message"]
    assert isinstance(agent.errors[-1], MessageError)
    assert agent.errors[-1].field == field
    assert not files.requests

    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url(), messageId="good-2"))
    final = await platform.final()
    assert final["success"] is True
    replies = platform.on(f"{OWN}/upgrade/reply")
    assert [(r["messageId"], r["success"]) for r in replies] == [("bad-1", False), ("good-2", True)]


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xfe not json", b"[1, 2]", json.dumps({"version": "2.0"}).encode(), b""],
    ids=["not-utf8", "array", "no-message-id", "empty"],
)
async def test_garbage_without_message_id_gets_no_reply(
    agent: GatewayAgent, platform: Platform, payload: bytes
) -> None:
    await platform.send(f"{OWN}/upgrade", payload)
    await platform.read_round_trip()  # handled in order, so the garbage was handled first
    assert platform.on(f"{OWN}/upgrade/reply") == []
    assert platform.on(f"{OWN}/upgrade/progress") == []
    assert len(agent.errors) == 1
    assert isinstance(agent.errors[0], MessageError)


async def test_an_undecided_target_is_refused_as_not_supported_yet(
    agent: GatewayAgent, platform: Platform, files: FileServer
) -> None:
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url(), parameters={"target": "wifi"}))
    await eventually(lambda: platform.on(f"{OWN}/upgrade/reply"), "the refusal")
    [refusal] = platform.on(f"{OWN}/upgrade/reply")
    assert (refusal["success"], refusal["code"]) == (False, "not_supported_yet")
    assert refusal["message"] == "WiFi module upgrades are not supported yet by this gateway"
    assert not files.requests and not agent.jobs


async def test_unsupported_target_is_refused(
    agent: GatewayAgent, platform: Platform, files: FileServer
) -> None:
    await platform.send(
        f"{OWN}/upgrade", seed_upgrade(files.url(), parameters={"target": "zigbee"})
    )
    await eventually(lambda: platform.on(f"{OWN}/upgrade/reply"), "the refusal")
    [refusal] = platform.on(f"{OWN}/upgrade/reply")
    assert refusal["messageId"] == MESSAGE_ID
    assert refusal["success"] is False
    assert refusal["code"] == "unsupported_target"
    assert "'zigbee'" in refusal["message"]
    assert "gateway" in refusal["message"]
    await platform.read_round_trip()
    assert platform.on(f"{OWN}/upgrade/progress") == []
    assert not files.requests
    assert not agent.jobs


async def test_upgrade_of_an_unknown_child_is_refused_on_the_child_topic(
    agent: GatewayAgent, platform: Platform, files: FileServer
) -> None:
    base = child("node-9")
    await platform.send(f"{base}/upgrade", seed_upgrade(files.url(), deviceId="node-9"))
    await eventually(lambda: platform.on(f"{base}/upgrade/reply"), "the refusal")
    [refusal] = platform.on(f"{base}/upgrade/reply")
    assert refusal["messageId"] == MESSAGE_ID
    assert refusal["success"] is False
    assert refusal["code"] == "unsupported_target"
    assert "'node-9'" in refusal["message"]
    assert platform.on(f"{OWN}/upgrade/reply") == []
    assert not files.requests


async def test_upgrade_of_a_known_child_reports_on_the_child_topics(
    agent: GatewayAgent, platform: Platform, files: FileServer, state_dir: Path
) -> None:
    agent.children["node-1"] = "gateway"  # a child whose image the gateway upgrader stores
    base = child("node-1")
    await platform.send(f"{base}/upgrade", seed_upgrade(files.url(), deviceId="node-1"))
    final = await platform.final(base)
    assert final["success"] is True
    check_progress(platform.on(f"{base}/upgrade/progress"), "1.1.0", FIRMWARE_ID)
    await eventually(lambda: platform.on(f"{base}/report"), "the child's report")
    assert platform.on(f"{base}/report")[0]["version"] == "1.1.0"
    assert platform.on(f"{OWN}/upgrade/progress") == []
    assert state_versions(state_dir) == {DEVICE: "1.0.0", "node-1": "1.1.0"}
    assert agent.version == "1.0.0"
    assert (await platform.read_round_trip(base))["version"] == "1.1.0"


async def test_the_same_upgrade_twice_while_it_runs_is_one_job(
    agent: GatewayAgent, platform: Platform, files: FileServer
) -> None:
    files.hold_after = 40_000
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url()))
    await asyncio.wait_for(files.holding.wait(), 5)
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url()))
    await eventually(lambda: len(platform.on(f"{OWN}/upgrade/reply")) == 2, "the second reply")
    files.release.set()
    final = await platform.final()
    await agent.wait_idle(5)
    await platform.read_round_trip()

    replies = platform.on(f"{OWN}/upgrade/reply")
    assert [(r["messageId"], r["success"]) for r in replies] == [(MESSAGE_ID, True)] * 2
    assert final["success"] is True
    assert len(platform.finals()) == 1
    check_progress(platform.on(f"{OWN}/upgrade/progress"), "1.1.0", FIRMWARE_ID)
    assert len(files.requests) == 1


async def test_another_firmware_while_a_job_runs_is_refused_busy(
    agent: GatewayAgent, platform: Platform, files: FileServer
) -> None:
    files.hold_after = 40_000
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url()))
    await asyncio.wait_for(files.holding.wait(), 5)
    other = seed_upgrade(files.url(), messageId="other-1", version="1.2.0", firmwareId="fw-1.2.0")
    await platform.send(f"{OWN}/upgrade", other)
    await eventually(lambda: len(platform.on(f"{OWN}/upgrade/reply")) == 2, "the busy reply")
    busy = platform.on(f"{OWN}/upgrade/reply")[1]
    assert busy["messageId"] == "other-1"
    assert busy["success"] is False
    assert busy["code"] == "busy"
    assert "1.1.0" in busy["message"]
    files.release.set()
    final = await platform.final()
    assert (final["version"], final["success"]) == ("1.1.0", True)
    await agent.wait_idle(5)
    await platform.read_round_trip()
    assert len(platform.finals()) == 1
    assert agent.version == "1.1.0"
    assert len(files.requests) == 1


async def test_upgrade_to_the_running_version_succeeds_without_downloading(
    agent: GatewayAgent, platform: Platform, files: FileServer
) -> None:
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url(), version="1.0.0"))
    final = await platform.final()
    await agent.wait_idle(5)
    await platform.read_round_trip()
    assert platform.on(f"{OWN}/upgrade/reply")[0]["success"] is True
    assert platform.on(f"{OWN}/upgrade/progress") == [final]
    assert (final["progress"], final["complete"], final["success"]) == (100, True, True)
    assert final["version"] == "1.0.0"
    assert files.requests == []
    assert agent.version == "1.0.0"


async def test_the_agent_serves_again_after_a_failed_job(
    agent: GatewayAgent, platform: Platform, files: FileServer
) -> None:
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url(), sign="0" * 32))
    assert (await platform.final())["success"] is False
    await agent.wait_idle(5)
    platform.received.clear()
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url(), messageId="retry"))
    assert (await platform.final())["success"] is True
    assert agent.version == "1.1.0"


async def test_upgrade_without_message_id_runs_without_a_reply(
    agent: GatewayAgent, platform: Platform, files: FileServer
) -> None:
    message = seed_upgrade(files.url())
    del message["messageId"]
    await platform.send(f"{OWN}/upgrade", message)
    final = await platform.final()
    assert final["success"] is True
    assert platform.on(f"{OWN}/upgrade/reply") == []
    assert agent.version == "1.1.0"


class ScriptedUpgrader:
    """An upgrader for another target kind whose outcome the test picks."""

    kind = "ble"

    def __init__(self, outcome: str | Exception) -> None:
        self.outcome = outcome
        self.images: list[bytes] = []

    def current_version(self, device_id: str) -> str | None:
        return "0.9"

    async def apply(self, job: Any, progress: Callable[[float], None]) -> str:
        assert job.image is not None
        self.images.append(job.image.read_bytes())
        progress(50)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("1.1.0", None),
        ("2.0.0", "device runs 2.0.0 after the upgrade, not 1.1.0"),
        (UpgradeFailed("node did not confirm the image"), "node did not confirm the image"),
        (
            RuntimeError("radio driver crashed"),
            "internal error: RuntimeError: radio driver crashed",
        ),
    ],
    ids=["success", "wrong-version", "upgrade-failed", "crash"],
)
async def test_an_upgraders_outcome_becomes_the_final_progress(
    agent: GatewayAgent,
    platform: Platform,
    files: FileServer,
    outcome: str | Exception,
    reason: str | None,
) -> None:
    upgrader = ScriptedUpgrader(outcome)
    agent.upgraders.register(upgrader)
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url(), parameters={"target": "ble"}))
    final = await platform.final()
    progress = platform.on(f"{OWN}/upgrade/progress")
    check_progress(progress, "1.1.0", FIRMWARE_ID)
    assert upgrader.images == [IMAGE]
    # The download fills 0..60, the upgrader's 50 % lands at 79.
    assert 79 in [p["progress"] for p in progress]
    if reason is None:
        assert (final["progress"], final["success"]) == (100, True)
    else:
        assert (final["progress"], final["success"]) == (79, False)
        assert final["errorReason"] == reason
    await agent.wait_idle(5)
    assert not agent.jobs
    assert agent.version == "1.0.0"  # the gateway image itself was not touched


async def test_stop_mid_job_reports_the_interruption_and_a_restart_resumes(
    broker: EmbeddedBroker, platform: Platform, files: FileServer, state_dir: Path
) -> None:
    gateway = GatewayAgent(GatewayConfig(PRODUCT, DEVICE, state_dir, download=POLICY))
    await gateway.start(broker.url, wait=5)
    try:
        files.hold_after = 40_000
        await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url()))
        await asyncio.wait_for(files.holding.wait(), 5)
        assert gateway.mqtt is not None
        await gateway.mqtt.flush(5)
        await platform.read_round_trip()
    finally:
        await gateway.stop()
    final = await platform.final()
    assert final["success"] is False
    assert "interrupted" in final["errorReason"]
    check_progress(platform.on(f"{OWN}/upgrade/progress"), "1.1.0", FIRMWARE_ID)
    assert GatewayState(state_dir).version(DEVICE) == "1.0.0"
    [part] = (state_dir / "downloads").glob("*.part")
    kept = part.stat().st_size
    assert 0 < kept < len(IMAGE)

    files.hold_after = None
    platform.received.clear()
    again = GatewayAgent(GatewayConfig(PRODUCT, DEVICE, state_dir, download=POLICY))
    await again.start(broker.url, wait=5)
    try:
        await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url(), messageId="again"))
        assert (await platform.final())["success"] is True
        assert files.requests[-1][1] == f"bytes={kept}-"
        assert len(files.requests) == 2
        assert (state_dir / "firmware" / "1.1.0.bin").read_bytes() == IMAGE
    finally:
        await again.stop()


async def test_firmware_id_cannot_point_the_download_outside_the_state_folder(
    agent: GatewayAgent, platform: Platform, files: FileServer, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim-1.1.0.bin"
    victim.write_bytes(b"precious")
    await platform.send(
        f"{OWN}/upgrade", seed_upgrade(files.url(), firmwareId=str(outside / "victim"))
    )
    await platform.final()
    await agent.wait_idle(5)
    assert sorted(p.name for p in outside.iterdir()) == ["victim-1.1.0.bin"]
    assert victim.read_bytes() == b"precious"


# -- pull ----------------------------------------------------------------------------------


async def test_pull_asks_for_the_latest_firmware(agent: GatewayAgent, platform: Platform) -> None:
    first = agent.pull()
    second = agent.pull("1.2")
    await eventually(lambda: len(platform.on(f"{OWN}/pull")) == 2, "the pulls")
    latest, specific = platform.on(f"{OWN}/pull")
    assert latest["messageId"] == first
    assert latest["currentVersion"] == "1.0.0"
    assert "requestVersion" in latest
    assert latest["requestVersion"] is None
    assert specific["messageId"] == second
    assert specific["requestVersion"] == "1.2"
    assert first != second


async def test_pull_reply_not_found_is_recorded_and_starts_nothing(
    agent: GatewayAgent, platform: Platform
) -> None:
    message_id = agent.pull()
    await eventually(lambda: platform.on(f"{OWN}/pull"), "the pull")
    await platform.send(
        f"{OWN}/pull/reply",
        {
            "timestamp": 1601196762389,
            "messageId": message_id,
            "success": False,
            "code": "not_found",
            "message": "no firmware for this device",
        },
    )
    await eventually(lambda: message_id in agent.pull_replies, "the recorded pull reply")
    reply = agent.pull_replies[message_id]
    assert (reply.success, reply.code) == (False, "not_found")
    await platform.read_round_trip()
    assert not agent.jobs
    assert platform.on(f"{OWN}/upgrade/progress") == []
    assert list(agent.errors) == []


async def test_pull_reply_with_firmware_starts_a_job(
    agent: GatewayAgent, platform: Platform, files: FileServer, state_dir: Path
) -> None:
    message_id = agent.pull()
    await eventually(lambda: platform.on(f"{OWN}/pull"), "the pull")
    firmware = seed_upgrade(files.url(), signMethod="md5")
    await platform.send(
        f"{OWN}/pull/reply",
        {
            "timestamp": 1601196762389,
            "messageId": message_id,
            **{k: firmware[k] for k in ("url", "version", "parameters", "sign", "signMethod")},
            "firmwareId": FIRMWARE_ID,
            "size": len(IMAGE),
        },
    )
    final = await platform.final()
    assert final["success"] is True
    check_progress(platform.on(f"{OWN}/upgrade/progress"), "1.1.0", FIRMWARE_ID)
    await eventually(lambda: len(platform.on(f"{OWN}/report")) == 2, "the report of 1.1.0")
    assert platform.on(f"{OWN}/report")[-1]["version"] == "1.1.0"
    assert platform.on(f"{OWN}/upgrade/reply") == []  # a pull reply is not answered
    assert agent.pull_replies[message_id].success is True
    assert state_versions(state_dir)[DEVICE] == "1.1.0"
    assert len(files.requests) == 1


async def test_pull_reply_with_an_unknown_message_id_is_ignored(
    agent: GatewayAgent, platform: Platform, files: FileServer
) -> None:
    agent.pull()
    await platform.send(
        f"{OWN}/pull/reply",
        {"timestamp": 1601196762389, "messageId": "never-asked", **seed_upgrade(files.url())}
        | {"messageId": "never-asked"},
    )
    await eventually(lambda: agent.errors, "the correlation error")
    [error] = agent.errors
    assert isinstance(error, CorrelationError)
    assert "never-asked" in str(error)
    assert "never-asked" not in agent.pull_replies
    await platform.read_round_trip()
    assert not agent.jobs
    assert platform.on(f"{OWN}/upgrade/progress") == []
    assert files.requests == []


# -- broker loss ---------------------------------------------------------------------------


async def test_broker_restart_mid_job_the_agent_reconnects_and_finishes(
    files: FileServer, state_dir: Path
) -> None:
    first = EmbeddedBroker()
    await first.start()
    port = first.url.port
    second: EmbeddedBroker | None = None
    gateway = GatewayAgent(GatewayConfig(PRODUCT, DEVICE, state_dir, download=POLICY))
    try:
        async with Platform(first.url) as before:
            await gateway.start(first.url, wait=5)
            await eventually(lambda: before.on(f"{OWN}/report"), "the start-up report")
            files.hold_after = 40_000
            await before.send(f"{OWN}/upgrade", seed_upgrade(files.url()))
            await asyncio.wait_for(files.holding.wait(), 5)
            await eventually(lambda: before.on(f"{OWN}/upgrade/reply"), "the reply")
            # Quiet first: amqtt 0.12 (on Python 3.11) can miss the cancellation of a
            # session's reader when a packet arrives just then, and its shutdown hangs.
            # The gateway is quiet once its outbox is acknowledged and a read answered; the
            # platform once the broker acknowledged a last publish of its own (so it has
            # read the platform's PUBACK for the read reply).
            assert gateway.mqtt is not None
            await gateway.mqtt.flush(5)
            await before.read_round_trip()
            await before.send("ota-hil/quiet", b"{}")
            started = time.monotonic()
            await first.stop()
            assert time.monotonic() - started < 2.0, "the broker did not stop cleanly"
        assert gateway.mqtt is not None
        mqtt = gateway.mqtt
        await eventually(lambda: not mqtt.connected.is_set(), "the agent to see the loss")
        assert gateway.jobs, "the job must survive the broker loss"

        second = EmbeddedBroker(port=port)
        await second.start()
        async with Platform(second.url) as after:
            await eventually(lambda: mqtt.connections == 2, "the reconnect")
            files.release.set()
            final = await after.final()
            assert (final["progress"], final["complete"], final["success"]) == (100, True, True)
            assert final["firmwareId"] == FIRMWARE_ID
            await eventually(
                lambda: any(r["version"] == "1.1.0" for r in after.on(f"{OWN}/report")),
                "the report of 1.1.0",
            )
        assert gateway.version == "1.1.0"
        assert len(files.requests) == 1
    finally:
        await gateway.stop()
        await first.stop()
        if second is not None:
            await second.stop()


async def test_a_failed_download_leaves_no_partial_file(
    agent: GatewayAgent, platform: Platform, files: FileServer, state_dir: Path
) -> None:
    # Announced larger than served: the bytes arrive, then the resume is refused (416).
    await platform.send(f"{OWN}/upgrade", seed_upgrade(files.url(), size=len(IMAGE) + 100))
    final = await platform.final()
    assert "shorter than the announced size" in final["errorReason"]
    await agent.wait_idle(5)
    assert list((state_dir / "downloads").iterdir()) == []
