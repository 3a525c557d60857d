"""A radio coordinator board and its nodes, simulated on the wall clock behind a real serial
port (a pty) or a TCP socket, so the serial path of a rig can be proved without hardware.

It speaks the host protocol (docs/host-protocol.md) like a board would: a BROADCAST or a
SEND is on air for its airtime, then confirmed with TRANSMIT_DONE; what a node answers
comes back as RECEIVED after the node's turnaround, over the same lossy channel as in the
simulator. Simulated time runs ``speed`` times faster than the wall clock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from harness.nodeproto.hostproto import (
    Broadcast,
    CoordinatorError,
    CoordinatorStatus,
    ErrorCode,
    Packet,
    PacketReader,
    Received,
    Rejected,
    Send,
    StatusRequest,
    TransmitDone,
    encode_packet,
)

from .driver import _ChannelClock
from .fleet import SimFleet

log = logging.getLogger("ota_hil.sims.virtual_board")

FIRMWARE = "ota-hil virtual coordinator 1"


class VirtualBoard:
    """The coordinator of ``fleet``; node i has radio address i."""

    def __init__(self, fleet: SimFleet, *, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.fleet = fleet
        self.speed = speed
        self.profile = fleet.profile
        self._t0 = time.monotonic()
        self._clock = _ChannelClock(fleet.channel, self.profile.airtime(self.profile.max_frame))
        self._air = asyncio.Lock()  # one frame on air at a time
        self._write: Callable[[bytes], None] | None = None
        #: Packets the board refused (bad CRC, garbage), with their reasons.
        self.rejected: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # -- time ------------------------------------------------------------------------------

    def now(self) -> float:
        """Simulated seconds since the board started."""
        return (time.monotonic() - self._t0) * self.speed

    async def _on_air(self, payload: int) -> float:
        """Hold the air for one frame; returns its airtime in simulated seconds."""
        airtime = self.profile.airtime(payload)
        await asyncio.sleep(airtime / self.speed)
        self._clock.at(self.now())
        return airtime

    # -- serving ---------------------------------------------------------------------------

    async def serve_pty(self) -> str:
        """Serve on a new pty; returns the path a serial port opens (e.g. /dev/pts/3)."""
        master, slave = os.openpty()
        os.set_blocking(master, False)
        path = os.ttyname(slave)
        loop = asyncio.get_running_loop()
        reader = PacketReader()

        def write(data: bytes) -> None:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(master, view) :]
                except BlockingIOError:
                    time.sleep(0.001)

        def readable() -> None:
            try:
                data = os.read(master, 4096)
            except BlockingIOError:
                return
            except OSError:
                return  # no reader on the other side yet, or it went away
            self._feed(reader, data)

        self._write = write
        self._slave = slave  # kept open, so the pty stays up between host sessions
        loop.add_reader(master, readable)
        return path

    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on TCP (as ser2net would); returns a socket:// URL for pyserial."""

        async def session(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            reader = PacketReader()
            self._write = w.write
            while data := await r.read(4096):
                self._feed(reader, data)

        server = await asyncio.start_server(session, host, port)
        bound = server.sockets[0].getsockname()
        return f"socket://{bound[0]}:{bound[1]}"

    def _feed(self, reader: PacketReader, data: bytes) -> None:
        for item in reader.feed(data):
            if isinstance(item, Rejected):
                self.rejected.append(item.reason)
                log.warning("rejected from the host: %s", item.reason)
                self._send(CoordinatorError(0, ErrorCode.BAD_PACKET, _short(item.reason)))
            else:
                task = asyncio.ensure_future(self._handle(item))
                self._tasks.add(task)  # held until done: asyncio keeps only weak references
                task.add_done_callback(self._tasks.discard)

    def _send(self, packet: Packet) -> None:
        if self._write is not None:
            self._write(encode_packet(packet))

    # -- the radio -------------------------------------------------------------------------

    async def _handle(self, packet: Packet) -> None:
        match packet:
            case StatusRequest():
                uptime = int((time.monotonic() - self._t0) * 1000)
                self._send(
                    CoordinatorStatus(packet.seq, self.profile.max_frame, 0, uptime, FIRMWARE)
                )
            case Broadcast() | Send() if len(packet.frame) > self.profile.max_frame:
                self._send(
                    CoordinatorError(
                        packet.seq, ErrorCode.FRAME_TOO_LONG, f"max {self.profile.max_frame}"
                    )
                )
            case Send() if packet.address >= len(self.fleet):
                self._send(
                    CoordinatorError(packet.seq, ErrorCode.UNKNOWN_ADDRESS, str(packet.address))
                )
            case Broadcast():
                async with self._air:
                    airtime = await self._on_air(len(packet.frame))
                    self.fleet.broadcast(self.now(), packet.frame)
                    self._send(TransmitDone(packet.seq, int(airtime * 1e6)))
            case Send():
                node_id = self.fleet.ids[packet.address]
                async with self._air:
                    airtime = await self._on_air(len(packet.frame))
                    reply = self.fleet.unicast(self.now(), node_id, packet.frame)
                    self._send(TransmitDone(packet.seq, int(airtime * 1e6)))
                    if reply is not None:
                        await asyncio.sleep((self.profile.turnaround + reply.delay) / self.speed)
                        for frame in reply.frames:
                            await self._on_air(len(frame))
                            if self.fleet.uplink(node_id):
                                self._send(Received(packet.address, -60, frame))
            case _:
                self._send(CoordinatorError(packet.seq, ErrorCode.BAD_PACKET, "not a request"))


def _short(text: str, limit: int = 200) -> str:
    """At most ``limit`` bytes of UTF-8 (an ERROR's message is a str8)."""
    return text.encode()[:limit].decode(errors="ignore")
