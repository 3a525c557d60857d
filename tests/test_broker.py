"""The broker backends, against real sockets, a real mosquitto and a real subprocess."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
import time
import uuid

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner

from harness.broker import (
    BROKER_CHOICES,
    Broker,
    BrokerUnavailable,
    ContainerBroker,
    EmbeddedBroker,
    ExternalBroker,
    MosquittoBroker,
    make_broker,
)
from harness.broker import mosquitto as mosquitto_module
from harness.broker.base import can_connect, free_port
from harness.cli.broker import broker_command
from harness.mqtt import BrokerUrl
from harness.protocol.auth import AuthError, DeviceSecret, credentials_for, verify

SECRETS = {"gw-0001": DeviceSecret(secure_id="sid-0001", secure_key="key-0001")}


def jetlinks_auth(client_id: str | None, username: str | None, password: str | None) -> None:
    verify(client_id, username, password, SECRETS.get)


async def round_trip(url: BrokerUrl, qos: int = 1, **client_kwargs: object) -> aiomqtt.Message:
    """Subscribe, publish to ourselves, return what came back."""
    topic = f"ota-hil/test/{uuid.uuid4().hex[:8]}"
    async with aiomqtt.Client(url.host, url.port, timeout=5, **client_kwargs) as client:
        await client.subscribe(topic, qos=qos)
        await client.publish(topic, b"firmware-chunk", qos=qos)
        async with asyncio.timeout(5):
            async for message in client.messages:
                return message
    raise AssertionError("message stream ended without a message")


async def test_embedded_round_trip_then_clean_stop() -> None:
    broker = EmbeddedBroker()
    async with broker:
        assert broker.kind == "embedded"
        assert broker.url.host == "127.0.0.1"
        assert broker.url.port > 0
        message = await round_trip(broker.url, qos=1)
        assert message.payload == b"firmware-chunk"
        assert message.qos == 1
    assert not await can_connect(broker.url.host, broker.url.port, 0.5)
    started = time.monotonic()
    await broker.stop()  # a second stop is a no-op
    assert time.monotonic() - started < 0.1


async def test_two_embedded_brokers_at_once_get_their_own_ports() -> None:
    async with EmbeddedBroker() as first, EmbeddedBroker() as second:
        assert first.url.port != second.url.port
        for broker in (first, second):
            assert (await round_trip(broker.url)).payload == b"firmware-chunk"


async def test_embedded_accepts_correct_jetlinks_credentials() -> None:
    creds = credentials_for("gw-0001", SECRETS["gw-0001"])
    async with EmbeddedBroker(authenticator=jetlinks_auth) as broker:
        message = await round_trip(
            broker.url,
            identifier=creds.client_id,
            username=creds.username,
            password=creds.password,
        )
    assert message.payload == b"firmware-chunk"


@pytest.mark.parametrize(
    ("client_id", "password"),
    [("gw-0001", "0" * 32), ("gw-9999", None)],
    ids=["wrong-password", "unknown-device"],
)
async def test_embedded_refuses_bad_jetlinks_credentials(
    caplog: pytest.LogCaptureFixture, client_id: str, password: str | None
) -> None:
    good = credentials_for("gw-0001", SECRETS["gw-0001"])
    password = password or good.password
    with pytest.raises(AuthError) as expected:  # the reason the broker should log
        jetlinks_auth(client_id, good.username, password)
    caplog.set_level(logging.WARNING, logger="ota_hil.broker")
    async with EmbeddedBroker(authenticator=jetlinks_auth) as broker:
        client = aiomqtt.Client(
            broker.url.host,
            broker.url.port,
            identifier=client_id,
            username=good.username,
            password=password,
            timeout=5,
        )
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with client:
                pass
    assert str(refused.value.rc) == "Not authorized"
    refusals = [r for r in caplog.records if r.name == "ota_hil.broker"]
    assert [r.levelno for r in refusals] == [logging.WARNING]
    assert str(expected.value) in refusals[0].getMessage()


needs_mosquitto = pytest.mark.skipif(
    mosquitto_module.find_mosquitto() is None,
    reason="no mosquitto binary on PATH or in /usr/sbin (Debian: apt-get install mosquitto)",
)


@pytest.mark.mosquitto
@needs_mosquitto
async def test_mosquitto_round_trip_then_clean_stop() -> None:
    broker = MosquittoBroker()
    async with broker:
        assert broker.kind == "mosquitto"
        log_path = broker.log_path
        assert log_path is not None and "running" in log_path.read_text()
        message = await round_trip(broker.url, qos=1)
        assert message.payload == b"firmware-chunk"
        assert message.qos == 1
    assert not await can_connect(broker.url.host, broker.url.port, 0.5)
    assert not log_path.exists()  # the temp dir went with it
    await broker.stop()


@pytest.mark.mosquitto
@needs_mosquitto
async def test_mosquitto_keeps_every_qos1_message_for_a_stalled_subscriber() -> None:
    """mosquitto's default queue limit (1000) drops QoS 1 messages silently; ours must not."""
    count = 1100  # beyond mosquitto's default 1000 queued + 20 in flight
    gate, subscribed, all_in = threading.Event(), threading.Event(), threading.Event()
    got: list[bytes] = []

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        gate.wait(10)  # no PUBACK leaves until this returns, so the broker must queue
        got.append(message.payload)
        if len(got) == count:
            all_in.set()

    async with MosquittoBroker() as broker:
        subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stalled")
        subscriber.on_message = on_message
        subscriber.on_subscribe = lambda *_: subscribed.set()
        subscriber.on_connect = lambda client, *_: client.subscribe("bulk", qos=1)
        subscriber.connect(broker.url.host, broker.url.port)
        subscriber.loop_start()
        try:
            assert await asyncio.to_thread(subscribed.wait, 5)
            async with aiomqtt.Client(broker.url.host, broker.url.port, timeout=10) as publisher:
                publisher.pending_calls_threshold = count + 1
                await asyncio.gather(
                    *(publisher.publish("bulk", str(i).encode(), qos=1) for i in range(count))
                )
            gate.set()
            await asyncio.to_thread(all_in.wait, 5)
            broker_log = broker.log_path.read_text()
        finally:
            gate.set()
            subscriber.disconnect()
            subscriber.loop_stop()
    assert sorted(int(p) for p in got) == list(range(count))
    assert "dropped" not in broker_log


