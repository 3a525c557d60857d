"""The mock platform's MQTT side and scheduler: it sends upgrades, reads replies and progress,
answers pulls, takes reports and asks devices for their version.

Where it differs from JetLinks on purpose (each to make a failure visible): a reply
with success=false fails the record at once (JetLinks 1.9 leaves it processing);
both timeouts are enforced (1.9 stores them only); a progress message that matches
no record, a reply nobody waits for and a late reply are recorded as events instead
of vanishing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

from pydantic import ValidationError

from ..aio import cancel_and_wait
from ..mqtt import BrokerUrl, MqttEndpoint
from ..protocol import (
    PLATFORM_SUBSCRIPTIONS,
    AuthError,
    FirmwareMessage,
    FirmwareTopic,
    MqttCredentials,
    ProtocolError,
    PullFirmware,
    PullReply,
    ReadFirmware,
    ReadReply,
    ReportFirmware,
    UpgradeFirmware,
    UpgradeProgress,
    UpgradeReply,
    decode,
    new_message_id,
    now_ms,
    parse_topic,
    verify,
)
from .events import EventLog
from .registry import Device, DeviceRegistry
from .store import FirmwareStore
from .tasks import RecordState, TaskBook, UpgradeRecord

log = logging.getLogger("ota_hil.platform")

PLATFORM_CLIENT_ID = "ota-hil-platform"


class ReadFailed(Exception):
    """The device answered a firmware read with success=false."""


@dataclass
class PlatformConfig:
    #: Seconds between two pushes of waiting records (the seed's 30 s timer).
    check_interval: float = 30.0
    #: How often timeouts are looked at; at most ``check_interval``.
    timeout_resolution: float = 0.5
    #: Default wait for a read/reply.
    read_timeout: float = 10.0
    #: Seconds to wait for the broker when connecting.
    connect_timeout: float = 10.0
    #: The broker checks clients with :meth:`Platform.authenticate`, so the platform logs
    #: in with its own token; otherwise it uses the broker URL's credentials, if any.
    broker_auth: bool = False


class Platform:
    """Firmware store, device registry, tasks and records, and the MQTT traffic that moves
    them."""

    def __init__(self, config: PlatformConfig | None = None, base_url: str = "") -> None:
        self.config = config or PlatformConfig()
        self.store = FirmwareStore(base_url)
        self.registry = DeviceRegistry()
        self.upgrades = TaskBook()
        self.events = EventLog()
        self.mqtt: MqttEndpoint | None = None
        self._token = secrets.token_hex(16)
        self._reads: dict[str, asyncio.Future[ReadReply]] = {}
        self._scheduler: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self, broker: BrokerUrl | str) -> None:
        self.mqtt = MqttEndpoint(
            broker,
            PLATFORM_CLIENT_ID,
            PLATFORM_SUBSCRIPTIONS,
            self.on_message,
            credentials=self._credentials if self.config.broker_auth else None,
            logger=logging.getLogger("ota_hil.platform.mqtt"),
        )
        await self.mqtt.start(self.config.connect_timeout)
        self._scheduler = asyncio.create_task(self._schedule(), name="platform-scheduler")

    async def close(self) -> None:
        await cancel_and_wait(self._scheduler)
        self._scheduler = None
        if self.mqtt is not None:
            await self.mqtt.stop()
        for future in self._reads.values():
            future.cancel()

    def _credentials(self) -> MqttCredentials:
        return MqttCredentials(PLATFORM_CLIENT_ID, PLATFORM_CLIENT_ID, self._token)

    def authenticate(
        self, client_id: str | None, username: str | None, password: str | None
    ) -> None:
        """Broker-side check of a connecting client: the platform itself, or a device with
        JetLinks credentials. Hand this to an embedded broker (and set
        ``config.broker_auth``) to turn auth on."""
        if client_id == PLATFORM_CLIENT_ID:
            if password != self._token:
                raise AuthError("the platform's client id is reserved")
            return
        verify(client_id, username, password, self.registry.secret_of)

    # -- the scheduler ---------------------------------------------------------------------

    async def _schedule(self) -> None:
        resolution = min(self.config.timeout_resolution, self.config.check_interval)
        last_push = time.monotonic()
        while True:
            await asyncio.sleep(resolution)
            try:
                if time.monotonic() - last_push >= self.config.check_interval:
                    last_push = time.monotonic()
                    self.push_waiting()
                self.expire_overdue()
            except Exception:
                # The timer must outlive any one bad record, or every record stops moving.
                log.exception("scheduler tick failed")

    def push_waiting(self) -> int:
        """Send UPGRADE_FIRMWARE to every waiting record of a running push task."""
        sent = 0
        for record in self.upgrades.due_for_push():
            try:
                device, message = self._upgrade_message(record)
                topic = self.registry.topic_for(device, message.kind)
            except (LookupError, ProtocolError, ValidationError) as exc:
                record.fail(now_ms(), f"cannot send the upgrade: {exc}")
                log.error("record %s: cannot send the upgrade: %s", record.id, exc)
                continue
            assert message.messageId is not None
            self.upgrades.sent(record, message.messageId, now_ms())
            self._publish(topic, message)
            sent += 1
        if sent:
            log.info("pushed %d upgrade message(s)", sent)
        return sent

    def _upgrade_message(self, record: UpgradeRecord) -> tuple[Device, UpgradeFirmware]:
        device = self.registry.devices[record.device_id]
        firmware = self.store.firmware[record.firmware_id]
        message = UpgradeFirmware(
            messageId=new_message_id(),
            deviceId=device.id,
            headers={
                "deviceName": device.name,
                "productName": self.registry.products[device.product_id].name,
                "productId": device.product_id,
                "creatorId": PLATFORM_CLIENT_ID,
                "timeout": record.response_timeout_seconds * 1000,
                "async": True,
            },
            **self.store.fields_of(firmware).model_dump(),
        )
        return device, message

    def expire_overdue(self) -> None:
        now = now_ms()
        for record, reason in self.upgrades.overdue(now):
            record.fail(now, reason)
            self.events.add(
                EventLog.RECORD_TIMEOUT,
                f"record {record.id} of device {record.device_id}: {reason}",
                device_id=record.device_id,
                level=logging.INFO,
            )

    # -- sending ---------------------------------------------------------------------------

    def _publish(self, topic: FirmwareTopic, message: FirmwareMessage) -> None:
        if self.mqtt is None:
            raise RuntimeError("platform is not connected to a broker")
        self.mqtt.publish(str(topic), message.to_json())

    def _send(self, device: Device, message: FirmwareMessage) -> None:
        self._publish(self.registry.topic_for(device, message.kind), message)

    async def read_version(self, device_id: str, timeout: float | None = None) -> str:
        """Ask a device for its firmware version (firmware/read) and wait for the reply.

        Raises KeyError (unknown device), TimeoutError (no answer) or ReadFailed."""
        device = self.registry.get(device_id)
        if device is None:
            raise KeyError(f"unknown device {device_id!r}")
        message = ReadFirmware(messageId=new_message_id())
        future: asyncio.Future[ReadReply] = asyncio.get_running_loop().create_future()
        self._reads[message.messageId] = future
        wait = self.config.read_timeout if timeout is None else timeout
        try:
            self._send(device, message)
            reply = await asyncio.wait_for(future, wait)
        except TimeoutError:
            raise TimeoutError(
                f"device {device_id!r} did not answer the firmware read within {wait:g} s"
            ) from None
        finally:
            self._reads.pop(message.messageId, None)
        if not reply.success:
            raise ReadFailed(f"device {device_id!r} could not tell its firmware version")
        return reply.version

    # -- receiving -------------------------------------------------------------------------

    async def on_message(self, topic: str, payload: bytes) -> None:
        """Every upstream firmware message lands here; nothing raised escapes."""
        try:
            parsed = parse_topic(topic)
            if parsed.kind.downstream:
                return  # our own downstream traffic echoed by a wildcard; not ours to handle
            message = decode(parsed.kind, payload, topic)
            device = self._sender(parsed)
            if device is None:
                return
            match message:
                case UpgradeReply():
                    self._on_reply(parsed, device, message)
                case UpgradeProgress():
                    self._on_progress(parsed, device, message)
                case PullFirmware():
                    self._on_pull(device, message)
                case ReportFirmware():
                    self._on_report(device, message)
                case ReadReply():
                    self._on_read_reply(parsed, device, message)
        except ProtocolError as exc:
            self.events.add(EventLog.BAD_MESSAGE, str(exc), topic=topic)

    def _sender(self, topic: FirmwareTopic) -> Device | None:
        device = self.registry.get(topic.device_id)
        if device is None:
            self.events.add(
                EventLog.UNKNOWN_DEVICE,
                f"message from unknown device {topic.device_id!r} on {topic}",
                topic=str(topic),
                device_id=topic.device_id,
            )
            return None
        mismatch = self.registry.sender_mismatch(device, topic)
        if mismatch:
            self.events.add(EventLog.BAD_MESSAGE, f"{topic}: {mismatch}", topic=str(topic))
            return None
        return device

    def _on_reply(self, topic: FirmwareTopic, device: Device, reply: UpgradeReply) -> None:
        record = self.upgrades.by_message_id(reply.messageId)
        if record is None or record.device_id != device.id:
            self.events.add(
                EventLog.UNKNOWN_REPLY,
                f"{topic}: reply to messageId {reply.messageId!r}, which was not sent to "
                f"{device.id!r}",
                topic=str(topic),
                device_id=device.id,
            )
            return
        if record.state is not RecordState.PROCESSING:
            self.events.add(
                EventLog.LATE_REPLY,
                f"{topic}: reply to messageId {reply.messageId!r} came after record "
                f"{record.id} ended {record.state.value}",
                topic=str(topic),
                device_id=device.id,
                level=logging.INFO,
            )
            return
        reason = None
        if not reply.success:
            reason = ": ".join(p for p in (reply.code, reply.message) if p) or None
        record.reply(now_ms(), reply.success, reason)

    def _on_progress(self, topic: FirmwareTopic, device: Device, msg: UpgradeProgress) -> None:
        records = self.upgrades.processing_for(device.id, msg.firmwareId, msg.version)
        if not records:
            held = [
                f"{r.firmware_id}/{r.version} ({r.state.value})"
                for r in self.upgrades.records_of(device_id=device.id)
            ]
            self.events.add(
                EventLog.UNMATCHED_PROGRESS,
                f"{topic}: progress {msg.progress}% for firmware {msg.firmwareId!r} version "
                f"{msg.version!r} matches no processing record of {device.id!r}"
                f" (records: {', '.join(held) or 'none'})",
                topic=str(topic),
                device_id=device.id,
            )
            return
        for record in records:
            record.report_progress(
                now_ms(), msg.progress, msg.complete, msg.success, msg.errorReason
            )

    def _on_pull(self, device: Device, pull: PullFirmware) -> None:
        force = bool(pull.headers and pull.headers.get("force") is True)
        record = self.upgrades.pull_candidate(device.id, pull.requestVersion, force=force)
        firmware = self.store.firmware.get(record.firmware_id) if record else None
        if record is None or firmware is None:
            wanted = pull.requestVersion or "the latest version"
            self._send(
                device,
                PullReply(
                    messageId=pull.messageId,
                    success=False,
                    code="not_found",
                    message=f"no firmware upgrade for {device.id!r} at {wanted}",
                ),
            )
            return
        record.start(now_ms())
        fields = self.store.fields_of(firmware).model_dump()
        self._send(device, PullReply(messageId=pull.messageId, **fields))

    def _on_report(self, device: Device, report: ReportFirmware) -> None:
        self.registry.set_version(device.id, report.version)
        log.info("device %s reports firmware %s", device.id, report.version)

    def _on_read_reply(self, topic: FirmwareTopic, device: Device, reply: ReadReply) -> None:
        future = self._reads.get(reply.messageId)
        if future is None or future.done():
            self.events.add(
                EventLog.UNKNOWN_REPLY,
                f"{topic}: read reply to messageId {reply.messageId!r}, which is not awaited",
                topic=str(topic),
                device_id=device.id,
            )
            return
        if reply.success:
            self.registry.set_version(device.id, reply.version)
        future.set_result(reply)
