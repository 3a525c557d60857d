"""``ota-hil broker``: a standalone embedded broker for manual runs and benchmarks."""

from __future__ import annotations

import asyncio

import click

from ..broker import BrokerUnavailable, EmbeddedBroker
from .common import log_level_option, say, serve, setup_logging


@click.command("broker")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="TCP port to listen on; 0 or omitted picks a free one (printed at start).",
)
@log_level_option
def broker_command(host: str, port: int, log_level: str) -> None:
    """Run an embedded MQTT 3.1.1 broker (amqtt) until Ctrl-C or SIGTERM.

    Prints one line, "broker listening on mqtt://HOST:PORT", once clients can
    connect; point gateways, simulators or benchmarks at that URL. Anonymous
    clients are allowed. Exits 0 after a clean shutdown.
    """
    setup_logging(log_level)

    async def main(stop: asyncio.Event) -> None:
        async with EmbeddedBroker(host, port) as broker:
            say(f"broker listening on {broker.url}")
            await stop.wait()

    try:
        serve(main)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