async def test_mosquitto_missing_binary_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mosquitto_module, "find_mosquitto", lambda: None)
    with pytest.raises(BrokerUnavailable, match=r"apt-get install mosquitto"):
        await MosquittoBroker().start()


async def test_external_broker_uses_a_running_broker_and_leaves_it_running() -> None:
    async with EmbeddedBroker() as embedded:
        async with ExternalBroker(str(embedded.url)) as external:
            assert external.kind == "external"
            assert external.url == embedded.url
            assert (await round_trip(external.url)).payload == b"firmware-chunk"
        # Still serving after the external handle stopped (an MQTT round trip, not a bare
        # TCP probe: amqtt leaks its end of a connection that closes before CONNECT).
        assert (await round_trip(embedded.url)).payload == b"firmware-chunk"


async def test_external_broker_on_a_closed_port_fails_fast_naming_the_url() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=url.replace(".", r"\.")):
        await ExternalBroker(url).start()
    assert time.monotonic() - started < 1.0


async def test_external_broker_wants_an_mqtt_answer_not_just_a_socket() -> None:
    async def not_mqtt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_mqtt, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(
            BrokerUnavailable, match=f"no MQTT broker answers at mqtt://127.0.0.1:{port}"
        ):
            await ExternalBroker(f"mqtt://127.0.0.1:{port}").start()


async def test_external_broker_reports_refused_url_credentials() -> None:
    async with EmbeddedBroker(authenticator=jetlinks_auth) as broker:
        url = f"mqtt://sid-0001|0:wrong@127.0.0.1:{broker.url.port}"
        with pytest.raises(
            BrokerUnavailable, match=r"refused the URL.s credentials: .*Not authorized"
        ):
            await ExternalBroker(url).start()


