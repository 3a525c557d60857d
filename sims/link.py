"""The simulated fleet as the gateway's NodeLink: sessions run in SimPy time on a worker
thread, their progress and results come back on the caller's event loop."""

from __future__ import annotations

import asyncio
import threading

from harness.gateway.distribution.session import BroadcastSession
from harness.nodeproto.link import Action, ActionSink

from .driver import SimDriver
from .fleet import SimFleet


class SimNodeLink:
    """Runs sessions against a :class:`SimFleet`, one at a time."""

    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet
        self.max_frame = fleet.profile.max_frame
        self.driver = SimDriver(fleet)
        self._lock = threading.Lock()
        #: Metrics of every session run, in order.
        self.sessions: list[BroadcastSession] = []

    async def run(self, session: BroadcastSession, on_action: ActionSink) -> None:
        loop = asyncio.get_running_loop()

        def forward(action: Action) -> None:
            loop.call_soon_threadsafe(on_action, action)

        def drive() -> None:
            with self._lock:
                self.driver.run(session, forward)

        self.sessions.append(session)
        await asyncio.to_thread(drive)

    async def inventory(self) -> dict[str, str | None]:
        with self._lock:
            return dict(self.fleet.versions())
