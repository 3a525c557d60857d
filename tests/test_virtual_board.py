"""The virtual coordinator board behind a real pty, spoken to by the real serial link."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

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
from rigs.serial_link import LinkLost, SerialLink
from sims.fleet import SimFleet
from sims.fleetfile import FleetSpec
from sims.virtual_board import VirtualBoard


class Host:
    """The host end: the real SerialLink on the board's pty, packets in a queue."""

    def __init__(self, port: str, log: Path) -> None:
        self.link = SerialLink(port, log_path=log)
        self.inbox: asyncio.Queue[Packet | LinkLost] = asyncio.Queue()
        self.link.start(asyncio.get_running_loop(), self.inbox.put_nowait)

    async def next(self, timeout: float = 5.0) -> Packet:
        packet = await asyncio.wait_for(self.inbox.get(), timeout)
        assert not isinstance(packet, LinkLost), packet
        return packet


async def board_and_host(tmp_path: Path, **spec: object) -> tuple[VirtualBoard, Host]:
    fleet = SimFleet(FleetSpec(nodes=3, seed=1, **spec))  # type: ignore[arg-type]
    board = VirtualBoard(fleet, speed=50)
    port = await board.serve_pty()
    return board, Host(port, tmp_path / "host.log")


async def test_status_and_errors(tmp_path: Path) -> None:
    _, host = await board_and_host(tmp_path)
    try:
        host.link.send(StatusRequest(1))
        status = await host.next()
        assert isinstance(status, CoordinatorStatus) and status.seq == 1
        assert status.max_frame == 64 and "virtual" in status.firmware

        host.link.send(Send(2, 9, b"\x01"))
        refused = await host.next()
        assert isinstance(refused, CoordinatorError)
        assert (refused.seq, refused.code) == (2, ErrorCode.UNKNOWN_ADDRESS)

        host.link.send(Broadcast(3, bytes(65)))
        too_long = await host.next()
        assert isinstance(too_long, CoordinatorError) and too_long.code is ErrorCode.FRAME_TOO_LONG
    finally:
        host.link.close()


async def test_garbage_from_the_host_is_refused_and_the_board_keeps_serving(
    tmp_path: Path,
) -> None:
    board, host = await board_and_host(tmp_path)
    try:
        port = host.link._port  # raw bytes, as a broken host would send
        assert port is not None
        port.write(b"\x07\x07\x07\x00")
        refused = await host.next()
        assert isinstance(refused, CoordinatorError) and refused.code is ErrorCode.BAD_PACKET
        assert board.rejected and refused.message
        host.link.send(StatusRequest(4))
        assert isinstance(await host.next(), CoordinatorStatus)
    finally:
        host.link.close()


async def test_a_send_is_confirmed_and_the_node_answers(tmp_path: Path) -> None:
    _, host = await board_and_host(tmp_path)
    try:
        (frame,) = encode(StatusQuery(0), 64)
        host.link.send(Send(5, 1, frame))
        done = await host.next()
        assert isinstance(done, TransmitDone) and done.seq == 5 and done.airtime_us > 0
        received = await host.next()
        assert isinstance(received, Received) and received.address == 1
        status = Reassembler().feed(received.frame)
        assert isinstance(status, Status) and status.version == "1.0.0"
    finally:
        host.link.close()


def test_the_command_prints_its_port_and_ca_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pub"
    board = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "virtual-board",
            "--nodes",
            "4",
            "--tcp",
            "0",
            "--ca-out",
            str(ca_file),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert board.stdout is not None
        lines = [board.stdout.readline() for _ in range(3)]
        assert re.match(r"port\s+socket://127\.0\.0\.1:\d+", lines[0]), lines
        ca = re.match(r"ca\s+([0-9a-f]{64})", lines[1])
        assert ca and ca_file.read_text().strip() == ca.group(1)
        assert "4 324 nodes" in lines[2]
    finally:
        board.send_signal(signal.SIGINT)
        assert board.wait(10) == 0
