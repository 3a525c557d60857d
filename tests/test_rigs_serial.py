"""The serial link to a coordinator board, over a real pty and a real TCP port (socket://, as
ser2net): a missing port, a board sending garbage, a board that goes silent, a port that
disappears and comes back. Nothing here is mocked; the "board" is a few lines of test."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import serial

from harness.gateway.distribution.plan import SessionPlan
from harness.gateway.distribution.session import BroadcastSession
from harness.nodeproto.frames import NodeError, NodeState, Status, encode
from harness.nodeproto.hostproto import (
    CoordinatorError,
    CoordinatorStatus,
    ErrorCode,
    Packet,
    PacketReader,
    Received,
    Send,
    StatusRequest,
    TransmitDone,
    encode_packet,
)
from harness.nodeproto.link import Action
from rigs.link import SerialNodeLink
from rigs.serial_link import LinkError, LinkLost, SerialLink

FRAME = bytes(range(10))
#: What the test boards answer a STATUS_REQUEST with (their seq replaced).
STATUS = CoordinatorStatus(0, 64, 0, 1234, "test board 1")


def pty_pair() -> tuple[int, str]:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    return master, os.ttyname(slave)


def board_on(
    master: int,
    answer: Callable[[Packet], bytes | None],
    status: CoordinatorStatus | None = STATUS,
) -> Callable[[], None]:
    """A coordinator on the pty's master side: decodes what the host sends, answers a
    STATUS_REQUEST with ``status`` (None: not at all) and anything else with ``answer``."""
    reader = PacketReader()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(master, 65536)
        except OSError:
            return
        for packet in reader.feed(data):
            if isinstance(packet, StatusRequest):
                reply = encode_packet(replace(status, seq=packet.seq)) if status else None
            else:
                reply = answer(packet)  # type: ignore[arg-type]
            if reply:
                os.write(master, reply)

    loop.add_reader(master, readable)
    return lambda: loop.remove_reader(master)


def confirm(packet: Packet) -> bytes:
    return encode_packet(TransmitDone(packet.seq, 10))


def status_frame(version: str) -> bytes:
    (frame,) = encode(Status(0, NodeState.IDLE, NodeError.NONE, 1, version, bytes(16)), 64)
    return frame


def node_link(port: str, log: Path, **kw: float) -> SerialNodeLink:
    link = SerialNodeLink(SerialLink(port, log_path=log, **kw), {"node-0": 0}, 64)
    link.TX_TIMEOUT = 0.3
    return link


async def until(condition: Callable[[], object], within: float = 5.0) -> None:
    """Wait (bounded) for something a thread or the board does."""
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


def session_for(link: SerialNodeLink) -> BroadcastSession:
    plan = SessionPlan.create(
        b"image" * 100,
        "2.0.0",
        ["node-0"],
        session_id=1,
        max_frame=64,
        response_timeout=0.05,
        ca_public_key=bytes(32),
        counter=1,
    )
    return BroadcastSession(plan)


# -- opening ---------------------------------------------------------------------------


async def test_a_missing_port_is_a_clear_error(tmp_path: Path) -> None:
    link = node_link("/dev/ota-hil-no-such-port", tmp_path / "c.log")
    with pytest.raises(LinkError, match="cannot open the coordinator port /dev/ota-hil-no-such"):
        await link.open()


async def test_open_asks_the_board_for_its_status_and_keeps_it(tmp_path: Path) -> None:
    master, port = pty_pair()
    stop = board_on(master, confirm)
    link = node_link(port, tmp_path / "c.log")
    try:
        status = await link.open()
    finally:
        link.close()
        stop()
    assert status == link.status and link.status is not None
    assert (link.status.firmware, link.status.max_frame) == ("test board 1", 64)
    text = (tmp_path / "c.log").read_text()
    assert "StatusRequest(seq=1)" in text
    assert "coordinator firmware 'test board 1', max_frame 64" in text


async def test_a_board_that_does_not_answer_its_status_fails_the_open(tmp_path: Path) -> None:
    master, port = pty_pair()
    stop = board_on(master, confirm, status=None)
    link = node_link(port, tmp_path / "c.log")
    try:
        with pytest.raises(LinkError, match=r"did not answer a status request within 0\.3 s"):
            await link.open()
    finally:
        stop()
    assert link.link._port is None  # closed again


async def test_a_board_with_a_smaller_max_frame_fails_the_open(tmp_path: Path) -> None:
    master, port = pty_pair()
    stop = board_on(master, confirm, status=replace(STATUS, max_frame=32))
    link = node_link(port, tmp_path / "c.log")
    try:
        with pytest.raises(LinkError, match="board's max_frame 32 is smaller than the rig's 64"):
            await link.open()
    finally:
        stop()


async def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    master, port = pty_pair()
    stop = board_on(master, confirm)
    first = node_link(port, tmp_path / "first.log")
    await first.open()
    second = node_link(port, tmp_path / "second.log")
    try:
        with pytest.raises(LinkError, match=f"port {port}: it is in use"):
            await second.open()
    finally:
        first.close()
        stop()


# -- transmitting ----------------------------------------------------------------------


async def test_a_board_that_confirms_a_transmit(tmp_path: Path) -> None:
    master, port = pty_pair()

    def answer(packet: Packet) -> bytes | None:
        assert isinstance(packet, Send) and packet.address == 0 and packet.frame == FRAME
        return confirm(packet)

    stop = board_on(master, answer)
    link = node_link(port, tmp_path / "c.log")
    await link.open()
    try:
        await link._transmit(FRAME, "node-0", deque())
    finally:
        link.close()
        stop()
    text = (tmp_path / "c.log").read_text()
    assert "Send(seq=2, address=0" in text and "TransmitDone(seq=2, airtime_us=10)" in text
    assert ">>" in text and "<<" in text  # the raw bytes both ways, in hex


async def test_a_board_sending_garbage_fails_the_transmit_with_what_came(tmp_path: Path) -> None:
    master, port = pty_pair()
    garbage = b"\xde\xad\xbe\xef\x00\x01\x02\x00"
    stop = board_on(master, lambda packet: garbage)
    link = node_link(port, tmp_path / "c.log")
    await link.open()
    try:
        with pytest.raises(LinkError) as failed:
            await link._transmit(FRAME, "node-0", deque())
    finally:
        link.close()
        stop()
    message = str(failed.value)
    assert "did not confirm transmit 2 within 0.3 s" in message
    assert "last received: " in message and "de ad be ef 00 01 02 00; full log" in message
    assert f"full log: {tmp_path / 'c.log'}" in message
    assert link.link.rejected, "the garbage was not reported as rejected"
    assert "rejected:" in (tmp_path / "c.log").read_text()


async def test_rejected_packets_are_counted_and_the_latest_kept(tmp_path: Path) -> None:
    master, port = pty_pair()
    stop = board_on(master, confirm)
    link = node_link(port, tmp_path / "c.log")
    await link.open()
    try:
        os.write(master, b"\x01\x00" * 1005)  # 1005 packets too short to be packets
        await until(lambda: link.link.rejected_count == 1005)
        assert len(link.link.rejected) == 1000
        assert "packet too short" in link.link.rejected[-1]
    finally:
        link.close()
        stop()


async def test_an_unsolicited_coordinator_error_fails_the_transmit(tmp_path: Path) -> None:
    master, port = pty_pair()
    fault = CoordinatorError(0, ErrorCode.RADIO_FAULT, "antenna not detected")
    stop = board_on(master, lambda packet: encode_packet(fault))
    link = node_link(port, tmp_path / "c.log")
    await link.open()
    try:
        with pytest.raises(LinkError, match=r"RADIO_FAULT \(antenna not detected\) while transmit"):
            await link._transmit(FRAME, "node-0", deque())
    finally:
        link.close()
        stop()


async def fill(fd: int) -> None:
    """Write zeros (empty packets, which a board skips) to ``fd`` until the line takes no
    more, even after the kernel has moved what it buffered along."""
    blocked = 0
    while blocked < 3:
        try:
            os.write(fd, bytes(4096))
            blocked = 0
        except BlockingIOError:
            blocked += 1
            await asyncio.sleep(0.02)


async def test_a_write_waiting_for_the_line_leaves_the_event_loop_running(
    tmp_path: Path,
) -> None:
    """The board (on this event loop) must read for the host's write to go through: a write
    made on the loop would wait for the write timeout and fail."""
    master, port = pty_pair()
    stop = board_on(master, confirm)
    link = node_link(port, tmp_path / "c.log")
    await link.open()
    stop()
    filler = os.open(port, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        await fill(filler)
        stop = board_on(master, confirm)
        await link._transmit(FRAME, "node-0", deque())
    finally:
        os.close(filler)
        link.close()
        stop()


async def test_a_board_reset_runs_off_the_event_loop(tmp_path: Path) -> None:
    board = TcpBoard()
    await board.plug()
    link = node_link(f"socket://127.0.0.1:{board.port}", tmp_path / "c.log")
    await link.open()
    try:
        reset = asyncio.create_task(link.reset_board("dtr"))
        await asyncio.sleep(0)
        assert not reset.done(), "the reset pulse held the event loop"
        await reset
    finally:
        link.close()
        await board.unplug()
    assert "board reset through DTR" in (tmp_path / "c.log").read_text()


async def test_a_reset_line_the_port_cannot_drive_is_a_link_error(tmp_path: Path) -> None:
    master, port = pty_pair()  # a pty has no modem lines
    stop = board_on(master, confirm)
    link = node_link(port, tmp_path / "c.log")
    try:
        with pytest.raises(LinkError, match="cannot reset the board through RTS"):
            await link.open(reset="rts")
    finally:
        stop()
    assert link.link._port is None


def test_any_failure_of_a_write_is_a_link_error(tmp_path: Path) -> None:
    """pyserial raises TypeError writing to a port another thread has just closed."""
    _, port = pty_pair()
    link = SerialLink(port, log_path=tmp_path / "c.log")
    link._port = link._open()
    fd, link._port.fd = link._port.fd, None  # type: ignore[attr-defined]
    try:
        with pytest.raises(LinkError, match="cannot write to the coordinator: TypeError"):
            link.send(StatusRequest(1))
    finally:
        os.close(fd)
        link.close()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_a_port_log_that_cannot_be_written_is_reported_once_and_the_link_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    master, port = pty_pair()
    stop = board_on(master, confirm)
    link = node_link(port, Path("/dev/full"))  # every write: no space left on device
    try:
        with caplog.at_level(logging.WARNING, "ota_hil.rigs.serial"):
            await link.open()
            await link._transmit(FRAME, "node-0", deque())  # the reader thread is alive
    finally:
        link.close()
        stop()
    reports = [r for r in caplog.records if "cannot write the port log" in r.getMessage()]
    assert len(reports) == 1 and "No space left" in reports[0].getMessage()


# -- the session and the inventory -------------------------------------------------------


async def test_a_silent_board_cancels_the_session_with_the_reason(tmp_path: Path) -> None:
    master, port = pty_pair()
    stop = board_on(master, lambda packet: None)
    link = node_link(port, tmp_path / "c.log")
    await link.open()
    session, actions = session_for(link), []
    try:
        await asyncio.wait_for(link.run(session, actions.append), 10)
    finally:
        link.close()
        stop()
    assert session.done
    reason = session.results["node-0"].reason or ""
    assert reason.startswith("radio link failed:") and "did not confirm transmit" in reason


async def test_a_stale_confirmation_is_not_taken_for_the_sessions(tmp_path: Path) -> None:
    master, port = pty_pair()
    stop = board_on(master, lambda packet: None)
    link = node_link(port, tmp_path / "c.log")
    await link.open()
    first = link._seq + 1  # what the session's first transmit will be numbered
    os.write(master, encode_packet(TransmitDone(first, 10)))  # left from an earlier session
    await until(lambda: not link._queue().empty())
    session: BroadcastSession = session_for(link)
    try:
        await asyncio.wait_for(link.run(session, lambda action: None), 10)
    finally:
        link.close()
        stop()
    assert f"did not confirm transmit {first} within" in (session.results["node-0"].reason or "")
    assert (
        f"ignored (before the session): TransmitDone(seq={first}"
        in (tmp_path / "c.log").read_text()
    )


async def test_a_stuck_session_fails_its_nodes(tmp_path: Path) -> None:
    class Stuck(BroadcastSession):
        def start(self, now: float) -> list[Action]:
            super().start(now)
            return []  # its first transmit and timer lost: it waits for nothing

    master, port = pty_pair()
    stop = board_on(master, confirm)
    link = node_link(port, tmp_path / "c.log")
    await link.open()
    session = Stuck(session_for(link).plan)
    try:
        await asyncio.wait_for(link.run(session, lambda action: None), 10)
    finally:
        link.close()
        stop()
    assert session.done
    assert (session.results["node-0"].reason or "").startswith("session stuck: the session waits")


def answer_status(versions: deque[str | None]) -> Callable[[Packet], bytes | None]:
    """A board whose node answers each status query with the next of ``versions``."""

    def answer(packet: Packet) -> bytes | None:
        assert isinstance(packet, Send)
        reply = encode_packet(TransmitDone(packet.seq, 10))
        version = versions.popleft() if versions else None
        if version is not None:
            reply += encode_packet(Received(packet.address, -50, status_frame(version)))
        return reply

    return answer


async def test_a_node_that_answers_only_a_late_query_is_still_inventoried(
    tmp_path: Path,
) -> None:
    master, port = pty_pair()
    stop = board_on(master, answer_status(deque([None, None, None, None, "1.0.0"])))
    link = node_link(port, tmp_path / "c.log")
    link.status_timeout = 0.05
    link.QUERY_WITHIN = 20
    await link.open()
    try:
        assert await link.inventory() == {"node-0": "1.0.0"}
    finally:
        link.close()
        stop()


async def test_a_stale_status_is_not_taken_for_the_inventorys(tmp_path: Path) -> None:
    master, port = pty_pair()
    stop = board_on(master, answer_status(deque(["2.0.0"])))
    link = node_link(port, tmp_path / "c.log")
    await link.open()
    os.write(master, encode_packet(Received(0, -50, status_frame("1.0.0"))))  # from before
    await until(lambda: not link._queue().empty())
    try:
        assert await link.inventory() == {"node-0": "2.0.0"}
    finally:
        link.close()
        stop()


async def test_frames_left_over_from_a_query_are_logged_as_ignored(tmp_path: Path) -> None:
    master, port = pty_pair()

    def answer(packet: Packet) -> bytes | None:
        assert isinstance(packet, Send)
        frames = [status_frame("1.0.0"), status_frame("1.0.1")]
        replies = [encode_packet(Received(packet.address, -50, f)) for f in frames]
        return b"".join(replies) + encode_packet(TransmitDone(packet.seq, 10))

    stop = board_on(master, answer)
    link = node_link(port, tmp_path / "c.log")
    await link.open()
    try:
        assert await link.inventory() == {"node-0": "1.0.0"}
    finally:
        link.close()
        stop()
    text = (tmp_path / "c.log").read_text()
    late = status_frame("1.0.1").hex(" ")
    assert f"ignored (after querying node-0): frame from node-0: {late}" in text


# -- ports that go away ----------------------------------------------------------------


class TcpBoard:
    """A coordinator behind TCP (ser2net style) that can be unplugged and plugged back."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def plug(self) -> None:
        async def session(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.writers.append(w)
            reader = PacketReader()
            while data := await r.read(4096):
                for packet in reader.feed(data):
                    if isinstance(packet, Send):
                        w.write(encode_packet(TransmitDone(packet.seq, 10)))
                    elif isinstance(packet, StatusRequest):
                        w.write(encode_packet(replace(STATUS, seq=packet.seq)))

        self.server = await asyncio.start_server(session, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def unplug(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()


async def test_a_port_that_disappears_and_comes_back_is_reopened(tmp_path: Path) -> None:
    board = TcpBoard()
    await board.plug()
    link = node_link(f"socket://127.0.0.1:{board.port}", tmp_path / "c.log", reconnect_within=10)
    await link.open()
    try:
        await link._transmit(FRAME, "node-0", deque())
        await board.unplug()
        await asyncio.sleep(0.3)
        await board.plug()  # same port: the board is back
        async with asyncio.timeout(10):
            while True:
                try:
                    await link._transmit(FRAME, "node-0", deque())
                    break
                except LinkError:
                    await asyncio.sleep(0.1)  # not reconnected yet
    finally:
        link.close()
        await board.unplug()
    text = (tmp_path / "c.log").read_text()
    assert "port lost" in text and "port back" in text


async def test_a_transmit_waits_for_a_port_being_reopened(tmp_path: Path) -> None:
    board = TcpBoard()
    await board.plug()
    link = node_link(f"socket://127.0.0.1:{board.port}", tmp_path / "c.log", reconnect_within=10)
    await link.open()
    try:
        await board.unplug()
        await until(lambda: link.link.reopening)
        transmit = asyncio.create_task(link._transmit(FRAME, "node-0", deque()))
        await board.plug()
        await asyncio.wait_for(transmit, 10)
    finally:
        link.close()
        await board.unplug()
    assert not link.link.reopening


async def test_a_port_that_does_not_come_back_is_given_up_with_the_reason(tmp_path: Path) -> None:
    board = TcpBoard()
    await board.plug()
    link = node_link(f"socket://127.0.0.1:{board.port}", tmp_path / "c.log", reconnect_within=0.5)
    await link.open()
    try:
        await board.unplug()
        errors: list[str] = []
        async with asyncio.timeout(10):
            while not any("did not come back" in e for e in errors):
                try:
                    await link._transmit(FRAME, "node-0", deque())
                except LinkError as exc:
                    errors.append(str(exc))  # perhaps a write error first, then the verdict
                await asyncio.sleep(0.05)
        assert "did not come back within 0.5 s" in errors[-1]
        assert f"full log: {tmp_path / 'c.log'}" in errors[-1]
    finally:
        link.close()


class GatedLink(SerialLink):
    """A SerialLink whose reopening waits at a gate the test opens."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.gate.set()
        self.at_gate = threading.Event()

    def _open(self) -> serial.SerialBase:
        if not self.gate.is_set():
            self.at_gate.set()
            self.gate.wait(5)
        return super()._open()


async def test_a_link_closed_while_reopening_does_not_keep_the_new_port(tmp_path: Path) -> None:
    board = TcpBoard()
    await board.plug()
    link = GatedLink(f"socket://127.0.0.1:{board.port}", log_path=tmp_path / "c.log")
    link.CLOSE_WAIT = 0.05
    delivered: list[Packet | LinkLost] = []
    link.start(asyncio.get_running_loop(), delivered.append)
    reader = link._reader
    assert reader is not None
    try:
        link.gate.clear()
        await board.unplug()
        await board.plug()  # back, but the reopen waits at the gate
        assert await asyncio.to_thread(link.at_gate.wait, 5)
        link.close()  # gives up waiting for the reader, which is still opening
        link.gate.set()
        await asyncio.to_thread(reader.join, 5)
        assert not reader.is_alive()
        assert link._port is None, "the port opened after close() was kept"
        assert not any(isinstance(item, LinkLost) for item in delivered)
    finally:
        link.gate.set()
        link.close()
        await board.unplug()


def test_a_free_port_number_is_not_listening() -> None:
    """(Guards the test above: a port nobody listens on refuses connections here.)"""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
