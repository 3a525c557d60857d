"""What every broker backend promises, plus the small socket helpers they share."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import ClassVar, Self

from ..mqtt import BrokerUrl


class BrokerUnavailable(RuntimeError):
    """A backend cannot provide a broker here (missing binary, no Docker, nothing listening)."""


class Broker(abc.ABC):
    """An MQTT broker the harness can start, point clients at, and stop.

    Constructors do no I/O; everything that can fail for environmental reasons
    happens in :meth:`start` and is reported as :class:`BrokerUnavailable`.
    """

    kind: ClassVar[str]

    def __init__(self) -> None:
        self._url: BrokerUrl | None = None

    @property
    def url(self) -> BrokerUrl:
        """Where clients connect; valid once :meth:`start` has returned."""
        if self._url is None:
            raise RuntimeError(f"{self.kind} broker has not been started")
        return self._url

    @abc.abstractmethod
    async def start(self) -> None:
        """Bring the broker up; return once it accepts connections."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Take the broker down; safe to call twice or without a start."""

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

    def __repr__(self) -> str:
        where = self._url if self._url is not None else "not started"
        return f"<{type(self).__name__} {where}>"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for backends that cannot bind port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def can_connect(host: str, port: int, within: float) -> bool:
    """Whether a TCP connection to host:port succeeds within ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def wait_until_listening(
    host: str, port: int, within: float, alive: Callable[[], bool] | None = None
) -> bool:
    """Poll until host:port accepts connections; False on timeout or once ``alive()`` is false."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        if await can_connect(host, port, min(1.0, max(deadline - time.monotonic(), 0.01))):
            return True
        await asyncio.sleep(0.02)
    return False
