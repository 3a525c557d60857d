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

from ..nodeproto.certs import BirthCertificate
from ..nodeproto.link import Action, NodeLink, NodeProgress, NodeResult
from .distribution.plan import SessionPlan
from .distribution.session import BroadcastSession
from .jobs import Job, UpgradeFailed
from .state import GatewayState
from .upgraders import Progress

log = logging.getLogger("ota_hil.gateway.nodes")


@dataclass
class _Batch:
    version: str
    opened: float
    jobs: dict[str, tuple[Job, Progress, asyncio.Future[str]]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


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
        self._batches: dict[tuple[str, str], _Batch] = {}
        #: Birth certificates read and checked in earlier sessions (they never change).
        self.certificates: dict[str, BirthCertificate] = {}
        #: Every session run, in order (their metrics are the measurements).
        self.sessions: list[BroadcastSession] = []

    def current_version(self, device_id: str) -> str | None:
        return self.state.version(device_id)

    async def apply(self, job: Job, progress: Progress) -> str:
        """Join the batch of this firmware; the batch's session starts once no job has
        joined for ``batch_window`` seconds (or ``batch_max_wait`` after it opened)."""
        loop = asyncio.get_running_loop()
        key = (job.firmware.firmwareId, job.firmware.version)
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch(job.firmware.version, loop.time())
        future: asyncio.Future[str] = loop.create_future()
        batch.jobs[job.device_id] = (job, progress, future)
        if batch.timer is not None:
            batch.timer.cancel()
        at = min(loop.time() + self.batch_window, batch.opened + self.batch_max_wait)
        batch.timer = loop.call_at(at, lambda: asyncio.ensure_future(self._run(key, job)))
        return await future

    async def _run(self, key: tuple[str, str], first: Job) -> None:
        batch = self._batches.pop(key)
        assert first.image is not None
        try:
            # The counter never repeats, also across restarts: the session id (its low 16
            # bits) does not either, so no node resumes blocks of another image.
            counter = self.state.next_counter()
            plan = SessionPlan.create(
                first.image.read_bytes(),
                batch.version,
                list(batch.jobs),
                session_id=counter & 0xFFFF,
                max_frame=self.link.max_frame,
                response_timeout=self.response_timeout,
                ca_public_key=self.ca_public_key,
                counter=counter,
                certificates=dict(self.certificates),
                **self.session_options,
            )
            session = BroadcastSession(plan)
        except (OSError, ValueError) as exc:
            for _, _, future in batch.jobs.values():
                if not future.done():
                    future.set_exception(UpgradeFailed(f"cannot start the session: {exc}"))
            return
        log.info("session %d: %s to %d node(s)", plan.session_id, batch.version, len(plan.nodes))
        self.sessions.append(session)

        upgraded: dict[str, str] = {}

        def on_action(action: Action) -> None:
            if not isinstance(action, NodeProgress | NodeResult):
                return
            entry = batch.jobs.get(action.node)
            if entry is None:
                return
            _, progress, future = entry
            if isinstance(action, NodeProgress):
                progress(action.progress)
            elif not future.done():
                if action.ok and action.version:
                    upgraded[action.node] = action.version
                    future.set_result(action.version)
                else:
                    future.set_exception(UpgradeFailed(action.reason or "node upgrade failed"))

        try:
            await self.link.run(session, on_action)
        except Exception as exc:
            log.exception("session %d failed", plan.session_id)
            reason = f"node session failed: {type(exc).__name__}: {exc}"
        else:
            reason = "the session ended without a result for this node"
        self.certificates.update(session.certificates)
        if upgraded:
            self.state.set_versions(upgraded)  # one write for the whole fleet
        for _, _, future in batch.jobs.values():
            if not future.done():
                future.set_exception(UpgradeFailed(reason))
