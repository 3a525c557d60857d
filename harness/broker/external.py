"""A broker somebody else runs (a lab mosquitto, a JetLinks platform): we only check it is there."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from ..mqtt import BrokerUrl
from .base import Broker, BrokerUnavailable

_CONNACK = 0x20
_DISCONNECT = b"\xe0\x00"


class ExternalBroker(Broker):
    """Points at an existing broker; start checks it answers, stop leaves it alone.

    The check is an MQTT CONNECT, not a bare TCP connect: it proves an MQTT broker
    listens there, and a bare connect-and-close makes amqtt log a warning and leak
    its end of the socket.
    """

    kind = "external"

    def __init__(self, url: str | BrokerUrl, *, timeout: float = 3.0) -> None:
        super().__init__()
        self.target = BrokerUrl.parse(url) if isinstance(url, str) else url
        self.timeout = timeout

    async def start(self) -> None:
        target = self.target
        try:
            async with asyncio.timeout(self.timeout):
                code = await _connect_once(target)
        except TimeoutError:
            raise BrokerUnavailable(
                f"no MQTT broker answers at {target} within {self.timeout:g} s"
            ) from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise BrokerUnavailable(f"no MQTT broker answers at {target} ({exc})") from None
        if code != 0 and target.username is not None:
            raise BrokerUnavailable(
                f"the broker at {target} refused the URL's credentials (CONNACK code {code})"
            )
        self._url = target

    async def stop(self) -> None:
        """Nothing to do: the broker is not ours."""


async def _connect_once(url: BrokerUrl) -> int:
    """Send one MQTT 3.1.1 CONNECT, return the CONNACK's return code, disconnect."""
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(_connect_packet(f"ota-hil-probe-{uuid.uuid4().hex[:8]}", url))
        await writer.drain()
        reply = await reader.readexactly(4)
        if reply[0] != _CONNACK or reply[1] != 2:
            raise ValueError(f"something listens, but it answered CONNECT with {reply.hex()}")
        if reply[3] == 0:
            writer.write(_DISCONNECT)
            await writer.drain()
        return reply[3]
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _connect_packet(client_id: str, url: BrokerUrl) -> bytes:
    flags = 0x02  # clean session: leave nothing behind on the broker
    payload = _string(client_id)
    if url.username is not None:
        flags |= 0x80
        payload += _string(url.username)
        if url.password is not None:
            flags |= 0x40
            payload += _string(url.password)
    body = _string("MQTT") + bytes([4, flags]) + (10).to_bytes(2, "big") + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)
