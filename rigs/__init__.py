"""Rigs: the upgrade flow against real boards on serial ports, and against a real gateway.

- :mod:`rigs.rigfile`: rig files (YAML) a lab engineer writes: coordinator, nodes, CA,
  gateway mode (``load_rig``).
- :mod:`rigs.power`: a node's power switch commands and a board reset over DTR/RTS.
- :mod:`rigs.console`: serial consoles with a log file per port per test and
  expect-style waits that never block forever.
- :mod:`rigs.lock`: one job at a time on a rig.
- :mod:`rigs.serial_link`: the host end of a coordinator's UART (docs/host-protocol.md).
- :mod:`rigs.link`: the rig's nodes as the gateway's ``NodeLink``, on the wall clock.
- :mod:`rigs.processes`: the virtual board and an external gateway's command, started
  beside the harness, read within deadlines and stopped with their process groups.

rigs/ implements the harness's ``NodeLink`` and never imports sims/. See docs/rigs.md.
"""

from .console import Console, ConsoleError, ConsoleLost, ConsoleTimeout
from .link import SerialNodeLink
from .lock import RigBusy, RigLock, default_owner
from .power import NoPowerControl, PowerError, PowerSwitch, reset_board
from .rigfile import (
    RADIOS,
    ConsoleSpec,
    CoordinatorSpec,
    Endpoint,
    GatewaySpec,
    NodeSpec,
    PlatformSpec,
    PowerSpec,
    RadioTimings,
    Rig,
    RigFileError,
    load_rig,
)
from .serial_link import LinkError, SerialLink

__all__ = [
    "RADIOS",
    "Console",
    "ConsoleError",
    "ConsoleLost",
    "ConsoleSpec",
    "ConsoleTimeout",
    "CoordinatorSpec",
    "Endpoint",
    "GatewaySpec",
    "LinkError",
    "NoPowerControl",
    "NodeSpec",
    "PlatformSpec",
    "PowerError",
    "PowerSpec",
    "PowerSwitch",
    "RadioTimings",
    "Rig",
    "RigBusy",
    "RigFileError",
    "RigLock",
    "SerialLink",
    "SerialNodeLink",
    "default_owner",
    "load_rig",
    "reset_board",
]
