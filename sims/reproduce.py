"""Running a field description: the harness's broker, platform and reference gateway, the
field's fleet behind it, its faults on their schedule, one push, and each node's end.

The scenarios' steps use the same fault functions (:func:`apply_download_fault`,
:func:`schedule_link_fault`), so a scenario emitted from a field file runs the faults the
way ``ota-hil reproduce`` did.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.platform import PlatformConfig
from harness.system import OtaSystem, SystemConfig
from harness.trace import TraceRecorder

from .attach import AttachedFleet, attach_fleet
from .fieldfile import BrokerOutage, DownloadFault, FieldSpec, LinkFault
from .link import Hook

log = logging.getLogger("ota_hil.sims.reproduce")

FINAL = frozenset({"success", "failed", "canceled"})


def seeded_image(seed: int, version: str, size: int) -> bytes:
    """The firmware image of ``size`` bytes a run with ``seed`` pushes: the same bytes each
    run, so two runs' traces (signs, digests) compare."""
    return random.Random(f"{seed}/{version}/{size}").randbytes(size)


# -- faults ----------------------------------------------------------------------------------


def apply_download_fault(system: OtaSystem, fault: DownloadFault, size: int) -> None:
    """Arm the file server: the next ``fault.times`` downloads stall or are cut at
    ``fault.at`` of the ``size``-byte file."""
    assert system.platform_server is not None
    faults = system.platform_server.files.faults
    byte = max(1, int(fault.at * size))
    if fault.download == "stall":
        faults.stall_at_byte, faults.stall_seconds, faults.stall_times = (
            byte,
            fault.seconds,
            fault.times,
        )
    else:
        faults.cut_at_byte, faults.cut_times = byte, fault.times
    if system.trace is not None:
        system.trace.fault("download", fault.describe())


async def _settle(system: OtaSystem) -> None:
    """Wait until what the gateway queued has been acknowledged (when it is connected)."""
    endpoint = system.gateway.mqtt if system.gateway else None
    if endpoint is not None and endpoint.connected.is_set():
        try:
            await endpoint.flush(timeout=5.0)
        except TimeoutError:
            log.warning("the gateway's queue did not drain within 5 s")


async def _reconnected(system: OtaSystem, timeout: float = 30.0) -> None:
    endpoint = system.gateway.mqtt if system.gateway else None
    if endpoint is None:
        return
    try:
        await asyncio.wait_for(endpoint.connected.wait(), timeout)
    except TimeoutError:
        log.warning("the gateway did not reconnect within %g s of the broker coming back", timeout)


async def schedule_link_fault(
    system: OtaSystem, fleet: AttachedFleet, fault: BrokerOutage | LinkFault
) -> None:
    """Put the gateway behind a fault proxy (if it is not yet) and have the fault start and
    end at its times of radio time, as checkpoints of the fleet's link."""
    proxy = await system.gateway_link()

    def traced(hook: Hook, what: str) -> Hook:
        """The hook, and a fault line in the trace at its radio time."""

        async def run() -> None:
            if system.trace is not None:
                link = fleet.link
                now = link.driver.env.now - (link.origin or 0.0)
                system.trace.fault("schedule", what, vt=round(now, 6))
            await hook()

        return run

    if isinstance(fault, BrokerOutage):

        async def begin() -> None:
            await _settle(system)
            await proxy.down()

        async def end() -> None:
            await proxy.up()
            await _reconnected(system)
            await _settle(system)

    else:

        async def begin() -> None:
            await _settle(system)
            if fault.mqtt == "duplicate":
                proxy.duplicate(fault.topic, direction=fault.direction)
            else:
                proxy.reorder(fault.topic, direction=fault.direction)

        async def end() -> None:
            await _settle(system)
            proxy.clear()

    what = fault.describe()
    opening = fleet.link.at(fault.start, traced(begin, f"{what}: start"), f"{what}: start")
    fleet.link.at(fault.end, traced(end, f"{what}: end"), f"{what}: end", closes=opening)


# -- a run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeOutcome:
    node: str
    state: str
    reason: str | None
    version_before: str | None
    version_after: str | None
    #: Blocks the node stored, and how often it lost power.
    blocks: int
    power_cuts: int


@dataclass(frozen=True)
class Snapshot:
    """How far a run is, for a progress display."""

    downloaded: int
    size: int
    blocks_sent: int
    blocks: int
    finished: int
    nodes: int


