"""``ota-hil broker``: a standalone embedded broker for manual runs and benchmarks."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click

from .base import BrokerUnavailable
from .embedded import EmbeddedBroker

_LOG_LEVELS = ("debug", "info", "warning", "error")


async def _serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with EmbeddedBroker(host, port) as broker:
        click.echo(f"broker listening on {broker.url}")
        sys.stdout.flush()
        await stop.wait()


@click.command("broker")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="TCP port to listen on; 0 or omitted picks a free one (printed at start).",
)
@click.option(
    "--log-level",
    type=click.Choice(_LOG_LEVELS, case_sensitive=False),
    default="warning",
    show_default=True,
    help="Threshold for log lines on stderr.",
)
def broker_command(host: str, port: int, log_level: str) -> None:
    """Run an embedded MQTT 3.1.1 broker (amqtt) until Ctrl-C or SIGTERM.

    Prints one line, "broker listening on mqtt://HOST:PORT", once clients can
    connect; point gateways, simulators or benchmarks at that URL. Anonymous
    clients are allowed. Exits 0 after a clean shutdown.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # amqtt's state machine library narrates every transition at INFO.
    logging.getLogger("transitions").setLevel(max(logging.WARNING, logging.root.level))
    try:
        asyncio.run(_serve(host, port))
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
