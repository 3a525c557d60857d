"""The long-running commands: ``platform``, ``gateway`` and ``up``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from ..broker import BrokerUnavailable
from ..gateway import GatewayAgent, GatewayConfig
from ..gateway.local import LOCAL_COMPONENTS, local_device_id
from ..mqtt import BrokerUrl
from ..platform import PlatformConfig, PlatformServer
from ..protocol import DeviceSecret
from ..system import OtaSystem, SystemConfig
from .common import log_level_option, say, serve, setup_logging

log = logging.getLogger("ota_hil.cli")


def _broker_url(ctx: click.Context, param: click.Parameter, value: str) -> BrokerUrl:
    try:
        return BrokerUrl.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _device_spec(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[list[str]]:
    out = []
    for value in values:
        parts = value.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise click.BadParameter(f"{value!r}: expected PRODUCT/DEVICE or PRODUCT/DEVICE/PARENT")
        out.append(parts)
    return out


public_url_option = click.option(
    "--public-url",
    default=None,
    metavar="URL",
    help="Base of download URLs as devices reach the platform (when --host is 0.0.0.0 or "
    "behind NAT) [default: the address it listens on].",
)

check_interval_option = click.option(
    "--check-interval",
    type=click.FloatRange(min=0.05),
    default=30.0,
    show_default=True,
    help="Seconds between the platform's pushes of waiting records (the seed's timer).",
)


@click.command("platform")
@click.option("--broker", required=True, callback=_broker_url, help="mqtt://host:port to use.")
@click.option("--host", default="127.0.0.1", show_default=True, help="REST/file server address.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=0, help="0: a free port.")
@public_url_option
@check_interval_option
@click.option(
    "--device",
    "devices",
    multiple=True,
    callback=_device_spec,
    metavar="PRODUCT/DEVICE[/PARENT]",
    help="Register a device (and its product) at start; repeatable.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the broker at start.",
)
@log_level_option
def platform_command(
    broker: BrokerUrl,
    host: str,
    http_port: int,
    public_url: str | None,
    check_interval: float,
    devices: list[list[str]],
    connect_timeout: float,
    log_level: str,
) -> None:
    """Run the mock JetLinks platform: REST API, file server, tasks and scheduler.

    It connects to an existing broker as an MQTT client. Devices can be registered
    here or through the REST API (POST /device-instance).
    """
    setup_logging(log_level)

    server = PlatformServer(
        broker,
        host=host,
        port=http_port,
        config=PlatformConfig(check_interval=check_interval, connect_timeout=connect_timeout),
        public_url=public_url,
    )
    registry = server.platform.registry
    try:
        # Gateways before their children, whatever the order on the command line.
        for product_id, device_id, *parent in sorted(devices, key=len):
            registry.add_product(product_id)
            registry.add_device(device_id, product_id, parent_id=parent[0] if parent else None)
    except (KeyError, ValueError) as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="--device") from None

    async def main(stop: asyncio.Event) -> None:
        async with server:
            say(f"platform   {server.url}")
            say(f"broker     {broker}")
            await stop.wait()

    try:
        serve(main)
    except (ConnectionError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command("gateway")
@click.option("--broker", required=True, callback=_broker_url, help="mqtt://host:port to use.")
@click.option("--product-id", required=True, help="The gateway's productId.")
@click.option("--device-id", required=True, help="The gateway's deviceId (its MQTT clientId).")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the gateway keeps its versions and images [default: .ota-hil/gateway/DEVICE].",
)
@click.option(
    "--version",
    "initial_version",
    default="1.0.0",
    show_default=True,
    help="The gateway's version when the state folder has none.",
)
@click.option("--secure-id", default=None, help="JetLinks secureId (turns on MQTT auth).")
@click.option("--secure-key", default=None, help="JetLinks secureKey (with --secure-id).")
@click.option(
    "--app-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The gateway app's folder (releases and the `current` link it runs from) "
    "[default: STATE_DIR/app].",
)
@click.option(
    "--app-health-command",
    default=None,
    help="Shell command that checks a new app release in its folder (exit 0: healthy) "
    "[default: every .so loads, every .lua parses].",
)
@click.option(
    "--driver-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The kernel drivers' folder [default: STATE_DIR/drivers].",
)
@click.option(
    "--driver-load-command",
    default=None,
    help="Loads a driver: {path} is the .ko file, e.g. 'insmod {path}'. With "
    "--driver-unload-command it turns driver upgrades on.",
)
@click.option(
    "--driver-unload-command",
    default=None,
    help="Unloads a driver: {name} is the module name, e.g. 'rmmod {name}'.",
)
@click.option("--pull", is_flag=True, help="Ask the platform for firmware once connected.")
@log_level_option
def gateway_command(
    broker: BrokerUrl,
    product_id: str,
    device_id: str,
    state_dir: Path | None,
    initial_version: str,
    secure_id: str | None,
    secure_key: str | None,
    pull: bool,
    app_root: Path | None,
    app_health_command: str | None,
    driver_root: Path | None,
    driver_load_command: str | None,
    driver_unload_command: str | None,
    log_level: str,
) -> None:
    """Run the reference gateway: it takes upgrades for itself over MQTT, downloads them over
    HTTP, checks and installs them, and reports progress and its version."""
    setup_logging(log_level)
    if (secure_id is None) != (secure_key is None):
        raise click.UsageError("--secure-id and --secure-key go together")
    if (driver_load_command is None) != (driver_unload_command is None):
        raise click.UsageError("--driver-load-command and --driver-unload-command go together")
    secret = DeviceSecret(secure_id, secure_key) if secure_id and secure_key else None
    config = GatewayConfig(
        product_id=product_id,
        device_id=device_id,
        state_dir=state_dir or Path(".ota-hil") / "gateway" / device_id,
        secret=secret,
        initial_version=initial_version,
        app_root=app_root,
        app_health_command=app_health_command,
        driver_root=driver_root,
        driver_load_command=driver_load_command,
        driver_unload_command=driver_unload_command,
    )

    async def main(stop: asyncio.Event) -> None:
        agent = GatewayAgent(config)
        await agent.start(broker, wait=None)
        say(f"gateway    {device_id} (product {product_id}) version {agent.version}")
        say(f"state      {config.state_dir}")
        for kind in LOCAL_COMPONENTS:
            upgrader = agent.upgraders.get(kind)
            if upgrader is not None:
                device = local_device_id(device_id, kind)
                version = upgrader.current_version(device) or "none"
                say(f"{kind:<10} {device} version {version}")
        if pull:
            agent.pull()
        try:
            await stop.wait()
        finally:
            await agent.stop()

    serve(main)


@click.command("up")
@click.option(
    "--broker",
    default="embedded",
    show_default=True,
    help="embedded, mosquitto, container, or mqtt://host:port of a running broker.",
)
@click.option("--http-port", type=click.IntRange(0, 65535), default=0, help="0: a free port.")
@public_url_option
@check_interval_option
@click.option("--product-id", default="gateway-product", show_default=True)
@click.option("--gateway-id", default="gateway-1", show_default=True)
@click.option(
    "--version",
    "initial_version",
    default="1.0.0",
    show_default=True,
    help="The gateway's version when its state folder has none.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the gateway's state here across runs [default: a temporary folder].",
)
@click.option(
    "--auth",
    is_flag=True,
    help="Check JetLinks MQTT credentials at the broker (embedded broker only).",
)
@log_level_option
def up_command(
    broker: str,
    http_port: int,
    public_url: str | None,
    check_interval: float,
    product_id: str,
    gateway_id: str,
    initial_version: str,
    state_dir: Path | None,
    auth: bool,
    log_level: str,
) -> None:
    """Start a broker, the mock platform and the reference gateway together, print where
    they are, and run until Ctrl-C."""
    setup_logging(log_level)
    config = SystemConfig(
        broker=broker,
        product_id=product_id,
        gateway_id=gateway_id,
        gateway_version=initial_version,
        platform=PlatformConfig(check_interval=check_interval),
        http_port=http_port,
        public_url=public_url,
        auth=auth,
        state_dir=state_dir,
    )

    async def main(stop: asyncio.Event) -> None:
        system = OtaSystem(config)
        try:
            await system.start()
        except (BrokerUnavailable, ConnectionError, OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        try:
            assert system.broker and system.platform_server and system.gateway
            say(f"broker     {system.broker.url} ({system.broker.kind})")
            say(f"platform   {system.platform_server.url}")
            say(f"product    {product_id}")
            say(f"gateway    {gateway_id} version {system.gateway.version}")
            if system.secret:
                say(f"secureId   {system.secret.secure_id}")
                say(f"secureKey  {system.secret.secure_key}")
            say(
                f"push with  ota-hil push FIRMWARE.bin --platform {system.platform_server.url} "
                f"--product-id {product_id} --device {gateway_id} --version VERSION"
            )
            await stop.wait()
        finally:
            await system.stop()

    serve(main)
