"""MqttEndpoint against real amqtt brokers on loopback: outbox, reconnect, handler isolation,
prompt start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Callable
from types import TracebackType

import aiomqtt
import pytest

from harness.aio import cancel_and_wait
from harness.broker import EmbeddedBroker
from harness.broker.base import free_port
from harness.mqtt import BrokerUrl, MqttEndpoint

#: paho leaves Nagle on; with it every request/answer pair on loopback costs ~40 ms per hop.
NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.01)


class Inbox:
    """A handler that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.got.append((topic, payload))

    @property
    def payloads(self) -> list[bytes]:
        return [p for _, p in self.got]


class Listener:
    """A plain aiomqtt client subscribed to ``filters``, keeping what arrives."""

    def __init__(self, url: BrokerUrl, *filters: str) -> None:
        self.url = url
        self.filters = filters
        self.got: list[tuple[str, bytes]] = []
        self._client = aiomqtt.Client(
            url.host,
            url.port,
            identifier=f"listener-{uuid.uuid4().hex[:8]}",
            timeout=5,
            socket_options=NO_DELAY,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def payloads(self) -> list[bytes]:
        return [p for _, p in self.got]

    async def publish(self, topic: str, payload: bytes) -> None:
        await self._client.publish(topic, payload, qos=1)

    async def __aenter__(self) -> Listener:
        await self._client.__aenter__()
        for topic in self.filters:
            await self._client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for message in self._client.messages:
            assert isinstance(message.payload, bytes)
            self.got.append((str(message.topic), message.payload))

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await cancel_and_wait(self._task)
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)


def mqtt_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("mqtt:") and not t.done()]


async def test_publish_before_the_first_connect_is_delivered_after_it(
    broker: EmbeddedBroker,
) -> None:
    inbox = Inbox()
    endpoint = MqttEndpoint(broker.url, "ep-early", [], inbox)
    async with Listener(broker.url, "ota-hil/ep/#") as listener:
        for n in range(3):
            endpoint.publish(f"ota-hil/ep/{n}", f"queued-{n}".encode())
        assert not endpoint.connected.is_set()
        await endpoint.start(wait=5)
        try:
            await endpoint.flush(5)
            await eventually(lambda: len(listener.got) == 3, "the queued messages")
            assert listener.got == [(f"ota-hil/ep/{n}", f"queued-{n}".encode()) for n in range(3)]
            assert endpoint.connections == 1
        finally:
            await endpoint.stop()


async def test_publish_while_the_broker_is_down_is_delivered_after_reconnect() -> None:
    inbox = Inbox()
    first = EmbeddedBroker()
    await first.start()
    port = first.url.port
    # The endpoint listens to what it publishes, so delivery after the reconnect also shows
    # that it subscribed again before sending its outbox.
    endpoint = MqttEndpoint(first.url, "ep-restart", ["ota-hil/echo/#"], inbox, backoff=(0.05, 0.2))
    second: EmbeddedBroker | None = None
    try:
        await endpoint.start(wait=5)
        endpoint.publish("ota-hil/echo/a", b"before")
        await eventually(lambda: inbox.payloads == [b"before"], "the first echo")
        # Quiet first (amqtt can hang in shutdown on a packet arriving just then): once a
        # last publish is acknowledged, the broker has read the PUBACK for the echo too.
        endpoint.publish("ota-hil/quiet", b"")
        await endpoint.flush(5)

        await first.stop()
        await eventually(lambda: not endpoint.connected.is_set(), "the endpoint to see the loss")
        endpoint.publish("ota-hil/echo/b", b"while-down-1")
        endpoint.publish("ota-hil/echo/c", b"while-down-2")
        await asyncio.sleep(0)  # nothing can go out with no broker
        assert inbox.payloads == [b"before"]

        second = EmbeddedBroker(port=port)
        await second.start()
        await eventually(lambda: endpoint.connections == 2, "the reconnect")
        await eventually(lambda: len(inbox.got) == 3, "the outbox after the reconnect")
        assert inbox.payloads == [b"before", b"while-down-1", b"while-down-2"]
        assert endpoint.last_error is not None
        await endpoint.flush(5)
    finally:
        await endpoint.stop()
        await first.stop()
        if second is not None:
            await second.stop()


async def test_start_to_a_closed_port_raises_connection_error_within_the_wait() -> None:
    port = free_port()
    endpoint = MqttEndpoint(f"mqtt://127.0.0.1:{port}", "ep-nobody", ["x/#"], Inbox())
    started = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        await endpoint.start(wait=0.5)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert f"mqtt://127.0.0.1:{port}" in message
    assert "within 0.5 s" in message
    assert endpoint.last_error is not None
    assert endpoint.last_error in message
    assert 0.45 <= elapsed < 1.5
    assert not endpoint.connected.is_set()
    assert endpoint.connections == 0
    assert not mqtt_tasks(), "the session task outlived the failed start"


