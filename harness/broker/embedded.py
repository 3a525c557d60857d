"""The in-process amqtt broker: no binary, no Docker, and it can check JetLinks credentials."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqtt.broker import Broker as AmqttBroker
from amqtt.errors import BrokerError
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from ..mqtt import BrokerUrl
from ..protocol.auth import AuthError
from .base import Broker, BrokerUnavailable

log = logging.getLogger("ota_hil.broker")

#: ``(client_id, username, password) -> None``; raises :class:`AuthError` to refuse.
Authenticator = Callable[[str | None, str | None, str | None], None]

# amqtt builds plugins itself from a dotted path and a dataclass Config that must
# survive dacite's strict typing, so a callable cannot ride along in the config;
# each broker registers its authenticator here and puts only the key in the Config.
_AUTHENTICATORS: dict[str, Authenticator] = {}

_SHUTDOWN_TIMEOUT = 5.0


class CallbackAuthPlugin(BaseAuthPlugin):
    """amqtt auth plugin that delegates the decision to a registered authenticator."""

    @dataclass
    class Config:
        authenticator_id: str = ""

    async def authenticate(self, *, session: Session) -> bool:
        check = _AUTHENTICATORS.get(self.config.authenticator_id)
        if check is None:
            log.warning("refused %r: broker has no authenticator registered", session.client_id)
            return False
        password = session.password
        if isinstance(password, bytes):
            password = password.decode(errors="replace")
        try:
            check(session.client_id, session.username, password)
        except AuthError as exc:
            log.warning("refused client %r: %s", session.client_id, exc)
            return False
        except Exception:
            log.exception("refused client %r: authenticator failed", session.client_id)
            return False
        return True


class _DropStartupTraceback(logging.Filter):
    """amqtt logs a failed bind with a full traceback; start() reports it as one sentence."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Broker startup failed"


def _bound_port(broker: AmqttBroker) -> int:
    # amqtt 0.12 has no public accessor for the port a "host:0" listener got;
    # this private path is the only one, so keep it in this one place.
    return int(broker._servers["default"].instance.sockets[0].getsockname()[1])


class EmbeddedBroker(Broker):
    """An amqtt broker running on the caller's event loop.

    Cheap to start (milliseconds) and needs nothing installed, but it shares the
    loop with the clients and is slower than mosquitto (MQTT 3.1.1 only). ``port=0``
    picks a free port; give ``host`` as an address, since a name that resolves to
    several addresses would get a different free port on each.
    """

    kind = "embedded"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        authenticator: Authenticator | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.authenticator = authenticator
        self._broker: AmqttBroker | None = None
        self._auth_id: str | None = None

    def _config(self) -> dict[str, Any]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        plugins: dict[str, Any]
        if self.authenticator is None:
            # An empty "plugins" would refuse everyone; a missing one loads deprecated defaults.
            plugins = {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            }
        else:
            assert self._auth_id is not None
            plugins = {
                f"{CallbackAuthPlugin.__module__}.{CallbackAuthPlugin.__qualname__}": {
                    "authenticator_id": self._auth_id
                }
            }
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{self.port}"}},
            "plugins": plugins,
        }

    async def start(self) -> None:
        if self._broker is not None:
            raise RuntimeError("embedded broker already started")
        if self.authenticator is not None:
            self._auth_id = uuid.uuid4().hex
            _AUTHENTICATORS[self._auth_id] = self.authenticator
        amqtt_log = logging.getLogger("amqtt.broker")
        quiet = _DropStartupTraceback()
        amqtt_log.addFilter(quiet)
        try:
            broker = AmqttBroker(self._config())
            await broker.start()
        except BrokerError as exc:
            self._forget_authenticator()
            reason = exc.__cause__ or exc
            raise BrokerUnavailable(
                f"embedded broker cannot listen on {self.host}:{self.port} ({reason})"
            ) from exc
        except BaseException:
            self._forget_authenticator()
            raise
        finally:
            amqtt_log.removeFilter(quiet)
        self._broker = broker
        self._url = BrokerUrl(self.host, _bound_port(broker))
        log.debug("embedded broker listening on %s", self._url)

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            async with asyncio.timeout(_SHUTDOWN_TIMEOUT):
                await broker.shutdown()
        except TimeoutError:
            log.warning("embedded broker %s: shutdown took over %g s", self._url, _SHUTDOWN_TIMEOUT)
        finally:
            self._forget_authenticator()

    def _forget_authenticator(self) -> None:
        if self._auth_id is not None:
            _AUTHENTICATORS.pop(self._auth_id, None)
            self._auth_id = None
