"""Tests for rigs.console: expect on a real pty, loop://, logs, and ports that go away.

A pty pair stands in for a USB serial adapter (the test writes to the master as the board
would); a local TCP server stands in for ser2net, so a port can vanish and come back.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rigs.console import Console, ConsoleError, ConsoleLost, ConsoleTimeout


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    """(master fd, slave device path) of a fresh pseudo-terminal."""
    master, slave = os.openpty()
    yield master, os.ttyname(slave)
    for fd in (master, slave):
        with contextlib.suppress(OSError):
            os.close(fd)


@pytest.fixture
def consoles() -> Iterator[list[Console]]:
    """Consoles to close after the test, whatever happens."""
    opened: list[Console] = []
    yield opened
    for console in opened:
        console.close()


def read_master(master: int, size: int, timeout: float = 2.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < size and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            data += os.read(master, size - len(data))
    return data


class Ser2Net:
    """A one-connection TCP server on a fixed loopback port that can be stopped and
    restarted, like ser2net on a lab Pi whose USB adapter comes and goes."""

    def __init__(self) -> None:
        self.port = 0
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.start()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(1)
        listener.settimeout(5)
        self.port = listener.getsockname()[1]
        self.listener = listener

    def accept(self) -> socket.socket:
        assert self.listener is not None
        self.conn, _ = self.listener.accept()
        return self.conn

    def stop(self) -> None:
        for sock in (self.conn, self.listener):
            if sock is not None:
                sock.close()
        self.conn = self.listener = None


@pytest.fixture
def ser2net() -> Iterator[Ser2Net]:
    server = Ser2Net()
    yield server
    server.stop()


# --- expect ---------------------------------------------------------------------------


def test_expect_finds_a_pattern_split_across_chunks_and_logs_every_byte(
    pty: tuple[int, str], tmp_path: Path, consoles: list[Console]
) -> None:
    master, device = pty
    log_path = tmp_path / "logs" / "test_boot" / "node-0001.log"
    console = Console(device, 115200, log_path, "node-0001")
    consoles.append(console)
    chunks = [b"boot", b"ing...\r\nlog", b"in: ", b"\xff\xfe garbage\r\n", b"ready\r\n"]

    def board() -> None:
        for chunk in chunks:
            os.write(master, chunk)
            time.sleep(0.03)

    writer = threading.Thread(target=board)
    writer.start()
    match = console.expect(r"login:\s", timeout=2)
    assert match.group() == "login: " and match.string.startswith("booting...")
    assert console.expect("ready", timeout=2).group() == "ready"
    writer.join()
    console.close()
    assert log_path.read_bytes() == b"".join(chunks)  # raw bytes, undecodable ones included


def test_each_expect_starts_after_the_last_match(
    pty: tuple[int, str], consoles: list[Console]
) -> None:
    master, device = pty
    console = Console(device)
    consoles.append(console)
    os.write(master, b"step 1\nstep 2\n")
    assert console.expect(re.compile(r"step (\d)"), timeout=2).group(1) == "1"
    assert console.expect(r"step (\d)", timeout=2).group(1) == "2"
    with pytest.raises(ConsoleTimeout):
        console.expect(r"step (\d)", timeout=0.2)
    assert console.buffer == "\n"
    os.write(master, b"noise")
    console.expect("noi", timeout=2)
    console.clear()
    assert console.buffer == ""


def test_a_timeout_shows_the_last_text_and_names_the_full_log(
    pty: tuple[int, str], tmp_path: Path, consoles: list[Console]
) -> None:
    master, device = pty
    log_path = tmp_path / "node-0002.log"
    console = Console(device, log_path=log_path, name="node-0002")
    consoles.append(console)
    sent = b"E" * 2000 + b"\r\nlast words \x1b[31mred\x1b[0m\r\n$ "
    os.write(master, sent)
    console.expect(r"\$ ", timeout=2)  # everything has arrived
    started = time.monotonic()
    with pytest.raises(ConsoleTimeout) as caught:
        console.expect("login:", timeout=0.3)
    waited = time.monotonic() - started
    assert 0.3 <= waited < 1.5
    message = str(caught.value)
    assert message.startswith(
        f"console node-0002 ({device}): no match for 'login:' within 0.3 s\n"
        f"last 500 of {len(sent)} characters received (0 since the last match):\n"
    )
    assert "last words \\x1b[31mred\\x1b[0m" in message  # escapes shown, not obeyed
    assert "E" * 400 in message and "E" * 501 not in message
    assert message.endswith(f"\nfull log: {log_path}")
    assert caught.value.log_path == log_path and caught.value.pattern == "login:"
    assert isinstance(caught.value, TimeoutError)


def test_send_reaches_the_board(pty: tuple[int, str], consoles: list[Console]) -> None:
    master, device = pty
    console = Console(device)
    consoles.append(console)
    console.sendline("reboot")
    console.send(b"\x03")
    assert read_master(master, 8) == b"reboot\n\x03"


def test_loop_url(consoles: list[Console]) -> None:
    console = Console("loop://", name="loop")
    consoles.append(console)
    console.send("ping 42\n")
    assert console.expect(r"ping (\d+)", timeout=2).group(1) == "42"
    with pytest.raises(TypeError, match="str pattern"):
        console.expect(re.compile(b"ping"), timeout=0.1)  # type: ignore[arg-type]


def test_close_is_prompt_and_later_calls_say_so(
    pty: tuple[int, str], consoles: list[Console]
) -> None:
    _, device = pty
    console = Console(device)
    started = time.monotonic()
    console.close()
    console.close()
    assert time.monotonic() - started < 1.0
    with pytest.raises(ConsoleError, match="is closed"):
        console.expect("x", timeout=1)


# --- ports that are missing or go away ------------------------------------------------


def test_a_port_that_cannot_be_opened(tmp_path: Path) -> None:
    missing = str(tmp_path / "ttyUSB9")
    with pytest.raises(ConsoleLost, match=rf"cannot open console node-7 \({re.escape(missing)}\)"):
        Console(missing, name="node-7")
    started = time.monotonic()
    with pytest.raises(ConsoleLost, match=r"tried for 0\.3 s"):
        Console(missing, open_within=0.3)
    assert time.monotonic() - started >= 0.3


def test_a_port_that_comes_back_is_reopened(
    ser2net: Ser2Net, tmp_path: Path, consoles: list[Console]
) -> None:
    log_path = tmp_path / "node-0003.log"
    console = Console(f"socket://127.0.0.1:{ser2net.port}", log_path=log_path, name="node-0003")
    consoles.append(console)
    ser2net.accept().sendall(b"boot 1\n")
    console.expect("boot 1", timeout=2)

    ser2net.stop()  # the adapter vanishes
    time.sleep(0.3)
    with pytest.raises(ConsoleTimeout, match="the port is being reopened"):
        console.expect("boot 2", timeout=0.1)
    assert console.reconnecting is not None
    ser2net.start()  # and comes back on the same port
    board = ser2net.accept()
    # pyserial's socket:// open() drops what arrives while it opens, so the board keeps
    # printing, as a booting board does, until the console has seen it.
    for _ in range(50):
        board.sendall(b"boot 2\n")
        with contextlib.suppress(ConsoleTimeout):
            console.expect("boot 2", timeout=0.1)
            break
    else:
        pytest.fail("the console never got the board's output after the port came back")
    assert console.lost is None and console.reconnecting is None
    console.close()
    log = log_path.read_text()
    assert log.startswith("boot 1\n[ota-hil ")
    assert "] port lost: " in log and "] port reopened after " in log
    assert log.endswith("boot 2\n")


def test_a_port_that_stays_gone_is_reported_by_expect(
    ser2net: Ser2Net, tmp_path: Path, consoles: list[Console]
) -> None:
    log_path = tmp_path / "node-0004.log"
    url = f"socket://127.0.0.1:{ser2net.port}"
    console = Console(url, log_path=log_path, name="node-0004", reconnect_within=0.3)
    consoles.append(console)
    ser2net.accept().sendall(b"last breath\n")
    console.expect("breath", timeout=2)
    ser2net.stop()
    started = time.monotonic()
    with pytest.raises(ConsoleLost) as caught:
        console.expect("never", timeout=10)
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert message.startswith(f"console node-0004 ({url}) is gone: ")
    assert "not back within 0.3 s" in message and "last breath" in message
    assert message.endswith(f"full log: {log_path}")
    assert console.lost is not None and caught.value.log_path == log_path
    with pytest.raises(ConsoleLost):
        console.send("anyone?")
    assert "] port gone: " in log_path.read_text()


def test_a_pty_whose_other_end_closes_is_lost(
    pty: tuple[int, str], consoles: list[Console]
) -> None:
    master, device = pty
    console = Console(device, name="usb", reconnect_within=0.2)
    consoles.append(console)
    os.write(master, b"hello\n")
    console.expect("hello", timeout=2)
    os.close(master)  # the USB adapter is unplugged
    with pytest.raises(ConsoleLost, match=r"console usb .* is gone"):
        console.expect("again", timeout=5)
