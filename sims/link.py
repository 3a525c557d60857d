"""The simulated fleet as the gateway's NodeLink: sessions run in SimPy time on a worker
thread, their progress and results come back on the caller's event loop."""

from __future__ import annotations

import asyncio
import threading
import time

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

    async def run(self, session: BroadcastSession, on_action: ActionSink) -> None:
        """Drive ``session`` on a worker thread. Cancelled, the session is cancelled too
        (its nodes get an ABORT) and this returns once the thread has stopped."""
        loop = asyncio.get_running_loop()
        inbox = _Inbox(loop, on_action)
        stop = threading.Event()

        def drive() -> None:
            with self._lock:
                try:
                    self.driver.run(session, inbox.put, stop)
                finally:
                    inbox.flush()

        worker = loop.run_in_executor(None, drive)
        try:
            await asyncio.shield(worker)
        except asyncio.CancelledError:
            stop.set()
            await asyncio.wait([worker])
            raise
        await inbox.drained()

    async def inventory(self) -> dict[str, str | None]:
        with self._lock:
            return dict(self.fleet.versions())


class _Inbox:
    """Actions from the simulation thread to the event loop, handed over in batches.

    One loop wake-up per action would have the two threads trade the GIL thousands of
    times a session (each trade waits up to the switch interval); a batch is taken at
    most every ``FLUSH`` seconds of wall time, and whatever is left at the end.
    """

    FLUSH = 0.05

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: ActionSink) -> None:
        self._loop = loop
        self._sink = sink
        self._lock = threading.Lock()
        self._batch: list[Action] = []
        self._last = time.monotonic()
        self._done = asyncio.Event()
        self._pending = 0

    def put(self, action: Action) -> None:
        self._batch.append(action)
        if time.monotonic() - self._last >= self.FLUSH:
            self.flush()

    def flush(self) -> None:
        batch, self._batch = self._batch, []
        self._last = time.monotonic()
        if batch:
            with self._lock:
                self._pending += 1
            self._loop.call_soon_threadsafe(self._deliver, batch)

    def _deliver(self, batch: list[Action]) -> None:
        try:
            for action in batch:
                self._sink(action)
        finally:
            with self._lock:
                self._pending -= 1
                if not self._pending:
                    self._done.set()

    async def drained(self) -> None:
        """Every batch handed over has been delivered."""
        with self._lock:
            if not self._pending:
                return
            self._done.clear()
        await self._done.wait()
