"""What the scenarios run against: the simulated fleet, a rig of real (or virtual) nodes
behind a coordinator board, or an external gateway on the harness's broker.

The feature files are the same on every target; a step that needs what a target lacks
skips the scenario with a reason that says so.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.gateway.nodes import NodeUpgrader
from harness.platform import PlatformConfig
from harness.protocol import DeviceSecret
from harness.pytest_plugin import Ota
from harness.system import SystemConfig
from harness.trace import TraceRecorder
from rigs.console import Console
from rigs.link import SerialNodeLink
from rigs.power import NoPowerControl, PowerError, PowerSwitch
from rigs.processes import ChildProcess, ProcessError, start_gateway_command, start_virtual_board
from rigs.rigfile import Rig, read_certificate
from rigs.serial_link import SerialLink
from sims.attach import AttachedFleet, attach_fleet
from sims.fleetfile import FaultSpec, FleetSpec

#: Fleets of one scenario under seeds n and n+1 are this far apart (seed 0 keeps the
#: seeds the scenarios were written with).
SEED_STRIDE = 1_000_003


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
    consoles (one log per port per test) and the nodes a scenario powered off."""

    rig: Rig
    link: SerialNodeLink
    board: ChildProcess | None = None
    consoles: dict[str, Console] = field(default_factory=dict)
    powered_off: set[str] = field(default_factory=set)

    def close(self) -> None:
        """Power back on what the scenario switched off, then release the ports."""
        for node in sorted(self.powered_off):
            try:
                PowerSwitch.for_node(self.rig, node).on()
            except PowerError as exc:
                pytest.fail(f"could not power {node} back on after the scenario: {exc}")
        self.powered_off.clear()
        for console in self.consoles.values():
            console.close()
        self.link.close()
        if self.board is not None:
            self.board.stop(grace=5)


