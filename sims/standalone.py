"""A distribution session on its own (no MQTT, no platform): what ``ota-hil sim`` and the
benchmarks run, and what they report."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.gateway.distribution.metrics import SessionMetrics
from harness.gateway.distribution.plan import SessionPlan
from harness.gateway.distribution.session import BroadcastSession
from harness.nodeproto.link import ActionSink, NodeResult

from .bounds import arq_bound, ideal_code_bound
from .driver import FrameTap, SimDriver
from .fleet import SimFleet
from .fleetfile import FleetSpec


@dataclass
class SimRun:
    spec: FleetSpec
    image_size: int
    metrics: SessionMetrics
    results: dict[str, NodeResult]
    arq_bound: float
    ideal_bound: float
    wall_seconds: float
    block_size: int
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def upgraded(self) -> int:
        return sum(r.ok for r in self.results.values())

    @property
    def failures(self) -> dict[str, str]:
        return {n: r.reason or "" for n, r in self.results.items() if not r.ok}

    @property
    def arq_ratio(self) -> float:
        return self.metrics.data_broadcasts / self.arq_bound if self.arq_bound else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "radio": self.spec.radio,
            "nodes": self.spec.nodes,
            "loss": self.spec.loss,
            "burst": self.spec.burst,
            "seed": self.spec.seed,
            "image_size": self.image_size,
            "block_size": self.block_size,
            "upgraded": self.upgraded,
            "failed": len(self.failures),
            "failures": self.failures,
            "arq_bound": round(self.arq_bound, 3),
            "ideal_code_bound": round(self.ideal_bound, 3),
            "data_vs_arq_bound": round(self.arq_ratio, 4),
            "wall_seconds": round(self.wall_seconds, 3),
            "metrics": self.metrics.to_dict(),
        }


def run_standalone(
    spec: FleetSpec,
    image_size: int,
    *,
    version: str = "2.0.0",
    seed: int | None = None,
    on_action: ActionSink | None = None,
    tap: FrameTap | None = None,
) -> SimRun:
    """Build the fleet and push one image of ``image_size`` bytes to every node;
    ``on_action`` sees progress and results, ``tap`` every frame (for a display)."""
    seed = spec.seed if seed is None else seed
    started = time.perf_counter()
    fleet = SimFleet(spec)
    image = np.random.default_rng(seed).bytes(image_size)
    plan = SessionPlan.create(
        image,
        version,
        fleet.ids,
        session_id=1,
        max_frame=fleet.profile.max_frame,
        response_timeout=fleet.profile.response_timeout,
        ca_public_key=fleet.ca.public_key,
        counter=1,
        seed=hashlib.sha256(f"ota-hil sim {seed}".encode()).digest(),
        apply_time=2 * fleet.timing.apply_time,
    )
    session = BroadcastSession(plan)
    driver = SimDriver(fleet)
    driver.tap = tap
    metrics = driver.run(session, on_action)
    wall = time.perf_counter() - started
    losses = fleet.channel.mean_loss()
    return SimRun(
        spec=spec,
        image_size=image_size,
        metrics=metrics,
        results=dict(session.results),
        arq_bound=arq_bound(session.block_count, losses),
        ideal_bound=ideal_code_bound(session.block_count, float(losses.mean())),
        wall_seconds=wall,
        block_size=session.block_size,
        versions=fleet.versions(),
    )
