"""The simulated fleet as the gateway's NodeLink: sessions run in SimPy time on a worker
thread, their progress and results come back on the caller's event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any

import simpy

from harness.gateway.distribution.session import BroadcastSession
from harness.nodeproto.link import Action, ActionSink

from .driver import SimDriver
from .fleet import SimFleet

log = logging.getLogger("ota_hil.sims.link")

Hook = Callable[[], Awaitable[None]]


@dataclass
class Checkpoint:
    """Something to do on the caller's loop when the radio reaches ``at`` seconds."""

    at: float
    hook: Hook
    what: str
    #: The checkpoint whose window this one closes (None: it opens or stands alone).
    closes: Checkpoint | None = None
    #: Simulated seconds (since the first session began) at which it ran; None: not yet.
    ran_at: float | None = None


class SimNodeLink:
    """Runs sessions against a :class:`SimFleet`, one at a time."""

    def __init__(self, fleet: SimFleet) -> None:
        self.fleet = fleet
        self.max_frame = fleet.profile.max_frame
        self.driver = SimDriver(fleet)
        self._lock = threading.Lock()
        #: Simulated time at which the first session began: the origin of checkpoints.
        self.origin: float | None = None
        self.checkpoints: list[Checkpoint] = []

    def at(
        self, seconds: float, hook: Hook, what: str, closes: Checkpoint | None = None
    ) -> Checkpoint:
        """Run ``hook`` on the caller's event loop when the radio has been busy for
        ``seconds`` of simulated time since the first session began; the simulation waits
        for it. Everything the gateway was told before that moment has reached it first,
        so what the hook changes (a broker outage) falls at the same point of every run.

        A checkpoint still pending when a session ends runs then. When the session was
        cancelled or a hook failed, only those that close a window (``closes``) whose
        opening ran do: a window that opened always closes, and nothing new opens."""
        if seconds < 0:
            raise ValueError(f"a checkpoint at {seconds} s: the radio's time starts at 0")
        checkpoint = Checkpoint(seconds, hook, what, closes)
        self.checkpoints.append(checkpoint)
        return checkpoint

    async def run(self, session: BroadcastSession, on_action: ActionSink) -> None:
        """Drive ``session`` on a worker thread. Cancelled, the session is cancelled too
        (its nodes get an ABORT) and this returns once the thread has stopped."""
        loop = asyncio.get_running_loop()
        inbox = _Inbox(loop, on_action)
        stop = threading.Event()

        def run_hook(checkpoint: Checkpoint) -> None:
            try:
                self._run_hook(checkpoint, inbox, loop)
            except Exception as exc:
                # The session is cancelled (its nodes get an ABORT) and fails its nodes with
                # the reason; raised through SimPy it would stay scheduled in the shared world.
                log.error("%s failed: %s", checkpoint.what, exc)
                self.driver.stop_reason = f"{checkpoint.what} failed: {exc}"
                stop.set()

        def drive() -> None:
            with self._lock:
                env = self.driver.env
                if self.origin is None:
                    self.origin = env.now
                pending = [c for c in self.checkpoints if c.ran_at is None]
                waiting = [env.process(self._wait(c, run_hook)) for c in pending]
                try:
                    self.driver.run(session, inbox.put, stop)
                finally:
                    self.driver.stop_reason = None
                    inbox.flush()
                    for process in waiting:
                        if process.is_alive:
                            process.interrupt()
                    for checkpoint in pending:
                        opener = checkpoint.closes
                        if checkpoint.ran_at is not None or (
                            stop.is_set() and (opener is None or opener.ran_at is None)
                        ):
                            continue
                        log.info(
                            "%s: after the session, at %.1f s",
                            checkpoint.what,
                            env.now - self.origin,
                        )
                        run_hook(checkpoint)

        worker = loop.run_in_executor(None, drive)
        try:
            await asyncio.shield(worker)
        except asyncio.CancelledError:
            stop.set()
            await asyncio.wait([worker])
            raise
        await inbox.drained()

    def _wait(
        self, checkpoint: Checkpoint, run_hook: Callable[[Checkpoint], None]
    ) -> Generator[simpy.Event, Any, None]:
        env = self.driver.env
        assert self.origin is not None
        try:
            yield env.timeout(max(0.0, self.origin + checkpoint.at - env.now))
        except simpy.Interrupt:
            return
        run_hook(checkpoint)

    def _run_hook(
        self, checkpoint: Checkpoint, inbox: _Inbox, loop: asyncio.AbstractEventLoop
    ) -> None:
        """On the simulation thread: hand over what happened so far, then run the hook on
        the loop and wait for it (simulated time stands still meanwhile)."""
        assert self.origin is not None
        checkpoint.ran_at = self.driver.env.now - self.origin
        inbox.flush()

        async def settle_then_run() -> None:
            await inbox.drained()
            await checkpoint.hook()

        asyncio.run_coroutine_threadsafe(settle_then_run(), loop).result()

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