class Target:
    """One target for one scenario: builds the system's config, then what the system alone
    does not give (a rig's nodes, an external gateway process).

    ``kind`` and ``rig`` come checked from the plugin (:func:`rigs.rigfile.target_problem`).
    ``say`` reaches the terminal, for what a person at a bench must do.
    """

    def __init__(
        self,
        kind: str,
        rig: Rig | None,
        log_dir: Path,
        say: Callable[[str], None] = print,
        seed: int = 0,
    ) -> None:
        self.kind = kind
        self.rig = rig
        self.log_dir = log_dir
        self.say = say
        self.seed = seed
        #: The scenario's trace (set by :meth:`start`); faults are recorded in it.
        self.trace: TraceRecorder | None = None
        self.fleet: NodeFleet | None = None
        self._rig_nodes: RigNodes | None = None
        self._gateway: ChildProcess | None = None
        self._state: tempfile.TemporaryDirectory[str] | None = None

    def check_needs(self, node: pytest.Item) -> None:
        """Skip a scenario whose feature tags (``@needs_nodes``, ``@needs_sim``,
        ``@needs_in_process_gateway``) ask for what this target lacks, before anything
        is started for it."""
        if node.get_closest_marker("needs_sim"):
            self.require_sim("the scenario")
        if node.get_closest_marker("needs_nodes") and self.kind == "external":
            skip("target external has no nodes behind the harness's control")
        if node.get_closest_marker("needs_in_process_gateway"):
            self.require_in_process_gateway("the scenario")

    # -- the system ------------------------------------------------------------------------

    def config(self, broker: str, check_interval: float) -> SystemConfig:
        """The system for this target: on a rig, the rig file's ids, listening addresses
        and credentials (checked by the broker when given)."""
        platform = PlatformConfig(check_interval=check_interval)
        if self.rig is None:
            return SystemConfig(broker=broker, platform=platform)
        gw = self.rig.gateway
        secret = (
            DeviceSecret(gw.secure_id, gw.secure_key)
            if gw.secure_id is not None and gw.secure_key is not None
            else None
        )
        if secret is not None and broker != "embedded":
            skip(
                f"rig {self.rig.name} gives gateway credentials; only the embedded broker "
                f"checks them (this run's broker: {broker})"
            )
        return SystemConfig(
            broker=broker,
            broker_host=self.rig.broker.host,
            broker_port=self.rig.broker.port,
            product_id=gw.product_id,
            gateway_id=gw.device_id,
            http_host=self.rig.platform.host,
            http_port=self.rig.platform.port,
            public_url=self.rig.platform.public_url,
            auth=secret is not None,
            secret=secret,
            start_gateway=self.kind != "external",
            platform=platform,
        )

    def start(self, ota: Ota) -> None:
        self.trace = ota.trace
        if self.kind == "external":
            self._start_external(ota)

    def stop(self, ota: Ota) -> None:
        try:
            if self._rig_nodes is not None:
                # The gateway drives the link: stop it before the port goes away.
                ota.run(ota.system.stop_gateway(), timeout=30)
                self._rig_nodes.close()
        finally:
            if self._gateway is not None:
                self._gateway.stop()
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
            self._gateway.stop()
            self._gateway = None
        else:
            skip("the external gateway was not started by the harness: it cannot be stopped")

    def _start_external(self, ota: Ota) -> None:
        """Start the rig's gateway command (or ask for the gateway at the bench), then wait
        for its first firmware report."""
        assert self.rig is not None and ota.system.broker is not None
        gw = self.rig.gateway
        broker = str(ota.system.broker.url)
        if gw.command is not None:
            self._state = tempfile.TemporaryDirectory(prefix="ota-hil-external-")
            self._gateway = start_gateway_command(
                gw.command_for(broker, self._state.name), self.log_dir / "external-gateway.log"
            )
        else:
            self.say(
                f"waiting up to {gw.online_timeout:g} s for gateway {gw.device_id} "
                f"(product {gw.product_id}) to connect to {broker} and report its firmware"
            )
        registry = ota.system.platform_server.platform.registry  # type: ignore[union-attr]
        gateway = self._gateway

        async def online() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + gw.online_timeout
            while registry.get(gw.device_id).firmware_version is None:  # type: ignore[union-attr]
                if gateway is not None and not gateway.running:
                    raise AssertionError(
                        f"the external gateway exited with {gateway.returncode}; "
                        f"see {gateway.log_path}"
                    )
                if loop.time() > deadline:
                    log = f"; see {gateway.log_path}" if gateway is not None else ""
                    raise AssertionError(
                        f"gateway {gw.device_id} did not report its firmware at {broker} "
                        f"within {gw.online_timeout:g} s{log}"
                    )
                await asyncio.sleep(0.05)

        ota.run(online(), timeout=gw.online_timeout + 10)

    # -- the nodes -------------------------------------------------------------------------

    def fleet_for(
        self, ota: Ota, nodes: int, radio: str, loss: float | None, burst: float | None
    ) -> NodeFleet:
        """The nodes of a scenario: on sim, a fleet built to order; on a rig, the rig's own
        nodes, whose count and link are what they are. A scenario that sets the loss runs
        on a rig only when the rig's radio has that loss (a virtual board's setting; a
        real radio counts as lossless with no bursts)."""
        if self.kind == "external":
            skip("target external has no nodes behind the harness's control")
        if self.kind == "sim":
            loss = 0.0 if loss is None else loss
            burst = 1.0 if burst is None else burst
            seed = nodes + int(100 * loss) + SEED_STRIDE * self.seed
            spec = FleetSpec(nodes=nodes, radio=radio, loss=loss, burst=burst, seed=seed)
            return self.sim_fleet(ota, spec)
        rig = self.rig
        assert rig is not None
        if radio != rig.radio:
            skip(f"the scenario needs {radio} nodes; rig {rig.name} has {rig.radio}")
        if not rig.nodes:
            skip(f"rig {rig.name} has no nodes")
        if loss is not None:
            has = (rig.virtual.loss, rig.virtual.burst) if rig.virtual else (0.0, 1.0)
            if (loss, burst) != has:
                skip(
                    f"the scenario sets {loss:.0%} loss and burst {burst:g}; the radio of rig "
                    f"{rig.name} has {has[0]:.0%} and {has[1]:g}"
                    + ("" if rig.virtual else " (a real radio's loss is what it is)")
                )
        self.fleet = self._attach_rig(ota)
        return self.fleet

    def sim_fleet(self, ota: Ota, spec: FleetSpec) -> NodeFleet:
        """A simulated fleet built from ``spec`` as it is (its seed included)."""
        self.require_sim("a simulated fleet")
        attached = ota.run(attach_fleet(ota.system, spec))
        self.fleet = NodeFleet(
            list(attached.fleet.ids), attached.product_id, attached.upgrader, sim=attached
        )
        return self.fleet

    def _attach_rig(self, ota: Ota) -> NodeFleet:
        rig = self.rig
        assert rig is not None and rig.coordinator is not None
        board = None
        port = rig.coordinator.port
        ca = rig.ca_public_key()
        if rig.virtual is not None:
            try:
                board, port, ca = start_virtual_board(rig, self.log_dir / "virtual-board.log")
            except ProcessError as exc:
                pytest.fail(str(exc), pytrace=False)
        assert ca is not None, "target_problem() lets no rig with nodes and no CA through"
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
            await link.open(reset=rig.coordinator.reset)
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
        control can do (offline = powered off, and back on after the scenario)."""
        assert self.fleet is not None
        if self.trace is not None:
            self.trace.fault(node, fault)
        if self.fleet.sim is not None:
            self.fleet.sim.fleet.set_faults(node, spec)
            return
        assert self.rig is not None and self.fleet.rig is not None
        if spec != FaultSpec(offline=True):
            skip(f"'{fault}' needs fault injection that rig {self.rig.name} does not have")
        try:
            PowerSwitch.for_node(self.rig, node).off()
        except NoPowerControl as exc:
            skip(f"'{fault}': {exc}")
        except PowerError as exc:
            pytest.fail(str(exc), pytrace=False)
        self.fleet.rig.powered_off.add(node)

    def require_sim(self, why: str) -> None:
        if self.kind != "sim":
            skip(f"{why} needs the simulated fleet (target {self.kind})")
