"""Broker, platform and reference gateway started together: what ``ota-hil up`` runs and
what the scenarios run against."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import shlex
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .broker import Broker, make_broker
from .client import PlatformClient
from .faults import MqttFaultProxy
from .gateway import GatewayAgent, GatewayConfig
from .gateway.local import LOCAL_COMPONENTS, local_device_id
from .platform import PlatformConfig, PlatformServer
from .protocol import DeviceSecret
from .trace import TraceRecorder

log = logging.getLogger("ota_hil.system")


#: The simulated module loader, run as a script (a standalone file: starting it does not
#: import the simulation packages).
KMOD = Path(__file__).resolve().parent.parent / "sims" / "kmod.py"


@dataclass
class SystemConfig:
    broker: str = "embedded"
    #: Where a broker the harness starts listens (port 0: a free one).
    broker_host: str = "127.0.0.1"
    broker_port: int = 0
    product_id: str = "gateway-product"
    gateway_id: str = "gateway-1"
    gateway_version: str = "1.0.0"
    http_host: str = "127.0.0.1"
    http_port: int = 0
    #: Base of download URLs when devices do not reach the platform at its bind address.
    public_url: str | None = None
    #: Check JetLinks MQTT credentials at the broker (embedded broker only).
    auth: bool = False
    #: The gateway's secureId/secureKey when auth is on; None: made up for the run.
    secret: DeviceSecret | None = None
    #: Where the gateway keeps its state; a fresh temporary folder when None.
    state_dir: Path | None = None
    start_gateway: bool = True
    platform: PlatformConfig = field(default_factory=PlatformConfig)


class OtaSystem:
    """Everything a push needs, on loopback. Use as ``async with OtaSystem(cfg) as system``."""

    def __init__(
        self, config: SystemConfig | None = None, trace: TraceRecorder | None = None
    ) -> None:
        self.config = config or SystemConfig()
        #: Records what crosses the system's boundaries, when given.
        self.trace = trace
        self.broker: Broker | None = None
        self.platform_server: PlatformServer | None = None
        self.gateway: GatewayAgent | None = None
        self.client: PlatformClient | None = None
        self.secret = (
            (self.config.secret or DeviceSecret(secrets.token_hex(8), secrets.token_hex(16)))
            if self.config.auth
            else None
        )
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        #: Between the gateway and the broker once :meth:`gateway_link` was asked for.
        self.proxy: MqttFaultProxy | None = None

    @property
    def state_dir(self) -> Path:
        """The gateway's state folder (a temporary one unless the config names one)."""
        if self.config.state_dir is not None:
            return self.config.state_dir
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ota-hil-gw-")
        return Path(self._tmp.name)

    async def start(self) -> None:
        cfg = self.config
        try:
            authenticator = self._authenticate if cfg.auth else None
            self.broker = make_broker(
                cfg.broker, authenticator=authenticator, host=cfg.broker_host, port=cfg.broker_port
            )
            await self.broker.start()
            self.platform_server = PlatformServer(
                self.broker.url,
                host=cfg.http_host,
                port=cfg.http_port,
                config=dataclasses.replace(cfg.platform, broker_auth=cfg.auth),
                public_url=cfg.public_url,
            )
            await self.platform_server.start()
            if self.trace is not None:
                self.trace.attach(self)
            self.client = PlatformClient(self.platform_server.url)
            registry = self.platform_server.platform.registry
            registry.add_product(cfg.product_id, "Gateway")
            registry.add_device(
                cfg.gateway_id, cfg.product_id, name="Reference gateway", secret=self.secret
            )
            for kind, component in LOCAL_COMPONENTS.items():
                registry.add_product(component.product, component.name)
                registry.add_device(
                    local_device_id(cfg.gateway_id, kind),
                    component.product,
                    name=component.name,
                    parent_id=cfg.gateway_id,
                )
            if cfg.start_gateway:
                await self.start_gateway()
        except BaseException:
            await self.stop()
            raise

    def _authenticate(
        self, client_id: str | None, username: str | None, password: str | None
    ) -> None:
        assert self.platform_server is not None
        self.platform_server.platform.authenticate(client_id, username, password)

    def gateway_config(self) -> GatewayConfig:
        return GatewayConfig(
            product_id=self.config.product_id,
            device_id=self.config.gateway_id,
            state_dir=self.state_dir,
            secret=self.secret,
            initial_version=self.config.gateway_version,
            driver_load_command=self._kmod("insmod {path}"),
            driver_unload_command=self._kmod("rmmod {name}"),
        )

    def _kmod(self, command: str) -> str:
        """A driver command run by the simulated module loader (``sims.kmod``): the
        harness's gateway must never load modules into the kernel of the machine it runs
        on. Its loaded modules are kept in the gateway's state folder."""
        state = shlex.quote(str(self.state_dir / "kmod.json"))
        return f"{shlex.quote(sys.executable)} {shlex.quote(str(KMOD))} --state {state} {command}"

    async def start_gateway(self) -> GatewayAgent:
        """(Re)start the reference gateway; its state folder survives a restart."""
        assert self.broker is not None
        if self.gateway is not None:
            await self.stop_gateway()
        self.gateway = GatewayAgent(self.gateway_config())
        await self.gateway.start(self.proxy.url if self.proxy else self.broker.url)
        return self.gateway

    async def gateway_link(self) -> MqttFaultProxy:
        """The gateway's link to the broker as a fault proxy (started, and the gateway moved
        onto it, the first time): outages, duplicates and reorders happen there."""
        if self.proxy is None:
            assert self.broker is not None
            trace = self.trace
            self.proxy = MqttFaultProxy(
                str(self.broker.url),
                on_fault=(lambda on, what: trace.fault(on, what)) if trace else None,
            )
            await self.proxy.start()
            if self.gateway is not None and self.gateway.mqtt is not None:
                await self.gateway.mqtt.move_to(self.proxy.url)
        return self.proxy

    async def stop_gateway(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
            self.gateway = None

    async def stop(self) -> None:
        await self.stop_gateway()
        if self.proxy is not None:
            await self.proxy.stop()
            self.proxy = None
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.platform_server is not None:
            await self.platform_server.stop()
            self.platform_server = None
        if self.broker is not None:
            await self.broker.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> OtaSystem:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
