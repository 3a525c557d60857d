"""A board's serial console: everything it prints goes to a log file, and tests wait for
text with :meth:`Console.expect`, pexpect style, that never blocks forever.

One :class:`Console` per port per test: the caller gives the log path (the pytest wiring
puts them under ``reports/logs/<test>/<port name>.log``). The log holds the bytes exactly
as received, plus a marked line (``[ota-hil ...]``) where the port was lost, reopened or
given up.

A USB serial adapter that disappears (the board was power cycled, the hub reset) is
reopened with back-off for up to ``reconnect_within`` seconds; :meth:`Console.expect`
keeps waiting meanwhile. If the port does not come back, the next ``expect`` raises
:class:`ConsoleLost` with the reason and the log's path.
"""

from __future__ import annotations

import codecs
import logging
import re
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import serial

from .ports import read_burst

__all__ = ["Console", "ConsoleError", "ConsoleLost", "ConsoleTimeout"]

log = logging.getLogger("ota_hil.rigs.console")

#: Every read returns within this many seconds, so the reader notices close() and loss.
READ_TIMEOUT = 0.1
#: A write that cannot go out within this many seconds fails.
WRITE_TIMEOUT = 5.0
#: Characters of received text a timeout or loss message shows.
SHOWN = 500
#: Most bytes handled in one go by the reader.
#: Characters already matched that are kept for those messages.
_KEEP_MATCHED = 2000


class ConsoleError(Exception):
    """A console that cannot do what was asked."""


class ConsoleTimeout(ConsoleError, TimeoutError):
    """``expect`` did not see its pattern in time. The message shows the last characters
    received and the full log's path."""

    def __init__(self, message: str, *, pattern: str, tail: str, log_path: Path | None) -> None:
        super().__init__(message)
        self.pattern = pattern
        self.tail = tail
        self.log_path = log_path


