"""A broker somebody else runs (a lab mosquitto, a JetLinks platform): we only check it is there."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt

from ..mqtt import BrokerUrl
from .base import Broker, BrokerUnavailable


class ExternalBroker(Broker):
    """Points at an existing broker; start checks it answers, stop leaves it alone.

    The check is a whole MQTT session (connect with the URL's credentials, disconnect),
    not a bare TCP connect: it proves an MQTT broker listens there and lets us in, and a
    bare connect-and-close makes amqtt log a warning and leak its end of the socket.
    """

    kind = "external"

    def __init__(self, url: str | BrokerUrl, *, timeout: float = 3.0) -> None:
        super().__init__()
        self.target = BrokerUrl.parse(url) if isinstance(url, str) else url
        self.timeout = timeout

    async def start(self) -> None:
        target = self.target
        probe = aiomqtt.Client(
            target.host,
            target.port,
            identifier=f"ota-hil-probe-{uuid.uuid4().hex[:8]}",
            username=target.username,
            password=target.password,
            timeout=self.timeout,
        )
        try:
            async with asyncio.timeout(self.timeout):
                async with probe:
                    pass
        except TimeoutError:
            raise BrokerUnavailable(
                f"no MQTT broker answers at {target} within {self.timeout:g} s"
            ) from None
        except aiomqtt.MqttCodeError as exc:
            whose = "the URL's credentials" if target.username else "an anonymous client"
            raise BrokerUnavailable(f"the broker at {target} refused {whose}: {exc}") from None
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(f"no MQTT broker answers at {target} ({exc})") from None
        self._url = target

    async def stop(self) -> None:
        """Nothing to do: the broker is not ours."""
