"""The host end of a radio coordinator's UART (docs/host-protocol.md), over pyserial.

A reader thread turns bytes into packets and hands them to the event loop; writes go
straight to the port. Every read is bounded (the port's timeout), a port that vanishes is
reopened for a while before the link gives up, and whatever goes wrong is reported with
the bytes last received and the path of the port's log, where every byte and every
decoded packet is written.

Opening, writing and resetting block (for up to the write timeout or the reset pulse):
coroutines run them in a thread (rigs.link does).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

import serial

from harness.nodeproto.hostproto import Packet, PacketReader, Rejected, encode_packet

from .ports import read_burst
from .power import reset_board

log = logging.getLogger("ota_hil.rigs.serial")

ResetLine = Literal["dtr", "rts", "none"]


class LinkError(Exception):
    """The coordinator link failed; the message says how, what came last, and where the
    full log is."""


class PortReopening(LinkError):
    """A send found the port gone while the reader gets it back: worth trying again."""


class LinkLost:
    """Handed to the packet sink when the port is gone for good."""

    def __init__(self, error: LinkError) -> None:
        self.error = error


PacketSink = Callable[[Packet | LinkLost], None]


class PortLog:
    """One port's log for one test: raw bytes in hex and every decoded packet, with times.

    A log that cannot be written (disk full, file closed under it) is reported once and
    otherwise ignored: losing the log must not take the link down with it.
    """

    def __init__(self, path: Path | None, name: str) -> None:
        self.path = path
        self.name = name
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._failed = False

    def write(self, direction: str, text: str) -> None:
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write(f"{time.monotonic() - self._t0:10.4f} {direction} {text}\n")
                self._file.flush()
            except (OSError, ValueError) as exc:
                self._report(exc)

    def close(self) -> None:
        with self._lock:
            file, self._file = self._file, None
            if file is not None:
                try:
                    file.close()
                except (OSError, ValueError) as exc:
                    self._report(exc)

    def _report(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            log.warning(
                "%s: cannot write the port log %s (%s); going on without it",
                self.name,
                self.path,
                exc,
            )


def _close_quietly(port: serial.SerialBase) -> None:
    """Close a port that may be half gone already: the port is done with either way."""
    # pyserial's socket:// close() drops its socket without closing it when shutdown()
    # fails, as it does once the peer has gone: close it here rather than leak it.
    sock = getattr(port, "_socket", None)
    try:
        port.close()
    except Exception as exc:
        log.debug("closing %s: %s", getattr(port, "port", port), exc)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


class SerialLink:
    """A coordinator on ``url``: a device path, ``socket://host:port`` or ``rfc2217://``.

    A device path is opened exclusively (an advisory lock): two links, or a link and a
    terminal program, on one board would steal each other's bytes. pyserial's URL
    handlers accept the flag but ignore it, so it is only asked for device paths.
    """

    #: How long close() waits for the reader thread to finish its current read or open.
    CLOSE_WAIT = 2.0
    #: How many rejected packets ``rejected`` keeps (``rejected_count`` counts them all).
    REJECTED_KEEP = 1000

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
        #: Held while the port object is used or swapped: no write to a closed port.
        self._write_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        self._reopening = threading.Event()
        self._last: deque[int] = deque(maxlen=64)  # the latest raw bytes, for error messages
        #: The latest bad packets received, with their reasons (all of them in the log).
        self.rejected: deque[str] = deque(maxlen=self.REJECTED_KEEP)
        self.rejected_count = 0
        self.error: LinkError | None = None

    @property
    def reopening(self) -> bool:
        """The port was lost and the reader is getting it back: sends fail meanwhile, and
        are worth trying again once this turns False."""
        return self._reopening.is_set() and not self._stop.is_set()

    # -- opening and closing ---------------------------------------------------------------

    def _open(self) -> serial.SerialBase:
        options: dict[str, Any] = {}
        if "://" not in self.url:
            options["exclusive"] = True
        try:
            port = serial.serial_for_url(
                self.url,
                baudrate=self.baud,
                timeout=self.read_timeout,
                write_timeout=2.0,
                do_not_open=True,
                **options,
            )
            try:
                port.open()
            except BaseException:
                _close_quietly(port)  # socket:// leaves its socket open when open() fails late
                raise
            return port
        except (serial.SerialException, OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise LinkError(
                    f"cannot open the coordinator port {self.url}: it is in use (another "
                    f"process or link has it open exclusively); close that first"
                ) from None
            raise LinkError(f"cannot open the coordinator port {self.url}: {exc}") from None

    def start(self, loop: asyncio.AbstractEventLoop, sink: PacketSink) -> None:
        """Open the port and start delivering packets to ``sink`` on ``loop``."""
        port = self._open()
        with self._write_lock:
            self._port = port
        self.log.write("--", f"opened {self.url} at {self.baud} baud")
        self._stop.clear()
        self.error = None

        def deliver(item: Packet | LinkLost) -> None:
            # RuntimeError: the loop closed since the check, nobody is listening any more.
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(sink, item)

        self._reader = threading.Thread(
            target=self._read, args=(deliver,), name=f"serial:{self.url}", daemon=True
        )
        self._reader.start()

    def close(self) -> None:
        self._stop.set()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not threading.current_thread():
            reader.join(self.CLOSE_WAIT)
        with self._write_lock:
            port, self._port = self._port, None
            if port is not None:
                _close_quietly(port)
        self.log.write("--", "closed")
        self.log.close()

    def reset_board(self, line: ResetLine) -> None:
        """Reset the coordinator through its DTR or RTS line (rig file: coordinator.reset).

        Nothing is written meanwhile; a line the port cannot drive is a LinkError.
        """
        with self._write_lock:
            port = self._port
            if port is None:
                raise self.failure("cannot reset the board: the port is not open")
            try:
                reset_board(port, line)  # type: ignore[arg-type]
            except (serial.SerialException, OSError) as exc:
                raise self.failure(f"cannot reset the board through {line.upper()}: {exc}") from exc
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
            except Exception as exc:  # whatever a read of a dying port raises, it is lost
                if self._stop.is_set():
                    return
                if not self._reopen(f"{type(exc).__name__}: {exc}"):
                    if not self._stop.is_set():
                        deliver(LinkLost(self.error))  # type: ignore[arg-type]
                    return
                reader.clear()  # a half packet from before the loss is lost
                continue
            if not data:
                continue
            self._last.extend(data)
            self.log.write("<<", data.hex(" "))
            for item in reader.feed(data):
                if isinstance(item, Rejected):
                    self.rejected.append(item.reason)
                    self.rejected_count += 1
                    self.log.write("!!", f"rejected: {item.reason}")
                    log.warning("%s: rejected from the coordinator: %s", self.url, item.reason)
                else:
                    self.log.write("<=", repr(item))
                    deliver(item)

    def _reopen(self, why: str) -> bool:
        """The port went away (a USB board re-enumerating): try to get it back for a while.

        False when it did not come back (``error`` says so) or the link was closed.
        """
        self.log.write("--", f"port lost: {why}; reopening for {self.reconnect_within:g} s")
        log.warning("%s: port lost (%s); reopening", self.url, why)
        self._reopening.set()
        try:
            with self._write_lock:
                old, self._port = self._port, None
                if old is not None:
                    _close_quietly(old)
            deadline = time.monotonic() + self.reconnect_within
            delay = 0.05
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    port = self._open()
                except LinkError:
                    self._stop.wait(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                with self._write_lock:
                    if self._stop.is_set():  # closed while this was opening: not ours to keep
                        _close_quietly(port)
                        return False
                    self._port = port
                self.log.write("--", "port back")
                log.info("%s: port back", self.url)
                return True
            if self._stop.is_set():
                return False
            self.error = self.failure(
                f"the coordinator port went away ({why}) and did not come back within "
                f"{self.reconnect_within:g} s"
            )
            return False
        finally:
            self._reopening.clear()

    # -- writing ---------------------------------------------------------------------------

    def send(self, packet: Packet) -> None:
        """Write ``packet``; raises LinkError when it cannot (``reopening`` tells whether
        the port is only momentarily gone)."""
        data = encode_packet(packet)
        with self._write_lock:
            port = self._port
            if port is None:
                if self.error is not None:
                    raise self.error
                if self.reopening:
                    raise self.failure("the coordinator port is being reopened", PortReopening)
                raise self.failure("the coordinator port is not open")
            self.log.write("=>", repr(packet))
            self.log.write(">>", data.hex(" "))
            try:
                port.write(data)
            except Exception as exc:
                what = f"cannot write to the coordinator: {type(exc).__name__}: {exc}"
                self.log.write("!!", what)
                raise self.failure(what) from exc

    # -- telling what went wrong -----------------------------------------------------------

    @property
    def last_received(self) -> bytes:
        return bytes(self._last)

    def failure(self, what: str, kind: type[LinkError] = LinkError) -> LinkError:
        """A LinkError that shows the last bytes received and names the log."""
        last = self.last_received.hex(" ") or "nothing"
        where = f"; full log: {self.log.path}" if self.log.path else ""
        return kind(f"{self.url}: {what}; last received: {last}{where}")