class ConsoleLost(ConsoleError, ConnectionError):
    """The port is gone and did not come back (or could not be opened at all)."""

    def __init__(self, message: str, *, reason: str, log_path: Path | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.log_path = log_path


class Console:
    """A serial console on ``url``: a device path, ``socket://host:port`` (ser2net),
    ``rfc2217://host:port`` or ``loop://``, opened with ``serial.serial_for_url``.

    A reader thread appends what arrives to a buffer and to ``log_path`` (appended to,
    parent folders created). ``open_within`` seconds of retries are allowed for the
    first open (a board that was just powered on); ``reconnect_within`` after a loss.
    Received bytes are decoded as ``encoding`` with undecodable bytes replaced; the log
    keeps the raw bytes. ``expect`` searches at most the last ``max_buffer`` characters
    not yet matched.
    """

    def __init__(
        self,
        url: str,
        baud: int = 115200,
        log_path: str | Path | None = None,
        name: str | None = None,
        *,
        reconnect_within: float = 10.0,
        open_within: float = 0.0,
        encoding: str = "utf-8",
        max_buffer: int = 1 << 20,
    ) -> None:
        self.url = url
        self.baud = baud
        self.name = name or url
        self.log_path = Path(log_path) if log_path is not None else None
        self.reconnect_within = reconnect_within
        self.max_buffer = max_buffer
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._stopping = threading.Event()
        self._text = ""  # text kept: some already matched, then the unmatched part
        self._pos = 0  # where the unmatched part of _text starts
        self._received = 0  # characters received in all
        self._reconnecting: str | None = None
        self._lost: str | None = None
        self._log: IO[bytes] | None = None
        self._log_line_start = True
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        try:
            self._port = self._open_retrying(open_within)
        except BaseException:
            self._close_log()
            raise
        self._thread = threading.Thread(target=self._read_loop, name=f"console {self.name}")
        self._thread.daemon = True
        self._thread.start()

    def __repr__(self) -> str:
        state = "lost" if self._lost else "closed" if self._stopping.is_set() else "open"
        return f"<Console {self.name} {self.url} {state}>"

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what tests use ---------------------------------------------------------------

    def expect(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
        """Wait up to ``timeout`` seconds for ``pattern`` (a regex) in the text received
        since the last match; return the match (``match.string`` is that text) and move
        past it. :class:`ConsoleTimeout` if it does not come, :class:`ConsoleLost` if
        the port is gone for good."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        if not isinstance(regex.pattern, str):
            raise TypeError("expect takes a str pattern (the console decodes what it receives)")
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                unmatched = self._text[self._pos :]
                match = regex.search(unmatched)
                if match is not None:
                    self._pos += match.end()
                    return match
                if self._lost is not None:
                    raise self._lost_error()
                if self._stopping.is_set():
                    raise ConsoleError(f"console {self.name} is closed")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout_error(regex.pattern, timeout, len(unmatched))
                self._cond.wait(remaining)

    def send(self, data: str | bytes) -> None:
        """Write ``data`` (text is encoded as UTF-8). :class:`ConsoleLost` while the port
        is gone; :class:`ConsoleError` if it cannot go out within 5 s."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        with self._write_lock:
            if self._lost is not None:
                raise self._lost_error()
            port = self._port
            try:
                port.write(raw)
            except serial.SerialTimeoutException:
                raise ConsoleError(
                    f"console {self.name}: could not send {len(raw)} bytes within "
                    f"{WRITE_TIMEOUT:g} s"
                ) from None
            except (serial.SerialException, OSError) as exc:
                reason = self._reconnecting or _describe(exc)
                raise ConsoleLost(
                    f"console {self.name} ({self.url}): cannot send, the port is gone "
                    f"({reason}); full log: {self._log_name()}",
                    reason=reason,
                    log_path=self.log_path,
                ) from None

    def sendline(self, text: str = "") -> None:
        self.send(text + "\n")

    def clear(self) -> None:
        """Forget what was received and not yet matched (e.g. before a reset)."""
        with self._cond:
            self._pos = len(self._text)

    @property
    def buffer(self) -> str:
        """The text received since the last match (at most ``max_buffer`` characters)."""
        with self._cond:
            return self._text[self._pos :]

    @property
    def reconnecting(self) -> str | None:
        """Why the port is being reopened right now, or None."""
        return self._reconnecting

    @property
    def lost(self) -> str | None:
        """Why the port is gone for good, or None."""
        return self._lost

    def close(self) -> None:
        """Stop the reader, close the port and the log. Safe to call twice."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=2 * READ_TIMEOUT + 1.0)
        _close_quietly(self._port)
        self._close_log()

    # --- the reader thread ------------------------------------------------------------

    def _open(self) -> serial.SerialBase:
        options: dict[str, Any] = {
            "baudrate": self.baud,
            "timeout": READ_TIMEOUT,
            "write_timeout": WRITE_TIMEOUT,
        }
        if "://" not in self.url:
            options["exclusive"] = True  # a second process on the same port fails to open
        return serial.serial_for_url(self.url, **options)

    def _open_retrying(self, within: float) -> serial.SerialBase:
        deadline = time.monotonic() + within
        delay = 0.05
        while True:
            try:
                return self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = _describe(exc)
                    waited = f" (tried for {within:g} s)" if within > 0 else ""
                    raise ConsoleLost(
                        f"cannot open console {self.name} ({self.url}){waited}: {reason}",
                        reason=reason,
                        log_path=self.log_path,
                    ) from None
            if self._stopping.wait(min(delay, remaining)):
                raise ConsoleError(f"console {self.name} closed while opening")
            delay = min(delay * 2, 1.0)

    def _read_loop(self) -> None:
        port = self._port
        while not self._stopping.is_set():
            try:
                data = read_burst(port)
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                # TypeError / AttributeError: pyserial's posix read on an fd closed under it.
                if self._stopping.is_set():
                    return
                reopened = self._reconnect(port, exc)
                if reopened is None:
                    return
                port = reopened
                continue
            if data:
                self._feed(data)

    def _feed(self, data: bytes) -> None:
        self._write_log(data)
        text = self._decoder.decode(data)
        if not text:
            return
        with self._cond:
            self._text += text
            self._received += len(text)
            if self._pos > 32 * _KEEP_MATCHED:
                cut = self._pos - _KEEP_MATCHED
                self._text = self._text[cut:]
                self._pos -= cut
            excess = len(self._text) - self._pos - self.max_buffer
            if excess > 0:  # nobody is matching: keep the newest max_buffer characters
                self._pos += excess
                cut = max(0, self._pos - _KEEP_MATCHED)
                self._text = self._text[cut:]
                self._pos -= cut
            self._cond.notify_all()

    def _reconnect(self, port: serial.SerialBase, exc: BaseException) -> serial.SerialBase | None:
        reason = _describe(exc)
        log.warning(
            "console %s (%s) lost: %s; reopening for up to %g s",
            self.name,
            self.url,
            reason,
            self.reconnect_within,
        )
        self._mark(f"port lost: {reason}; reopening for up to {self.reconnect_within:g} s")
        self._reconnecting = reason
        _close_quietly(port)
        started = time.monotonic()
        deadline = started + self.reconnect_within
        delay = 0.05
        last = reason
        while True:
            if self._stopping.wait(min(delay, max(0.0, deadline - time.monotonic()))):
                return None
            try:
                reopened = self._open()
            except (serial.SerialException, OSError, ValueError) as error:
                last = _describe(error)
            else:
                took = time.monotonic() - started
                log.warning("console %s reopened after %.1f s", self.name, took)
                self._mark(f"port reopened after {took:.1f} s")
                with self._write_lock:
                    self._port = reopened
                self._reconnecting = None
                return reopened
            if time.monotonic() >= deadline:
                break
            delay = min(delay * 2, 1.0)
        lost = f"{reason}; not back within {self.reconnect_within:g} s (last error: {last})"
        log.error("console %s (%s) is gone: %s", self.name, self.url, lost)
        self._mark(f"port gone: {lost}")
        with self._cond:
            self._lost = lost
            self._reconnecting = None
            self._cond.notify_all()
        return None

    # --- the log ----------------------------------------------------------------------

    def _write_log(self, data: bytes) -> None:
        if self._log is None:
            return
        try:
            self._log.write(data)
            self._log.flush()
        except (OSError, ValueError) as exc:  # a full disk must not stop the reader
            log.error("console %s: cannot write %s: %s", self.name, self.log_path, exc)
            self._close_log()
            return
        self._log_line_start = data.endswith(b"\n")

    def _mark(self, event: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
        lead = b"" if self._log_line_start else b"\n"
        self._write_log(lead + f"[ota-hil {stamp}] {event}\n".encode())

    def _close_log(self) -> None:
        log_file, self._log = self._log, None
        if log_file is not None:
            log_file.close()

    def _log_name(self) -> str:
        return str(self.log_path) if self.log_path is not None else "(no log file)"

    # --- messages ---------------------------------------------------------------------

    def _tail_text(self) -> str:
        tail = self._text[-SHOWN:]
        shown = _printable(tail)
        if not shown:
            return "  (nothing)"
        more = "..." if self._received > len(tail) else ""
        lines = (more + shown).split("\n")
        if len(lines) > 1 and not lines[-1]:
            lines.pop()  # the text ends with a line end
        return "\n".join(f"  | {line}" for line in lines)

    def _timeout_error(self, pattern: str, timeout: float, unmatched: int) -> ConsoleTimeout:
        shown = min(SHOWN, len(self._text))
        state = f"\nthe port is being reopened ({self._reconnecting})" if self._reconnecting else ""
        count = f"all {shown}" if shown == self._received else f"last {shown} of {self._received}"
        message = (
            f"console {self.name} ({self.url}): no match for '{pattern}' within {timeout:g} s"
            f"{state}\n{count} characters received ({unmatched} since the last match):\n"
            f"{self._tail_text()}\nfull log: {self._log_name()}"
        )
        return ConsoleTimeout(
            message, pattern=pattern, tail=self._text[-SHOWN:], log_path=self.log_path
        )

    def _lost_error(self) -> ConsoleLost:
        reason = self._lost or "unknown"
        message = (
            f"console {self.name} ({self.url}) is gone: {reason}\n"
            f"last characters received:\n{self._tail_text()}\n"
            f"full log: {self._log_name()}"
        )
        return ConsoleLost(message, reason=reason, log_path=self.log_path)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _close_quietly(port: serial.SerialBase) -> None:
    try:
        port.close()
    except Exception as exc:  # closing a vanished device can fail in many ways
        log.debug("closing %s: %s", getattr(port, "port", port), exc)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _printable(text: str) -> str:
    """Text with line ends as newlines and other control characters (ANSI escapes, a lone
    \\r, ...) shown as escapes."""
    text = text.replace("\r\n", "\n")
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