@dataclass
class Reproduction:
    field: FieldSpec
    outcomes: dict[str, NodeOutcome] = field(default_factory=dict)
    #: Schedule items as they ran: (what, radio seconds or None when it never ran).
    schedule: list[tuple[str, float | None]] = field(default_factory=list)
    seconds: float = 0.0
    radio_seconds: float = 0.0
    #: Some record had not ended when the run's timeout came.
    timed_out: bool = False

    @property
    def failed(self) -> dict[str, NodeOutcome]:
        return {n: o for n, o in self.outcomes.items() if o.state != "success"}

    def differences(self) -> list[str]:
        """Where this run's outcome differs from what the field observed."""
        out = []
        for node, seen in self.field.observed.items():
            got = self.outcomes.get(node)
            if got is None:
                out.append(f"{node}: observed {seen.state}, not in this fleet")
                continue
            if got.state != seen.state:
                out.append(f"{node}: observed {seen.state}, reproduced {got.state}")
            elif seen.reason and seen.reason not in (got.reason or ""):
                out.append(f"{node}: observed reason {seen.reason!r}, reproduced {got.reason!r}")
            if seen.version and got.version_after != seen.version:
                out.append(
                    f"{node}: observed version {seen.version}, reproduced {got.version_after}"
                )
        return out


async def reproduce(
    spec: FieldSpec,
    *,
    broker: str = "embedded",
    trace: TraceRecorder | None = None,
    on_progress: Callable[[Snapshot], None] | None = None,
    timeout: float = 300.0,
) -> Reproduction:
    """Run ``spec`` once and say how each node ended."""
    started = time.monotonic()
    config = SystemConfig(broker=broker, platform=PlatformConfig(check_interval=0.2))
    result = Reproduction(spec)
    async with OtaSystem(config, trace=trace) as system:
        fleet_spec = spec.fleet_spec()
        attached = await attach_fleet(system, fleet_spec)
        before = dict(attached.fleet.versions())
        size = spec.firmware.size_kib * 1024
        for fault in spec.system_faults:
            if isinstance(fault, DownloadFault):
                apply_download_fault(system, fault, size)
            else:
                await schedule_link_fault(system, attached, fault)
        records = await _push_and_wait(system, attached, spec, size, on_progress, timeout)
        result.timed_out = any(r["state"] not in FINAL for r in records.values())
        after = attached.fleet.versions()
        arrays = attached.fleet.arrays
        for row, node in enumerate(attached.fleet.ids):
            record = records.get(node, {})
            result.outcomes[node] = NodeOutcome(
                node,
                record.get("state", "missing"),
                record.get("errorReason"),
                before.get(node),
                after.get(node),
                int(arrays.writes[row]),
                int(arrays.cuts[row]),
            )
        result.schedule = [(c.what, c.ran_at) for c in attached.link.checkpoints]
        env_now = attached.link.driver.env.now
        result.radio_seconds = env_now - (attached.link.origin or 0.0)
        if trace is not None:
            status = "reproduced" if not result.differences() else "differs"
            trace.outcome(
                status,
                {
                    n: {
                        "state": o.state,
                        "reason": o.reason,
                        "progress": records.get(n, {}).get("progress"),
                        "version": spec.firmware.version,
                    }
                    for n, o in result.outcomes.items()
                },
                {n: o.version_after for n, o in result.outcomes.items()},
            )
    result.seconds = time.monotonic() - started
    return result


async def _push_and_wait(
    system: OtaSystem,
    attached: AttachedFleet,
    spec: FieldSpec,
    size: int,
    on_progress: Callable[[Snapshot], None] | None,
    timeout: float,
) -> dict[str, dict[str, Any]]:
    client = system.client
    assert client is not None and system.platform_server is not None
    image = seeded_image(spec.seed, spec.firmware.version, size)
    firmware = await client.upload_firmware(image, attached.product_id, spec.firmware.version)
    task = await client.create_task(
        firmware["id"],
        name=spec.name[:64],
        mode="push",
        timeoutSeconds=int(timeout),
        responseTimeoutSeconds=120,  # as the scenarios' fleet pushes
    )
    await client.deploy(task["id"])
    await client.check_now()
    served = system.platform_server.files.served
    nodes = len(attached.fleet.ids)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        records = {r["deviceId"]: r for r in await client.records(taskId=task["id"])}
        finished = sum(r["state"] in FINAL for r in records.values())
        if on_progress is not None:
            sessions = attached.upgrader.sessions
            metrics = sessions[-1].metrics if sessions else None
            blocks = metrics.blocks if metrics else 0
            on_progress(
                Snapshot(
                    downloaded=min(size, sum(s.sent for s in served)),
                    size=size,
                    blocks_sent=min(blocks, metrics.data_broadcasts) if metrics else 0,
                    blocks=blocks,
                    finished=finished,
                    nodes=nodes,
                )
            )
        if finished == nodes or loop.time() > deadline:
            return records
        await asyncio.sleep(0.1)
