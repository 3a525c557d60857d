"""A TCP proxy between one side's MQTT clients and the broker, for link faults.

Faults injected in the proxy work the same whatever the broker backend is (embedded,
mosquitto, external): the broker going away, resent (duplicated) and reordered PUBLISH
packets. Only the fixed header and a PUBLISH's topic are parsed; every other byte is
forwarded as it came, so MQTT 3.1.1 and 5 both pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from ..aio import cancel_and_wait
from ..mqtt import BrokerUrl

log = logging.getLogger("ota_hil.faults")

#: ``on_fault(on, what)``, e.g. ``("broker", "down")`` or ``("mqtt", "reorder a/# x1")``.
FaultCallback = Callable[[str, str], None]

DIRECTIONS = ("up", "down", "both")
_PUBLISH = 3
_DISCONNECT = 14
_DUP = 0x08
_CLOSE_TIMEOUT = 1.0
# Lets down() keep the port bound while nobody listens on it, so up() gets it back.
_REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


class MalformedPacket(ValueError):
    """Bytes that cannot be an MQTT packet; the connection they came on is closed."""


def check_filter(topic_filter: str) -> None:
    """Raise ValueError unless ``topic_filter`` is a valid MQTT subscription filter."""
    levels = topic_filter.split("/")
    for n, level in enumerate(levels):
        if ("#" in level and (level != "#" or n != len(levels) - 1)) or (
            "+" in level and level != "+"
        ):
            raise ValueError(
                f"topic filter {topic_filter!r}: '#' must be the last level and '+' and '#'"
                " a whole level"
            )
    if not topic_filter:
        raise ValueError("topic filter is empty")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching: ``+`` is one level, ``#`` the rest (and the parent); a wildcard in the
    first level does not match ``$`` topics."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want, have = topic_filter.split("/"), topic.split("/")
    for n, level in enumerate(want):
        if level == "#":
            return True
        if n >= len(have) or (level != "+" and level != have[n]):
            return False
    return len(want) == len(have)


@dataclass
class _Rule:
    kind: str  # "duplicate" or "reorder"
    topic_filter: str
    direction: str
    times: int | None
    used: int = 0

    @property
    def label(self) -> str:
        where = "" if self.direction == "both" else f" {self.direction}"
        count = "" if self.times is None else f" x{self.times}"
        return f"{self.kind} {self.topic_filter}{where}{count}"

    def applies(self, direction: str, topic: str) -> bool:
        return self.direction in ("both", direction) and topic_matches(self.topic_filter, topic)


@dataclass
class _Held:
    frames: list[bytes]
    timer: asyncio.TimerHandle


@dataclass
class _Link:
    """One proxied connection: the client's socket and ours to the broker."""

    client: str
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    upstream_reader: asyncio.StreamReader
    upstream_writer: asyncio.StreamWriter
    held: dict[str, _Held] = field(default_factory=dict)

    def writer(self, direction: str) -> asyncio.StreamWriter:
        return self.upstream_writer if direction == "up" else self.client_writer


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes, int]:
    """One packet as ``(first byte, whole packet, fixed header length)``.

    Raises IncompleteReadError at end of stream, MalformedPacket on a remaining length
    longer than the 4 bytes MQTT allows."""
    first = await reader.readexactly(1)
    header = bytearray(first)
    length = 0
    for shift in range(0, 28, 7):
        byte = (await reader.readexactly(1))[0]
        header.append(byte)
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        raise MalformedPacket("remaining length runs past 4 bytes")
    body = await reader.readexactly(length) if length else b""
    return first[0], bytes(header) + body, len(header)


def publish_topic(packet: bytes, header_length: int) -> str:
    """The topic of a PUBLISH (first in both MQTT 3.1.1 and 5); "" when it has none."""
    body = packet[header_length:]
    size = int.from_bytes(body[:2], "big")
    return body[2 : 2 + size].decode("utf-8", errors="replace")


