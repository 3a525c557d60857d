"""The reference gateway's MQTT agent: it takes upgrade, read and pull-reply messages for
itself and its child devices, runs one job per device and firmware, and reports.

Every inbound message is validated first; one that cannot be used is answered with a
refusal when it carries a messageId, logged, and the agent carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..aio import cancel_and_wait
from ..mqtt import BrokerUrl, MqttEndpoint
from ..protocol import (
    CorrelationError,
    DeviceSecret,
    FirmwareMessage,
    FirmwareTopic,
    MessageError,
    MqttCredentials,
    ProtocolError,
    PullFirmware,
    PullReply,
    ReadFirmware,
    ReadReply,
    ReportFirmware,
    TopicKind,
    UpgradeFirmware,
    UpgradeReply,
    child_topic,
    credentials_for,
    decode,
    device_topic,
    message_id_of,
    new_message_id,
    parse_topic,
    subscriptions_for_device,
)
from .apps import AppUpgrader
from .appstore import StepHook
from .download import Downloader, DownloadError, DownloadPolicy, SharedDownloads
from .drivers import DriverUpgrader
from .jobs import Job, ProgressReporter, UpgradeFailed
from .local import LOCAL_COMPONENTS, UNDECIDED, local_device_id
from .state import GatewayState
from .upgraders import GatewayImageUpgrader, UndecidedUpgrader, Upgrader, UpgraderRegistry

log = logging.getLogger("ota_hil.gateway")

K = TypeVar("K")
V = TypeVar("V")

#: Share of a job's progress given to the download; the rest is the upgrader's.
DOWNLOAD_SHARE = 60
#: How many pull replies and refused messages the agent remembers.
HISTORY = 256


class BoundedDict(OrderedDict[K, V]):
    """A dict that forgets its oldest entries beyond ``limit`` (for a long-running agent)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass
class GatewayConfig:
    product_id: str
    device_id: str
    state_dir: Path
    secret: DeviceSecret | None = None
    #: The gateway's own version when the state folder has none yet.
    initial_version: str = "1.0.0"
    download: DownloadPolicy = field(default_factory=DownloadPolicy)
    progress_step: int = 5
    #: Default target kind of an upgrade on the gateway's own topic (parameters.target wins).
    default_target: str = "gateway"
    #: The gateway application's folder (its releases and the ``current`` link the app runs
    #: from); None: ``{state_dir}/app``. The app is the child device ``{device_id}-app``.
    app_root: Path | None = None
    #: A shell command that checks a new app release in its folder (exit 0: healthy);
    #: None: every .so must load and every .lua parse.
    app_health_command: str | None = None
    #: Called after each step of an app switch (tests cut the power here).
    app_on_step: StepHook | None = None
    #: The kernel drivers' folder; None: ``{state_dir}/drivers``. The drivers are the child
    #: device ``{device_id}-drivers``, upgraded only when the load and unload commands are
    #: set (``insmod {path}`` and ``rmmod {name}`` on a gateway).
    driver_root: Path | None = None
    driver_load_command: str | None = None
    driver_unload_command: str | None = None


