"""``ota-hil virtual-board``: a simulated coordinator board and fleet behind a serial port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from .common import log_level_option, say, serve, setup_logging


@click.command("virtual-board")
@click.option(
    "--fleet",
    "fleet_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A fleet file (YAML); else the options below.",
)
@click.option("--radio", type=click.Choice(["324", "ble"]), default="324", show_default=True)
@click.option("--nodes", type=click.IntRange(1, 10_000), default=6, show_default=True)
@click.option("--loss", type=click.FloatRange(0, 0.95), default=0.0, show_default=True)
@click.option("--burst", type=click.FloatRange(min=1), default=1.0, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--speed",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Simulated seconds per wall-clock second (airtime, turnaround, apply).",
)
@click.option(
    "--tcp",
    "tcp_port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve on this TCP port (socket://, as ser2net) instead of a pty; 0: free.",
)
@click.option(
    "--ca-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the fleet's manufacturer CA public key (hex) here, for a rig file.",
)
@log_level_option
def board_command(
    fleet_file: Path | None,
    radio: str,
    nodes: int,
    loss: float,
    burst: float,
    seed: int,
    speed: float,
    tcp_port: int | None,
    ca_out: Path | None,
    log_level: str,
) -> None:
    """Emulate a radio coordinator board and its simulated nodes on the wall clock.

    Prints the port to open ("port /dev/pts/N" or "port socket://127.0.0.1:P") and the
    CA's public key, then serves until Ctrl-C. Node i has radio address i and id
    node-000i (as in a fleet file). Point a rig file's coordinator.port at the port.
    """
    from sims.fleet import SimFleet
    from sims.fleetfile import FleetFileError, FleetSpec, load_fleet
    from sims.virtual_board import VirtualBoard

    setup_logging(log_level)
    try:
        spec = (
            load_fleet(fleet_file)
            if fleet_file
            else FleetSpec(radio=radio, nodes=nodes, loss=loss, burst=burst, seed=seed)
        )
    except (FleetFileError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    fleet = SimFleet(spec)
    if ca_out is not None:
        ca_out.write_text(fleet.ca.public_key.hex() + "\n")

    async def main(stop: asyncio.Event) -> None:
        board = VirtualBoard(fleet, speed=speed)
        port = await (board.serve_tcp(port=tcp_port) if tcp_port is not None else board.serve_pty())
        say(f"port       {port}")
        say(f"ca         {fleet.ca.public_key.hex()}")
        say(f"nodes      {len(fleet)} {spec.radio} nodes, {spec.loss:.0%} loss, speed {speed:g}x")
        await stop.wait()

    serve(main)
