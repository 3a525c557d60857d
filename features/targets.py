"""What the scenarios run against: the simulated fleet, a rig of real (or virtual) nodes
behind a coordinator board, or an external gateway on the harness's broker.

The feature files are the same on every target; a step that needs what a target lacks
skips the scenario with a reason that says so.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.gateway.nodes import NodeUpgrader
from harness.platform import PlatformConfig
from harness.pytest_plugin import Ota
from harness.system import SystemConfig
from rigs.console import Console
from rigs.link import SerialNodeLink
from rigs.lock import RigLock
from rigs.power import PowerError, PowerSwitch
from rigs.rigfile import Rig, load_rig, read_certificate
from rigs.serial_link import SerialLink
from sims.attach import AttachedFleet, attach_fleet
from sims.fleetfile import FaultSpec, FleetSpec

TARGETS = ("sim", "rig", "external")


def skip(reason: str) -> None:
    pytest.skip(reason)


@dataclass
class NodeFleet:
    """The nodes a scenario upgrades, whatever they are: ids, their product at the
    platform, the gateway's upgrader for them, and how to read their versions."""

    ids: list[str]
    product_id: str
    upgrader: NodeUpgrader
    sim: AttachedFleet | None = None
    rig: RigNodes | None = None

    def versions(self, ota: Ota) -> dict[str, str | None]:
        if self.sim is not None:
            return dict(self.sim.fleet.versions())
        assert self.rig is not None
        return ota.run(self.rig.link.inventory(), timeout=60)

    def node(self, index: int) -> str:
        if index >= len(self.ids):
            skip(f"the scenario names node {index}; this target has {len(self.ids)} nodes")
        return self.ids[index]


@dataclass
class RigNodes:
    """A rig's nodes behind its coordinator, attached to the reference gateway, with their
    consoles (one log per port per test)."""

    rig: Rig
    link: SerialNodeLink
    board: subprocess.Popen[str] | None = None
    consoles: dict[str, Console] = field(default_factory=dict)

    def close(self) -> None:
        for console in self.consoles.values():
            console.close()
        self.link.close()
        if self.board is not None:
            self.board.terminate()
            try:
                self.board.wait(5)
            except subprocess.TimeoutExpired:
                self.board.kill()


