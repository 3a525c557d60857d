"""mosquitto in Docker via testcontainers, for CI runners that have Docker but no binary."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import Callable
from typing import Any

from ..mqtt import BrokerUrl
from .base import Broker, BrokerUnavailable

log = logging.getLogger("ota_hil.broker")

_MQTT_PORT = 1883


def _create(factory: Callable[[str], Any], image: str) -> tuple[Any, str | None]:
    """Build the container object, or say why Docker refused (runs in a worker thread)."""
    import docker.errors

    try:
        # Without an engine this fails at once: it asks the engine for its API version.
        return factory(image), None
    except docker.errors.DockerException as exc:
        # Only the text leaves the thread: the exception's traceback holds the dead socket.
        return None, (str(exc).splitlines() or [type(exc).__name__])[0]


class ContainerBroker(Broker):
    """``eclipse-mosquitto`` started by testcontainers (optional extra ``container``)."""

    kind = "container"

    def __init__(self, image: str = "eclipse-mosquitto:2") -> None:
        super().__init__()
        self.image = image
        self._container: Any = None

    async def start(self) -> None:
        if self._container is not None:
            raise RuntimeError("container broker already started")
        try:
            import docker.errors

            with warnings.catch_warnings():
                # testcontainers 4.x warns about its own deprecated decorators at import.
                warnings.simplefilter("ignore", DeprecationWarning)
                from testcontainers.community.mqtt import MosquittoContainer
        except ImportError:
            raise BrokerUnavailable(
                'container broker backend needs testcontainers: pip install "ota-hil[container]"'
            ) from None
        container, reason = await asyncio.to_thread(_create, MosquittoContainer, self.image)
        if container is None:
            _drop_dead_docker_client()
            raise BrokerUnavailable(
                f"container broker backend needs a Docker engine, and none answers ({reason})"
            )
        try:
            await asyncio.to_thread(container.start)
            host = container.get_container_host_ip()
            port = int(container.get_exposed_port(_MQTT_PORT))
        except BaseException as exc:
            await asyncio.to_thread(_quiet_stop, container)
            if isinstance(exc, docker.errors.DockerException):
                raise BrokerUnavailable(
                    f"container broker backend: cannot start {self.image} ({exc})"
                ) from exc
            raise
        self._container = container
        self._url = BrokerUrl(host, port)
        log.debug("mosquitto container listening on %s", self._url)

    async def stop(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            await asyncio.to_thread(_quiet_stop, container)


def _drop_dead_docker_client() -> None:
    # The failed docker client leaves an unclosed socket in a reference cycle;
    # collect it now, quietly, rather than as a ResourceWarning in some later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _quiet_stop(container: Any) -> None:
    try:
        container.stop()
    except Exception as exc:
        log.warning("container broker: stopping the container failed: %s", exc)