async def test_container_broker_without_docker_says_so_at_once() -> None:
    """No Docker engine runs on the machines this suite is written for.

    This exercises the real failure path (testcontainers asking an absent engine);
    it does not mock Docker. On a machine with Docker it is skipped.
    """
    broker = ContainerBroker()
    started = time.monotonic()
    try:
        await broker.start()
    except BrokerUnavailable as exc:
        message = str(exc)
    else:
        await broker.stop()
        pytest.skip("a Docker engine answered; this test covers its absence")
    assert time.monotonic() - started < 2.0
    assert message.startswith("container broker backend needs a Docker engine, and none answers")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("embedded", "embedded"),
        ("mosquitto", "mosquitto"),
        ("container", "container"),
        ("mqtt://broker.lab:1884", "external"),
    ],
)
def test_make_broker_maps_specs_to_backends(spec: str, kind: str) -> None:
    broker = make_broker(spec)
    assert isinstance(broker, Broker)
    assert broker.kind == kind


def test_make_broker_knows_every_choice_and_keeps_the_url() -> None:
    assert {make_broker(choice).kind for choice in BROKER_CHOICES} == set(BROKER_CHOICES)
    external = make_broker("mqtt://broker.lab:1884")
    assert isinstance(external, ExternalBroker)
    assert external.target == BrokerUrl("broker.lab", 1884)


@pytest.mark.parametrize(
    "spec", ["", "rabbitmq", "Embedded-ish", "http://broker.lab:1883", "mqtt://broker.lab:99999"]
)
def test_make_broker_rejects_bad_specs_listing_the_valid_forms(spec: str) -> None:
    with pytest.raises(ValueError, match=r"'embedded', 'mosquitto', 'container' or an mqtt://"):
        make_broker(spec)


@pytest.mark.parametrize("spec", ["mosquitto", "container", "mqtt://broker.lab:1883"])
def test_make_broker_refuses_an_authenticator_outside_embedded(spec: str) -> None:
    with pytest.raises(ValueError, match="JetLinks auth checking needs the embedded broker"):
        make_broker(spec, authenticator=jetlinks_auth)
    assert isinstance(make_broker("embedded", authenticator=jetlinks_auth), EmbeddedBroker)


@pytest.mark.parametrize("spec", ["embedded", "mosquitto"])
async def test_a_broker_the_harness_starts_listens_where_it_is_told(spec: str) -> None:
    port = free_port("127.0.0.1")
    async with make_broker(spec, host="127.0.0.1", port=port) as broker:
        assert broker.url == BrokerUrl("127.0.0.1", port)
        assert (await round_trip(broker.url)).payload == b"firmware-chunk"


@pytest.mark.parametrize("spec", ["container", "mqtt://broker.lab:1883"])
def test_a_listening_port_is_refused_for_a_broker_the_harness_does_not_start(spec: str) -> None:
    with pytest.raises(ValueError, match=r"a listening port \(1884\) is for a broker the harness"):
        make_broker(spec, port=1884)


async def test_cli_serves_until_sigint_then_exits_zero() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from harness.cli.broker import broker_command; broker_command()",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(15):
            line = (await proc.stdout.readline()).decode().strip()
        assert line.startswith("broker listening on mqtt://127.0.0.1:"), line
        url = BrokerUrl.parse(line.removeprefix("broker listening on "))
        assert url.port > 0
        assert (await round_trip(url)).payload == b"firmware-chunk"
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(5):
            _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()
        assert b"Traceback" not in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_cli_help_describes_the_options() -> None:
    assert broker_command.name == "broker"
    result = CliRunner().invoke(broker_command, ["--help"])
    assert result.exit_code == 0
    for text in ("--host", "--port", "--log-level", "free one", "broker listening on"):
        assert text in result.output


def test_cli_on_a_busy_port_fails_with_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(broker_command, ["--port", str(port)])
    assert result.exit_code == 1
    assert f"embedded broker cannot listen on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output