class Target:
    """One target for one scenario: builds the system's config, then what the system alone
    does not give (a rig's nodes, an external gateway process)."""

    def __init__(self, kind: str, rig: Rig | None, log_dir: Path) -> None:
        if kind not in TARGETS:
            raise pytest.UsageError(f"--target must be one of {', '.join(TARGETS)}")
        if kind != "sim" and rig is None:
            raise pytest.UsageError(f"--target {kind} needs --rig FILE")
        if kind == "rig" and rig is not None and rig.gateway.mode != "reference":
            raise pytest.UsageError(f"{rig.path}: --target rig needs gateway.mode reference")
        if kind == "external" and rig is not None and rig.gateway.mode != "external":
            raise pytest.UsageError(f"{rig.path}: --target external needs gateway.mode external")
        self.kind = kind
        self.rig = rig
        self.log_dir = log_dir
        self.fleet: NodeFleet | None = None
        self._rig_nodes: RigNodes | None = None
        self._gateway: subprocess.Popen[str] | None = None
        self._state: tempfile.TemporaryDirectory[str] | None = None

    # -- the system ------------------------------------------------------------------------

    def config(self, broker: str, check_interval: float) -> SystemConfig:
        platform = PlatformConfig(check_interval=check_interval)
        if self.rig is None:
            return SystemConfig(broker=broker, platform=platform)
        gw = self.rig.gateway
        return SystemConfig(
            broker=broker,
            product_id=gw.product_id,
            gateway_id=gw.device_id,
            http_host=self.rig.platform.host,
            http_port=self.rig.platform.port,
            public_url=self.rig.platform.public_url,
            start_gateway=self.kind != "external",
            platform=platform,
        )

    def start(self, ota: Ota) -> None:
        if self.kind == "external":
            self._start_external(ota)

    def stop(self, ota: Ota) -> None:
        if self._rig_nodes is not None:
            self._rig_nodes.close()
        if self._gateway is not None:
            self._stop_process(self._gateway)
        if self._state is not None:
            self._state.cleanup()

    # -- the gateway -----------------------------------------------------------------------

    @property
    def in_process(self) -> bool:
        return self.kind != "external"

    def require_in_process_gateway(self, why: str) -> None:
        if not self.in_process:
            skip(f"{why} needs the reference gateway in this process (target {self.kind})")

    def gateway_version(self, ota: Ota) -> str:
        if self.in_process:
            assert ota.system.gateway is not None, "the reference gateway is not running"
            return ota.system.gateway.version
        return ota.run(ota.client.read_version(ota.system.config.gateway_id, timeout=10))

    def take_gateway_offline(self, ota: Ota) -> None:
        if self.in_process:
            ota.run(ota.system.stop_gateway())
        elif self._gateway is not None:
            self._stop_process(self._gateway)
            self._gateway = None
        else:
            skip("the external gateway was not started by the harness: it cannot be stopped")

    def _start_external(self, ota: Ota) -> None:
        assert self.rig is not None and ota.system.broker is not None
        gw = self.rig.gateway
        registry = ota.system.platform_server.platform.registry  # type: ignore[union-attr]
        if gw.command is None:
            return  # a real gateway connects by itself; the scenario waits for its report
        self._state = tempfile.TemporaryDirectory(prefix="ota-hil-external-")
        command = gw.command_for(str(ota.system.broker.url), self._state.name)
        log = (self.log_dir / "external-gateway.log").open("w", encoding="utf-8")
        self._gateway = subprocess.Popen(
            _with_this_python(command),
            shell=True,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

        async def online() -> None:
            async with asyncio.timeout(30):
                while registry.get(gw.device_id).firmware_version is None:  # type: ignore[union-attr]
                    if self._gateway is not None and self._gateway.poll() is not None:
                        raise RuntimeError(
                            f"the external gateway exited with {self._gateway.returncode}; "
                            f"see {self.log_dir / 'external-gateway.log'}"
                        )
                    await asyncio.sleep(0.05)

        ota.run(online(), timeout=40)

    @staticmethod
    def _stop_process(process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait(5)

    # -- the nodes -------------------------------------------------------------------------

    def fleet_for(self, ota: Ota, nodes: int, radio: str, loss: float, burst: float) -> NodeFleet:
        """The nodes of a scenario: on sim, a fleet built to order; on a rig, the rig's own
        nodes (their count and link are what they are)."""
        if self.kind == "external":
            skip("target external has no nodes behind the harness's control")
        if self.kind == "sim":
            spec = FleetSpec(
                nodes=nodes, radio=radio, loss=loss, burst=burst, seed=nodes + int(100 * loss)
            )
            attached = ota.run(attach_fleet(ota.system, spec))
            self.fleet = NodeFleet(
                list(attached.fleet.ids), attached.product_id, attached.upgrader, sim=attached
            )
            return self.fleet
        assert self.rig is not None
        if radio != self.rig.radio:
            skip(f"the scenario needs {radio} nodes; rig {self.rig.name} has {self.rig.radio}")
        self.fleet = self._attach_rig(ota)
        return self.fleet

    def _attach_rig(self, ota: Ota) -> NodeFleet:
        rig = self.rig
        assert rig is not None and rig.coordinator is not None
        board = None
        port = rig.coordinator.port
        ca = rig.ca_public_key() if rig.ca is not None else None
        if rig.virtual is not None:
            board, port, ca = _start_virtual_board(rig, self.log_dir)
        if ca is None:
            raise pytest.UsageError(f"{rig.path}: ca is needed to trust the nodes' certificates")
        link = SerialNodeLink(
            SerialLink(port, rig.coordinator.baud, log_path=self.log_dir / "coordinator.log"),
            {n.id: n.address for n in rig.nodes},
            rig.max_frame,
            status_timeout=3 * rig.response_timeout,
        )
        nodes = RigNodes(rig, link, board)
        self._rig_nodes = nodes
        for node in rig.nodes:
            if node.console is not None:
                nodes.consoles[node.id] = Console(
                    node.console.port,
                    node.console.baud,
                    self.log_dir / f"console-{node.id}.log",
                    node.id,
                )
        kind = f"node-{rig.radio}"
        registry = ota.system.platform_server.platform.registry  # type: ignore[union-attr]
        registry.add_product(kind, f"{rig.radio} node")
        for node in rig.nodes:
            registry.add_device(node.id, kind, parent_id=ota.system.config.gateway_id)
        gateway = ota.system.gateway
        assert gateway is not None
        certificates = {
            n.id: read_certificate(n.certificate) for n in rig.nodes if n.certificate is not None
        }

        async def attach() -> NodeUpgrader:
            link.open()
            if rig.coordinator.reset != "none":
                link.link.reset_board(rig.coordinator.reset)
            upgrader = NodeUpgrader(
                kind,
                link,
                gateway.state,
                ca,
                response_timeout=rig.response_timeout,
                session_options={"apply_time": rig.apply_time, "pass_interval": rig.pass_interval},
            )
            upgrader.certificates.update(certificates)
            gateway.attach(upgrader, await link.inventory())
            return upgrader

        upgrader = ota.run(attach(), timeout=60)
        return NodeFleet([n.id for n in rig.nodes], kind, upgrader, rig=nodes)

    def fault(self, node: str, fault: str, spec: FaultSpec) -> None:
        """Inject ``fault`` into ``node``: any fault on sim; on a rig only what its power
        control can do (offline = powered off)."""
        assert self.fleet is not None
        if self.fleet.sim is not None:
            self.fleet.sim.fleet.set_faults(node, spec)
            return
        assert self.rig is not None
        if spec != FaultSpec(offline=True):
            skip(f"'{fault}' needs fault injection that rig {self.rig.name} does not have")
        power = self.rig.node(node).power
        if power is None:
            skip(f"'{fault}' needs power control of {node}; rig {self.rig.name} has none")
        try:
            PowerSwitch(power, node).off()
        except PowerError as exc:
            pytest.fail(str(exc), pytrace=False)

    def require_sim(self, why: str) -> None:
        if self.kind != "sim":
            skip(f"{why} needs the simulated fleet (target {self.kind})")


def _with_this_python(command: str) -> str:
    """Run ``ota-hil`` as this interpreter's (a venv's console script may not be on PATH)."""
    ota = shlex.quote(sys.executable) + " -m harness.cli"
    return re.sub(r"^ota-hil\b", ota, command)


def _start_virtual_board(rig: Rig, log_dir: Path) -> tuple[subprocess.Popen[str], str, bytes]:
    """``ota-hil virtual-board`` for a rig whose coordinator is virtual: its port and CA."""
    v = rig.virtual
    assert v is not None
    args = [
        sys.executable,
        "-m",
        "harness.cli",
        "virtual-board",
        "--radio",
        rig.radio,
        "--nodes",
        str(len(rig.nodes)),
        "--loss",
        str(v.loss),
        "--burst",
        str(v.burst),
        "--seed",
        str(v.seed),
        "--speed",
        str(v.speed),
        "--log-level",
        "warning",
    ]
    log = (log_dir / "virtual-board.log").open("w", encoding="utf-8")
    board = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
    values: dict[str, str] = {}
    assert board.stdout is not None
    for line in board.stdout:
        key, _, value = line.strip().partition(" ")
        values[key] = value.strip()
        if "port" in values and "ca" in values:
            break
    if "port" not in values or "ca" not in values:
        board.kill()
        raise RuntimeError(f"the virtual board did not start; see {log_dir / 'virtual-board.log'}")
    return board, values["port"], bytes.fromhex(values["ca"])


def load_target(config: pytest.Config) -> tuple[str, Rig | None]:
    kind = config.getoption("--target")
    rig_file = config.getoption("--rig")
    rig = load_rig(rig_file) if rig_file else None
    return kind, rig


def lock_for(rig: Rig | None, owner: str) -> RigLock | None:
    return RigLock(rig.lock_path, owner) if rig is not None else None
