"""The host end of a radio coordinator's UART (docs/host-protocol.md), over pyserial.

A reader thread turns bytes into packets and hands them to the event loop; writes go
straight to the port. Every read is bounded (the port's timeout), a port that vanishes is
reopened for a while before the link gives up, and whatever goes wrong is reported with
the bytes last received and the path of the port's log, where every byte and every
decoded packet is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import serial

from harness.nodeproto.hostproto import Packet, PacketReader, Rejected, encode_packet

from .ports import read_burst
from .power import reset_board

log = logging.getLogger("ota_hil.rigs.serial")


class LinkError(Exception):
    """The coordinator link failed; the message says how, what came last, and where the
    full log is."""


class LinkLost:
    """Handed to the packet sink when the port is gone for good."""

    def __init__(self, error: LinkError) -> None:
        self.error = error


PacketSink = Callable[[Packet | LinkLost], None]


class PortLog:
    """One port's log for one test: raw bytes in hex and every decoded packet, with times."""

    def __init__(self, path: Path | None, name: str) -> None:
        self.path = path
        self.name = name
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    def write(self, direction: str, text: str) -> None:
        if self._file is None:
            return
        with self._lock:
            self._file.write(f"{time.monotonic() - self._t0:10.4f} {direction} {text}\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            with self._lock:
                self._file.close()
            self._file = None


class SerialLink:
    """A coordinator on ``url``: a device path, ``socket://host:port`` or ``rfc2217://``."""

    def __init__(
        self,
        url: str,
        baud: int = 115200,
        *,
        log_path: Path | None = None,
        reconnect_within: float = 10.0,
        read_timeout: float = 0.05,
    ) -> None:
        self.url = url
        self.baud = baud
        self.log = PortLog(log_path, url)
        self.reconnect_within = reconnect_within
        self.read_timeout = read_timeout
        self._port: serial.SerialBase | None = None
        self._write_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._last = deque(maxlen=64)  # the latest raw bytes, for error messages
        #: Bad packets received, with their reasons (in the log too).
        self.rejected: list[str] = []
        self.error: LinkError | None = None

    # -- opening and closing ---------------------------------------------------------------

    def _open(self) -> serial.SerialBase:
        try:
            return serial.serial_for_url(
                self.url, baudrate=self.baud, timeout=self.read_timeout, write_timeout=2.0
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise LinkError(f"cannot open the coordinator port {self.url}: {exc}") from None

    def start(self, loop: asyncio.AbstractEventLoop, sink: PacketSink) -> None:
        """Open the port and start delivering packets to ``sink`` on ``loop``."""
        self._port = self._open()
        self.log.write("--", f"opened {self.url} at {self.baud} baud")
        self._stop.clear()

        def deliver(item: Packet | LinkLost) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(sink, item)

        self._reader = threading.Thread(
            target=self._read, args=(deliver,), name=f"serial:{self.url}", daemon=True
        )
        self._reader.start()

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(2.0)
            self._reader = None
        if self._port is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                self._port.close()
            self._port = None
        self.log.write("--", "closed")
        self.log.close()

    def reset_board(self, line: str) -> None:
        """Reset the coordinator through its DTR or RTS line (rig file: coordinator.reset)."""
        if self._port is None:
            raise self.failure("cannot reset the board: the port is not open")
        reset_board(self._port, line)  # type: ignore[arg-type]
        self.log.write("--", f"board reset through {line.upper()}")

    # -- reading ---------------------------------------------------------------------------

    def _read(self, deliver: Callable[[Packet | LinkLost], None]) -> None:
        reader = PacketReader()
        while not self._stop.is_set():
            port = self._port
            try:
                if port is None:
                    raise serial.SerialException("port not open")
                data = read_burst(port)
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                if self._stop.is_set():
                    return
                if not self._reopen(f"{type(exc).__name__}: {exc}"):
                    deliver(LinkLost(self.error))  # type: ignore[arg-type]
                    return
                reader = PacketReader()  # a half packet from before the loss is lost
                continue
            if not data:
                continue
            self._last.extend(data)
            self.log.write("<<", data.hex(" "))
            for item in reader.feed(data):
                if isinstance(item, Rejected):
                    self.rejected.append(item.reason)
                    self.log.write("!!", f"rejected: {item.reason}")
                    log.warning("%s: rejected from the coordinator: %s", self.url, item.reason)
                else:
                    self.log.write("<=", repr(item))
                    deliver(item)

    def _reopen(self, why: str) -> bool:
        """The port went away (a USB board re-enumerating): try to get it back for a while."""
        self.log.write("--", f"port lost: {why}; reopening for {self.reconnect_within:g} s")
        log.warning("%s: port lost (%s); reopening", self.url, why)
        old, self._port = self._port, None
        if old is not None:
            with contextlib.suppress(serial.SerialException, OSError):
                old.close()
        deadline = time.monotonic() + self.reconnect_within
        delay = 0.05
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                self._port = self._open()
            except LinkError:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.log.write("--", "port back")
            log.info("%s: port back", self.url)
            return True
        self.error = self.failure(
            f"the coordinator port went away ({why}) and did not come back within "
            f"{self.reconnect_within:g} s"
        )
        return False

    # -- writing ---------------------------------------------------------------------------

    def send(self, packet: Packet) -> None:
        data = encode_packet(packet)
        with self._write_lock:
            port = self._port
            if port is None:
                raise self.error or self.failure("the coordinator port is not open")
            try:
                port.write(data)
                port.flush()
            except (serial.SerialException, OSError) as exc:
                raise self.failure(f"cannot write to the coordinator: {exc}") from None
        self.log.write("=>", repr(packet))
        self.log.write(">>", data.hex(" "))

    # -- telling what went wrong -----------------------------------------------------------

    @property
    def last_received(self) -> bytes:
        return bytes(self._last)

    def failure(self, what: str) -> LinkError:
        """A LinkError that shows the last bytes received and names the log."""
        last = self.last_received.hex(" ") or "nothing"
        where = f"; full log: {self.log.path}" if self.log.path else ""
        return LinkError(f"{self.url}: {what}; last received: {last}{where}")
