"""A simulated fleet put behind a running system's gateway: its nodes become the gateway's
child devices at the platform, and the gateway upgrades them over the simulated radio."""

from __future__ import annotations

from dataclasses import dataclass

from harness.gateway.nodes import NodeUpgrader
from harness.system import OtaSystem

from .fleet import SimFleet
from .fleetfile import FleetSpec
from .link import SimNodeLink


@dataclass
class AttachedFleet:
    fleet: SimFleet
    link: SimNodeLink
    upgrader: NodeUpgrader
    #: The platform product of the fleet's nodes.
    product_id: str


async def attach_fleet(
    system: OtaSystem, spec: FleetSpec, *, batch_window: float = 0.5
) -> AttachedFleet:
    """Build the fleet of ``spec``, register its nodes at the platform as children of the
    gateway, and give the gateway a node upgrader for them."""
    assert system.platform_server is not None and system.gateway is not None
    fleet = SimFleet(spec)
    link = SimNodeLink(fleet)
    kind = f"node-{spec.kind}"
    if system.gateway.upgraders.get(kind) is not None:
        raise ValueError(f"the gateway already has {kind} nodes: one fleet per node kind")
    registry = system.platform_server.platform.registry
    registry.add_product(kind, f"{spec.kind} node")
    for node_id in fleet.ids:
        registry.add_device(node_id, kind, parent_id=system.config.gateway_id)
    gateway = system.gateway
    upgrader = NodeUpgrader(
        kind,
        link,
        gateway.state,
        fleet.ca.public_key,
        batch_window=batch_window,
        response_timeout=fleet.profile.response_timeout,
        session_options={"apply_time": 2 * fleet.timing.apply_time},
    )
    if system.trace is not None:
        system.trace.fleet(kind, spec.radio, list(fleet.ids), spec)
        for override in spec.overrides:  # faults the fleet is built with are injected too
            if override.faults is not None and override.faults.active:
                faults = override.faults.model_dump(exclude_defaults=True)
                what = ", ".join(f"{name}={value}" for name, value in faults.items())
                system.trace.fault(f"nodes {override.nodes}", what)
        link.driver.tap = system.trace
    gateway.attach(upgrader, await link.inventory())
    return AttachedFleet(fleet, link, upgrader, kind)
