"""The mock platform as one running thing: MQTT client, scheduler, REST API and file server."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from ..mqtt import BrokerUrl
from .api import PlatformApi
from .files import FileServer
from .service import Platform, PlatformConfig

log = logging.getLogger("ota_hil.platform")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response(
            {"status": 500, "code": "error", "message": "internal error; see the platform log"},
            status=500,
        )


class PlatformServer:
    """Start with a broker URL; ``url`` is the REST and file server base once started."""

    def __init__(
        self,
        broker: BrokerUrl | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: PlatformConfig | None = None,
        public_url: str | None = None,
    ) -> None:
        self.broker = broker
        self.host = host
        self.port = port
        #: How devices reach the file server when that is not the bind address
        #: (listening on 0.0.0.0, behind NAT): the base of every download URL.
        self.public_url = public_url.rstrip("/") if public_url else None
        self.platform = Platform(config)
        self.files = FileServer(self.platform.store)
        self.api = PlatformApi(self.platform, self.files)
        self._runner: web.AppRunner | None = None
        self.url = ""
        #: Called with (method, path and query, status) of every REST request.
        self.request_listener: Callable[[str, str, int], None] | None = None

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._observe, _errors], client_max_size=256 * 1024 * 1024
        )
        app.add_routes(self.files.routes())
        app.add_routes(self.api.routes())
        return app

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Tell :attr:`request_listener` about each REST request and its status (downloads
        have the file server's own, fuller log)."""
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if self.request_listener is not None and request.match_info.handler != (
                self.files.download
            ):
                self.request_listener(request.method, request.path_qs, status)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        self.platform.store.base_url = self.public_url or self.url
        try:
            await self.platform.connect(self.broker)
        except BaseException:
            await self._runner.cleanup()
            raise
        log.info("platform REST and files on %s, MQTT via %s", self.url, self.broker)

    async def stop(self) -> None:
        await self.platform.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> PlatformServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
