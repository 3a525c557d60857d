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
    ErrorCode,
    Packet,
    Received,
    Send,
    TransmitDone,
)
from harness.nodeproto.link import Action, ActionSink, SetTimer, Transmit

from .serial_link import LinkError, LinkLost, SerialLink

log = logging.getLogger("ota_hil.rigs.link")


@dataclass(frozen=True)
class _Frame:
    """A node's frame as received, and when."""

    node: str
    frame: bytes


class SerialNodeLink:
    """Nodes reached through ``link``, by node id -> radio address."""

    #: How long the coordinator gets to confirm a transmit before the board counts as dead.
    TX_TIMEOUT = 2.0
    #: How often a transmit refused with QUEUE_FULL or BUSY is tried again.
    TX_RETRIES = 5

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
        self._events: asyncio.Queue[Packet | LinkLost] | None = None
        self._seq = 0
        self._lock = asyncio.Lock()

    # -- plumbing --------------------------------------------------------------------------

    def open(self) -> None:
        """Open the port; packets flow into this link's queue from now on."""
        loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        self.link.start(loop, self._events.put_nowait)

    def close(self) -> None:
        self.link.close()

    def _next_seq(self) -> int:
        self._seq = self._seq % 255 + 1  # 0 is for unsolicited packets
        return self._seq

    async def _next_event(self, timeout: float | None) -> Packet | LinkLost | None:
        assert self._events is not None, "open() the link first"
        try:
            return await asyncio.wait_for(self._events.get(), timeout)
        except TimeoutError:
            return None

    async def _transmit(self, frame: bytes, to: str | None, inbox: deque[_Frame]) -> None:
        """One frame on air, confirmed by the coordinator; node frames that arrive
        meanwhile go to ``inbox``. Raises LinkError when the board refuses or is silent."""
        loop = asyncio.get_running_loop()
        for _ in range(self.TX_RETRIES):
            seq = self._next_seq()
            if to is None:
                self.link.send(Broadcast(seq, frame))
            else:
                self.link.send(Send(seq, self.addresses[to], frame))
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
                else:
                    log.debug("ignored from the coordinator: %r", event)
        raise self.link.failure(f"the coordinator stayed busy for {self.TX_RETRIES} tries")

    def _collect(self, packet: Received, inbox: deque[_Frame]) -> None:
        node = self.nodes.get(packet.address)
        if node is None:
            self.link.log.write("!!", f"frame from unknown address {packet.address}")
            return
        inbox.append(_Frame(node, packet.frame))

    # -- the NodeLink ----------------------------------------------------------------------

    async def run(self, session: BroadcastSession, on_action: ActionSink) -> None:
        """Drive ``session`` on the wall clock. A link failure cancels the session, so every
        node still waiting fails with the link's reason."""
        async with self._lock:
            try:
                await self._drive(session, on_action)
            except LinkError as exc:
                log.error("%s", exc)
                loop = asyncio.get_running_loop()
                for action in session.cancel(loop.time(), f"radio link failed: {exc}"):
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
            wait = None if timer is None else max(0.0, timer - loop.time())
            if wait is None:
                raise RuntimeError("the session waits with no timer and nothing on air")
            event = await self._next_event(wait)
            if isinstance(event, LinkLost):
                raise event.error
            if isinstance(event, Received):
                self._collect(event, inbox)

    async def inventory(self) -> dict[str, str | None]:
        """Each node's firmware version, from a status query (None: no answer)."""
        async with self._lock:
            return {node: await self._version(node) for node in self.addresses}

    async def _version(self, node: str) -> str | None:
        loop = asyncio.get_running_loop()
        inbox: deque[_Frame] = deque()
        reassembler = Reassembler()
        for _ in range(3):
            for frame in encode(StatusQuery(0), self.max_frame):
                await self._transmit(frame, node, inbox)
            deadline = loop.time() + self.status_timeout
            while loop.time() < deadline:
                while inbox:
                    got = inbox.popleft()
                    message = reassembler.feed(got.frame) if got.node == node else None
                    if isinstance(message, Status):
                        return message.version
                event = await self._next_event(max(0.0, deadline - loop.time()))
                if isinstance(event, LinkLost):
                    raise event.error
                if isinstance(event, Received):
                    self._collect(event, inbox)
        return None
