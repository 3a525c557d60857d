"""One MQTT client session that outlives broker loss.

The platform and the gateway both need the same thing from MQTT: connect (with
JetLinks credentials when configured), subscribe, hand every message to one
handler that must never kill the loop, publish with QoS 1, and when the broker
goes away reconnect with back-off, re-subscribe and send what was queued
meanwhile. :class:`MqttEndpoint` is that, over aiomqtt.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiomqtt

from .aio import cancel_and_wait
from .protocol.auth import MqttCredentials

Handler = Callable[[str, bytes], Awaitable[None]]

#: Publishes sent before their acknowledgements are awaited (paho's default window is 20).
IN_FLIGHT = 16
CredentialSource = Callable[[], MqttCredentials]


@dataclass(frozen=True)
class BrokerUrl:
    """``mqtt://[user:password@]host:port`` — how components find a broker."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// (got {parts.scheme!r})")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r}: no host")
        try:
            port = parts.port or 1883
        except ValueError:
            raise ValueError(f"broker URL {url!r}: port is not a number in 0..65535") from None
        return cls(parts.hostname, port, parts.username, parts.password)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"


class MqttEndpoint:
    """A reconnecting MQTT client: subscriptions, a handler, and an outbox that survives loss."""

    def __init__(
        self,
        broker: BrokerUrl | str,
        client_id: str,
        subscriptions: Iterable[str],
        handler: Handler,
        *,
        credentials: CredentialSource | None = None,
        backoff: tuple[float, float] = (0.1, 5.0),
        keepalive: int = 30,
        logger: logging.Logger | None = None,
    ) -> None:
        self.broker = BrokerUrl.parse(broker) if isinstance(broker, str) else broker
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self._handler = handler
        self._credentials = credentials
        self._backoff = backoff
        self._keepalive = keepalive
        self.log = logger or logging.getLogger(f"ota_hil.mqtt.{client_id}")
        self._outbox: deque[tuple[str, bytes, int]] = deque()
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        #: Successful connections so far; a test sees a reconnect as this going up.
        self.connections = 0
        self.last_error: str | None = None
        #: Sees every message this endpoint queues ("out") and receives ("in"), in order:
        #: what a trace records.
        self.tap: Callable[[str, str, bytes, int], None] | None = None

    async def start(self, wait: float | None = 10.0) -> None:
        """Start the session; wait up to ``wait`` seconds for the first connection (None: don't)."""
        self._task = asyncio.create_task(self._run(), name=f"mqtt:{self.client_id}")
        if wait is not None:
            try:
                await asyncio.wait_for(self.connected.wait(), wait)
            except TimeoutError:
                await self.stop()
                raise ConnectionError(
                    f"{self.client_id}: no connection to {self.broker} within {wait:g} s"
                    f" (last error: {self.last_error or 'none'})"
                ) from None

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self.connected.clear()

    async def move_to(self, broker: BrokerUrl | str, wait: float | None = 10.0) -> None:
        """Reconnect to another broker address (a fault proxy in front of the same broker);
        what is queued is kept and goes out there."""
        await self.stop()
        self.broker = BrokerUrl.parse(broker) if isinstance(broker, str) else broker
        await self.start(wait)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Queue a message; it goes out now if connected, else after the next connect.

        A topic no broker would take raises here, at the caller, rather than jamming the
        outbox for everything queued after it."""
        if not topic or any(c in topic for c in "+#\0") or len(topic.encode()) > 65535:
            raise ValueError(
                f"cannot publish to {topic[:80]!r}: empty, longer than 65535 bytes, "
                "or holds '+', '#' or NUL"
            )
        self._outbox.append((topic, payload, qos))
        self._pending.set()
        if self.tap is not None:
            self.tap("out", topic, payload, qos)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until the outbox is empty (every queued message acknowledged)."""
        async with asyncio.timeout(timeout):
            while self._outbox:
                await asyncio.sleep(0.005)

    async def _run(self) -> None:
        delay = self._backoff[0]
        while True:
            try:
                await self._session()
            except (aiomqtt.MqttError, OSError) as exc:
                self.last_error = str(exc)
                if self.connected.is_set():
                    self.log.warning("%s: lost %s: %s", self.client_id, self.broker, exc)
                    delay = self._backoff[0]
                else:
                    self.log.info("%s: cannot connect to %s: %s", self.client_id, self.broker, exc)
            except Exception as exc:
                # A bug below us must not end the session for good: log it and reconnect.
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.log.exception("%s: session failed; reconnecting", self.client_id)
            finally:
                self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    async def _session(self) -> None:
        creds = self._credentials() if self._credentials else None
        client = aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier=creds.client_id if creds else self.client_id,
            username=creds.username if creds else self.broker.username,
            password=creds.password if creds else self.broker.password,
            keepalive=self._keepalive,
            timeout=5,
            # Small request/answer packets: without NODELAY each waits ~40 ms for an ACK.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            logger=self.log,
        )
        client.pending_calls_threshold = 1000
        async with client:
            for topic in self.subscriptions:
                await client.subscribe(topic, qos=1)
            self.connections += 1
            self.connected.set()
            self.log.debug("%s: connected to %s", self.client_id, self.broker)
            receiver = asyncio.create_task(self._receive(client))
            sender = asyncio.create_task(self._drain(client))
            try:
                # Either ends only by an MqttError (connection lost, publish unacknowledged).
                done, _ = await asyncio.wait(
                    {receiver, sender}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    task.result()
            finally:
                await cancel_and_wait(receiver, sender)
                _retrieve_disconnect(client)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes):
                payload = str(payload or "").encode()
            if self.tap is not None:
                self.tap("in", str(message.topic), payload, message.qos)
            await self._dispatch(str(message.topic), payload)

    async def _drain(self, client: aiomqtt.Client) -> None:
        """Send the outbox in order, up to ``IN_FLIGHT`` unacknowledged at a time (one at a
        time, a fleet's thousands of progress messages would wait on round trips)."""
        while True:
            await self._pending.wait()
            while self._outbox:
                batch = [self._outbox[i] for i in range(min(IN_FLIGHT, len(self._outbox)))]
                results = await asyncio.gather(
                    *(client.publish(t, p, qos=q) for t, p, q in batch), return_exceptions=True
                )
                for (topic, _, _), result in zip(batch, results, strict=True):
                    if isinstance(result, ValueError):
                        # paho refuses it outright; resending would never succeed.
                        self.log.error(
                            "%s: dropped message to %r: %s", self.client_id, topic, result
                        )
                    elif isinstance(result, BaseException):
                        # Kept in the outbox, the whole batch goes again after the reconnect
                        # (at least once, as QoS 1 promises).
                        raise result
                for _ in batch:
                    self._outbox.popleft()
            self._pending.clear()

    async def _dispatch(self, topic: str, payload: bytes) -> None:
        try:
            await self._handler(topic, payload)
        except Exception:
            # The handler owns protocol errors; anything reaching here is a bug, but one
            # bad message must not take the session down with it.
            self.log.exception("%s: handler failed on %s", self.client_id, topic)


def _retrieve_disconnect(client: aiomqtt.Client) -> None:
    """Mark aiomqtt's disconnect future as seen; unread, asyncio logs "Future exception was
    never retrieved" for every lost connection. Private attribute: kept to this one place."""
    future = getattr(client, "_disconnected", None)
    if isinstance(future, asyncio.Future) and future.done() and not future.cancelled():
        future.exception()
