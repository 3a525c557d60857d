"""Runs a gateway distribution session over a simulated fleet, in SimPy time.

The session is sans-IO; this driver is its world: frames take their airtime on the
radio, broadcasts reach whoever the channel lets through, a node answers after its
turnaround (plus any slow-answer fault), and the answer crosses the same lossy channel
back. A 10-minute transfer takes milliseconds of wall time; the same fleet seed gives
the same run.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from collections.abc import Callable, Generator
from typing import Any, Protocol

import numpy as np
import simpy

from harness.gateway.distribution.metrics import SessionMetrics
from harness.gateway.distribution.session import BroadcastSession
from harness.nodeproto.frames import FrameKind
from harness.nodeproto.link import Action, SetTimer, Transmit

from .channels import Channel
from .fleet import SimFleet

ActionSink = Callable[[Action], None]


class SessionStuck(RuntimeError):
    """The session waits for nothing that can happen: a bug, reported instead of a hang."""


class FrameTap(Protocol):
    """Sees every frame on air with who heard it (a trace recorder is one)."""

    def broadcast(self, vt: float, raw: bytes, heard: np.ndarray) -> None: ...
    def unicast(self, vt: float, raw: bytes, to: str, heard: bool) -> None: ...
    def uplink(self, vt: float, node: str, raw: bytes, lost: bool) -> None: ...


class SimDriver:
    """One session at a time over ``fleet``; ``env`` may be a real-time SimPy environment."""

    def __init__(self, fleet: SimFleet, env: simpy.Environment | None = None) -> None:
        self.fleet = fleet
        self.env = env or simpy.Environment()
        self.profile = fleet.profile
        self.tap: FrameTap | None = None
        #: Why a session stopped by ``stop`` failed its nodes (None: it was canceled).
        self.stop_reason: str | None = None

    def run(
        self,
        session: BroadcastSession,
        on_action: ActionSink | None = None,
        stop: threading.Event | None = None,
    ) -> SessionMetrics:
        """Drive ``session`` to its end (or, once ``stop`` is set, cancel it: the nodes get
        its ABORT); return its metrics with airtime and duration."""
        process = self.env.process(
            self._gateway(session, on_action or (lambda action: None), stop or threading.Event())
        )
        self.env.run(until=process)
        return session.metrics

    def _gateway(
        self, session: BroadcastSession, on_action: ActionSink, stop: threading.Event
    ) -> Generator[simpy.Event, Any, None]:
        env, fleet, profile, metrics = self.env, self.fleet, self.profile, session.metrics
        clock = _ChannelClock(fleet.channel, profile.airtime(profile.max_frame))
        airtime = profile.airtime
        queue: deque[Transmit] = deque()
        arrivals: list[tuple[float, int, str, bytes]] = []  # (time, seq, node, frame)
        seq = itertools.count()
        timer: float | None = None

        def perform(actions: list[Action]) -> None:
            nonlocal timer
            for action in actions:
                if isinstance(action, Transmit):
                    queue.append(action)
                elif isinstance(action, SetTimer):
                    timer = action.at
                else:
                    on_action(action)

        perform(session.start(env.now))
        while not session.done or queue:
            if stop.is_set() and not session.done:
                queue.clear()  # what was to be sent is moot; the ABORT goes out next
                perform(session.cancel(env.now, self.stop_reason or "session canceled"))
            if queue:
                tx = queue.popleft()
                name = tx.kind.name
                for raw in tx.frames:
                    dt = airtime(len(raw))
                    yield env.timeout(dt)
                    clock.at(env.now)
                    metrics.airtime[name] += dt
                    if tx.to is None:
                        heard = fleet.broadcast(env.now, raw)
                        if self.tap is not None:
                            self.tap.broadcast(env.now, raw, heard)
                        continue
                    metrics.airtime_by_node[tx.to] += dt
                    reply = fleet.unicast(env.now, tx.to, raw)
                    if self.tap is not None:
                        self.tap.unicast(env.now, raw, tx.to, fleet.heard_last)
                    if reply is None:
                        continue
                    at = env.now + profile.turnaround + reply.delay
                    for frame in reply.frames:
                        on_air = airtime(len(frame))
                        at += on_air
                        clock.at(at)
                        kind = _kind_name(frame)
                        metrics.airtime[kind] += on_air
                        metrics.airtime_by_node[tx.to] += on_air
                        arrives = fleet.uplink(tx.to)
                        if self.tap is not None:
                            self.tap.uplink(at, tx.to, frame, lost=not arrives)
                        if arrives:
                            heapq.heappush(arrivals, (at, next(seq), tx.to, frame))
                if not queue and not session.done:
                    perform(session.transmit_done(env.now))
                continue
            wake = min(arrivals[0][0] if arrivals else float("inf"), timer or float("inf"))
            if wake == float("inf"):
                raise SessionStuck(f"session waits with no timer and nothing on air at t={env.now}")
            if wake > env.now:
                yield env.timeout(wake - env.now)
            if arrivals and arrivals[0][0] <= env.now:
                _, _, node, frame = heapq.heappop(arrivals)
                perform(session.frame_received(env.now, node, frame))
            elif timer is not None and timer <= env.now:
                timer = None
                perform(session.timer_fired(env.now))


def _kind_name(frame: bytes) -> str:
    try:
        return FrameKind(frame[1]).name
    except (IndexError, ValueError):
        return "UNKNOWN"


class _ChannelClock:
    """Ages the channel with time: one step per frame time of the radio's largest frame,
    so a fade lasts a while whether the air is busy or silent."""

    def __init__(self, channel: Channel, slot: float) -> None:
        self.channel = channel
        self.slot = slot
        self.steps = 0

    def at(self, now: float) -> None:
        steps = int(now / self.slot)
        if steps > self.steps:
            self.channel.advance(steps - self.steps)
            self.steps = steps
