"""MqttFaultProxy between real aiomqtt clients and real brokers (amqtt, mosquitto) on loopback:
clean forwarding, the broker going down and up, duplicated and reordered PUBLISH packets,
malformed input, and a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from types import TracebackType

import aiomqtt
import pytest

from harness.aio import cancel_and_wait
from harness.broker import Broker, make_broker
from harness.broker.base import free_port
from harness.broker.mosquitto import find_mosquitto
from harness.faults import MqttFaultProxy, topic_matches
from harness.mqtt import BrokerUrl, MqttEndpoint, _retrieve_disconnect

NO_DELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
HOLD = 0.2  # the proxies' hold_timeout here

with_mosquitto = pytest.param(
    "mosquitto",
    marks=[
        pytest.mark.mosquitto,
        pytest.mark.skipif(
            find_mosquitto() is None,
            reason="no mosquitto binary on PATH or in /usr/sbin (apt-get install mosquitto)",
        ),
    ],
)


async def eventually(check: Callable[[], object], what: str, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture(params=["embedded"])
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """The real broker behind the proxy (embedded unless a test asks for another)."""
    async with make_broker(request.param) as broker:
        yield broker


@pytest.fixture
def faults() -> list[tuple[str, str]]:
    """What the proxy reported through on_fault."""
    return []


@pytest.fixture
async def proxy(upstream: Broker, faults: list[tuple[str, str]]) -> AsyncIterator[MqttFaultProxy]:
    def on_fault(on: str, what: str) -> None:
        faults.append((on, what))

    async with MqttFaultProxy(str(upstream.url), on_fault=on_fault, hold_timeout=HOLD) as running:
        yield running


class Client:
    """A plain aiomqtt client subscribed to ``filters``, keeping what arrives and noting loss."""

    def __init__(self, url: str | BrokerUrl, *filters: str) -> None:
        self.url = BrokerUrl.parse(url) if isinstance(url, str) else url
        self.filters = filters
        self.got: list[tuple[str, bytes]] = []
        self.lost: aiomqtt.MqttError | None = None
        self.mqtt = connect(self.url)
        self._task: asyncio.Task[None] | None = None

    @property
    def payloads(self) -> list[bytes]:
        return [p for _, p in self.got]

    async def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        await self.mqtt.publish(topic, payload, qos=qos)

    async def __aenter__(self) -> Client:
        await self.mqtt.__aenter__()
        for topic in self.filters:
            await self.mqtt.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for message in self.mqtt.messages:
                assert isinstance(message.payload, bytes)
                self.got.append((str(message.topic), message.payload))
        except aiomqtt.MqttError as exc:
            self.lost = exc

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await cancel_and_wait(self._task)
        with contextlib.suppress(aiomqtt.MqttError):
            await self.mqtt.__aexit__(None, None, None)
        _retrieve_disconnect(self.mqtt)


def connect(url: BrokerUrl) -> aiomqtt.Client:
    return aiomqtt.Client(
        url.host,
        url.port,
        identifier=f"t-{uuid.uuid4().hex[:8]}",
        timeout=2,
        socket_options=NO_DELAY,
    )


def mqtt_packet(first: int, body: bytes) -> bytes:
    size, length = len(body), bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        length.append(byte | (0x80 if size else 0))
        if not size:
            return bytes([first]) + bytes(length) + body


def connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    return mqtt_packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid)


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 1) -> bytes:
    name = topic.encode()
    pid = packet_id.to_bytes(2, "big") if qos else b""
    return mqtt_packet(0x30 | qos << 1, len(name).to_bytes(2, "big") + name + pid + payload)


def proxy_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("mqtt-proxy:")]


@pytest.mark.parametrize("upstream", ["embedded", with_mosquitto], indirect=True)
async def test_messages_pass_both_ways_unchanged(upstream: Broker, proxy: MqttFaultProxy) -> None:
    big = os.urandom(200 * 1024)  # a 3-byte remaining length
    sent = [("small", b"hello", 0), ("small", b"again", 1), ("big", big, 0), ("big", big, 1)]
    async with (
        Client(proxy.url, "t/down/#") as gateway,
        Client(upstream.url, "t/up/#") as platform,
    ):
        for name, payload, qos in sent:
            await platform.publish(f"t/down/{name}", payload, qos)
            await gateway.publish(f"t/up/{name}", payload, qos)
        await eventually(lambda: len(gateway.got) == 4 and len(platform.got) == 4, "all messages")
        assert gateway.got == [(f"t/down/{name}", payload) for name, payload, _ in sent]
        assert platform.got == [(f"t/up/{name}", payload) for name, payload, _ in sent]
    assert proxy.stats["connections"] == 1
    assert proxy.stats["published_up"] == 4
    assert proxy.stats["published_down"] == 4
    assert proxy.stats["duplicated"] == proxy.stats["reordered"] == proxy.stats["refused"] == 0


@pytest.mark.parametrize("upstream", ["embedded", with_mosquitto], indirect=True)
async def test_down_cuts_refuses_and_the_endpoint_catches_up_after_up(
    upstream: Broker, proxy: MqttFaultProxy, faults: list[tuple[str, str]]
) -> None:
    inbox: list[bytes] = []

    async def handler(topic: str, payload: bytes) -> None:
        inbox.append(payload)

    endpoint = MqttEndpoint(proxy.url, "gw-proxy", ["t/echo/#"], handler, backoff=(0.02, 0.1))
    await endpoint.start(wait=3)
    try:
        async with Client(proxy.url) as other:
            await proxy.down()
            await eventually(lambda: other.lost is not None, "the client to see the loss")
            await eventually(lambda: not endpoint.connected.is_set(), "the endpoint to see it")
            late = connect(BrokerUrl.parse(proxy.url))
            started = time.monotonic()
            with pytest.raises(aiomqtt.MqttError, match=r"[Rr]efused"):
                await late.__aenter__()
            assert time.monotonic() - started < 0.5, "refused at once, as by a stopped broker"
            endpoint.publish("t/echo/x", b"queued while down")
            await asyncio.sleep(0.1)  # the endpoint retries into the outage meanwhile
            assert inbox == []
            assert endpoint.connections == 1

            await proxy.up()
            await eventually(lambda: endpoint.connections == 2, "the reconnect")
            await eventually(lambda: inbox == [b"queued while down"], "the queued message")
    finally:
        await endpoint.stop()
    assert faults == [("broker", "down"), ("broker", "up")]
    assert not proxy.is_down


@pytest.mark.parametrize("upstream", [with_mosquitto], indirect=True)
async def test_mqtt5_publishes_are_matched_and_duplicated(
    upstream: Broker, proxy: MqttFaultProxy
) -> None:
    """MQTT 5 puts properties after the topic, so matching works as for 3.1.1."""
    url = BrokerUrl.parse(proxy.url)
    client = aiomqtt.Client(
        url.host, url.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=2, socket_options=NO_DELAY
    )
    got: list[bytes] = []
    async with client:
        await client.subscribe("v5/#", qos=1)
        proxy.duplicate("v5/dup", direction="down", times=1)
        await client.publish("v5/once", b"once", qos=1)
        await client.publish("v5/dup", b"twice", qos=1)
        async with asyncio.timeout(2):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append(message.payload)
                if len(got) == 3:
                    break
    assert got == [b"once", b"twice", b"twice"]
    assert proxy.stats["duplicated"] == 1


async def test_down_with_reset_accepts_and_resets_new_connections(
    proxy: MqttFaultProxy, faults: list[tuple[str, str]]
) -> None:
    await proxy.down(reset=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(connect_packet("reset-me"))
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    with contextlib.suppress(ConnectionResetError):
        await writer.wait_closed()
    assert proxy.stats["refused"] == 1
    await proxy.up()
    async with Client(proxy.url, "t/back") as client:
        await client.publish("t/back", b"up again")
        await eventually(lambda: client.payloads == [b"up again"], "a message after up()")
    assert proxy.stats["connections"] == 1
    assert faults == [("broker", "down"), ("broker", "up")]


@pytest.mark.parametrize("direction", ["up", "down", "both"])
async def test_duplicate_once_delivers_a_matching_message_twice(
    proxy: MqttFaultProxy, faults: list[tuple[str, str]], direction: str
) -> None:
    async with Client(proxy.url, "t/#") as client:
        proxy.duplicate("t/dup/+", direction=direction, times=1)
        await client.publish("t/other", b"not matching")
        await client.publish("t/dup/a", b"first")
        await client.publish("t/dup/a", b"second")
        await client.publish("t/end", b"end")
        await eventually(lambda: b"end" in client.payloads, "the last message")
        assert client.payloads == [b"not matching", b"first", b"first", b"second", b"end"]
    assert proxy.stats["duplicated"] == 1
    label = "duplicate t/dup/+" + ("" if direction == "both" else f" {direction}") + " x1"
    assert faults == [("mqtt", label), ("mqtt", f"{label} ended")]


async def test_the_duplicate_is_a_resend_byte_for_byte() -> None:
    """QoS 1: the copy has DUP set and the same packet id; QoS 0: identical bytes."""
    received = bytearray()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            received.extend(chunk)
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    qos1 = publish_packet("a/b", b"payload", qos=1, packet_id=0x1234)
    qos0 = publish_packet("a/c", b"q0")
    other = publish_packet("z", b"untouched", qos=1, packet_id=7)
    try:
        async with MqttFaultProxy(f"mqtt://127.0.0.1:{port}") as proxy:
            proxy.duplicate("a/#")
            _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(connect_packet("raw") + qos1 + qos0 + other)
            want = connect_packet("raw") + qos1 + bytes([qos1[0] | 0x08]) + qos1[1:]
            want += qos0 + qos0 + other
            await eventually(lambda: len(received) >= len(want), "the forwarded bytes")
            assert bytes(received) == want
            assert proxy.stats["duplicated"] == 2
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_reorder_swaps_a_pair_and_a_lone_message_goes_after_the_hold(
    upstream: Broker, proxy: MqttFaultProxy, faults: list[tuple[str, str]]
) -> None:
    async with (
        Client(proxy.url, "t/ro/#") as gateway,
        Client(upstream.url) as platform,
    ):
        proxy.reorder("t/ro/#", times=2)
        await platform.publish("t/ro/x", b"A")
        await platform.publish("t/ro/y", b"B")
        await eventually(lambda: len(gateway.got) == 2, "the pair")
        assert gateway.got == [("t/ro/y", b"B"), ("t/ro/x", b"A")]
        assert proxy.stats["reordered"] == 1

        await platform.publish("t/ro/x", b"alone")
        sent = time.monotonic()
        await asyncio.sleep(HOLD / 2)
        assert len(gateway.got) == 2, "held"
        await eventually(lambda: len(gateway.got) == 3, "the held message", timeout=HOLD * 5)
        assert time.monotonic() - sent >= HOLD * 0.9
        assert gateway.payloads[2] == b"alone"
        assert proxy.stats["reordered"] == 1, "released by time, not swapped"
    assert faults == [("mqtt", "reorder t/ro/# x2"), ("mqtt", "reorder t/ro/# x2 ended")]


async def test_clear_ends_every_fault_and_bad_arguments_are_refused(
    proxy: MqttFaultProxy, faults: list[tuple[str, str]]
) -> None:
    proxy.duplicate("a/#", direction="up")
    proxy.reorder()
    proxy.clear()
    assert faults == [
        ("mqtt", "duplicate a/# up"),
        ("mqtt", "reorder #"),
        ("mqtt", "duplicate a/# up ended"),
        ("mqtt", "reorder # ended"),
    ]
    for bad in ("a/#/b", "a/b+", ""):
        with pytest.raises(ValueError, match="topic filter"):
            proxy.duplicate(bad)
    with pytest.raises(ValueError, match="direction 'sideways'"):
        proxy.reorder(direction="sideways")
    with pytest.raises(ValueError, match="times"):
        proxy.duplicate(times=0)
    assert len(faults) == 4


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("#", "a/b", True),
        ("a/#", "a", True),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/+", "a/b/c", False),
        ("+/+", "/x", True),
        ("#", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


async def test_a_malformed_remaining_length_closes_only_that_connection(
    proxy: MqttFaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ota_hil.faults")
    async with Client(proxy.url, "t/ok") as good:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        hello = connect_packet("garbage")
        writer.write(hello)
        assert (await asyncio.wait_for(reader.readexactly(4), 2))[0] == 0x20  # CONNACK
        writer.write(b"\x30" + b"\xff" * 5)
        assert await asyncio.wait_for(reader.read(), 2) == b"", "the proxy closes it"
        writer.close()
        await writer.wait_closed()

        await good.publish("t/ok", b"still here")
        await eventually(lambda: good.payloads == [b"still here"], "the other client's message")
        assert good.lost is None
    local = writer.get_extra_info("sockname")
    [warning] = [r for r in caplog.records if r.name == "ota_hil.faults"]
    assert warning.levelno == logging.WARNING
    assert f"client 127.0.0.1:{local[1]}" in warning.getMessage()
    assert f"byte offset {len(hello)}" in warning.getMessage()


async def test_an_upstream_that_refuses_closes_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="ota_hil.faults")
    async with MqttFaultProxy(f"mqtt://127.0.0.1:{free_port()}") as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(connect_packet("nobody-home"))
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
        await writer.wait_closed()
        assert proxy.stats["connections"] == 0
    assert any("unreachable" in r.getMessage() for r in caplog.records)


async def test_stop_with_clients_connected_and_a_message_held_leaves_nothing_pending(
    upstream: Broker, proxy: MqttFaultProxy
) -> None:
    endpoint = MqttEndpoint(proxy.url, "gw-stop", ["t/#"], _ignore, backoff=(0.02, 0.1))
    await endpoint.start(wait=3)
    try:
        async with Client(proxy.url, "t/#") as client, Client(upstream.url) as platform:
            proxy.reorder("t/held")
            await platform.publish("t/held", b"held")
            await eventually(
                lambda: proxy.stats["published_down"] == 2, "a copy held on each connection"
            )
            assert proxy_tasks()
            started = time.monotonic()
            await proxy.stop()
            await proxy.stop()
            assert time.monotonic() - started < 0.5
            assert not proxy_tasks()
            await eventually(lambda: client.lost is not None, "the client to see the loss")
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", proxy.port)
    finally:
        await endpoint.stop()


async def _ignore(topic: str, payload: bytes) -> None:
    pass
