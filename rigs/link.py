"""Real nodes behind a coordinator board as the gateway's NodeLink: the same sans-IO session
the simulator drives, driven here on the wall clock over the serial link."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from harness.gateway.distribution.session import BroadcastSession
from harness.nodeproto.frames import Reassembler, Status, StatusQuery, encode
from harness.nodeproto.hostproto import (
    Broadcast,
    CoordinatorError,
    CoordinatorStatus,
    ErrorCode,
    Packet,
    Received,
    Send,
    StatusRequest,
    TransmitDone,
)
from harness.nodeproto.link import Action, ActionSink, SetTimer, Transmit

from .serial_link import LinkError, LinkLost, PortReopening, ResetLine, SerialLink

log = logging.getLogger("ota_hil.rigs.link")


class SessionStuck(RuntimeError):
    """The session waits for nothing: no timer set, nothing on air (a session bug)."""


@dataclass(frozen=True)
class _Frame:
    """A node's frame as received, by node id rather than radio address."""

    node: str
    frame: bytes


class SerialNodeLink:
    """Nodes reached through ``link``, by node id -> radio address."""

    #: How long the coordinator gets to confirm a transmit (or answer the status request
    #: at open) before the board counts as dead.
    TX_TIMEOUT = 2.0
    #: How often a transmit refused with QUEUE_FULL or BUSY is tried again.
    TX_RETRIES = 5
    #: How long a board gets to boot after a reset, on top of TX_TIMEOUT, to answer.
    BOOT_TIME = 2.0
    #: A node's status query is tried at least this often before the node counts as silent,
    QUERY_TRIES = 3
    #: and again until this many status timeouts have passed since the first try.
    QUERY_WITHIN = 5
    #: How often a send waiting for a reopened port looks again, in seconds.
    REOPEN_POLL = 0.02

    def __init__(
        self,
        link: SerialLink,
        addresses: dict[str, int],
        max_frame: int,
        *,
        status_timeout: float = 0.5,
    ) -> None:
        self.link = link
        self.addresses = dict(addresses)
        self.nodes = {address: node for node, address in addresses.items()}
        self.max_frame = max_frame
        self.status_timeout = status_timeout
        #: The coordinator's answer to the status request at open: firmware, max_frame.
        self.status: CoordinatorStatus | None = None
        self._events: asyncio.Queue[Packet | LinkLost] | None = None
        self._seq = 0
        self._lock = asyncio.Lock()

    # -- plumbing --------------------------------------------------------------------------

    async def open(self, *, reset: ResetLine = "none") -> CoordinatorStatus:
        """Open the port (reset the board through ``reset`` first, if not "none") and check
        the board answers, with a max_frame the rig's frames fit in. Packets flow into this
        link's queue from now on. Raises LinkError, with the link closed (its log too)."""
        loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        try:
            await asyncio.to_thread(self.link.start, loop, self._events.put_nowait)
            if reset != "none":
                await self.reset_board(reset)
            window = self.TX_TIMEOUT + (self.BOOT_TIME if reset != "none" else 0.0)
            self.status = await self._board_status(window)
        except BaseException:
            await asyncio.to_thread(self.close)
            raise
        return self.status

    async def reset_board(self, line: ResetLine) -> None:
        """Reset the coordinator through its DTR or RTS line, off the event loop."""
        await asyncio.to_thread(self.link.reset_board, line)

    def close(self) -> None:
        self.link.close()

    def _queue(self) -> asyncio.Queue[Packet | LinkLost]:
        if self._events is None:
            raise RuntimeError(
                "the coordinator link is not open: `await link.open()` first "
                "(SerialNodeLink.open is a coroutine)"
            )
        return self._events

    def _next_seq(self) -> int:
        self._seq = self._seq % 255 + 1  # 0 is for unsolicited packets
        return self._seq

    async def _next_event(self, timeout: float | None) -> Packet | LinkLost | None:
        events = self._queue()
        if not events.empty():  # wait_for with no time left would not look
            return events.get_nowait()
        try:
            return await asyncio.wait_for(events.get(), timeout)
        except TimeoutError:
            return None

    def _ignore(self, event: Packet, why: str) -> None:
        self.link.log.write("..", f"ignored ({why}): {event!r}")
        if isinstance(event, CoordinatorError):
            log.warning("%s: coordinator error ignored (%s): %r", self.link.url, why, event)
        else:
            log.debug("%s: ignored (%s): %r", self.link.url, why, event)

    def _drain(self, why: str) -> None:
        """Drop what is queued, so that an answer meant for an earlier session or query is
        not taken for one to what comes next. A lost link stays lost."""
        events = self._queue()
        lost: LinkLost | None = None
        while not events.empty():
            event = events.get_nowait()
            if isinstance(event, LinkLost):
                lost = event
            else:
                self._ignore(event, why)
        if lost is not None:
            events.put_nowait(lost)

    async def _send(self, packet: Packet) -> None:
        """Write ``packet`` off the event loop; while the reader is reopening a lost port,
        wait for it (up to ``link.reconnect_within``) instead of failing at once."""
        try:
            await asyncio.to_thread(self.link.send, packet)
            return
        except LinkError as exc:
            if not (isinstance(exc, PortReopening) or self.link.reopening):
                raise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.link.reconnect_within
        while self.link.reopening and loop.time() < deadline:
            await asyncio.sleep(self.REOPEN_POLL)
        if self.link.reopening:
            raise self.link.failure(
                f"the coordinator port is still being reopened after "
                f"{self.link.reconnect_within:g} s"
            )
        await asyncio.to_thread(self.link.send, packet)

    async def _board_status(self, window: float) -> CoordinatorStatus:
        """Ask the board for its status, again every quarter TX_TIMEOUT (a booting board
        drops requests), for up to ``window`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        asked: set[int] = set()
        while loop.time() < deadline:
            seq = self._next_seq()
            asked.add(seq)
            await self._send(StatusRequest(seq))
            again = min(deadline, loop.time() + self.TX_TIMEOUT / 4)
            while (event := await self._next_event(max(0.0, again - loop.time()))) is not None:
                if isinstance(event, LinkLost):
                    raise event.error
                if isinstance(event, CoordinatorStatus) and event.seq in asked:
                    return self._check_status(event)
                if isinstance(event, CoordinatorError) and event.seq in asked:
                    raise self.link.failure(
                        f"the coordinator refused the status request: {event.code.name} "
                        f"{event.message}"
                    )
                self._ignore(event, "waiting for the coordinator's status")
        raise self.link.failure(
            f"the coordinator did not answer a status request within {window:g} s (is the "
            f"board powered, running the coordinator firmware, at {self.link.baud} baud?)"
        )

    def _check_status(self, status: CoordinatorStatus) -> CoordinatorStatus:
        what = (
            f"coordinator firmware {status.firmware!r}, max_frame {status.max_frame}, "
            f"queue {status.queue}, up {status.uptime_ms / 1000:g} s"
        )
        self.link.log.write("--", what)
        log.info("%s: %s", self.link.url, what)
        if status.max_frame < self.max_frame:
            raise self.link.failure(
                f"the board's max_frame {status.max_frame} is smaller than the rig's "
                f"{self.max_frame}: the rig's frames would not fit (set coordinator.max_frame "
                f"in the rig file to at most {status.max_frame})"
            )
        return status

    async def _transmit(self, frame: bytes, to: str | None, inbox: deque[_Frame]) -> None:
        """One frame on air, confirmed by the coordinator; node frames that arrive
        meanwhile go to ``inbox``. Raises LinkError when the board refuses or is silent."""
        loop = asyncio.get_running_loop()
        for _ in range(self.TX_RETRIES):
            seq = self._next_seq()
            if to is None:
                await self._send(Broadcast(seq, frame))
            else:
                await self._send(Send(seq, self.addresses[to], frame))
            deadline = loop.time() + self.TX_TIMEOUT
            while True:
                event = await self._next_event(max(0.0, deadline - loop.time()))
                if event is None:
                    raise self.link.failure(
                        f"the coordinator did not confirm transmit {seq} within "
                        f"{self.TX_TIMEOUT:g} s"
                    )
                if isinstance(event, LinkLost):
                    raise event.error
                if isinstance(event, Received):
                    self._collect(event, inbox)
                elif isinstance(event, TransmitDone) and event.seq == seq:
                    return
                elif isinstance(event, CoordinatorError) and event.seq == seq:
                    if event.code in (ErrorCode.QUEUE_FULL, ErrorCode.BUSY):
                        await asyncio.sleep(0.05)
                        break  # try this frame again
                    raise self.link.failure(
                        f"the coordinator refused transmit {seq}: {event.code.name} {event.message}"
                    )
                elif isinstance(event, CoordinatorError) and event.seq == 0:
                    raise self.link.failure(
                        f"the coordinator reported {event.code.name} ({event.message}) while "
                        f"transmit {seq} waited for its confirmation"
                    )
                else:
                    self._ignore(event, f"waiting for transmit {seq}")
        raise self.link.failure(f"the coordinator stayed busy for {self.TX_RETRIES} tries")

    def _collect(self, packet: Received, inbox: deque[_Frame]) -> None:
        node = self.nodes.get(packet.address)
        if node is None:
            self.link.log.write("!!", f"frame from unknown address {packet.address}")
            return
        inbox.append(_Frame(node, packet.frame))

    # -- the NodeLink ----------------------------------------------------------------------

    async def run(self, session: BroadcastSession, on_action: ActionSink) -> None:
        """Drive ``session`` on the wall clock. A link failure (or a stuck session) cancels
        the session, so every node still waiting fails with the reason."""
        async with self._lock:
            try:
                await self._drive(session, on_action)
            except (LinkError, SessionStuck) as exc:
                log.error("%s", exc)
                why = "radio link failed" if isinstance(exc, LinkError) else "session stuck"
                loop = asyncio.get_running_loop()
                for action in session.cancel(loop.time(), f"{why}: {exc}"):
                    if not isinstance(action, Transmit | SetTimer):
                        on_action(action)

    async def _drive(self, session: BroadcastSession, on_action: ActionSink) -> None:
        loop = asyncio.get_running_loop()
        queue: deque[Transmit] = deque()
        inbox: deque[_Frame] = deque()
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

        self._drain("before the session")
        perform(session.start(loop.time()))
        while not session.done:
            if queue:
                tx = queue.popleft()
                for frame in tx.frames:
                    await self._transmit(frame, tx.to, inbox)
                if not queue:
                    perform(session.transmit_done(loop.time()))
                continue
            if inbox:
                got = inbox.popleft()
                perform(session.frame_received(loop.time(), got.node, got.frame))
                continue
            if timer is not None and loop.time() >= timer:
                timer = None
                perform(session.timer_fired(loop.time()))
                continue
            if timer is None:
                raise SessionStuck(
                    "the session waits with no timer and nothing on air (a session bug)"
                )
            event = await self._next_event(max(0.0, timer - loop.time()))
            if isinstance(event, LinkLost):
                raise event.error
            if isinstance(event, Received):
                self._collect(event, inbox)
            elif event is not None:
                self._ignore(event, "during the session")

    async def inventory(self) -> dict[str, str | None]:
        """Each node's firmware version, from a status query (None: no answer)."""
        async with self._lock:
            self._drain("before the inventory")
            return {node: await self._version(node) for node in self.addresses}

    async def _version(self, node: str) -> str | None:
        """Query until the node answers: at least QUERY_TRIES times, and again while
        QUERY_WITHIN status timeouts have not passed."""
        loop = asyncio.get_running_loop()
        inbox: deque[_Frame] = deque()
        reassembler = Reassembler()
        deadline = loop.time() + self.QUERY_WITHIN * self.status_timeout
        tries = 0
        try:
            while tries < self.QUERY_TRIES or loop.time() < deadline:
                tries += 1
                for frame in encode(StatusQuery(0), self.max_frame):
                    await self._transmit(frame, node, inbox)
                answer_by = loop.time() + self.status_timeout
                while True:
                    while inbox:
                        got = inbox.popleft()
                        message = reassembler.feed(got.frame) if got.node == node else None
                        if isinstance(message, Status):
                            return message.version
                    left = answer_by - loop.time()
                    if left <= 0:
                        break
                    event = await self._next_event(left)
                    if isinstance(event, LinkLost):
                        raise event.error
                    if isinstance(event, Received):
                        self._collect(event, inbox)
                    elif event is not None:
                        self._ignore(event, f"querying {node}")
            return None
        finally:
            for got in inbox:
                leftover = f"frame from {got.node}: {got.frame.hex(' ')}"
                self.link.log.write("..", f"ignored (after querying {node}): {leftover}")
            self._drain(f"after querying {node}")
