"""The ``ota-hil`` command."""

from __future__ import annotations

import click

from .. import __version__
from .board import board_command
from .broker import broker_command
from .certs import certs_command
from .field import import_command, replay_command, reproduce_command
from .package import package_command
from .push import push_command
from .report import report_command
from .run import run_command
from .services import gateway_command, platform_command, up_command
from .sim import sim_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ota-hil")
def main() -> None:
    """ota-hil: hardware-in-the-loop harness for IoT gateway firmware upgrades.

    Start everything with `ota-hil up`, push a firmware with `ota-hil push`, run the
    scenarios with `ota-hil run`.
    """


for command in (
    up_command,
    push_command,
    run_command,
    platform_command,
    gateway_command,
    broker_command,
    sim_command,
    certs_command,
    board_command,
    package_command,
    report_command,
    reproduce_command,
    replay_command,
    import_command,
):
    main.add_command(command)