async def test_handler_exception_is_logged_and_the_session_keeps_receiving(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[bytes] = []

    async def handler(topic: str, payload: bytes) -> None:
        if payload.startswith(b"bad"):
            raise RuntimeError(f"cannot handle {payload!r}")
        got.append(payload)

    logger = logging.getLogger("ota_hil.test.endpoint")
    caplog.set_level(logging.ERROR, logger=logger.name)
    endpoint = MqttEndpoint(broker.url, "ep-handler", ["ota-hil/in/#"], handler, logger=logger)
    await endpoint.start(wait=5)
    try:
        async with Listener(broker.url) as platform:
            for payload in (b"good-1", b"bad-1", b"good-2", b"bad-2", b"good-3"):
                await platform.publish("ota-hil/in/x", payload)
            await eventually(lambda: len(got) == 3, "the good messages")
        assert got == [b"good-1", b"good-2", b"good-3"]
        failures = [r for r in caplog.records if r.name == logger.name]
        assert len(failures) == 2
        assert all("handler failed on ota-hil/in/x" in r.getMessage() for r in failures)
        assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in failures)
        assert endpoint.connections == 1, "a handler error must not cost the connection"
    finally:
        await endpoint.stop()


async def test_stop_returns_promptly_right_after_start(broker: EmbeddedBroker) -> None:
    for n in range(20):
        endpoint = MqttEndpoint(broker.url, f"ep-quick-{n}", ["ota-hil/q/#"], Inbox())
        await endpoint.start(wait=None)
        for _ in range(n % 4):  # stop at different points of the connect
            await asyncio.sleep(0)
        started = time.monotonic()
        await endpoint.stop()
        assert time.monotonic() - started < 0.5, f"stop #{n} was slow"
        assert not endpoint.connected.is_set()
        assert not mqtt_tasks(), f"stop #{n} left the session task running"


async def test_stop_returns_promptly_when_connected_and_twice(broker: EmbeddedBroker) -> None:
    for n in range(5):
        endpoint = MqttEndpoint(broker.url, f"ep-conn-{n}", ["ota-hil/q/#"], Inbox())
        await endpoint.start(wait=5)
        assert endpoint.connected.is_set()
        started = time.monotonic()
        await endpoint.stop()
        await endpoint.stop()
        assert time.monotonic() - started < 0.5
        assert not mqtt_tasks()


async def test_stop_while_the_broker_is_unreachable_is_prompt() -> None:
    endpoint = MqttEndpoint(f"mqtt://127.0.0.1:{free_port()}", "ep-retrying", [], Inbox())
    await endpoint.start(wait=None)
    await eventually(lambda: endpoint.last_error is not None, "a failed connect")
    started = time.monotonic()
    await endpoint.stop()
    assert time.monotonic() - started < 0.5
    assert not mqtt_tasks()


async def test_a_publish_to_an_invalid_topic_is_refused_and_the_session_lives_on(
    broker: EmbeddedBroker,
) -> None:
    inbox = Inbox()
    endpoint = MqttEndpoint(broker.url, "ep-wildcard", ["ota-hil/in/#"], inbox)
    await endpoint.start(wait=5)
    try:
        async with Listener(broker.url, "ota-hil/out/#") as listener:
            with pytest.raises(ValueError, match="ota-hil/out/\\+/bad"):
                endpoint.publish("ota-hil/out/+/bad", b"wildcard in a publish topic")
            endpoint.publish("ota-hil/out/good", b"after the bad one")
            # Until the good one arrives, or the session task is gone.
            await eventually(lambda: listener.got or not mqtt_tasks(), "the good message")
            assert listener.payloads == [b"after the bad one"]
            await listener.publish("ota-hil/in/x", b"still listening")
            await eventually(lambda: inbox.got or not mqtt_tasks(), "an inbound message")
            assert inbox.payloads == [b"still listening"]
    finally:
        await endpoint.stop()


async def test_many_messages_go_out_in_order_and_flush_waits_for_them(
    broker: EmbeddedBroker,
) -> None:
    endpoint = MqttEndpoint(broker.url, "ep-many", [], Inbox())
    async with Listener(broker.url, "ota-hil/many") as listener:
        await endpoint.start(wait=5)
        try:
            for n in range(50):
                endpoint.publish("ota-hil/many", str(n).encode())
            await endpoint.flush(5)
            await eventually(lambda: len(listener.got) == 50, "50 messages")
            assert listener.payloads == [str(n).encode() for n in range(50)]
        finally:
            await endpoint.stop()


def test_a_topic_longer_than_mqtt_allows_is_refused_at_the_call() -> None:
    endpoint = MqttEndpoint("mqtt://127.0.0.1:1", "ep-long", [], Inbox())
    with pytest.raises(ValueError, match="longer than 65535 bytes"):
        endpoint.publish("t/" + "x" * 65535, b"")
