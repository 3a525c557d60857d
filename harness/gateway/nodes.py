"""Radio nodes behind the gateway (324, BLE) as an upgrader kind.

Child-device upgrade jobs for the same firmware that arrive within a batching window
become one broadcast session over the node link; each job then follows its own node
through the session's progress and ends with that node's result.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from ..aio import cancel_and_wait
from ..nodeproto.certs import BirthCertificate
from ..nodeproto.link import Action, NodeLink, NodeProgress, NodeResult
from .distribution.plan import SessionPlan
from .distribution.session import BroadcastSession
from .jobs import Job, UpgradeFailed
from .state import GatewayState
from .upgraders import Progress

log = logging.getLogger("ota_hil.gateway.nodes")

#: A batch is one image: same firmware id, version and sign.
BatchKey = tuple[str, str, str]


@dataclass
class _Batch:
    version: str
    opened: float
    jobs: dict[str, tuple[Job, Progress, asyncio.Future[str]]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None

    def fail_unfinished(self, reason: str) -> None:
        for _, _, future in self.jobs.values():
            if not future.done():
                future.set_exception(UpgradeFailed(reason))


class NodeUpgrader:
    """Upgrades the radio nodes of one kind that ``link`` reaches."""

    #: Downloading the package is a small part of a node upgrade; the radio is the rest.
    download_share = 10

    def __init__(
        self,
        kind: str,
        link: NodeLink,
        state: GatewayState,
        ca_public_key: bytes,
        *,
        batch_window: float = 0.5,
        batch_max_wait: float = 10.0,
        response_timeout: float,
        session_options: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.link = link
        self.state = state
        self.ca_public_key = ca_public_key
        self.batch_window = batch_window
        self.batch_max_wait = batch_max_wait
        self.response_timeout = response_timeout
        self.session_options = dict(session_options or {})
        self._batches: dict[BatchKey, _Batch] = {}
        self._running: set[asyncio.Task[None]] = set()
        #: Birth certificates read and checked in earlier sessions (they never change).
        self.certificates: dict[str, BirthCertificate] = {}
        #: Every session run, in order (their metrics are the measurements).
        self.sessions: list[BroadcastSession] = []

    def current_version(self, device_id: str) -> str | None:
        return self.state.version(device_id)

    async def apply(self, job: Job, progress: Progress) -> str:
        """Join the batch of this image; the batch's session starts once no job has joined
        for ``batch_window`` seconds (or ``batch_max_wait`` after it opened)."""
        loop = asyncio.get_running_loop()
        fw = job.firmware
        key = (fw.firmwareId, fw.version, fw.sign.lower())
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch(fw.version, loop.time())
        future: asyncio.Future[str] = loop.create_future()
        batch.jobs[job.device_id] = (job, progress, future)
        if batch.timer is not None:
            batch.timer.cancel()
        at = min(loop.time() + self.batch_window, batch.opened + self.batch_max_wait)
        batch.timer = loop.call_at(at, self._launch, key)
        return await future

    def _launch(self, key: BatchKey) -> None:
        batch = self._batches.pop(key)  # later jobs of this image open a new batch
        task = asyncio.ensure_future(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def close(self) -> None:
        """Stop running sessions (nodes are told to abort) and fail waiting jobs."""
        for batch in self._batches.values():
            if batch.timer is not None:
                batch.timer.cancel()
            batch.fail_unfinished("the gateway is shutting down")
        self._batches.clear()
        await cancel_and_wait(*self._running)

    async def _run(self, batch: _Batch) -> None:
        try:
            await self._session(batch)
        except asyncio.CancelledError:
            batch.fail_unfinished("node session canceled: the gateway is shutting down")
            raise
        except Exception as exc:
            log.exception("node session failed")
            batch.fail_unfinished(f"node session failed: {type(exc).__name__}: {exc}")
        finally:
            batch.fail_unfinished("the session ended without a result for this node")

    async def _session(self, batch: _Batch) -> None:
        job = next(iter(batch.jobs.values()))[0]
        assert job.image is not None  # every job of the batch shares this image
        # The counter never repeats, also across restarts, so neither does the session
        # id within 65,536 sessions: no node resumes blocks of another image.
        counter = self.state.next_counter()
        plan = SessionPlan.create(
            job.image.read_bytes(),
            batch.version,
            sorted(batch.jobs),  # arrival order varies; the session's must not
            session_id=counter & 0xFFFF,
            max_frame=self.link.max_frame,
            response_timeout=self.response_timeout,
            ca_public_key=self.ca_public_key,
            counter=counter,
            certificates=dict(self.certificates),
            **self.session_options,
        )
        session = BroadcastSession(plan)
        log.info("session %d: %s to %d node(s)", plan.session_id, batch.version, len(plan.nodes))
        self.sessions.append(session)
        results = _ResultWriter(self.state, batch)
        await self.link.run(session, results.take)
        results.flush()
        self.certificates.update(session.certificates)


class _ResultWriter:
    """Hands each node's result to its job, writing new versions to the gateway's state
    first (in one write per batch of results, not one per node)."""

    def __init__(self, state: GatewayState, batch: _Batch) -> None:
        self.state = state
        self.batch = batch
        self._upgraded: dict[str, str] = {}
        self._scheduled = False

    def take(self, action: Action) -> None:
        if not isinstance(action, NodeProgress | NodeResult):
            return
        entry = self.batch.jobs.get(action.node)
        if entry is None:
            return
        _, progress, future = entry
        if isinstance(action, NodeProgress):
            progress(action.progress)
        elif future.done():
            return
        elif action.ok and action.version:
            self._upgraded[action.node] = action.version
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self.flush)
        else:
            reason = action.reason or "node upgrade failed"
            future.set_exception(UpgradeFailed(reason, action.version))

    def flush(self) -> None:
        self._scheduled = False
        upgraded, self._upgraded = self._upgraded, {}
        if not upgraded:
            return
        self.state.set_versions(upgraded)
        for node, version in upgraded.items():
            future = self.batch.jobs[node][2]
            if not future.done():
                future.set_result(version)
