"""One publisher -> one subscriber throughput of each broker backend, 70-byte payloads.

    python benchmarks/broker_throughput.py [--messages N] [--backends embedded,mosquitto]

The embedded (amqtt) broker runs in its own process via ``ota-hil broker`` so it
does not share an event loop with the two clients; mosquitto runs as
:class:`~harness.broker.MosquittoBroker` starts it. Both clients share this
process's loop. The publisher keeps ``--window`` publishes in flight, so QoS 1 is
not limited to one message per round trip. Rate = messages received / time from
the first publish to the last receipt.

Both Python clients share one core, so against mosquitto the figure is the
clients' ceiling (~4-5k msg/s on a 2-core box), not mosquitto's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomqtt

from harness.broker import BrokerUnavailable, MosquittoBroker
from harness.mqtt import BrokerUrl

PAYLOAD = bytes(range(70))
IDLE_GIVE_UP = 3.0  # seconds without a new message before counting the rest as lost
WARMUP = 200


@dataclass
class Result:
    backend: str
    qos: int
    sent: int
    received: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0


@contextlib.asynccontextmanager
async def embedded_in_subprocess() -> AsyncIterator[BrokerUrl]:
    """``ota-hil broker`` on a free port, in a child process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from harness.cli.broker import broker_command; broker_command()",
        # amqtt warns about PUBACKs that race a client's DISCONNECT; not our concern here.
        "--log-level",
        "error",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode().strip()
        prefix = "broker listening on "
        if not line.startswith(prefix):
            raise BrokerUnavailable(f"embedded broker process said {line!r}")
        yield BrokerUrl.parse(line.removeprefix(prefix))
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def mosquitto() -> AsyncIterator[BrokerUrl]:
    async with MosquittoBroker() as broker:
        yield broker.url


BACKENDS = {"embedded": embedded_in_subprocess, "mosquitto": mosquitto}


async def measure(url: BrokerUrl, qos: int, messages: int, window: int) -> tuple[int, float]:
    """Send ``messages`` messages; return (received, seconds)."""
    topic = f"bench/{uuid.uuid4().hex[:8]}"
    tag = uuid.uuid4().hex[:6]
    received = 0
    last_rx = time.perf_counter()
    async with (
        aiomqtt.Client(url.host, url.port, identifier=f"bench-sub-{tag}") as sub,
        aiomqtt.Client(
            url.host, url.port, identifier=f"bench-pub-{tag}", max_inflight_messages=window
        ) as pub,
    ):
        pub.pending_calls_threshold = window + 1
        await sub.subscribe(topic, qos=qos)

        async def consume() -> None:
            nonlocal received, last_rx
            async for _ in sub.messages:
                received += 1
                last_rx = time.perf_counter()
                if received == messages:
                    return

        async def publish(count: int) -> None:
            for _ in range(count):
                await pub.publish(topic, PAYLOAD, qos=qos)

        consumer = asyncio.create_task(consume())
        shares = [messages // window + (i < messages % window) for i in range(window)]
        started = time.perf_counter()
        await asyncio.gather(*(publish(n) for n in shares if n))
        while True:
            seen = received
            done, _ = await asyncio.wait({consumer}, timeout=IDLE_GIVE_UP)
            if done or received == seen:
                break
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
    return received, last_rx - started


async def run(backends: list[str], messages: int, window: int) -> list[Result]:
    results = []
    for name in backends:
        try:
            async with BACKENDS[name]() as url:
                for qos in (0, 1):
                    await measure(url, qos, WARMUP, window)
                    received, seconds = await measure(url, qos, messages, window)
                    results.append(Result(name, qos, messages, received, seconds))
                    print(f"  {name} qos {qos}: {results[-1].rate:,.0f} msg/s", file=sys.stderr)
        except BrokerUnavailable as exc:
            print(f"  {name}: skipped: {exc}", file=sys.stderr)
    return results


def print_table(results: list[Result]) -> None:
    header = f"{'backend':<10} {'qos':>3} {'sent':>7} {'received':>8} {'seconds':>8} {'msg/s':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.backend:<10} {r.qos:>3} {r.sent:>7} {r.received:>8}"
            f" {r.seconds:>8.2f} {r.rate:>8,.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages per run")
    parser.add_argument(
        "--backends",
        default="embedded,mosquitto",
        help=f"comma-separated, from: {', '.join(BACKENDS)}",
    )
    parser.add_argument("--window", type=int, default=20, help="publishes kept in flight")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if args.messages < 1 or args.window < 1:
        parser.error("--messages and --window must be positive")
    print_table(asyncio.run(run(backends, args.messages, args.window)))


if __name__ == "__main__":
    main()