class GatewayAgent:
    def __init__(self, config: GatewayConfig, upgraders: UpgraderRegistry | None = None) -> None:
        self.config = config
        self.state = GatewayState(config.state_dir)
        if self.state.version(config.device_id) is None:
            self.state.set_version(config.device_id, config.initial_version)
        self.upgraders = upgraders or UpgraderRegistry()
        if self.upgraders.get(GatewayImageUpgrader.kind) is None:
            self.upgraders.register(GatewayImageUpgrader(self.state))
        #: Child device id -> target kind; filled by whoever attaches nodes (fleets, rigs).
        self.children: dict[str, str] = {}
        self.downloader = Downloader(config.download)
        self.downloads = SharedDownloads(self.downloader, self.state.downloads())
        self.jobs: dict[str, tuple[Job, asyncio.Task[None]]] = {}
        self._pulls: BoundedDict[str, FirmwareTopic] = BoundedDict(HISTORY)
        #: Replies to this gateway's pulls, by messageId (the latest ones).
        self.pull_replies: BoundedDict[str, PullReply] = BoundedDict(HISTORY)
        self.mqtt: MqttEndpoint | None = None
        #: The latest inbound messages that could not be used.
        self.errors: deque[ProtocolError] = deque(maxlen=HISTORY)

    @property
    def device_id(self) -> str:
        return self.config.device_id

    @property
    def version(self) -> str:
        version = self.state.version(self.device_id)
        assert version is not None  # written at construction
        return version

    # -- lifecycle -------------------------------------------------------------------------

    def _credentials(self) -> MqttCredentials:
        assert self.config.secret is not None
        return credentials_for(self.device_id, self.config.secret)

    async def start(self, broker: BrokerUrl | str, wait: float | None = 10.0) -> None:
        self.mqtt = MqttEndpoint(
            broker,
            self.device_id,
            subscriptions_for_device(self.config.product_id, self.device_id),
            self.on_message,
            credentials=self._credentials if self.config.secret else None,
            logger=logging.getLogger(f"ota_hil.gateway.mqtt.{self.device_id}"),
        )
        self.report(self._own_topic(TopicKind.REPORT), self.version)
        self._attach_local()
        await self.mqtt.start(wait)

    def _attach_local(self) -> None:
        """The gateway's own components as child devices (an interrupted switch of the app
        or the drivers is finished or undone first, after a power loss). Drivers are
        upgraded only when the load and unload commands are configured."""
        cfg = self.config
        local: list[Upgrader] = [
            self.upgraders.get(AppUpgrader.kind)
            or AppUpgrader(
                cfg.app_root or cfg.state_dir / "app",
                health_command=cfg.app_health_command,
                on_step=cfg.app_on_step,
            )
        ]
        if cfg.driver_load_command and cfg.driver_unload_command:
            local.append(
                self.upgraders.get(DriverUpgrader.kind)
                or DriverUpgrader(
                    cfg.driver_root or cfg.state_dir / "drivers",
                    load_command=cfg.driver_load_command,
                    unload_command=cfg.driver_unload_command,
                )
            )
        for kind in UNDECIDED:
            what = LOCAL_COMPONENTS[kind].name
            local.append(self.upgraders.get(kind) or UndecidedUpgrader(kind, what))
        for upgrader in local:
            device = local_device_id(self.device_id, upgrader.kind)
            self.attach(upgrader, {device: upgrader.current_version(device)})

    async def stop(self) -> None:
        await cancel_and_wait(*(task for _, task in list(self.jobs.values())))
        for kind in self.upgraders.kinds():
            close = getattr(self.upgraders.get(kind), "close", None)
            if close is not None:
                await close()
        if self.mqtt is not None:
            # The interrupted jobs' last progress should still reach the platform.
            with contextlib.suppress(TimeoutError):
                await self.mqtt.flush(timeout=2.0)
            await self.mqtt.stop()
        await self.downloader.close()

    def attach(self, upgrader: Upgrader, nodes: dict[str, str | None]) -> None:
        """Take ``nodes`` (child id -> version, where known) as child devices upgraded by
        ``upgrader``, and report their versions to the platform. One upgrader per kind."""
        registered = self.upgraders.get(upgrader.kind)
        if registered is None:
            self.upgraders.register(upgrader)
        elif registered is not upgrader:
            raise ValueError(
                f"nodes of kind {upgrader.kind!r} are already attached through another link"
            )
        known = {node: version for node, version in nodes.items() if version is not None}
        self.state.set_versions(known)
        for node, version in nodes.items():
            self.children[node] = upgrader.kind
            if version is not None:
                self.report(self._child_topic(node, TopicKind.REPORT), version)

    def _child_topic(self, child_id: str, kind: TopicKind) -> FirmwareTopic:
        return child_topic(self.config.product_id, self.device_id, child_id, kind)

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no job runs (and the outbox is flushed)."""
        async with asyncio.timeout(timeout):
            while self.jobs:
                await asyncio.gather(*(t for _, t in self.jobs.values()), return_exceptions=True)
        if self.mqtt is not None:
            await self.mqtt.flush(timeout)

    # -- sending ---------------------------------------------------------------------------

    def _own_topic(self, kind: TopicKind) -> FirmwareTopic:
        return device_topic(self.config.product_id, self.device_id, kind)

    def _send(self, topic: FirmwareTopic, message: FirmwareMessage) -> None:
        assert self.mqtt is not None
        self.mqtt.publish(str(topic.with_kind(message.kind)), message.to_json())

    def report(self, topic: FirmwareTopic, version: str) -> None:
        self._send(topic, ReportFirmware(version=version))

    def pull(self, request_version: str | None = None) -> str:
        """Ask the platform for firmware (firmware/pull); the reply starts a job. Returns the
        messageId."""
        message = PullFirmware(
            messageId=new_message_id(),
            currentVersion=self.version,
            requestVersion=request_version,
        )
        self._pulls[message.messageId] = self._own_topic(TopicKind.PULL)
        self._send(self._own_topic(TopicKind.PULL), message)
        return message.messageId

    # -- receiving -------------------------------------------------------------------------

    async def on_message(self, topic: str, payload: bytes) -> None:
        try:
            parsed = parse_topic(topic)
            if not parsed.kind.downstream:
                return
            try:
                message = decode(parsed.kind, payload, topic)
            except MessageError as exc:
                self._refuse_invalid(parsed, payload, exc)
                raise
            if parsed.kind is TopicKind.UPGRADE:
                assert isinstance(message, UpgradeFirmware)
                self._on_upgrade(parsed, message)
            elif parsed.kind is TopicKind.READ:
                assert isinstance(message, ReadFirmware)
                self._on_read(parsed, message)
            elif parsed.kind is TopicKind.PULL_REPLY:
                assert isinstance(message, PullReply)
                self._on_pull_reply(parsed, message)
        except ProtocolError as exc:
            self.errors.append(exc)
            log.warning("%s: ignored: %s", self.device_id, exc)

    def _refuse_invalid(self, topic: FirmwareTopic, payload: bytes, exc: MessageError) -> None:
        message_id = message_id_of(payload)
        if topic.kind is TopicKind.UPGRADE and message_id:
            self._send(
                topic,
                UpgradeReply(
                    messageId=message_id, success=False, code="invalid_message", message=str(exc)
                ),
            )

    def _target_of(self, topic: FirmwareTopic, parameters: dict[str, object]) -> str | None:
        if topic.is_child:
            return self.children.get(topic.device_id)
        target = parameters.get("target", self.config.default_target)
        return target if isinstance(target, str) else None

    def _version_of(self, topic: FirmwareTopic) -> str | None:
        if not topic.is_child:
            return self.version
        kind = self.children.get(topic.device_id)
        upgrader = self.upgraders.get(kind) if kind else None
        return upgrader.current_version(topic.device_id) if upgrader else None

    def _on_upgrade(self, topic: FirmwareTopic, message: UpgradeFirmware) -> None:
        def refuse(code: str, text: str) -> None:
            log.warning("%s: refused upgrade of %s: %s", self.device_id, topic.device_id, text)
            if message.messageId:
                self._send(
                    topic,
                    UpgradeReply(
                        messageId=message.messageId, success=False, code=code, message=text
                    ),
                )

        target = self._target_of(topic, message.parameters)
        if target is None:
            refuse(
                "unsupported_target", f"{topic.device_id!r} is not a device this gateway upgrades"
            )
            return
        upgrader = self.upgraders.get(target)
        if upgrader is None:
            refuse(
                "unsupported_target",
                f"target {target!r} is not supported by this gateway "
                f"(supported: {', '.join(self.upgraders.kinds())})",
            )
            return
        refusal = getattr(upgrader, "refusal", None)
        if refusal is not None:
            refuse(*refusal)
            return
        job = Job(
            device_id=topic.device_id,
            target=target,
            firmware=message,
            topic=topic,
        )
        running = self.jobs.get(job.device_id)
        if running is not None and running[0].key != job.key:
            refuse(
                "busy",
                f"{job.device_id!r} is upgrading to {running[0].firmware.version} "
                f"({running[0].firmware.firmwareId}); try again when it ends",
            )
            return
        if message.messageId:
            self._send(topic, UpgradeReply(messageId=message.messageId, success=True))
        if running is not None:
            log.info("%s: upgrade of %s already in progress", self.device_id, job.device_id)
            return
        self._start_job(job)

    def _on_read(self, topic: FirmwareTopic, message: ReadFirmware) -> None:
        version = self._version_of(topic)
        if version is None:
            self._send(topic, ReadReply(messageId=message.messageId, version="", success=False))
            return
        self._send(topic, ReadReply(messageId=message.messageId, version=version))

    def _on_pull_reply(self, topic: FirmwareTopic, reply: PullReply) -> None:
        asked = self._pulls.pop(reply.messageId, None)
        if asked is None:
            raise CorrelationError(str(topic), f"no pull with messageId {reply.messageId!r}")
        self.pull_replies[reply.messageId] = reply
        if not reply.success:
            log.info(
                "%s: platform has no firmware for us: %s %s",
                self.device_id,
                reply.code,
                reply.message,
            )
            return
        try:
            firmware = reply.firmware()
        except ValueError as exc:
            raise MessageError(
                str(topic), f"successful pull reply without firmware: {exc}"
            ) from None
        target = self._target_of(topic, firmware.parameters)
        upgrader = self.upgraders.get(target) if target else None
        if upgrader is None or getattr(upgrader, "refusal", None) or topic.device_id in self.jobs:
            log.warning("%s: cannot act on pull reply for target %r", self.device_id, target)
            return
        self._start_job(Job(topic.device_id, target, firmware, topic))

    # -- jobs ------------------------------------------------------------------------------

    def _start_job(self, job: Job) -> None:
        task = asyncio.create_task(self._run(job), name=f"upgrade:{job.device_id}")
        self.jobs[job.device_id] = (job, task)

    async def _run(self, job: Job) -> None:
        reporter = ProgressReporter(
            job, lambda p: self._send(job.topic, p), step=self.config.progress_step
        )
        upgrader = self.upgraders.get(job.target)
        assert upgrader is not None
        share = getattr(upgrader, "download_share", DOWNLOAD_SHARE)
        try:
            if upgrader.current_version(job.device_id) == job.firmware.version:
                log.info(
                    "%s: %s already runs %s", self.device_id, job.device_id, job.firmware.version
                )
                reporter.succeed()
                return
            reporter.update(0)
            download = reporter.span(0, share)
            try:
                async with self.downloads.image(
                    job.firmware, lambda done, total: download(100 * done / max(total, 1))
                ) as image:
                    job.image = image
                    version = await upgrader.apply(job, reporter.span(share, 99))
            except DownloadError as exc:
                raise UpgradeFailed(str(exc)) from None
            if version != job.firmware.version:
                raise UpgradeFailed(
                    f"device runs {version} after the upgrade, not {job.firmware.version}"
                )
            reporter.succeed()
            self.report(job.topic, version)
        except UpgradeFailed as exc:
            log.warning("%s: upgrade of %s failed: %s", self.device_id, job.device_id, exc)
            reporter.fail(str(exc))
            if exc.version is not None:
                self.report(job.topic, exc.version)
        except asyncio.CancelledError:
            reporter.fail("upgrade interrupted: the gateway is shutting down")
            raise
        except Exception as exc:
            log.exception("%s: upgrade of %s crashed", self.device_id, job.device_id)
            reporter.fail(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.jobs.pop(job.device_id, None)