class MqttFaultProxy:
    """Loopback proxy in front of ``upstream``; point the clients to fault at :attr:`url`.

    ``down()``/``up()`` make the broker unreachable for them; ``duplicate()`` and
    ``reorder()`` tamper with matching PUBLISH packets, in either or both directions
    ("up": client to broker, "down": broker to client)."""

    def __init__(
        self,
        upstream: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        on_fault: FaultCallback | None = None,
        hold_timeout: float = 1.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.upstream = BrokerUrl.parse(upstream)
        self.host = host
        self.port = port
        self.on_fault = on_fault
        #: How long reorder() holds a message when no other follows it.
        self.hold_timeout = hold_timeout
        self.connect_timeout = connect_timeout
        self.stats: dict[str, int] = dict.fromkeys(
            ("connections", "published_up", "published_down", "duplicated", "reordered", "refused"),
            0,
        )
        self._server: asyncio.Server | None = None
        #: While down without ``reset``: a bound, non-listening socket keeping our port.
        self._placeholder: socket.socket | None = None
        self._url: str | None = None
        self._down = False
        self._stopping = False
        self._rules: list[_Rule] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``; valid once :meth:`start` has returned."""
        if self._url is None:
            raise RuntimeError("MQTT fault proxy has not been started")
        return self._url

    @property
    def is_down(self) -> bool:
        """Between :meth:`down` and :meth:`up`."""
        return self._down

    async def start(self) -> None:
        if self._url is not None:
            raise RuntimeError("MQTT fault proxy already started")
        await self._listen()
        self._url = str(BrokerUrl(self.host, self.port))
        log.debug("MQTT fault proxy %s -> %s", self._url, self.upstream)

    async def stop(self) -> None:
        """Close the listener and every connection; safe to call twice."""
        self._stopping = True
        await self._unlisten()
        await cancel_and_wait(*self._tasks)
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def down(self, *, reset: bool = False) -> None:
        """The broker is gone: cut every connection now; until :meth:`up`, new ones are refused.

        By default the proxy stops listening (the port stays reserved), so a connect fails at
        once with "connection refused", as with a stopped broker. ``reset=True`` accepts and
        then resets them instead (counted in ``stats["refused"]``); note that aiomqtt then
        waits out its whole connect timeout, since it ignores a loss before the CONNACK."""
        if self._down:
            return
        self._down = True
        log.info("MQTT fault proxy %s: broker down", self._url)
        self._fault("broker", "down")
        if not reset and self._server is not None:
            self._placeholder = _reserve(self.host, self.port)
            await self._unlisten()
        await cancel_and_wait(*self._tasks)

    async def up(self) -> None:
        """Accept and proxy connections again (on the same port)."""
        if not self._down:
            return
        if self._server is None and self._url is not None and not self._stopping:
            await self._listen()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        self._down = False
        log.info("MQTT fault proxy %s: broker up", self._url)
        self._fault("broker", "up")

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_port=_REUSE_PORT
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    def duplicate(
        self, topic_filter: str = "#", *, direction: str = "both", times: int | None = None
    ) -> None:
        """Forward each matching PUBLISH twice, the copy as a resend (DUP set for QoS > 0, same
        packet id), for ``times`` messages (None: until :meth:`clear`)."""
        self._add(_Rule("duplicate", topic_filter, direction, times))

    def reorder(
        self, topic_filter: str = "#", *, direction: str = "both", times: int | None = None
    ) -> None:
        """Hold each matching PUBLISH until the next PUBLISH on its connection and direction has
        gone (adjacent pairs swap), or ``hold_timeout`` has passed; ``times`` counts held
        messages (None: until :meth:`clear`)."""
        self._add(_Rule("reorder", topic_filter, direction, times))

    def clear(self) -> None:
        """Stop duplicating and reordering (messages already held still go out)."""
        rules, self._rules = self._rules, []
        for rule in rules:
            self._end(rule)

    def _add(self, rule: _Rule) -> None:
        check_filter(rule.topic_filter)
        if rule.direction not in DIRECTIONS:
            raise ValueError(f"direction {rule.direction!r}: use one of {', '.join(DIRECTIONS)}")
        if rule.times is not None and rule.times < 1:
            raise ValueError(f"times must be at least 1 or None (got {rule.times})")
        self._rules.append(rule)
        log.info("MQTT fault proxy %s: %s", self._url, rule.label)
        self._fault("mqtt", rule.label)

    def _end(self, rule: _Rule) -> None:
        log.info("MQTT fault proxy %s: %s ended", self._url, rule.label)
        self._fault("mqtt", f"{rule.label} ended")

    def _fault(self, on: str, what: str) -> None:
        if self.on_fault is None:
            return
        try:
            self.on_fault(on, what)
        except Exception:
            # A broken observer must not break the link it observes.
            log.exception("on_fault(%r, %r) failed", on, what)

    def _use(self, kind: str, direction: str, topic: str) -> bool:
        """Whether a ``kind`` rule takes this message; counts it against the rule's times."""
        for rule in self._rules:
            if rule.kind == kind and rule.applies(direction, topic):
                rule.used += 1
                if rule.times is not None and rule.used >= rule.times:
                    self._rules.remove(rule)
                    self._end(rule)
                return True
        return False

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down or self._stopping:
            self.stats["refused"] += 1
            _reset(writer)
            return
        peer = _name(writer.get_extra_info("peername"))
        task = asyncio.create_task(
            self._serve(reader, writer, f"client {peer}"), name=f"mqtt-proxy:client {peer}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str
    ) -> None:
        link: _Link | None = None
        graceful = False
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_reader, up_writer = await asyncio.open_connection(
                        self.upstream.host, self.upstream.port
                    )
            except (OSError, TimeoutError) as exc:
                log.warning("%s: broker %s unreachable (%s); closing", client, self.upstream, exc)
                graceful = True
                return
            link = _Link(client, reader, writer, up_reader, up_writer)
            self.stats["connections"] += 1
            log.debug("%s: connected through to %s", client, self.upstream)
            pumps = [
                asyncio.create_task(self._pump(link, d), name=f"mqtt-proxy:{client}:{d}")
                for d in ("up", "down")
            ]
            try:
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                for pump in done:
                    if pump.exception() is not None:
                        log.error("%s: proxy failed", client, exc_info=pump.exception())
            finally:
                await cancel_and_wait(*pumps)
            graceful = True
        finally:
            writers = [writer] if link is None else [writer, link.upstream_writer]
            if link is not None:
                for held in link.held.values():
                    held.timer.cancel()
            await _close(writers, graceful)

    async def _pump(self, link: _Link, direction: str) -> None:
        """Forward packets one way until end of stream, an error or a malformed packet."""
        if direction == "up":
            reader, peer = link.client_reader, link.client
        else:
            reader, peer = link.upstream_reader, f"broker {self.upstream}"
        writer = link.writer(direction)
        offset = 0
        try:
            while True:
                first, packet, header_length = await read_packet(reader)
                offset += len(packet)
                for chunk in self._route(link, direction, first, packet, header_length):
                    writer.write(chunk)
                await writer.drain()
        except asyncio.IncompleteReadError:
            log.debug("%s: closed its connection (byte %d)", peer, offset)
        except MalformedPacket as exc:
            log.warning(
                "%s: malformed packet at byte offset %d: %s; closing this connection",
                peer,
                offset,
                exc,
            )
        except OSError as exc:
            log.debug("%s: connection lost: %s", link.client, exc)
        # The peer has finished; what it sent and is held still goes before the close.
        self._release(link, direction)

    def _route(
        self, link: _Link, direction: str, first: int, packet: bytes, header_length: int
    ) -> list[bytes]:
        """What goes out for one packet read: none (held), the packet, or more."""
        if first >> 4 != _PUBLISH:
            if first >> 4 == _DISCONNECT:
                self._release(link, direction)  # a clean disconnect loses nothing held
            return [packet]
        self.stats[f"published_{direction}"] += 1
        topic = publish_topic(packet, header_length)
        out = [packet]
        if self._use("duplicate", direction, topic):
            qos = (first >> 1) & 0x03
            copy = bytes([first | _DUP]) + packet[1:] if qos else packet
            out.append(copy)
            self.stats["duplicated"] += 1
            log.debug("%s: duplicated %s %r", link.client, direction, topic)
        held = link.held.pop(direction, None)
        if held is not None:
            held.timer.cancel()
            self.stats["reordered"] += 1
            log.debug("%s: reordered %s %r before a held message", link.client, direction, topic)
            return out + held.frames
        if self._use("reorder", direction, topic):
            timer = asyncio.get_running_loop().call_later(
                self.hold_timeout, self._release, link, direction
            )
            link.held[direction] = _Held(out, timer)
            return []
        return out

    def _release(self, link: _Link, direction: str) -> None:
        held = link.held.pop(direction, None)
        if held is None:
            return
        held.timer.cancel()
        writer = link.writer(direction)
        if not writer.is_closing():
            writer.write(b"".join(held.frames))


def _name(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _reserve(host: str, port: int) -> socket.socket | None:
    """A socket bound to ``host:port`` that does not listen: connects are refused, and nobody
    else can take the port meanwhile (None where SO_REUSEPORT is missing)."""
    if not _REUSE_PORT:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        log.warning("cannot reserve %s:%d while down (%s); up() may find it taken", host, port, exc)
        return None
    return sock


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a host without a listener would answer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(writers: list[asyncio.StreamWriter], graceful: bool) -> None:
    """Close ``writers`` (flushing first when ``graceful``) and wait until they are closed."""
    for writer in writers:
        if graceful:
            writer.close()
        else:
            writer.transport.abort()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            for writer in writers:
                with contextlib.suppress(OSError):  # a reset peer is no news here
                    await writer.wait_closed()
    except TimeoutError:
        log.debug("a peer reads nothing; dropping what it was still sent")
    finally:
        for writer in writers:
            writer.transport.abort()  # a no-op once closed
