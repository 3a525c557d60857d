"""The serial link to a coordinator board, over a real pty and a real TCP port (socket://, as
ser2net): a missing port, a board sending garbage, a board that goes silent, a port that
disappears and comes back. Nothing here is mocked; the "board" is a few lines of test."""

from __future__ import annotations

import asyncio
import os
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.gateway.distribution.plan import SessionPlan
from harness.gateway.distribution.session import BroadcastSession
from harness.nodeproto.hostproto import (
    Packet,
    PacketReader,
    Send,
    TransmitDone,
    encode_packet,
)
from rigs.link import SerialNodeLink
from rigs.serial_link import LinkError, SerialLink

FRAME = bytes(range(10))


def pty_pair() -> tuple[int, str]:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    return master, os.ttyname(slave)


def board_on(master: int, answer: Callable[[Packet], bytes | None]) -> Callable[[], None]:
    """A coordinator on the pty's master side: decodes what the host sends, answers."""
    reader = PacketReader()
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = os.read(master, 4096)
        except OSError:
            return
        for packet in reader.feed(data):
            reply = answer(packet)  # type: ignore[arg-type]
            if reply:
                os.write(master, reply)

    loop.add_reader(master, readable)
    return lambda: loop.remove_reader(master)


def node_link(port: str, log: Path, **kw: float) -> SerialNodeLink:
    link = SerialNodeLink(SerialLink(port, log_path=log, **kw), {"node-0": 0}, 64)
    link.TX_TIMEOUT = 0.3
    return link


async def test_a_missing_port_is_a_clear_error(tmp_path: Path) -> None:
    link = node_link("/dev/ota-hil-no-such-port", tmp_path / "c.log")
    with pytest.raises(LinkError, match="cannot open the coordinator port /dev/ota-hil-no-such"):
        link.open()


async def test_a_board_that_confirms_a_transmit(tmp_path: Path) -> None:
    master, port = pty_pair()

    def answer(packet: Packet) -> bytes | None:
        assert isinstance(packet, Send) and packet.address == 0 and packet.frame == FRAME
        return encode_packet(TransmitDone(packet.seq, 1234))

    stop = board_on(master, answer)
    link = node_link(port, tmp_path / "c.log")
    link.open()
    try:
        await link._transmit(FRAME, "node-0", deque())
    finally:
        link.close()
        stop()
    text = (tmp_path / "c.log").read_text()
    assert "Send(seq=1, address=0" in text and "TransmitDone(seq=1, airtime_us=1234)" in text
    assert ">>" in text and "<<" in text  # the raw bytes both ways, in hex


async def test_a_board_sending_garbage_fails_the_transmit_with_what_came(tmp_path: Path) -> None:
    master, port = pty_pair()
    garbage = b"\xde\xad\xbe\xef\x00\x01\x02\x00"
    stop = board_on(master, lambda packet: garbage)
    link = node_link(port, tmp_path / "c.log")
    link.open()
    try:
        with pytest.raises(LinkError) as failed:
            await link._transmit(FRAME, "node-0", deque())
    finally:
        link.close()
        stop()
    message = str(failed.value)
    assert "did not confirm transmit 1 within 0.3 s" in message
    assert "last received: de ad be ef 00 01 02 00" in message
    assert f"full log: {tmp_path / 'c.log'}" in message
    assert link.link.rejected, "the garbage was not reported as rejected"
    assert "rejected:" in (tmp_path / "c.log").read_text()


async def test_a_silent_board_cancels_the_session_with_the_reason(tmp_path: Path) -> None:
    master, port = pty_pair()
    stop = board_on(master, lambda packet: None)
    link = node_link(port, tmp_path / "c.log")
    link.open()
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
    session, actions = BroadcastSession(plan), []
    try:
        await asyncio.wait_for(link.run(session, actions.append), 10)
    finally:
        link.close()
        stop()
    assert session.done
    reason = session.results["node-0"].reason or ""
    assert reason.startswith("radio link failed:") and "did not confirm transmit" in reason


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
    link.open()
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


async def test_a_port_that_does_not_come_back_is_given_up_with_the_reason(tmp_path: Path) -> None:
    board = TcpBoard()
    await board.plug()
    link = node_link(f"socket://127.0.0.1:{board.port}", tmp_path / "c.log", reconnect_within=0.5)
    link.open()
    try:
        await board.unplug()
        errors: list[str] = []
        async with asyncio.timeout(10):
            while not any("did not come back" in e for e in errors):
                try:
                    await link._transmit(FRAME, "node-0", deque())
                except LinkError as exc:
                    errors.append(str(exc))  # first a write error, then the verdict
                await asyncio.sleep(0.05)
        assert "did not come back within 0.5 s" in errors[-1]
        assert f"full log: {tmp_path / 'c.log'}" in errors[-1]
    finally:
        link.close()


def test_a_free_port_number_is_not_listening() -> None:
    """(Guards the test above: a port nobody listens on refuses connections here.)"""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
