"""Checkpoints on the simulated radio (``SimNodeLink.at``), with a fleet behind a running
system: hooks run at exact simulated times, in order, while simulated time stands still;
a late one runs when the session ends; a failing one fails the upgrade instead of hanging.
And the same fleet seed gives the same frames."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from harness.client import PlatformClient
from harness.nodeproto.frames import FrameError, decode_frame
from harness.platform import PlatformConfig
from harness.system import OtaSystem, SystemConfig
from sims.attach import AttachedFleet, attach_fleet
from sims.fleetfile import FleetSpec
from sims.link import SimNodeLink

#: 8 KiB on the 324 radio: a session of about 6 s of radio time for five nodes.
IMAGE = bytes((i * 37 + 11) & 0xFF for i in range(8 * 1024))
#: A smaller image where the session's length does not matter.
SMALL = IMAGE[: 3 * 1024]
FINAL = ("success", "failed")


@dataclass
class Frame:
    vt: float
    dir: str
    kind: str
    size: int
    heard: int
    session: int | None
    #: A broadcast (``heard`` counts nodes) rather than a frame to or from one node.
    to_all: bool = False


@dataclass
class FrameTap:
    """Every frame the driver puts on air (or hears), as a trace would see it."""

    frames: list[Frame] = field(default_factory=list)

    def _add(self, vt: float, direction: str, raw: bytes, heard: int, to_all: bool = False) -> None:
        try:
            frame = decode_frame(raw)
            kind, session = frame.kind.name, frame.session
        except FrameError:
            kind, session = "UNKNOWN", None
        self.frames.append(Frame(vt, direction, kind, len(raw), heard, session, to_all))

    def broadcast(self, vt: float, raw: bytes, heard: np.ndarray) -> None:
        self._add(vt, "down", raw, int(heard.size), to_all=True)

    def unicast(self, vt: float, raw: bytes, to: str, heard: bool) -> None:
        self._add(vt, "down", raw, int(heard))

    def uplink(self, vt: float, node: str, raw: bytes, lost: bool) -> None:
        self._add(vt, "up", raw, int(not lost))


@dataclass
class Rig:
    system: OtaSystem
    attached: AttachedFleet
    tap: FrameTap

    @property
    def client(self) -> PlatformClient:
        assert self.system.client is not None
        return self.system.client

    @property
    def link(self) -> SimNodeLink:
        return self.attached.link

    def now(self) -> float:
        """Simulated seconds since the first session began."""
        assert self.link.origin is not None
        return self.link.driver.env.now - self.link.origin

    async def push(self, version: str, image: bytes = IMAGE) -> list[dict[str, Any]]:
        """Push ``image`` to every node (as the fleet steps do); return the final records."""
        fw = await self.client.upload_firmware(image, self.attached.product_id, version)
        task = await self.client.create_task(
            fw["id"], name=f"nodes {version}", mode="push", timeoutSeconds=300
        )
        await self.client.deploy(task["id"])
        await self.client.check_now()
        async with asyncio.timeout(15):
            while True:
                records = await self.client.records(taskId=task["id"])
                if len(records) == self.attached.fleet.spec.nodes and all(
                    r["state"] in FINAL for r in records
                ):
                    return records
                await asyncio.sleep(0.05)


async def start_rig(spec: FleetSpec) -> tuple[OtaSystem, Rig]:
    system = OtaSystem(SystemConfig(platform=PlatformConfig(check_interval=0.1)))
    await system.start()
    try:
        attached = await attach_fleet(system, spec, batch_window=0.15)
    except BaseException:
        await system.stop()
        raise
    tap = FrameTap()
    attached.link.driver.tap = tap
    return system, Rig(system, attached, tap)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    system, running = await start_rig(FleetSpec(nodes=5, radio="324", loss=0.0, seed=1))
    try:
        yield running
    finally:
        await system.stop()


async def test_hooks_run_at_their_simulated_times_in_order(rig: Rig) -> None:
    seen: list[tuple[str, float, int]] = []

    def hook(name: str) -> Any:
        async def run() -> None:
            seen.append((name, rig.now(), len(rig.tap.frames)))

        return run

    three = rig.link.at(3.0, hook("three"), "at 3 s")  # registered first, runs second
    one = rig.link.at(1.0, hook("one"), "at 1 s")
    records = await rig.push("2.0.0")

    assert {r["state"] for r in records} == {"success"}
    assert (one.ran_at, three.ran_at) == (1.0, 3.0)
    assert [(name, at) for name, at, _ in seen] == [("one", 1.0), ("three", 3.0)]
    duration = rig.attached.upgrader.sessions[0].metrics.duration
    assert duration > 4.0  # both fell inside the session
    assert rig.link.origin is not None
    for name, at, count in seen:
        before = [f for f in rig.tap.frames[:count] if f.dir == "down"]
        after = [f for f in rig.tap.frames[count:] if f.dir == "down"]
        assert before and after, name
        # What went on air before the hook is what went on air by its time.
        assert max(f.vt for f in before) - rig.link.origin <= at
        assert min(f.vt for f in after) - rig.link.origin >= at


async def test_simulated_time_stands_still_while_a_hook_awaits(rig: Rig) -> None:
    times: list[tuple[float, float, int, int]] = []

    async def slow() -> None:
        before, frames = rig.now(), len(rig.tap.frames)
        await asyncio.sleep(0.2)  # the hook's own work: wall time the radio must not see
        times.append((before, rig.now(), frames, len(rig.tap.frames)))

    rig.link.at(1.0, slow, "slow hook")
    records = await rig.push("2.0.0")
    assert {r["state"] for r in records} == {"success"}
    assert times == [(1.0, 1.0, times[0][2], times[0][2])]
    assert times[0][2] > 0


async def test_a_checkpoint_beyond_the_session_runs_when_it_ends(rig: Rig) -> None:
    ran: list[float] = []

    async def late() -> None:
        ran.append(rig.now())

    checkpoint = rig.link.at(10_000.0, late, "far away")
    records = await rig.push("2.0.0")
    assert {r["state"] for r in records} == {"success"}
    duration = rig.attached.upgrader.sessions[0].metrics.duration
    assert len(ran) == 1
    assert checkpoint.ran_at == ran[0]
    assert duration <= ran[0] < 10_000.0
    assert rig.tap.frames and all(f.vt - rig.link.origin <= ran[0] for f in rig.tap.frames)


async def test_a_negative_time_is_refused(rig: Rig) -> None:
    async def hook() -> None:
        raise AssertionError("never runs")

    with pytest.raises(ValueError, match=r"-0\.5 s"):
        rig.link.at(-0.5, hook, "before the start")
    assert rig.link.checkpoints == []
    assert rig.link.at(0.0, hook, "at the start").at == 0.0


async def test_a_hook_that_raises_fails_the_upgrade(rig: Rig) -> None:
    async def broken() -> None:
        raise RuntimeError("hook broke")

    checkpoint = rig.link.at(1.0, broken, "broken hook")
    async with asyncio.timeout(10):  # the records end: nothing hangs
        records = await rig.push("2.0.0")
    assert checkpoint.ran_at == 1.0
    assert {r["state"] for r in records} == {"failed"}
    assert all("broken hook failed: hook broke" in r["errorReason"] for r in records), [
        r["errorReason"] for r in records
    ]


async def test_after_a_failed_hook_the_next_push_runs_cleanly(rig: Rig) -> None:
    async def broken() -> None:
        raise RuntimeError("hook broke")

    rig.link.at(1.0, broken, "broken hook")
    async with asyncio.timeout(10):
        await rig.push("2.0.0", SMALL)
    rig.tap.frames.clear()
    async with asyncio.timeout(10):
        records = await rig.push("3.0.0", SMALL)
    second = rig.attached.upgrader.sessions[-1].plan.session_id
    assert {f.session for f in rig.tap.frames if f.dir == "down"} == {second}
    assert {r["state"] for r in records} == {"success"}


async def frames_of(spec: FleetSpec) -> list[Frame]:
    system, rig = await start_rig(spec)
    try:
        records = await rig.push("2.0.0", SMALL)
        assert {r["state"] for r in records} == {"success"}
        return rig.tap.frames
    finally:
        await system.stop()


async def test_the_same_fleet_seed_gives_the_same_frames() -> None:
    spec = FleetSpec(nodes=5, radio="324", loss=0.15, seed=3)
    first, again = await frames_of(spec), await frames_of(spec)
    other = await frames_of(spec.model_copy(update={"seed": 4}))

    def shape(frames: list[Frame]) -> list[tuple[str, str, int, int, float]]:
        return [(f.dir, f.kind, f.size, f.heard, round(f.vt, 6)) for f in frames]

    assert len(first) > 100
    assert {f.kind for f in first} >= {"ANNOUNCE", "BLOCK"}
    assert any(f.heard < 5 for f in first if f.to_all)  # the loss is at work
    assert shape(first) == shape(again)
    assert shape(first) != shape(other)
